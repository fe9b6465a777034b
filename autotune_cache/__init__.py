"""Reviewed, human-readable tuned launch configurations per GPU, shipped with tritp.

``index.json`` lists the files; each entry is written by ``tritp autotune --export``.
"""
