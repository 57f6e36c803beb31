"""Learned prompting for the frozen box-trained default model (issue 6).

A small network reads the frozen encoder's features of a slice plus its 3D context (the click,
or the mask found on the neighbouring slice) and predicts a coarse mask; its bounding box is the
prompt the frozen decoder gets. SAM's weights are never changed.
"""
