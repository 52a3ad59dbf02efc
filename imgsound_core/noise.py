"""Initial latents, one CPU generator per sample, so a sample never depends on its batch-mates.

Sample i of a request with seed s is `torch.randn((1, C, h, w), generator=torch.Generator("cpu").manual_seed(s + i))`
in float32; the caller casts and moves it. The global RNG is never touched.
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
