"""The application graph: `serve run serve.app:build_app` (with `serve/config.yaml` or key=value args).

Only `.bind()` here. Text encoders live with their UNets (prompts travel as strings; embeddings are cached per
replica); the image VAE lives with the image UNet and the audio VAE with the vocoder (same model, same device),
so latents and waveforms are the only tensors that cross the network besides per-step rows.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve.config import AppArgs
from serve.driver import Driver
from serve.modality import UNetDeployment
from serve.vocoder import VocoderDeployment


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Build the imgsound app from `args` (validated as `AppArgs`; nested keys as in serve/config.yaml)."""
    settings = AppArgs.model_validate(args or {})
    image_unet = UNetDeployment.options(name="ImageUNet").bind("image", settings.image.model_dump())
    audio_unet = UNetDeployment.options(name="AudioUNet").bind("audio", settings.audio.model_dump())
    vocoder = VocoderDeployment.options(name="Vocoder").bind(settings.vocoder_placement.model_dump())
    return Driver.options(name="Driver").bind(image_unet, audio_unet, vocoder, settings.model_dump())
