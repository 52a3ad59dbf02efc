"""The vocoder deployment: the audio VAE decode and HiFi-GAN (or Griffin-Lim), on one device.

The spectrogram goes straight from the audio VAE into the vocoder here, so only the final spectrogram and
waveform travel back to the driver.
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from ray import serve

from imgsound_core.audio.vocoder import GriffinLimVocoder, HiFiGANVocoder, spectrogram_to_waveform
from imgsound_core.decode import decode_latents, spectrogram_from_decoded
from imgsound_core.identity import model_identity
from imgsound_core.models.bundle import load_bundle, parse_device, parse_dtype
from serve.config import ModelPlacement

VOCODERS = ("hifigan", "griffinlim")


@serve.deployment(max_ongoing_requests=16)
class VocoderDeployment:
    def __init__(self, placement: dict[str, Any]) -> None:
        settings = ModelPlacement.model_validate(placement)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.bundle = load_bundle(
            settings.model,
            "audio",
            parts={"vae", "vocoder"},
            device=parse_device(settings.device),
            dtype=parse_dtype(settings.dtype),
        )
        self.vocoders = {
            "hifigan": HiFiGANVocoder.from_bundle(self.bundle),
            "griffinlim": GriffinLimVocoder(),
        }

    def _decode(self, latents: torch.Tensor, vocoder: str) -> tuple[torch.Tensor, torch.Tensor]:
        spectrograms = spectrogram_from_decoded(decode_latents(self.bundle.vae, latents))  # (B, H, W)
        return spectrograms, spectrogram_to_waveform(spectrograms, self.vocoders[vocoder])  # (B, W·160)

    async def decode(self, latents: torch.Tensor, vocoder: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, C, h, w)` final latents → (`(B, H, W)` spectrograms in [0, 1], `(B, W·160)` waveforms)."""
        if vocoder not in self.vocoders:
            raise ValueError(f"unknown vocoder {vocoder!r}")
        return await asyncio.to_thread(self._decode, latents, vocoder)

    def model_info(self) -> dict[str, Any]:
        return {"identity": model_identity(self.bundle).__dict__}
