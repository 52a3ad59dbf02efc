"""Auffusion's audio representation as plain numbers: sample rate, STFT geometry, mel bands, the log-mel range, and
the spectrogram-column ↔ audio-sample arithmetic of the paper's end crop.

No torch here: the processes that only encode and store finished samples (a sweep's writers) and the provenance
inside the files need these numbers, not the transform. `mel.py` (the transform) re-exports them.

    one column = HOP_LENGTH samples = 10 ms at 16 kHz;   1024 columns = 163840 samples = 10.24 s
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

SAMPLE_RATE_HZ = 16000
N_FFT = 2048
HOP_LENGTH = 160
WIN_LENGTH = 1024
N_MELS = 256
FMIN_HZ = 0
FMAX_HZ = 8000  # Nyquist at 16 kHz: the bands cover the whole spectrum

# Floor applied to the linear mel energy before the log; also the bottom of the image range.
MEL_FLOOR = 1e-5
# Top of the image range in linear units. Louder bins saturate to white when normalised.
MEL_CEILING = 200.0
LOG_MEL_MIN = math.log(MEL_FLOOR)  # -11.5129
LOG_MEL_MAX = math.log(MEL_CEILING)  # 5.2983

# Reflect padding on each side so that, with center=False, a waveform of k·HOP_LENGTH samples gives exactly k
# frames: (T + 2·pad - N_FFT) / HOP + 1 = T / HOP.
STFT_PAD = (N_FFT - HOP_LENGTH) // 2

ArrayT = TypeVar("ArrayT", bound=Any)  # a torch.Tensor or a numpy array: anything sliced along its last axis


def crop_waveform(waveform: ArrayT, crop_columns: int, total_columns: int) -> ArrayT:
    """Drop the audio under the last `crop_columns` of `total_columns` spectrogram columns.

    Removes int(crop_columns / total_columns · T) samples from the end of the last axis, with the reference's
    order of operations: 32 of 1024 columns of 163840 samples drops 5120 and leaves 158720 (9.92 s).
    """
    if not 0 <= crop_columns < total_columns:
        raise ValueError(f"crop_columns must lie in [0, {total_columns}), got {crop_columns}.")
    length = waveform.shape[-1]
    drop = int(crop_columns / total_columns * length)
    return waveform[..., : length - drop]
