"""Slicer-side code of the ProMISe module: logic, worker, routing, effect, panel, installer and self-test.

Nothing here holds model code; the engine is ``ProMISeLib``. The GUI-free modules (``logic``, ``run``,
``scene``, ``nodes``, ``options``, ``batch``, ``undo``, ``worker``, ``routing``, ``effect``, ``install``,
``install_plan``) import only ``slicer``, ``vtk``, numpy and ``ProMISeLib`` (never ``qt`` or ``ctk``), so they
also run in a plain Python with PyPI's ``slicer-core``. The Qt layer is thin: ``widget`` (the panel), its parts
``models_panel`` and ``points_panel``, ``poller`` (the QTimer that applies the worker's results) and
``segment_editor_effect``. They live in a sub-package so that Slicer's module scanner, which treats every
``.py`` file at the top of the module folder as a candidate module, never sees them.
"""
