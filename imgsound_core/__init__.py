"""imgsound_core: images that sound — the sampling math, models, spectrogram/audio and artifacts.

No Ray, no S3, no HTTP: the serving and sweep layers are thin adapters over this package.
"""

__version__ = "0.1.0"
