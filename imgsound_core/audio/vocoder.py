"""One interface for turning spectrograms into sound, whichever vocoder does it.

A `Vocoder` maps a batch of natural-log mels (B, 256, W) to float32 CPU waveforms (B, W·160) at 16 kHz.
Two implementations exist: `HiFiGANVocoder` (Auffusion's trained vocoder, what the paper uses) and
`GriffinLimVocoder` (no learned weights; the paper's consistency-check baseline).

`spectrogram_to_waveform` goes from the [0, 1] picture the diffusion model produces straight to audio, and
`crop_waveform` applies the paper's end crop (drop the last 32 of 1024 columns' worth of samples).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from .griffinlim import GRIFFIN_LIM_N_ITER, griffin_lim
from .hifigan import Generator, load_hifigan
from .layout import crop_waveform
from .mel import HOP_LENGTH, N_MELS, SAMPLE_RATE_HZ
from .spectrogram import denormalize_spectrogram

__all__ = [
    "GriffinLimVocoder",
    "HiFiGANVocoder",
    "Vocoder",
    "crop_waveform",
    "spectrogram_to_waveform",
]


class Vocoder(ABC):
    """log_mel (B, n_mels, W) → waveform (B, W · hop_length), float32, on CPU.

    Subclasses implement `_synthesize`; `__call__` checks the shapes on both sides so every vocoder honours the
    same contract.
    """

    name: str
    sample_rate_hz: int = SAMPLE_RATE_HZ
    n_mels: int = N_MELS
    hop_length: int = HOP_LENGTH

    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        if log_mel.ndim != 3 or log_mel.shape[1] != self.n_mels:
            raise ValueError(f"Expected a log-mel of shape (B, {self.n_mels}, W), got shape {tuple(log_mel.shape)}.")
        batch, _, width = log_mel.shape
        waveform = self._synthesize(log_mel).to("cpu", torch.float32)
        if tuple(waveform.shape) != (batch, width * self.hop_length):
            raise RuntimeError(
                f"The {self.name} vocoder returned shape {tuple(waveform.shape)} instead of "
                f"{(batch, width * self.hop_length)}."
            )
        return waveform

    @abstractmethod
    def _synthesize(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, W) → (B, W · hop_length); any device and float dtype."""


class HiFiGANVocoder(Vocoder):
    """Auffusion's HiFi-GAN. Runs under `torch.inference_mode` on `device` in `dtype` (the generator is moved there).

    The paper runs it in float16 on the GPU; float32 is the default here because CPU kernels favour it.
    """

    name = "hifigan"

    def __init__(
        self, generator: Generator, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        self.generator = generator.to(device=device, dtype=dtype).eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.sample_rate_hz = generator.config.sampling_rate
        self.n_mels = generator.config.num_mels
        self.hop_length = generator.config.hop_size

    @classmethod
    def from_pretrained(
        cls, vocoder_dir: str | os.PathLike[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> HiFiGANVocoder:
        """Load `vocoder_dir/config.json` + `vocoder_dir/vocoder.pt` (see `load_hifigan`)."""
        return cls(load_hifigan(vocoder_dir, device=device, dtype=dtype), device=device, dtype=dtype)

    @classmethod
    def from_bundle(cls, bundle) -> HiFiGANVocoder:
        """The HiFi-GAN of a loaded audio `ModelBundle`, where and in the dtype it was loaded."""
        if bundle.vocoder is None:
            raise ValueError(f"the {bundle.role} bundle was loaded without its vocoder")
        return cls(bundle.vocoder, device=bundle.device, dtype=next(bundle.vocoder.parameters()).dtype)

    def _synthesize(self, log_mel: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            waveform = self.generator(log_mel.to(device=self.device, dtype=self.dtype))  # (B, 1, W·hop)
        return waveform.squeeze(1)


class GriffinLimVocoder(Vocoder):
    """Griffin-Lim from the mel magnitudes, one batch item at a time (deterministic, CPU only)."""

    name = "griffinlim"

    def __init__(self, n_iter: int = GRIFFIN_LIM_N_ITER) -> None:
        self.n_iter = n_iter

    def _synthesize(self, log_mel: torch.Tensor) -> torch.Tensor:
        waveforms = [torch.from_numpy(griffin_lim(item, n_iter=self.n_iter)) for item in log_mel]
        return torch.stack(waveforms)


def spectrogram_to_waveform(spectrogram_image: torch.Tensor, vocoder: Vocoder) -> torch.Tensor:
    """Spectrogram picture(s) in [0, 1] → waveforms: denormalise (flip, channel mean, rescale), then vocode.

    Args:
        spectrogram_image: (B, 3, H, W) picture or (B, H, W) grey picture, row 0 = highest frequency. A picture
            whose height is not the vocoder's n_mels (256) is resized to it first (bilinear), so any height plays;
            the width, and so the duration, is kept.
        vocoder: any `Vocoder`.

    Returns:
        waveform: (B, W · 160) float32 on CPU.
    """
    if spectrogram_image.ndim == 3:
        spectrogram_image = spectrogram_image.unsqueeze(1)  # a grey picture is a one-channel picture
    if spectrogram_image.ndim != 4:
        raise ValueError(
            f"Expected a spectrogram image of shape (B, 3, H, W) or (B, H, W), got {tuple(spectrogram_image.shape)}."
        )
    # Denormalise in float32 at least: half precision would quantise the log-mel to about 0.01.
    image = spectrogram_image.to(torch.promote_types(spectrogram_image.dtype, torch.float32))
    n_mels = getattr(vocoder, "n_mels", N_MELS)
    if image.shape[-2] != n_mels:
        image = F.interpolate(image, size=(n_mels, image.shape[-1]), mode="bilinear", align_corners=False)
    return vocoder(denormalize_spectrogram(image))
