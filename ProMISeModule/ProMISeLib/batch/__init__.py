"""Batch: a manifest of lesions segmented in one command, resumable, on Dask (``promise batch``).

``manifest.py`` reads and checks the manifest, ``plan.py`` groups its rows by image and decides what an
earlier run already finished, ``work.py`` segments one image's rows with one Segmenter (on a worker),
``cohort.py`` writes each image's ``.seg.nrrd`` and ``results.csv`` (``results.py``) as images finish,
``dask_runner.py`` runs the images on Dask, and ``command.py`` is the CLI command. The Slicer console's
``segmentBatch`` uses all but the last two, in-process. Only ``dask_runner.py`` imports Dask.
"""
