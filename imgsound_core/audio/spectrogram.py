"""Mapping between natural-log mel spectrograms and the [0, 1] pictures that the diffusion models work on.

Orientation: a spectrogram's origin is bottom-left (low frequencies at the bottom) while an image's origin is
top-left, so the picture is flipped vertically. In every image produced or consumed here, **row 0 is the
highest mel band** (≈ 8 kHz) and the last row is the lowest (≈ 0 Hz). Columns are time, 10 ms each.

    normalize:    image   = flip_rows(repeat_3((clamp(log_mel, lo, hi) - lo) / (hi - lo)))
    denormalize:  log_mel = mean_channels(flip_rows(image)) · (hi - lo) + lo

with lo = ln(1e-5) = -11.5129, hi = ln(200) = 5.2983, span hi - lo = 16.8112. The power and inversion
options of the reference are fixed at their defaults (power 1, no inversion) and therefore omitted.
"""

from __future__ import annotations

import torch

from .mel import LOG_MEL_MAX, LOG_MEL_MIN

LOG_MEL_SPAN = LOG_MEL_MAX - LOG_MEL_MIN
# The VAEs read and write RGB pictures; a spectrogram is the same grey picture in all three channels.
IMAGE_CHANNELS = 3

__all__ = [
    "IMAGE_CHANNELS",
    "LOG_MEL_SPAN",
    "denormalize_spectrogram",
    "normalize_log_mel",
    "spectrogram_image_to_gray",
]


def normalize_log_mel(log_mel: torch.Tensor) -> torch.Tensor:
    """Log-mel → spectrogram picture in [0, 1].

    Values outside [LOG_MEL_MIN, LOG_MEL_MAX] are clamped (Auffusion's behaviour; the paper's copy asserts
    instead, which would reject loud audio).

    Args:
        log_mel: (..., n_mels, W) natural-log mel spectrogram, e.g. (256, W) or (B, 256, W).

    Returns:
        image: (..., 3, n_mels, W) in [0, 1], row 0 = highest frequency.
    """
    if log_mel.ndim < 2:
        raise ValueError(f"Expected a log-mel of shape (..., n_mels, W), got shape {tuple(log_mel.shape)}.")
    scaled = (log_mel.clamp(LOG_MEL_MIN, LOG_MEL_MAX) - LOG_MEL_MIN) / LOG_MEL_SPAN
    repeats = [1] * scaled.ndim
    repeats.insert(-2, IMAGE_CHANNELS)
    image = scaled.unsqueeze(-3).repeat(*repeats)
    return image.flip(-2)


def spectrogram_image_to_gray(image: torch.Tensor) -> torch.Tensor:
    """Average the channels of a spectrogram picture: (C, H, W) → (H, W) or (B, C, H, W) → (B, H, W).

    The orientation is kept (row 0 = highest frequency).
    """
    if image.ndim not in (3, 4):
        raise ValueError(f"Expected an image of shape (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}.")
    return image.mean(dim=-3)


def denormalize_spectrogram(image: torch.Tensor) -> torch.Tensor:
    """Spectrogram picture in [0, 1] → natural-log mel, ready for the vocoder (no exp).

    The channels are averaged (the paper's variant), so a decoded picture whose channels disagree slightly is
    read as its grey level.

    Args:
        image: (H, W), (C, H, W) or (B, C, H, W) with row 0 = highest frequency. A 3-D input is always read as
            (C, H, W); add a channel axis to pass a batch of grey pictures.

    Returns:
        log_mel: (H, W) for a 2-D or 3-D input, (B, H, W) for a 4-D input; row 0 = lowest frequency.
    """
    if image.ndim not in (2, 3, 4):
        raise ValueError(
            f"Expected an image of shape (H, W), (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}."
        )
    gray = image if image.ndim == 2 else spectrogram_image_to_gray(image)
    return gray.flip(-2) * LOG_MEL_SPAN + LOG_MEL_MIN
