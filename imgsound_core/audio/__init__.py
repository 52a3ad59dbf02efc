"""Audio side of imgsound: Auffusion's log-mel representation, its picture form, and the vocoders.

- `layout`: the representation's constants (256 bands, 160-sample hop at 16 kHz) and the end crop; no torch.
- `mel`: waveform → natural-log mel.
- `spectrogram`: log-mel ↔ [0, 1] three-channel picture (row 0 = highest frequency).
- `hifigan`: the HiFi-GAN V1 generator, its config, and the published checkpoint format.
- `griffinlim`: Griffin-Lim inversion, the learned-weight-free baseline.
- `vocoder`: one `Vocoder` interface over both, plus picture → waveform and the paper's end crop.

The names below load their submodule on first use, so that `layout` (and what needs only it) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# name → the submodule that defines it
_SOURCES = {
    "griffin_lim": "griffinlim",
    "AUFFUSION_HIFIGAN_CONFIG": "hifigan",
    "Generator": "hifigan",
    "HiFiGANConfig": "hifigan",
    "LRELU_SLOPE": "hifigan",
    "fold_weight_norm": "hifigan",
    "load_hifigan": "hifigan",
    "save_hifigan": "hifigan",
    "tiny_hifigan_config": "hifigan",
    "FMAX_HZ": "layout",
    "FMIN_HZ": "layout",
    "HOP_LENGTH": "layout",
    "LOG_MEL_MAX": "layout",
    "LOG_MEL_MIN": "layout",
    "N_FFT": "layout",
    "N_MELS": "layout",
    "SAMPLE_RATE_HZ": "layout",
    "WIN_LENGTH": "layout",
    "crop_waveform": "layout",
    "log_mel_spectrogram": "mel",
    "mel_filterbank": "mel",
    "waveform_to_spectrogram_image": "mel",
    "denormalize_spectrogram": "spectrogram",
    "normalize_log_mel": "spectrogram",
    "spectrogram_image_to_gray": "spectrogram",
    "GriffinLimVocoder": "vocoder",
    "HiFiGANVocoder": "vocoder",
    "Vocoder": "vocoder",
    "spectrogram_to_waveform": "vocoder",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
