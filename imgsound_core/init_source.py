"""Sources to start a sample from (SDEdit): a picture or a sound, given as bytes, validated and made into the
picture its VAE encodes.

    picture → grayscale → exactly H×W (Pillow's LANCZOS) → 3 equal channels in [−1, 1]     image VAE
    sound   → mono, 16 kHz, cut or padded with silence to W·160 samples (W/100 s)
            → Auffusion's normalised log-mel picture (256 rows, row 0 = 8 kHz; other heights resized)
            → 3 equal channels in [−1, 1]                                                 audio VAE

Each kind goes to the VAE trained on it (SD-1.5's on pictures, Auffusion's on spectrograms); both map into the one
latent space both UNets denoise, since Auffusion is a finetune of SD-1.5. The clean latent is then noised to the
sample's first step (`imgsound_core.noise.noised_latent`); `blend_latents` mixes a picture's and a sound's.

Everything a caller can get wrong is an `InitSourceError` with one sentence naming the source: not a picture or a
sound, empty, too large (bytes, or pixels: a small file can declare a huge picture), damaged or truncated. The
functions take bytes, not paths, so the command line, sweeps and the HTTP API (base64 bodies) share them; nothing
here knows about flags or exit codes. Torch is imported only once the bytes have passed, so a bad file is refused
quickly.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

# A source's file: generous for a picture or a few minutes of CD-quality WAV, small enough to hold in memory.
MAX_SOURCE_BYTES = 64 * 2**20
# Pixels a source picture may declare: a few bytes of PNG can claim a picture of gigabytes (a decompression bomb).
# 64 megapixels holds any camera photo but the largest.
MAX_SOURCE_PIXELS = 64_000_000
# Sound files: channels and sample rates beyond these are not audio this front end can mean.
MAX_SOURCE_CHANNELS = 32
MIN_SOURCE_RATE_HZ = 1_000
MAX_SOURCE_RATE_HZ = 768_000
# Formats Pillow may decode: the common raster ones. Others (EPS through Ghostscript, …) are not opened at all.
PICTURE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
SOUND_FORMATS = "WAV, FLAC, OGG or MP3"

SourceKind = Literal["image", "audio"]


class InitSourceError(ValueError):
    """A source picture or sound cannot be used; the message is one sentence naming it."""


@dataclass(frozen=True)
class InitSource:
    """A validated source, ready for its VAE.

    Attributes:
        kind: "image" (encoded by the image model's VAE) or "audio" (the audio model's).
        sha256: SHA-256 of the bytes as given (lowercase hex): what the sample's request and id carry.
        picture: `(H, W)` float32 in [0, 1]: the grayscale picture, or the sound's normalised log-mel picture
            (row 0 = highest frequency).
        note: for a sound whose length is not the width's, one sentence saying it was cut or padded; else "".
    """

    kind: SourceKind
    sha256: str
    picture: np.ndarray
    note: str = ""

    def pixels(self) -> torch.Tensor:
        """`(3, H, W)` float32 in [−1, 1]: the picture in three equal channels, as the VAEs read pictures."""
        import torch

        gray = torch.from_numpy(np.ascontiguousarray(self.picture, dtype=np.float32))
        return (gray * 2 - 1)[None].repeat(3, 1, 1)


def source_sha256(data: bytes) -> str:
    """The id of a source: SHA-256 of its bytes, lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def read_source_file(path: str | os.PathLike, name: str | None = None) -> bytes:
    """The bytes of a local source file, refused (`InitSourceError`) when missing, not a regular file, or larger
    than `MAX_SOURCE_BYTES` — checked before reading, so a huge file is never read."""
    path = Path(path)
    name = name or str(path)
    try:
        if not path.exists():
            raise InitSourceError(f"{name} does not exist")
        if not path.is_file():
            raise InitSourceError(f"{name} is not a regular file")
        check_source_size(path.stat().st_size, name)
        data = path.read_bytes()
    except OSError as error:
        raise InitSourceError(f"{name} cannot be read ({error.strerror or error})") from None
    check_source_size(len(data), name)  # it may have grown since
    return data


def check_source_size(size: int, name: str) -> None:
    """Refuse a source of `size` bytes that is empty or larger than `MAX_SOURCE_BYTES`."""
    if size == 0:
        raise InitSourceError(f"{name} is empty")
    if size > MAX_SOURCE_BYTES:
        raise InitSourceError(
            f"{name} is {size / 2**20:.1f} MiB; a source may be at most {MAX_SOURCE_BYTES // 2**20} MiB"
        )


def load_init_image(data: bytes, height: int, width: int, name: str = "the picture") -> InitSource:
    """A source picture (PNG, JPEG, WebP, GIF, BMP or TIFF bytes) as a `height × width` grayscale picture.

    The EXIF orientation is applied; transparent pixels are laid on white; the picture is made grayscale
    (Pillow's "L": ITU-R 601-2 luma) and resized to exactly `width × height` with Pillow's LANCZOS filter — the
    whole picture, stretched if its aspect ratio differs. Animated pictures give their first frame.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    check_source_size(len(data), name)
    try:
        with warnings.catch_warnings():
            # Pillow warns of pictures over ~89 megapixels; ours is the stricter limit, checked just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=PICTURE_FORMATS)
        with opened:
            columns, rows = opened.size
            if columns * rows > MAX_SOURCE_PIXELS:
                raise InitSourceError(
                    f"{name} is {columns}×{rows} pixels, more than a source may have (at most {MAX_SOURCE_PIXELS:,} "
                    "pixels)"
                )
            opened.load()  # damage anywhere in the data shows up only when it is decoded
            picture = ImageOps.exif_transpose(opened)
            gray = _grayscale(picture)
    except InitSourceError:
        raise
    except UnidentifiedImageError:
        raise InitSourceError(f"{name} is not a picture ({', '.join(PICTURE_FORMATS)})") from None
    except Image.DecompressionBombError:
        # Pillow's own guard, at twice its limit, fires while the header is read: before our count of the pixels.
        raise InitSourceError(
            f"{name} declares a picture of more pixels than a source may have (at most {MAX_SOURCE_PIXELS:,} pixels)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise InitSourceError(f"{name} is a damaged or truncated picture ({_reason(error)})") from None
    resized = gray.resize((int(width), int(height)), Image.Resampling.LANCZOS)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0
    return InitSource("image", source_sha256(data), pixels)


def _grayscale(picture):
    """Pillow picture → mode "L"; alpha laid on white, 16- and 32-bit integer and float pictures scaled to 8 bits."""
    from PIL import Image

    if picture.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(picture, dtype=np.float64)
        top = 1.0 if picture.mode == "F" else 65535.0
        return Image.fromarray(np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8))
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    return picture.convert("L")


def load_init_audio(data: bytes, width: int, height: int | None = None, name: str = "the sound") -> InitSource:
    """A source sound (WAV, FLAC, OGG or MP3 bytes) as the normalised log-mel picture of its first `width / 100` s.

    Mixed to mono, resampled to 16 kHz, cut to its first `width · 160` samples or padded with silence to them
    (`note` says which), then Auffusion's mel front end (`audio.mel.waveform_to_spectrogram_image`): 256 rows, one
    column per 10 ms. A `height` other than 256 resizes the rows (bilinear), as pictures of that height are read.
    Only the samples needed are decoded, so a long file costs no more than its first seconds.
    """
    import soundfile

    from imgsound_core.audio.mel import HOP_LENGTH, N_MELS, SAMPLE_RATE_HZ

    check_source_size(len(data), name)
    if data[:4] == b"RIFF":
        _check_riff(data, name)
    samples_needed = int(width) * HOP_LENGTH
    seconds_needed = samples_needed / SAMPLE_RATE_HZ
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            rate, channels, frames = int(sound.samplerate), int(sound.channels), int(sound.frames)
            if not MIN_SOURCE_RATE_HZ <= rate <= MAX_SOURCE_RATE_HZ:
                raise InitSourceError(
                    f"{name} has a sample rate of {rate} Hz, outside {MIN_SOURCE_RATE_HZ}–{MAX_SOURCE_RATE_HZ} Hz"
                )
            if channels > MAX_SOURCE_CHANNELS:
                raise InitSourceError(
                    f"{name} has {channels} channels; a source may have at most {MAX_SOURCE_CHANNELS}"
                )
            wanted = math.ceil(seconds_needed * rate)
            read = sound.read(frames=min(wanted, frames) if frames > 0 else wanted, dtype="float32", always_2d=True)
    except InitSourceError:
        raise
    except (RuntimeError, TypeError, ValueError, EOFError, struct.error) as error:  # LibsndfileError is a RuntimeError
        if "format not recognised" in str(error).lower() or "unknown format" in str(error).lower():
            raise InitSourceError(f"{name} is not a sound file ({SOUND_FORMATS})") from None
        raise InitSourceError(f"{name} is a damaged or truncated sound file ({_reason(error)})") from None
    if read.shape[0] == 0:
        raise InitSourceError(f"{name} holds no sound (no samples)")
    if not np.isfinite(read).all():
        raise InitSourceError(f"{name} holds samples that are not finite numbers")
    mono = read.mean(axis=1)
    if rate != SAMPLE_RATE_HZ:
        import librosa

        mono = librosa.resample(mono, orig_sr=rate, target_sr=SAMPLE_RATE_HZ)
    total = frames if frames > 0 else read.shape[0]  # some formats do not know their length up front
    note = ""
    if total != wanted:
        done = (
            f"cut to its first {seconds_needed:.2f} s"
            if total > wanted
            else f"padded with silence to {seconds_needed:.2f} s"
        )
        note = f"{name} is {total / rate:.2f} s long: {done} ({width} columns at 10 ms)"
    waveform = np.zeros(samples_needed, dtype=np.float32)
    kept = min(samples_needed, mono.shape[0])
    waveform[:kept] = mono[:kept]

    import torch

    from imgsound_core.audio.mel import waveform_to_spectrogram_image

    gray = waveform_to_spectrogram_image(torch.from_numpy(waveform))[0]  # (256, width); the channels are equal
    rows = N_MELS if height is None else int(height)
    if rows != N_MELS:
        gray = torch.nn.functional.interpolate(
            gray[None, None], size=(rows, gray.shape[-1]), mode="bilinear", align_corners=False, antialias=True
        )[0, 0].clamp(0, 1)
    return InitSource("audio", source_sha256(data), gray.numpy().astype(np.float32), note)


def _check_riff(data: bytes, name: str) -> None:
    """A RIFF/WAVE file whose chunks all lie inside it, with a `fmt ` and a `data` chunk; libsndfile reads a
    truncated WAV without a word (it shortens the data), so a cut-off download is caught here."""
    if len(data) < 12 or data[8:12] != b"WAVE":
        raise InitSourceError(f"{name} is a RIFF file but not a WAV file")
    found, offset = set(), 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        if offset + 8 + size > len(data):
            label = chunk_id.decode("latin-1").strip()
            raise InitSourceError(f"{name} is a damaged or truncated WAV file (its {label!r} chunk runs past the end)")
        found.add(chunk_id)
        offset += 8 + size + (size & 1)
    if not {b"fmt ", b"data"} <= found:
        raise InitSourceError(f"{name} is a damaged or truncated WAV file (it has no fmt or no data chunk)")


def _reason(error: BaseException) -> str:
    """A library's complaint, short and without object reprs ("Error opening <_io.BytesIO …>: ")."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^Error opening <[^>]*>:\s*|^Error\s*:\s*", "", text).strip().rstrip(".")
    return text[:160] or type(error).__name__


def blend_latents(
    image_latent: torch.Tensor | None, audio_latent: torch.Tensor | None, audio_weight: float = 0.5
) -> torch.Tensor:
    """The clean latent of a start from a picture and/or a sound: `(1 − w) · z_image + w · z_audio` with w the
    request's audio weight (the weight the method gives the two models' estimates), or the one that is given.

    Shapes `(C, h, w)` (or any, equal); at least one must be given.
    """
    if image_latent is None and audio_latent is None:
        raise ValueError("a source latent needs a picture or a sound")
    if image_latent is None:
        return audio_latent
    if audio_latent is None:
        return image_latent
    if image_latent.shape != audio_latent.shape:
        raise ValueError(f"latents of shapes {tuple(image_latent.shape)} and {tuple(audio_latent.shape)}")
    return (1.0 - audio_weight) * image_latent + audio_weight * audio_latent
