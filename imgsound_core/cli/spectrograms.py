"""`imgsound image-to-audio` and `imgsound audio-to-spectrogram`: between pictures and sound through Auffusion's mel
spectrogram, with no diffusion."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from imgsound_core.cli.common import CliError, Subparsers, atomic_write_bytes, check_output_file, load_vocoder


def add_image_to_audio_parser(sub: Subparsers) -> None:
    i2a = sub.add_parser(
        "image-to-audio",
        help="play any picture as a spectrogram (no diffusion)",
        description="The picture is made grayscale, resized to 256 rows (row 0 = 8 kHz, bottom = 0 Hz), "
        "read as a normalised log-mel spectrogram (bright = loud) and vocoded. A PNG written by imgsound carries "
        "its mel settings; they are used (one pixel column = one 10 ms spectrogram column, the stored log range), "
        "and settings this version cannot play are refused.",
    )
    i2a.add_argument("image", type=Path)
    i2a.add_argument("out", type=Path, help="output .wav (16 kHz)")
    i2a.add_argument("--vocoder", choices=("griffinlim", "hifigan"), default="griffinlim", help="[%(default)s]")
    i2a.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="duration; default keeps the picture's aspect ratio at 256 rows (100 columns per second), or, for a "
        "PNG carrying imgsound mel settings, one column per pixel column",
    )
    i2a.add_argument("--invert", action="store_true", help="dark = loud instead of bright = loud")
    i2a.add_argument("--audio-model", default=None, help="Auffusion-layout folder or hub id (for --vocoder hifigan)")
    i2a.add_argument("--device", default="cpu", help="torch device for --vocoder hifigan [%(default)s]")
    i2a.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _read_picture(path: Path):
    """The picture at `path` in grayscale (PIL mode L)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise CliError(f"{path} is not a readable file")
    try:
        with Image.open(path) as picture:
            return picture.convert("L")
    except (UnidentifiedImageError, OSError):
        raise CliError(f"{path} is not a picture PIL can read") from None


def _stored_mel_settings(path: Path) -> dict[str, Any] | None:
    """The mel settings inside a PNG written by imgsound, checked against this version; None for other pictures."""
    from imgsound_core.provenance import (
        PNG_SIGNATURE,
        ProvenanceError,
        check_mel_settings,
        provenance_from_text,
        read_png_text,
    )

    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        return None
    try:
        found = provenance_from_text(read_png_text(data, str(path)), str(path))
        if found is None or "mel" not in found:
            return None
        check_mel_settings(found["mel"], str(path))
    except ProvenanceError as error:
        raise CliError(str(error)) from None
    return found["mel"]


def cmd_image_to_audio(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from imgsound_core.artifacts import wav_bytes
    from imgsound_core.audio.mel import N_MELS
    from imgsound_core.audio.vocoder import spectrogram_to_waveform

    if args.out.suffix.lower() != ".wav":
        raise CliError(f"{args.out} must end in .wav")
    check_output_file(args.out, args.overwrite, "OUT")
    gray = _read_picture(args.image)
    settings = _stored_mel_settings(args.image)
    if args.seconds is not None:
        if not 0.01 <= args.seconds <= 600:
            raise CliError("--seconds must be between 0.01 and 600")
        columns = round(args.seconds * 100)
    elif settings is not None:
        columns = gray.width  # a generated spectrogram: each pixel column is one 10 ms spectrogram column
    else:
        columns = max(1, round(gray.width * N_MELS / gray.height))
    pixels = np.asarray(gray.resize((columns, N_MELS), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    if args.invert:
        pixels = 1.0 - pixels
    if settings is not None:
        from imgsound_core.provenance import mel_summary, to_default_range

        pixels = to_default_range(pixels, settings)
        print(f"using the mel settings stored in {args.image}: {mel_summary(settings)}", file=sys.stderr)
    spectrogram = torch.from_numpy(pixels)
    vocoder = load_vocoder(args.vocoder, audio_model=args.audio_model, device=args.device)
    waveform = spectrogram_to_waveform(spectrogram[None], vocoder)[0]
    atomic_write_bytes(args.out, wav_bytes(waveform))
    print(f"wrote {args.out} ({waveform.shape[-1] / 16000:.2f} s of audio)", file=sys.stderr)


def add_audio_to_spectrogram_parser(sub: Subparsers) -> None:
    a2s = sub.add_parser(
        "audio-to-spectrogram",
        help="Auffusion's mel front end: a sound file → spectrogram picture",
        description="Reads any sound file (mixed to mono, resampled to 16 kHz) and writes the 256-row "
        "normalised log-mel picture the models work in.",
    )
    a2s.add_argument("wav", type=Path)
    a2s.add_argument("out", type=Path, help="output .png")
    a2s.add_argument("--npy", type=Path, default=None, help="also write the float32 [0,1] spectrogram as .npy")
    a2s.add_argument("--overwrite", action="store_true", help="replace OUT (and --npy) if they exist")


def cmd_audio_to_spectrogram(args: argparse.Namespace) -> None:
    import numpy as np
    import soundfile
    import torch

    from imgsound_core.artifacts import npy_bytes, png_bytes
    from imgsound_core.audio.mel import SAMPLE_RATE_HZ, waveform_to_spectrogram_image

    if not args.wav.is_file():
        raise CliError(f"{args.wav} is not a readable file")
    check_output_file(args.out, args.overwrite, "OUT")
    if args.npy is not None:
        check_output_file(args.npy, args.overwrite, "--npy")
    try:
        samples, rate = soundfile.read(args.wav, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError):
        raise CliError(f"{args.wav} is not a sound file libsndfile can read") from None
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE_HZ:
        import librosa

        mono = librosa.resample(mono, orig_sr=rate, target_sr=SAMPLE_RATE_HZ)
    if mono.shape[0] < 160:
        raise CliError(f"{args.wav} is shorter than one spectrogram column (10 ms)")
    image = waveform_to_spectrogram_image(torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32)))
    gray = image.mean(dim=0)
    atomic_write_bytes(args.out, png_bytes(gray))
    if args.npy is not None:
        atomic_write_bytes(args.npy, npy_bytes(gray.numpy().astype(np.float32)))
    print(f"wrote {args.out} ({gray.shape[0]}×{gray.shape[1]} pixels)", file=sys.stderr)
