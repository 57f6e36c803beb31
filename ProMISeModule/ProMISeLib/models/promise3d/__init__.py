"""ProMISe 3D (Li et al., ISBI 2024) in our own code, loadable from the released checkpoints.

``config`` (sizes and preprocessing; no torch), ``encoder``, ``prompt``, ``decoder`` and ``model``
(:class:`~ProMISeLib.models.promise3d.model.Promise3D`). Importing this package imports no torch.
"""
