"""Reviewed, human-readable tuned launch configurations per GPU, shipped with tritp.

``index.json`` lists the files; each file holds the entries of one GPU and Triton version, as
written by ``tritp autotune --export``. The format is described in this folder's README.md and
in :mod:`tritp.tuning.cache`; :func:`tritp.tuning.cache.shipped_dir` locates the folder.
"""
