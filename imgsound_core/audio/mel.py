"""Auffusion's mel front end: waveform → natural-log mel spectrogram.

The representation's constants (sample rate, STFT geometry, mel band layout and the log-mel range) live in
`layout.py`, which needs no torch, and are re-exported here. This module holds the one function that turns a
waveform into the log-mel that Auffusion's VAE, UNet and HiFi-GAN vocoder were trained on.

The transform, for a waveform x of T samples at 16 kHz:

    x_pad   = reflect_pad(x, 944 left, 944 right)                  # 944 = (N_FFT - HOP_LENGTH) / 2
    X[f, t] = STFT(x_pad; n_fft 2048, hop 160, Hann(1024), center=False)
    |X|     = sqrt(Re(X)^2 + Im(X)^2 + 1e-9)
    mel     = M · |X|                                              # M: (256, 1025) Slaney filterbank
    log_mel = ln(max(mel, 1e-5))                                   # shape (256, T // 160)

One spectrogram column is 160 samples (10 ms), so 1024 columns are 10.24 s of audio.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .layout import (
    FMAX_HZ,
    FMIN_HZ,
    HOP_LENGTH,
    LOG_MEL_MAX,
    LOG_MEL_MIN,
    MEL_CEILING,
    MEL_FLOOR,
    N_FFT,
    N_MELS,
    SAMPLE_RATE_HZ,
    STFT_PAD,
    WIN_LENGTH,
)

# Added under the square root of the magnitude so that its gradient stays finite at silent bins.
MAGNITUDE_EPS = 1e-9

__all__ = [
    "FMAX_HZ",
    "FMIN_HZ",
    "HOP_LENGTH",
    "LOG_MEL_MAX",
    "LOG_MEL_MIN",
    "MEL_CEILING",
    "MEL_FLOOR",
    "N_FFT",
    "N_MELS",
    "SAMPLE_RATE_HZ",
    "STFT_PAD",
    "WIN_LENGTH",
    "log_mel_spectrogram",
    "mel_filterbank",
    "mel_filterbank_numpy",
    "waveform_to_spectrogram_image",
]


@functools.lru_cache(maxsize=1)
def mel_filterbank_numpy() -> np.ndarray:
    """The (N_MELS, N_FFT // 2 + 1) = (256, 1025) mel filterbank as a read-only float32 array.

    Built by `librosa.filters.mel` with its defaults (Slaney mel scale, `norm="slaney"` area normalisation),
    exactly as Auffusion builds it. The call takes no arguments, so every call after the first is a cache hit
    and returns the very same array object; it is marked read-only so that no caller can corrupt the cache.
    """
    import librosa  # imported here: it takes a second, and most callers never need the filterbank

    weights = librosa.filters.mel(sr=SAMPLE_RATE_HZ, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN_HZ, fmax=FMAX_HZ).astype(
        np.float32
    )
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=8)
def _mel_filterbank_tensor(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(mel_filterbank_numpy(), device=device, dtype=dtype)


def mel_filterbank(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (256, 1025) mel filterbank as a tensor on `device` (default CPU) with `dtype`.

    Cached per (device, dtype). The device is normalised first (`None`, `"cpu"` and `torch.device("cpu")` are one
    key), so repeated calls hit the cache and return the same tensor. Treat it as read-only.
    """
    return _mel_filterbank_tensor(torch.device(device if device is not None else "cpu"), dtype)


def log_mel_spectrogram(waveform: torch.Tensor) -> torch.Tensor:
    """Natural-log mel spectrogram of a 16 kHz waveform, as Auffusion computes it.

    Args:
        waveform: (T,) or (B, T) float tensor with samples in [-1, 1]; T must exceed `STFT_PAD` (944) because
            of the reflect padding. No peak normalisation is applied.

    Returns:
        log_mel: (256, F) or (B, 256, F) with F = (T - HOP_LENGTH) // HOP_LENGTH + 1, i.e. F = T / 160 when T is
        a multiple of 160. Values are >= `LOG_MEL_MIN`. Float64 input is computed in float64; anything else in
        float32.
    """
    if waveform.ndim not in (1, 2):
        raise ValueError(f"Expected a waveform of shape (T,) or (B, T), got shape {tuple(waveform.shape)}.")
    if waveform.shape[-1] <= STFT_PAD:
        raise ValueError(
            f"The waveform needs more than {STFT_PAD} samples for reflect padding, got {waveform.shape[-1]}."
        )
    unbatched = waveform.ndim == 1
    compute_dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    batch = waveform.reshape(-1, waveform.shape[-1]).to(compute_dtype)

    # F.pad only reflect-pads tensors with a channel dimension, hence the (B, 1, T) detour.
    padded = F.pad(batch.unsqueeze(1), (STFT_PAD, STFT_PAD), mode="reflect").squeeze(1)
    window = torch.hann_window(WIN_LENGTH, device=batch.device, dtype=compute_dtype)
    spectrum = torch.stft(
        padded,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        win_length=WIN_LENGTH,
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )  # (B, 1025, F)
    magnitude = torch.sqrt(spectrum.real.square() + spectrum.imag.square() + MAGNITUDE_EPS)
    mel = torch.matmul(mel_filterbank(batch.device, compute_dtype), magnitude)  # (B, 256, F)
    log_mel = torch.log(torch.clamp(mel, min=MEL_FLOOR))
    return log_mel[0] if unbatched else log_mel


def waveform_to_spectrogram_image(waveform: torch.Tensor) -> torch.Tensor:
    """Waveform → the spectrogram picture Auffusion's VAE sees.

    Args:
        waveform: (T,) or (B, T) float tensor in [-1, 1].

    Returns:
        image: (3, 256, F) or (B, 3, 256, F) in [0, 1]; row 0 is the highest frequency.
    """
    # Imported here because spectrogram.py imports this module's constants at load time.
    from .spectrogram import normalize_log_mel

    return normalize_log_mel(log_mel_spectrogram(waveform))
