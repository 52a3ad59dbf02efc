"""The vocoder deployment: the audio VAE decode and HiFi-GAN (or Griffin-Lim), on one device.

The spectrogram goes straight from the audio VAE into the vocoder here, so only the final spectrogram and
waveform travel back to the driver.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import torch
from ray import serve

from imgsound_core.audio.vocoder import GriffinLimVocoder, HiFiGANVocoder, spectrogram_to_waveform
from imgsound_core.decode import decode_latents, encode_pixels, spectrogram_from_decoded
from imgsound_core.host import prepare_model_process
from imgsound_core.identity import model_identity
from imgsound_core.models.bundle import load_bundle, parse_device, parse_dtype
from serve.config import ModelPlacement
from serve.metrics import StageMetrics, WorkAbandoned

VOCODERS = ("hifigan", "griffinlim")
# Samples decoded and vocoded together: batched enough for the GPU, small enough to stop soon after a cancel.
DECODE_CHUNK = 4


@serve.deployment(max_ongoing_requests=16)
class VocoderDeployment:
    def __init__(self, placement: dict[str, Any]) -> None:
        settings = ModelPlacement.model_validate(placement)
        prepare_model_process(settings.torch_threads)
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
        self.metrics = StageMetrics("vocode")

    def _decode(self, latents: torch.Tensor, vocoder: str, stop: threading.Event) -> tuple[torch.Tensor, torch.Tensor]:
        spectrograms, waveforms = [], []
        for start in range(0, len(latents), DECODE_CHUNK):
            if stop.is_set():  # the caller has gone: nobody would receive the rest
                self.metrics.dropped(len(latents) - start)
                raise WorkAbandoned
            chunk = latents[start : start + DECODE_CHUNK]
            spectrogram = spectrogram_from_decoded(decode_latents(self.bundle.vae, chunk))  # (b, H, W)
            waveforms.append(spectrogram_to_waveform(spectrogram, self.vocoders[vocoder]))  # (b, W·160)
            spectrograms.append(spectrogram)
            self.metrics.finished(len(chunk))
        return torch.cat(spectrograms), torch.cat(waveforms)

    async def decode(self, latents: torch.Tensor, vocoder: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, C, h, w)` final latents → (`(B, H, W)` spectrograms in [0, 1], `(B, W·160)` waveforms).

        Works in chunks of `DECODE_CHUNK` samples and stops between chunks once the call is cancelled (the caller
        timed out or went away): a thread cannot be interrupted, but it need not start work nobody will receive.
        """
        if vocoder not in self.vocoders:
            raise ValueError(f"unknown vocoder {vocoder!r}")
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._decode, latents, vocoder, stop)
        except asyncio.CancelledError:
            stop.set()
            raise

    async def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` mel pictures of source sounds in [−1, 1] → `(B, C, h, w)` clean latents, float32, by the
        audio model's VAE (which was trained on such pictures; see `Driver._source_latent`)."""
        return await asyncio.to_thread(encode_pixels, self.bundle.vae, pixels)

    def model_info(self) -> dict[str, Any]:
        return {"identity": model_identity(self.bundle).__dict__}
