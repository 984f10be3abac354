"""Readers of benchmark datasets: ATOM3D LMDBs (:mod:`geoplm.datasets.atom3d`) and label files
(:mod:`geoplm.datasets.labels`)."""
