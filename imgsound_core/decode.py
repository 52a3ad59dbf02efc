"""Latents ↔ pixels: `vae.decode(z / scaling_factor)` mapped from [−1, 1] to [0, 1], and the way back.

The picture comes from the image model's VAE, the spectrogram from the audio model's VAE (the mean of its three
channels), as in the reference code: one latent, two decoders. A source picture or sound (SDEdit) goes the other
way, `z₀ = mean(vae.encode(x)) · scaling_factor` (`encode_pixels`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


@torch.inference_mode()
def decode_latents(vae, latents: torch.Tensor, batch_size: int = 4, keep_on_device: bool = False) -> torch.Tensor:
    """Decode `(B, C, h, w)` latents to `(B, 3, 8h, 8w)` float32 images in [0, 1], `batch_size` at a time.

    The images are on the CPU, or with `keep_on_device` on the VAE's device (for a next stage there, e.g. the
    vocoder, without a round trip through the host).
    """
    scaling = float(vae.config.scaling_factor)
    outputs = []
    for chunk in _on_vae(vae, latents, batch_size):
        pixels = vae.decode(chunk / scaling).sample
        pixels = (pixels.float() / 2 + 0.5).clamp(0, 1)
        outputs.append(pixels if keep_on_device else pixels.cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def _on_vae(vae, batch: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """`batch` in chunks of `batch_size` rows, each on the VAE's device and in its dtype."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    for start in range(0, batch.shape[0], batch_size):
        yield batch[start : start + batch_size].to(device=device, dtype=dtype)


def spectrogram_from_decoded(decoded: torch.Tensor) -> torch.Tensor:
    """`(B, 3, H, W)` audio-VAE output → `(B, H, W)` grayscale spectrogram image (channel mean)."""
    return decoded.mean(dim=1)


@torch.inference_mode()
def encode_pixels(vae, pixels: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Encode `(B, 3, H, W)` pictures in [−1, 1] to `(B, C, H/8, W/8)` clean latents, `batch_size` at a time:

        z₀ = mean of the VAE's latent distribution · scaling_factor

    The mean rather than a draw, so a source gives one latent, whatever the device or the seed. Float32 on the CPU
    (the noising and the scheduler's master latents are float32).
    """
    scaling = float(vae.config.scaling_factor)
    outputs = []
    for chunk in _on_vae(vae, pixels, batch_size):
        mean = vae.encode(chunk).latent_dist.mean
        outputs.append((mean.float() * scaling).cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)
