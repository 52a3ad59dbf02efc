"""Samples → files, as bytes: `image.png`, `spectrogram.png`, `spectrogram.npy`, `audio.wav`, `sample.json`
(and, on request, `video.mp4`).

`render_artifacts` computes bytes and writes nothing, so any store (a folder, S3) can take them;
`write_sample_dir` writes a folder atomically (a hidden temporary folder renamed into place), so a folder that
exists is complete. The PNGs and the WAV carry the sample's provenance inside them (`provenance.py`), so a file that
leaves its folder still says what made it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from PIL import Image

from imgsound_core import provenance
from imgsound_core.audio.layout import HOP_LENGTH, SAMPLE_RATE_HZ, crop_waveform
from imgsound_core.modes import umask_mode
from imgsound_core.request import CROP_COLUMNS
from imgsound_core.video import unit_to_uint8

if TYPE_CHECKING:
    import torch

# A sample's picture or waveform as a model returns it (a tensor, on any device) or as it crosses processes (an
# array). This module needs no torch: a sweep's writers encode arrays and never load it.
Values: TypeAlias = "torch.Tensor | np.ndarray"

ARTIFACT_NAMES = ("image.png", "spectrogram.png", "spectrogram.npy", "audio.wav", "sample.json")
# Optional: `render_artifacts(..., video=True)` adds it (before `sample.json`, which stays last).
VIDEO_NAME = "video.mp4"


def as_float32(values: Values) -> np.ndarray:
    """A tensor (any device and dtype) or an array → a float32 numpy array."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def to_uint8(image: Values) -> np.ndarray:
    """[0, 1] float → uint8 with rounding (x·255 + 0.5, as torchvision's save_image does).

    In numpy, not torch: files are encoded on writer threads, and a torch operator there starts an OpenMP team of
    that thread's own. With more OpenMP threads than cores, libgomp stops spinning at barriers and sleeps instead,
    in the model thread's team too, for the rest of the process: `imgsound generate` then made 57,000 context
    switches instead of 300 for 32 samples × 30 steps on two cores, and denoised up to 18 % slower.
    """
    return unit_to_uint8(as_float32(image))


def png_bytes(image: Values, text: Mapping[str, str] | None = None) -> bytes:
    """Encode `(3, H, W)` RGB or `(H, W)` grayscale in [0, 1] as PNG, with `text` as iTXt chunks (UTF-8)."""
    from PIL.PngImagePlugin import PngInfo

    pixels = to_uint8(image)
    if pixels.ndim == 3:
        pixels = np.ascontiguousarray(pixels.transpose(1, 2, 0))
        picture = Image.fromarray(pixels, mode="RGB")
    else:
        picture = Image.fromarray(pixels, mode="L")
    chunks = PngInfo()
    for key, value in (text or {}).items():
        chunks.add_itxt(key, value)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=chunks)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def wav_bytes(waveform: Values, sample_rate_hz: int = SAMPLE_RATE_HZ, info: Mapping[str, str] | None = None) -> bytes:
    """16-bit PCM WAV (the reference code's format), clipped to [−1, 1]; `info` fields (e.g. `INAM`) go into a
    RIFF `LIST`/`INFO` chunk after the data."""
    import soundfile

    samples = np.clip(as_float32(waveform).reshape(-1), -1.0, 1.0)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate_hz, subtype="PCM_16", format="WAV")
    return provenance.with_wav_info(buffer.getvalue(), info) if info else buffer.getvalue()


def render_artifacts(
    image: Values,
    spectrogram: Values,
    waveform: Values,
    record: Mapping[str, Any],
    crop: bool = False,
    *,
    extra_pictures: Mapping[str, Values] | None = None,
    video: bool = False,
    video_fps: int | None = None,
) -> dict[str, bytes]:
    """The files of one sample, as bytes, in the order to write them (`sample.json` last).

    Args:
        image: `(3, H, W)` in [0, 1]; spectrogram: `(H, W)` in [0, 1]; waveform: `(W · 160,)`; each a tensor or
            an array.
        record: provenance written as `sample.json` (must be JSON-serialisable); its reproducible part (request,
            sample id, models, vocoder, crop, mel settings) also goes inside the PNGs and the WAV.
        crop: drop the last `CROP_COLUMNS` columns of the pictures and the matching audio; `spectrogram.npy`
            always keeps the full, uncropped spectrogram.
        extra_pictures: more `(H, W)` or `(3, H, W)` pictures of the sample by file name (imprint's
            `spectrogram_original.png`), cropped and labelled like the others.
        video: also render `video.mp4` (spectrogram layout with captions, `video.render_video`); off by default
            because it costs about as much as vocoding.
        video_fps: its frame rate (default `video.DEFAULT_FPS`).
    """
    image, spectrogram, waveform = as_float32(image), as_float32(spectrogram), as_float32(waveform)
    extra_pictures = {name: as_float32(p) for name, p in (extra_pictures or {}).items()}
    full_spectrogram = spectrogram
    width = spectrogram.shape[-1]
    if crop:
        if width <= CROP_COLUMNS:
            raise ValueError(f"cannot crop {CROP_COLUMNS} columns from a {width}-column spectrogram")
        image = image[..., : width - CROP_COLUMNS]
        spectrogram = spectrogram[..., : width - CROP_COLUMNS]
        extra_pictures = {name: p[..., : width - CROP_COLUMNS] for name, p in extra_pictures.items()}
        waveform = crop_waveform(waveform, CROP_COLUMNS, width)
    record = {**record, "crop_columns": CROP_COLUMNS if crop else 0, "audio_samples": int(waveform.shape[-1])}
    meta = provenance.sample_provenance(record)
    artifacts = {
        "image.png": png_bytes(image, provenance.png_text(meta, "image.png")),
        "spectrogram.png": png_bytes(spectrogram, provenance.png_text(meta, "spectrogram.png")),
        "spectrogram.npy": npy_bytes(full_spectrogram),
        "audio.wav": wav_bytes(waveform, info=provenance.wav_info(meta)),
    }
    for name, picture in extra_pictures.items():
        artifacts[name] = png_bytes(picture, provenance.png_text(meta, name))
    if video:
        from imgsound_core.video import DEFAULT_FPS, render_video

        artifacts[VIDEO_NAME] = render_video(
            None,
            spectrogram,
            artifacts["audio.wav"],
            image_prompt=record.get("image_prompt"),
            audio_prompt=record.get("audio_prompt"),
            fps=video_fps or DEFAULT_FPS,
            metadata=provenance.video_metadata(meta),
        )
    artifacts["sample.json"] = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")
    return artifacts


def write_sample_dir(target: str | os.PathLike, artifacts: Mapping[str, bytes], overwrite: bool = False) -> Path:
    """Write `artifacts` into the folder `target` atomically; refuse to replace an existing one unless `overwrite`."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        for name, data in artifacts.items():
            (staging / name).write_bytes(data)
        staging.chmod(umask_mode(directory=True))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def seconds_of_audio(columns: int) -> float:
    """Duration of a spectrogram of `columns` columns (10 ms each)."""
    return columns * HOP_LENGTH / SAMPLE_RATE_HZ
