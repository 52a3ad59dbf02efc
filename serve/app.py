"""The application graph: `serve run serve.app:build_app` (with `serve/config.yaml` or key=value args).

    HTTP ─► Driver (auth, validation, admission, each request's step loop)
              ├─► Gatekeeper              admission: samples in flight service-wide, per-key rate limits
              ├─► ImageUNet / AudioUNet   @serve.batch over rows of every request in flight, at any step
              ├─► Vocoder                 the audio VAE decode + HiFi-GAN / Griffin-Lim
              ├─► Renderer                PNG / WAV / NPY / MP4 bytes and output-store writes (CPU)
          └─► Gallery                 the output store's gallery: listing, thumbnails, media (CPU)

Only `.bind()` here. Text encoders live with their UNets (prompts travel as strings; embeddings are cached per
replica); the image VAE lives with the image UNet and the audio VAE with the vocoder (same model, same device).
"""

from __future__ import annotations

import os
from typing import Any

from ray.serve import Application

from serve.config import API_KEYS_FILE_ENV, WEBHOOK_SECRET_FILE_ENV, AppArgs
from serve.driver import Driver
from serve.gallery import GalleryDeployment
from serve.gatekeeper import GatekeeperDeployment
from serve.modality import UNetDeployment
from serve.renderer import RendererDeployment
from serve.vocoder import VocoderDeployment


def app_settings(args: dict[str, Any] | None = None) -> AppArgs:
    """`args` validated, with the key file of `IMGSOUND_API_KEYS_FILE` when the args name none (so that
    `IMGSOUND_API_KEYS_FILE=keys make serve` is protected), and the same for `IMGSOUND_WEBHOOK_SECRET_FILE`. Only
    the files' names travel to the replicas, never what they hold."""
    settings = AppArgs.model_validate(args or {})
    if settings.auth.api_keys_file is None and os.environ.get(API_KEYS_FILE_ENV):
        settings.auth.api_keys_file = os.path.abspath(os.environ[API_KEYS_FILE_ENV])
    if settings.jobs.webhook_secret_file is None and os.environ.get(WEBHOOK_SECRET_FILE_ENV):
        settings.jobs.webhook_secret_file = os.path.abspath(os.environ[WEBHOOK_SECRET_FILE_ENV])
    return settings


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Build the imgsound app from `args` (validated as `AppArgs`; nested keys as in serve/config.yaml)."""
    settings = app_settings(args)
    image_unet = UNetDeployment.options(name="ImageUNet").bind("image", settings.image.model_dump())
    audio_unet = UNetDeployment.options(name="AudioUNet").bind("audio", settings.audio.model_dump())
    vocoder = VocoderDeployment.options(name="Vocoder").bind(settings.vocoder_placement.model_dump())
    renderer = RendererDeployment.options(name="Renderer").bind(settings.output_store, settings.renderer.torch_threads)
    # One replica by design: it is the service-wide count (see serve/gatekeeper.py).
    gatekeeper = GatekeeperDeployment.options(name="Gatekeeper", num_replicas=1).bind(settings.model_dump())
    gallery = GalleryDeployment.options(name="Gallery").bind(settings.output_store)
    return Driver.options(name="Driver").bind(
        image_unet, audio_unet, vocoder, renderer, gatekeeper, gallery, settings.model_dump()
    )
