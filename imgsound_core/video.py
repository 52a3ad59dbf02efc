"""Videos of samples: the picture on screen, the sound playing, and a playhead crossing the picture in step with it.

The layout is the paper's (`animation_with_text.py`), on a white frame, top to bottom:

    40 px margin
    "Image prompt: …"   26 px type, black, centred, wrapped to the picture's width      (captions only)
    8 px
    the picture         `spectrogram` (grey), `image` (RGB), or `both`: image, 30 px, spectrogram
    8 px
    "Audio prompt: …"                                                                    (captions only)
    40 px margin                                        40 px left and right; the frame is W + 80 wide

Playhead: a vertical bar, 5 px wide, (240, 240, 240), over the picture's full height (both pictures and the gap in
`both`). At time t of an audio of duration d it is centred on column round(t / d · (W − 1)) of the picture, so it
crosses the picture — already cropped when the sample was — in exactly the audio's duration. Frame k shows
t = k / fps; a video has ceil(d · fps) frames, so it lasts the audio's duration rounded up to a whole frame.

Frame rate: 30 fps by default (the paper uses 60). At 100 columns per second the bar moves 3.3 px per frame, which
reads as smooth motion, and half the frames halve the encoding time.

Encoding: the bundled ffmpeg (`imageio_ffmpeg.get_ffmpeg_exe()`, never a system one) reads raw RGB frames on its
stdin and the WAV from a file, and writes H.264 (yuv420p, `-preset veryfast`) + AAC-LC (at the WAV's rate) in an MP4
with its index at the front (`+faststart`), so browsers and phones play it while it downloads. AAC's encoder delay is
recorded in the MP4's edit list, so decoders start the sound exactly at the first frame. The frame without the
playhead is composed once (`compose_canvas`); each frame then only restores the columns the bar left and paints the
columns it enters.

`render_video` is bytes in, bytes out (no folder needed), for the CLI, the HTTP service and the sweeps alike;
`render_frame` is the pure frame function the tests check.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LAYOUTS = ("spectrogram", "image", "both")
DEFAULT_FPS = 30
MAX_FPS = 120
MARGIN_PX = 40
CAPTION_GAP_PX = 8
PICTURE_GAP_PX = 30  # between the picture and the spectrogram in `both`
CAPTION_SIZE_PX = 26
PLAYHEAD_WIDTH_PX = 5
PLAYHEAD_RGB = (240, 240, 240)
BACKGROUND_RGB = (255, 255, 255)
CAPTION_RGB = (0, 0, 0)
# AAC keeps the WAV's rate (16 kHz for samples, as the paper's videos do): resampling to 48 kHz spreads the bits
# over empty bands and measurably degrades the waveform. Rates AAC cannot carry are resampled to 48 kHz.
AAC_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
AAC_FALLBACK_RATE_HZ = 48000
# 96 kbit/s for one 8 kHz-wide channel is transparent enough that the decoded waveform tracks the WAV (r > 0.99
# on noise-like test audio; 64 kbit/s narrows the band and drops it to 0.91).
AAC_BITRATE = "96k"
# Constant quality: 20 keeps the text and the spectrogram's fine lines crisp; the mostly static frames stay small.
H264_CRF = 20

PictureLike = Any  # np.ndarray (H, W[, 3]) uint8 or float in [0, 1], a torch tensor ((3, H, W) or (H, W)), or PNG bytes


class VideoError(RuntimeError):
    """The video could not be made; the message is one sentence."""


@dataclass(frozen=True)
class Canvas:
    """A frame without its playhead and where the playhead goes.

    Attributes:
        base: (frame_height, frame_width, 3) uint8, both even (H.264 with yuv420p needs even sizes).
        left, width: the pictures' first column in the frame and their width W; the playhead's centre moves from
            `left` to `left + W − 1`.
        top, bottom: the rows [top, bottom) the playhead covers.
    """

    base: np.ndarray
    left: int
    width: int
    top: int
    bottom: int


# --- pictures and captions -----------------------------------------------------------------------------------------


def unit_to_uint8(array: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] → uint8 with rounding (x·255 + 0.5 in float32, as torchvision's save_image does)."""
    pixels = np.clip(array.astype(np.float32, copy=False), 0.0, 1.0)
    return (pixels * np.float32(255) + np.float32(0.5)).astype(np.uint8)


def as_rgb_uint8(picture: PictureLike) -> np.ndarray:
    """Any picture form this project uses → (H, W, 3) uint8.

    Accepts PNG (or any Pillow-readable) bytes, numpy arrays (H, W), (H, W, 1|3) uint8 or float in [0, 1], and
    torch tensors (H, W) or (C, H, W) in [0, 1].
    """
    if isinstance(picture, bytes | bytearray):
        with Image.open(io.BytesIO(picture)) as opened:
            return np.asarray(opened.convert("RGB"))
    if hasattr(picture, "detach"):  # a torch tensor: channels first
        array = picture.detach().float().cpu().numpy()
        if array.ndim == 3:
            array = array.transpose(1, 2, 0)
    else:
        array = np.asarray(picture)
    if array.dtype != np.uint8:
        array = unit_to_uint8(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(f"expected a picture of shape (H, W), (H, W, 3) or (3, H, W), got {array.shape}")
    return np.ascontiguousarray(np.broadcast_to(array, (*array.shape[:2], 3)))


def caption_font(size_px: int = CAPTION_SIZE_PX) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font (a FreeType font since Pillow 10.1), so captions look the same on every machine."""
    try:
        return ImageFont.load_default(size=size_px)
    except TypeError:  # Pillow 10.0 bundles only a small bitmap font, without sizes
        return ImageFont.load_default()


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        return ascent + descent
    return font.getbbox("Ag")[3]


def wrap_caption(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width_px: int) -> list[str]:
    """Greedy word wrap to `width_px` (the picture's width, as the paper's captions); a word wider than the line is
    broken between characters."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width_px:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for char in word:
            if line and font.getlength(line + char) > width_px:
                lines.append(line)
                line = ""
            line += char
    if line:
        lines.append(line)
    return lines


def _caption_block(text: str, width_px: int, font) -> np.ndarray:
    """(h, width_px, 3) uint8: `text` wrapped and centred, black on white."""
    lines = wrap_caption(text, font, width_px)
    line_height = _line_height(font)
    block = Image.new("RGB", (width_px, max(1, line_height * len(lines))), BACKGROUND_RGB)
    draw = ImageDraw.Draw(block)
    for index, line in enumerate(lines):
        x = (width_px - font.getlength(line)) / 2
        draw.text((x, index * line_height), line, font=font, fill=CAPTION_RGB)
    return np.asarray(block)


def compose_canvas(
    image: PictureLike | None,
    spectrogram: PictureLike | None,
    layout: str = "spectrogram",
    image_prompt: str | None = None,
    audio_prompt: str | None = None,
    captions: bool = True,
) -> Canvas:
    """The frame without its playhead, in the paper's layout (see the module docstring).

    Args:
        image: the RGB picture (needed by `image` and `both`); spectrogram: the grey spectrogram (needed by
            `spectrogram` and `both`). Any `as_rgb_uint8` form; already cropped if the sample was.
        layout: one of `LAYOUTS`.
        image_prompt, audio_prompt: caption texts ("Image prompt: …" above, "Audio prompt: …" below); a missing
            or empty prompt leaves its caption out.
        captions: False leaves both captions out.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    needed = {"spectrogram": ("spectrogram",), "image": ("image",), "both": ("image", "spectrogram")}[layout]
    given = {"image": image, "spectrogram": spectrogram}
    for name in needed:
        if given[name] is None:
            raise ValueError(f"the {layout!r} layout needs the {name}")
    pictures = [as_rgb_uint8(given[name]) for name in needed]
    width = max(p.shape[1] for p in pictures)

    blocks: list[tuple[np.ndarray, bool]] = []  # (pixels, is a picture) from top to bottom
    font = caption_font() if captions else None
    if font is not None and image_prompt:
        blocks += [(_caption_block(f"Image prompt: {image_prompt}", width, font), False)]
    blocks += [(picture, True) for picture in pictures]
    if font is not None and audio_prompt:
        blocks += [(_caption_block(f"Audio prompt: {audio_prompt}", width, font), False)]

    gaps = []
    for upper, lower in zip(blocks, blocks[1:], strict=False):
        gaps.append(PICTURE_GAP_PX if upper[1] and lower[1] else CAPTION_GAP_PX)
    content_height = sum(b.shape[0] for b, _ in blocks) + sum(gaps)
    frame_width = width + 2 * MARGIN_PX
    frame_height = content_height + 2 * MARGIN_PX
    frame_width += frame_width % 2  # yuv420p: both sides even; the extra column or row is white
    frame_height += frame_height % 2
    base = np.empty((frame_height, frame_width, 3), dtype=np.uint8)
    base[:] = BACKGROUND_RGB

    y, top, bottom, playhead_picture = MARGIN_PX, None, None, pictures[-1]
    for index, (pixels, is_picture) in enumerate(blocks):
        x = MARGIN_PX + (width - pixels.shape[1]) // 2
        base[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels
        if is_picture:
            top = y if top is None else top
            bottom = y + pixels.shape[0]
        y += pixels.shape[0] + (gaps[index] if index < len(gaps) else 0)
    # The bar follows the time axis: the spectrogram's columns when it is shown, else the picture's.
    left = MARGIN_PX + (width - playhead_picture.shape[1]) // 2
    return Canvas(base=base, left=left, width=playhead_picture.shape[1], top=top, bottom=bottom)


# --- frames --------------------------------------------------------------------------------------------------------


def playhead_column(canvas: Canvas, fraction: float) -> int:
    """The frame column the playhead is centred on when `fraction` ∈ [0, 1] of the audio has played."""
    fraction = min(max(fraction, 0.0), 1.0)
    return canvas.left + round(fraction * (canvas.width - 1))


def _playhead_span(canvas: Canvas, fraction: float) -> tuple[int, int]:
    centre = playhead_column(canvas, fraction)
    half = PLAYHEAD_WIDTH_PX // 2
    # Clipped to the picture, so the bar never spills into the margin at the start or the end.
    return max(canvas.left, centre - half), min(canvas.left + canvas.width, centre + half + 1)


def render_frame(canvas: Canvas, fraction: float) -> np.ndarray:
    """The frame when `fraction` of the audio has played: (frame_height, frame_width, 3) uint8, a new array."""
    frame = canvas.base.copy()
    start, stop = _playhead_span(canvas, fraction)
    frame[canvas.top : canvas.bottom, start:stop] = PLAYHEAD_RGB
    return frame


def frame_count(duration_s: float, fps: int) -> int:
    """Frames of a video of `duration_s` at `fps`: the duration rounded up to a whole frame (at least one)."""
    return max(1, math.ceil(duration_s * fps - 1e-9))


# --- encoding ------------------------------------------------------------------------------------------------------


def ffmpeg_exe() -> str:
    """The ffmpeg binary that ships with the imageio-ffmpeg wheel."""
    import imageio_ffmpeg

    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as error:
        raise VideoError(f"the ffmpeg of imageio-ffmpeg is missing ({error})") from None


def _wav_timing(wav: bytes, name: str = "the audio") -> tuple[float, int]:
    """(duration in seconds, sample rate in Hz) of WAV bytes."""
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(wav))
    except (RuntimeError, soundfile.LibsndfileError):
        raise VideoError(f"{name} is not a WAV file libsndfile can read") from None
    if info.frames == 0:
        raise VideoError(f"{name} holds no audio")
    return info.frames / info.samplerate, info.samplerate


def encode_video(
    canvas: Canvas, wav: bytes, fps: int = DEFAULT_FPS, metadata: Mapping[str, str] | None = None
) -> bytes:
    """Encode the playhead animation over `canvas` with the sound `wav` as an MP4 (H.264 + AAC), as bytes.

    Args:
        canvas: from `compose_canvas`.
        wav: a WAV file's bytes; its duration sets the playhead's speed and the video's length.
        fps: frames per second, 1 to `MAX_FPS`.
        metadata: MP4 tags (`title`, `comment`, `description`, …).
    """
    if not 1 <= fps <= MAX_FPS:
        raise ValueError(f"fps must be between 1 and {MAX_FPS}, got {fps}")
    duration_s, rate_hz = _wav_timing(wav)
    rate_args = () if rate_hz in AAC_RATES_HZ else ("-ar", str(AAC_FALLBACK_RATE_HZ))
    frames = frame_count(duration_s, fps)
    height, width, _ = canvas.base.shape
    tags = [arg for key, value in (metadata or {}).items() for arg in ("-metadata", f"{key}={value}")]
    with tempfile.TemporaryDirectory(prefix="imgsound-video-") as folder:
        wav_path, mp4_path, log_path = (os.path.join(folder, name) for name in ("audio.wav", "out.mp4", "log"))
        Path(wav_path).write_bytes(wav)
        command = [
            ffmpeg_exe(),
            *("-hide_banner", "-loglevel", "error", "-y"),
            *("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(fps)),
            *("-i", "pipe:0", "-i", wav_path, "-map", "0:v:0", "-map", "1:a:0", "-map_metadata", "-1"),
            *("-c:v", "libx264", "-preset", "veryfast", "-crf", str(H264_CRF), "-pix_fmt", "yuv420p"),
            *("-c:a", "aac", "-b:a", AAC_BITRATE, *rate_args),
            *("-movflags", "+faststart", *tags, "-f", "mp4", mp4_path),
        ]
        # stderr goes to a file: a pipe nobody reads while frames are written could fill up and stall ffmpeg.
        with open(log_path, "wb") as log:
            try:
                process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
            except OSError as error:
                raise VideoError(f"ffmpeg could not be started ({error.strerror or error})") from None
            try:
                _write_frames(process.stdin, canvas, frames, fps, duration_s)
                process.stdin.close()
            except BrokenPipeError:  # ffmpeg stopped early; its exit status and log say why
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
            except BaseException:
                process.kill()  # interrupted: ffmpeg would otherwise wait for frames forever
                process.wait()
                raise
            code = process.wait()
        if code != 0:
            lines = Path(log_path).read_text(errors="replace").strip().splitlines()
            raise VideoError(f"ffmpeg failed with exit status {code}: {lines[-1] if lines else 'no message'}")
        return Path(mp4_path).read_bytes()


def _write_frames(stream, canvas: Canvas, frames: int, fps: int, duration_s: float) -> None:
    """Write `frames` raw RGB frames: one buffer, in which only the bar's columns change from frame to frame."""
    buffer = canvas.base.copy()
    rows = slice(canvas.top, canvas.bottom)
    previous = (0, 0)
    for index in range(frames):
        start, stop = _playhead_span(canvas, index / fps / duration_s)
        buffer[rows, previous[0] : previous[1]] = canvas.base[rows, previous[0] : previous[1]]
        buffer[rows, start:stop] = PLAYHEAD_RGB
        previous = (start, stop)
        stream.write(memoryview(buffer).cast("B"))


def render_video(
    image: PictureLike | None,
    spectrogram: PictureLike | None,
    audio: bytes | np.ndarray | Any,
    image_prompt: str | None = None,
    audio_prompt: str | None = None,
    layout: str = "spectrogram",
    captions: bool = True,
    fps: int = DEFAULT_FPS,
    sample_rate_hz: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """One sample's video, as MP4 bytes. Writes nothing but a temporary folder that it removes.

    Args:
        image: (3, H, W) tensor / (H, W, 3) array in [0, 1] or uint8, or PNG bytes; only `image`/`both` need it.
        spectrogram: (H, W) tensor/array or PNG bytes; only `spectrogram`/`both` need it.
        audio: WAV bytes, or a waveform (T,) array/tensor in [−1, 1] at `sample_rate_hz` (default 16 kHz).
        image_prompt, audio_prompt: the captions' texts.
        layout: `spectrogram`, `image` or `both`; captions: draw the prompts; fps: frames per second.
        metadata: MP4 tags, e.g. `provenance.video_metadata(...)`.
    """
    canvas = compose_canvas(image, spectrogram, layout, image_prompt, audio_prompt, captions)
    if not isinstance(audio, bytes | bytearray):
        from imgsound_core.artifacts import wav_bytes
        from imgsound_core.audio.layout import SAMPLE_RATE_HZ

        audio = wav_bytes(audio, sample_rate_hz or SAMPLE_RATE_HZ)  # a tensor or an array
    return encode_video(canvas, bytes(audio), fps=fps, metadata=metadata)


# --- sample folders ------------------------------------------------------------------------------------------------


def required_files(layout: str) -> tuple[str, ...]:
    """The files of a sample folder that the video of `layout` reads."""
    pictures = {"spectrogram": ("spectrogram.png",), "image": ("image.png",), "both": ("image.png", "spectrogram.png")}
    return ("sample.json", "audio.wav", *pictures[layout])


def render_sample_dir_video(
    folder: str | os.PathLike, layout: str = "spectrogram", captions: bool = True, fps: int = DEFAULT_FPS
) -> bytes:
    """The video of a sample folder (`sample.json`, `audio.wav` and the pictures the layout shows), as MP4 bytes.

    Raises `VideoError` with one sentence for a missing, unreadable or damaged file.
    """
    from imgsound_core.provenance import sample_provenance, video_metadata

    folder = Path(folder)
    try:
        record = json.loads((folder / "sample.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VideoError(f"{folder} is not a sample folder (it has no sample.json)") from None
    except (OSError, ValueError) as error:
        raise VideoError(f"{folder / 'sample.json'} cannot be read ({error})") from None
    if not isinstance(record, dict):
        raise VideoError(f"{folder / 'sample.json'} does not hold a sample record")
    keys = {"audio.wav": "wav", "image.png": "image", "spectrogram.png": "spectrogram"}
    names = {keys[name]: name for name in required_files(layout)[1:]}
    files: dict[str, bytes] = {}
    for key, name in names.items():
        try:
            files[key] = (folder / name).read_bytes()
        except FileNotFoundError:
            raise VideoError(f"the sample folder {folder} has no {name}") from None
        except OSError as error:
            raise VideoError(f"{folder / name} cannot be read ({error.strerror or error})") from None
    _wav_timing(files["wav"], str(folder / "audio.wav"))  # checked here so that the message names the file
    pictures: dict[str, np.ndarray] = {}
    for key in ("image", "spectrogram"):
        if key in files:
            try:
                pictures[key] = as_rgb_uint8(files[key])
            except (OSError, SyntaxError, ValueError):
                raise VideoError(f"{folder / names[key]} is not a readable picture") from None
    try:
        return render_video(
            pictures.get("image"),
            pictures.get("spectrogram"),
            files["wav"],
            image_prompt=record.get("image_prompt"),
            audio_prompt=record.get("audio_prompt"),
            layout=layout,
            captions=captions,
            fps=fps,
            metadata=video_metadata(sample_provenance(record)),
        )
    except VideoError as error:
        raise VideoError(f"{folder}: {error}") from None
