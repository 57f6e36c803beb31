"""Slicer-side helpers of the ProMISe module: node conversion, segment writing, undo, batch, installer.

Nothing here holds model code; the engine is ``ProMISeLib``. These modules import only ``slicer``,
``vtk``, numpy and ``ProMISeLib`` (never ``qt`` or ``ctk``), so they also run in a plain Python
with PyPI's ``slicer-core``. They live in a sub-package so that Slicer's module scanner, which
treats every ``.py`` file at the top of the module folder as a candidate module, never sees them.
"""
