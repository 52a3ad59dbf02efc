"""Initial latents, one CPU generator per sample, so a sample never depends on its batch-mates.

Sample i of a request with seed s is `torch.randn((1, C, h, w), generator=torch.Generator("cpu").manual_seed(s + i))`
in float32; the caller casts and moves it. The global RNG is never touched.

A sample that starts from a source (SDEdit) draws the very same ε and noises the source's clean latent z₀ to the
timestep t_k of its first step k (`noised_latent`): z_k = √ᾱ_{t_k} · z₀ + √(1 − ᾱ_{t_k}) · ε.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LATENT_CHANNELS = 4
VAE_DOWNSAMPLE = 8  # SD-1.5's VAE: three 2× downsamplers


def latent_shape(height: int, width: int, channels: int = LATENT_CHANNELS) -> tuple[int, int, int]:
    """`(C, H/8, W/8)` for a picture of `height × width` pixels."""
    return (channels, height // VAE_DOWNSAMPLE, width // VAE_DOWNSAMPLE)


def initial_latents(seeds: Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """Draw `(B, C, h, w)` float32 standard-normal latents, row b from its own generator seeded `seeds[b]`."""
    rows = [torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    if not rows:
        return torch.empty((0, *shape))
    return torch.cat(rows, dim=0)


def noised_latent(clean: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """The forward process in one jump: `√ᾱ · z₀ + √(1 − ᾱ) · ε`, in float32.

    Args:
        clean: z₀, the source's clean latent, `(C, h, w)` (any leading dims), already × the VAE scaling factor.
        noise: ε of the same shape, e.g. `initial_latents([seed], shape)[0]`.
        alpha_bar: ᾱ at the timestep of the sample's first step, a scalar (tensor or float).
    Returns:
        z_k, float32 on `clean`'s device.
    """
    if clean.shape != noise.shape:
        raise ValueError(f"a clean latent of shape {tuple(clean.shape)} and noise of shape {tuple(noise.shape)}")
    clean = clean.to(torch.float32)
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float32, device=clean.device)
    return alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise.to(device=clean.device, dtype=torch.float32)
