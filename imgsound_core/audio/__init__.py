"""Audio side of imgsound: Auffusion's log-mel representation, its picture form, and the vocoders.

- `mel`: waveform → natural-log mel (256 bands, 160-sample hop at 16 kHz) and the representation's constants.
- `spectrogram`: log-mel ↔ [0, 1] three-channel picture (row 0 = highest frequency).
- `hifigan`: the HiFi-GAN V1 generator, its config, and the published checkpoint format.
- `griffinlim`: Griffin-Lim inversion, the learned-weight-free baseline.
- `vocoder`: one `Vocoder` interface over both, plus picture → waveform and the paper's end crop.
"""

from .griffinlim import griffin_lim
from .hifigan import (
    AUFFUSION_HIFIGAN_CONFIG,
    LRELU_SLOPE,
    Generator,
    HiFiGANConfig,
    fold_weight_norm,
    load_hifigan,
    save_hifigan,
    tiny_hifigan_config,
)
from .mel import (
    FMAX_HZ,
    FMIN_HZ,
    HOP_LENGTH,
    LOG_MEL_MAX,
    LOG_MEL_MIN,
    N_FFT,
    N_MELS,
    SAMPLE_RATE_HZ,
    WIN_LENGTH,
    log_mel_spectrogram,
    mel_filterbank,
    waveform_to_spectrogram_image,
)
from .spectrogram import (
    denormalize_spectrogram,
    normalize_log_mel,
    spectrogram_image_to_gray,
)
from .vocoder import (
    GriffinLimVocoder,
    HiFiGANVocoder,
    Vocoder,
    crop_waveform,
    spectrogram_to_waveform,
)

__all__ = [
    "AUFFUSION_HIFIGAN_CONFIG",
    "FMAX_HZ",
    "FMIN_HZ",
    "HOP_LENGTH",
    "LOG_MEL_MAX",
    "LOG_MEL_MIN",
    "LRELU_SLOPE",
    "N_FFT",
    "N_MELS",
    "SAMPLE_RATE_HZ",
    "WIN_LENGTH",
    "Generator",
    "GriffinLimVocoder",
    "HiFiGANConfig",
    "HiFiGANVocoder",
    "Vocoder",
    "crop_waveform",
    "denormalize_spectrogram",
    "fold_weight_norm",
    "griffin_lim",
    "load_hifigan",
    "log_mel_spectrogram",
    "mel_filterbank",
    "normalize_log_mel",
    "save_hifigan",
    "spectrogram_image_to_gray",
    "spectrogram_to_waveform",
    "tiny_hifigan_config",
    "waveform_to_spectrogram_image",
]
