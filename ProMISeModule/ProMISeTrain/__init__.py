"""Training and evaluation of ProMISe's learned parts (not shipped with the Slicer extension)."""
