"""ProMISe engine: one-click 3D segmentation with frozen SAM-family models. No Slicer imports."""

__version__ = "0.1.0"
