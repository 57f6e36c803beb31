"""Input and output: image geometry, volumes, preprocessing, weights, downloads and paths."""
