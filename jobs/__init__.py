"""Batch sweeps and dataset curation over imgsound_core: see the README."""
