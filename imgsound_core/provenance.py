"""Provenance inside the files: each picture and sound says what made it, without its `sample.json`.

A sample's files travel alone (a PNG posted somewhere, a WAV dropped into an editor), so each one carries the
parameters that made it:

- `image.png`, `spectrogram.png`: PNG iTXt chunks (UTF-8, so any prompt fits) — `imgsound` holds the provenance
  as JSON; the standard keys `Title`, `Description`, `Software` and `Source` hold the human-readable part that image
  viewers and `exiftool` show.
- `audio.wav`: a RIFF `LIST`/`INFO` chunk after the audio data — `INAM` (title) the audio prompt, `ISBJ` (subject)
  the image prompt, `ICMT` (comment) the same JSON, `ISFT` the software. Readers that do not know `INFO` skip it,
  as RIFF requires.

The provenance is a function of the sample alone — request, sample id, models (their identities: hub id and
revision or a fingerprint, and dtype), vocoder, crop and the mel settings of `audio/layout.py` — never of timings,
clocks or local paths, so a sample made again the same way (same batch composition) gives byte-identical files.

Pure byte functions: nothing here reads or writes files except `read_file_metadata`.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imgsound_core import __version__
from imgsound_core.audio import layout
from imgsound_core.methods import request_fields
from imgsound_core.request import LATER_FIELD_DEFAULTS

PNG_KEY = "imgsound"
# The JSON's schema; a reader refuses a major version it does not know.
FORMAT = "imgsound.provenance/1"
SOFTWARE = f"imgsound {__version__}"
# The spectrogram representation this version reads and writes; anything else cannot be vocoded here.
REPRESENTATION = "auffusion-log-mel"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The request fields every sample's provenance holds (a baseline's record keeps its own request type's fields). The
# later source fields (a source's SHA-256, the strength) appear only when a sample starts from a source, as in the id.
REQUEST_KEYS = tuple(key for key in request_fields("denoise") if key not in LATER_FIELD_DEFAULTS)
# Everything else worth keeping from a sample record; timings, clocks, library versions and resolved local paths
# are left out ("method" is set by the baselines' records).
RECORD_KEYS = ("sample_id", "method", "vocoder", "dtype", "crop_columns", "audio_samples")
MODEL_KEYS = ("id", "hub_id", "revision", "fingerprint", "dtype")  # identity.ModelIdentity.to_record
# Mel settings that fix what a pixel means in time and frequency: a file that differs in any of them cannot be
# vocoded by this version. The log range (floor, ceiling) only rescales brightness, so it is honoured.
MEL_GEOMETRY_KEYS = (
    "representation",
    "sample_rate_hz",
    "n_fft",
    "hop_length",
    "win_length",
    "n_mels",
    "fmin_hz",
    "fmax_hz",
    "mel_scale",
    "log",
    "row_0",
)


class ProvenanceError(ValueError):
    """A file's metadata cannot be read or honoured; the message is one sentence."""


def mel_settings() -> dict[str, Any]:
    """The mel front end and normalisation (`audio/layout.py`, `audio/mel.py`, `audio/spectrogram.py`) as plain JSON
    values."""
    return {
        "representation": REPRESENTATION,
        "sample_rate_hz": layout.SAMPLE_RATE_HZ,
        "n_fft": layout.N_FFT,
        "hop_length": layout.HOP_LENGTH,
        "win_length": layout.WIN_LENGTH,
        "n_mels": layout.N_MELS,
        "fmin_hz": layout.FMIN_HZ,
        "fmax_hz": layout.FMAX_HZ,
        "mel_scale": "slaney",
        "stft_padding": f"reflect {layout.STFT_PAD}",
        "log": "natural",
        "mel_floor": layout.MEL_FLOOR,
        "mel_ceiling": layout.MEL_CEILING,
        "normalization": "(clamp(ln mel, ln mel_floor, ln mel_ceiling) - ln mel_floor) / ln(mel_ceiling / mel_floor)",
        "row_0": "highest frequency",
    }


def sample_provenance(record: Mapping[str, Any]) -> dict[str, Any]:
    """The reproducible part of a sample record (as the CLI, the server and the sweeps write it) plus the mel
    settings. Keys missing from `record` are left out, so any record works; the request is the one the sample id
    hashes (a source's SHA-256 and the strength only for a sample started from a source)."""
    request = {
        key: record[key]
        for key in request_fields(record.get("method"))
        if key in record and (key not in LATER_FIELD_DEFAULTS or record[key] != LATER_FIELD_DEFAULTS[key])
    }
    provenance: dict[str, Any] = {"format": FORMAT, "software": SOFTWARE}
    provenance.update({key: record[key] for key in RECORD_KEYS if key in record})
    provenance["request"] = request
    models = {}
    for role in ("image", "audio"):
        model = record.get(f"{role}_model")
        if isinstance(model, Mapping):
            models[role] = {key: model[key] for key in MODEL_KEYS if key in model}
        elif model is not None:
            models[role] = {"id": str(model)}
    if models:
        provenance["models"] = models
    provenance["mel"] = mel_settings()
    return provenance


def _canonical_json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _prompt_lines(provenance: Mapping[str, Any]) -> str:
    request = provenance.get("request", {})
    lines = [f"Image prompt: {request['image_prompt']}"] if "image_prompt" in request else []
    if "audio_prompt" in request:
        lines.append(f"Audio prompt: {request['audio_prompt']}")
    return "\n".join(lines)


# --- PNG -----------------------------------------------------------------------------------------------------------


def png_text(provenance: Mapping[str, Any], artifact: str) -> dict[str, str]:
    """The PNG text chunks of one file: `imgsound` (JSON, with `artifact` naming the file) and the standard keys."""
    text = {PNG_KEY: _canonical_json({**provenance, "artifact": artifact}), "Software": SOFTWARE}
    if "sample_id" in provenance:
        text["Title"] = f"imgsound sample {provenance['sample_id']}"
    if description := _prompt_lines(provenance):
        text["Description"] = description
    sources = [
        f"{role} model {m.get('hub_id') or m['id']}" for role, m in provenance.get("models", {}).items() if "id" in m
    ]
    if sources:
        text["Source"] = "; ".join(sources)
    return text


def read_png_text(data: bytes, name: str = "the PNG") -> dict[str, str]:
    """Every text chunk (tEXt, zTXt, iTXt) of a PNG, decoding the whole picture so that a corrupt file is caught."""
    from PIL import Image, UnidentifiedImageError

    if not data.startswith(PNG_SIGNATURE):
        raise ProvenanceError(f"{name} is not a PNG file")
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()  # text chunks after the pixels, and damage anywhere, show up only when it is read
            return {str(key): str(value) for key, value in picture.text.items()}
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise ProvenanceError(f"{name} is a damaged PNG ({error})") from None


def provenance_from_text(text: Mapping[str, str], name: str = "the file") -> dict[str, Any] | None:
    """Parse the `imgsound` JSON (PNG key or WAV comment); None when the file carries none."""
    raw = text.get(PNG_KEY)
    if raw is None:
        return None
    try:
        provenance = json.loads(raw)
    except json.JSONDecodeError:
        raise ProvenanceError(f"the imgsound metadata of {name} is not valid JSON") from None
    if not isinstance(provenance, dict) or not str(provenance.get("format", "")).startswith("imgsound.provenance/"):
        raise ProvenanceError(f"the imgsound metadata of {name} has no known format")
    if provenance["format"] != FORMAT:
        raise ProvenanceError(
            f"{name} carries imgsound metadata in format {provenance['format']}; this version ({SOFTWARE}) reads "
            f"{FORMAT}"
        )
    for key in ("request", "models", "mel"):
        if not isinstance(provenance.get(key, {}), dict):
            raise ProvenanceError(f"the imgsound metadata of {name} is malformed ({key} is not an object)")
    return provenance


# --- WAV -----------------------------------------------------------------------------------------------------------


def wav_info(provenance: Mapping[str, Any]) -> dict[str, str]:
    """The RIFF INFO fields of `audio.wav`: INAM audio prompt, ISBJ image prompt, ICMT the JSON, ISFT software."""
    request = provenance.get("request", {})
    info = {}
    if "audio_prompt" in request:
        info["INAM"] = request["audio_prompt"]
    if "image_prompt" in request:
        info["ISBJ"] = request["image_prompt"]
    info["ICMT"] = _canonical_json({**provenance, "artifact": "audio.wav"})
    info["ISFT"] = SOFTWARE
    return info


def _riff_chunks(data: bytes, name: str) -> list[tuple[bytes, int, int]]:
    """(id, start of payload, payload size) of each top-level chunk of a RIFF/WAVE file."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ProvenanceError(f"{name} is not a WAV file")
    chunks, offset = [], 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        if offset + 8 + size > len(data):
            raise ProvenanceError(f"{name} is a damaged WAV file (chunk {chunk_id!r} runs past the end)")
        chunks.append((chunk_id, offset + 8, size))
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    return chunks


def with_wav_info(wav: bytes, info: Mapping[str, str]) -> bytes:
    """`wav` with one `LIST`/`INFO` chunk holding `info` (replacing any INFO chunk it had), appended after the data.

    Each value is UTF-8, NUL-terminated and padded to an even length; the RIFF size is updated.
    """
    kept = [
        wav[start - 8 : start + size].ljust(8 + size + (size & 1), b"\0")  # a missing final pad byte is restored
        for chunk_id, start, size in _riff_chunks(wav, "the WAV")
        if not (chunk_id == b"LIST" and wav[start : start + 4] == b"INFO")
    ]
    body = bytearray(b"INFO")
    for chunk_id, value in info.items():
        if len(chunk_id) != 4 or not chunk_id.isascii():
            raise ValueError(f"a RIFF INFO id has four ASCII characters, got {chunk_id!r}")
        payload = value.encode("utf-8") + b"\0"
        body += chunk_id.encode("ascii") + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)
    list_chunk = b"LIST" + struct.pack("<I", len(body)) + bytes(body)
    content = b"WAVE" + b"".join(kept) + list_chunk
    return b"RIFF" + struct.pack("<I", len(content)) + content


def read_wav_info(data: bytes, name: str = "the WAV") -> dict[str, str]:
    """The fields of a WAV's `LIST`/`INFO` chunk(s); {} when it has none. Checks that a `fmt ` and a `data` chunk
    exist, so a truncated or foreign file is caught."""
    chunks = _riff_chunks(data, name)
    ids = {chunk_id for chunk_id, _, _ in chunks}
    if not {b"fmt ", b"data"} <= ids:
        raise ProvenanceError(f"{name} is a damaged WAV file (no fmt or data chunk)")
    info: dict[str, str] = {}
    for chunk_id, start, size in chunks:
        if chunk_id != b"LIST" or data[start : start + 4] != b"INFO":
            continue
        offset, end = start + 4, start + size
        while offset + 8 <= end:
            field_id, field_size = struct.unpack_from("<4sI", data, offset)
            value = data[offset + 8 : offset + 8 + field_size].split(b"\0", 1)[0]
            info[field_id.decode("ascii", "replace")] = value.decode("utf-8", "replace")
            offset += 8 + field_size + (field_size & 1)
    return info


def _provenance_in_comment(info: Mapping[str, str], name: str, key: str = "ICMT") -> dict[str, Any] | None:
    """The provenance in a WAV's ICMT (an MP4's `comment`), or None when the comment is someone else's (any text but
    our JSON)."""
    comment = info.get(key, "")
    try:
        parsed = json.loads(comment)
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or not str(parsed.get("format", "")).startswith("imgsound.provenance/"):
        return None
    return provenance_from_text({PNG_KEY: comment}, name)


# --- MP4 -----------------------------------------------------------------------------------------------------------


def video_metadata(provenance: Mapping[str, Any]) -> dict[str, str]:
    """MP4 tags of `video.mp4`: `title`, `description` (the prompts), `comment` (the JSON)."""
    tags = {"comment": _canonical_json({**provenance, "artifact": "video.mp4"})}
    if "sample_id" in provenance:
        tags["title"] = f"imgsound sample {provenance['sample_id']}"
    if description := _prompt_lines(provenance):
        tags["description"] = description
    return tags


def read_mp4_tags(path: str | Path) -> dict[str, str]:
    """An MP4's metadata tags (title, comment, …), read by imageio-ffmpeg's ffmpeg (`-f ffmetadata`), which also
    checks that the file is a video it can open; `ProvenanceError` otherwise."""
    import subprocess

    from imgsound_core.video import VideoError, ffmpeg_exe

    try:
        executable = ffmpeg_exe()
    except VideoError as error:
        raise ProvenanceError(str(error)) from None
    command = [executable, "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"]
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        raise ProvenanceError(f"{path} is not a video ffmpeg can read")
    tags: dict[str, str] = {}
    text = done.stdout.decode("utf-8", errors="replace")
    # ffmetadata: `key=value` lines; `\=`, `\;`, `\#`, `\\` and an escaped newline are literal characters.
    logical, pending = [], ""
    for line in text.split("\n"):
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1] + "\n"
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        if not line or line.startswith((";", "#", "[")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        tags[key.strip().lower()] = re.sub(r"\\(.)", r"\1", value)
    return tags


# --- either ----------------------------------------------------------------------------------------------------------


def read_file_metadata(path: str | Path) -> dict[str, Any]:
    """What `imgsound info` shows: `{"file", "format": "png"|"wav"|"mp4", "text" (all PNG text, WAV INFO fields or
    MP4 tags), "imgsound" (the parsed provenance or None)}`. A file that is none of those, or is damaged, raises
    `ProvenanceError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ProvenanceError(f"{path} cannot be read ({error.strerror or error})") from None
    if data.startswith(PNG_SIGNATURE):
        text = read_png_text(data, str(path))
        return {"file": str(path), "format": "png", "text": text, "imgsound": provenance_from_text(text, str(path))}
    if data[:4] == b"RIFF":
        info = read_wav_info(data, str(path))
        return {"file": str(path), "format": "wav", "text": info, "imgsound": _provenance_in_comment(info, str(path))}
    if data[4:8] == b"ftyp":
        tags = read_mp4_tags(path)
        return {
            "file": str(path),
            "format": "mp4",
            "text": tags,
            "imgsound": _provenance_in_comment(tags, str(path), key="comment"),
        }
    raise ProvenanceError(f"{path} is neither a PNG, a WAV nor an MP4 file")


WAV_INFO_NAMES = {"INAM": "title", "ISBJ": "subject", "ICMT": "comment", "ISFT": "software"}


def mel_summary(settings: Mapping[str, Any]) -> str:
    """One line: `16000 Hz, n_fft 2048, hop 160, win 1024, 256 slaney mels 0–8000 Hz, ln range [1e-05, 200.0]`."""
    return (
        f"{settings.get('sample_rate_hz')} Hz, n_fft {settings.get('n_fft')}, hop {settings.get('hop_length')}, "
        f"win {settings.get('win_length')}, {settings.get('n_mels')} {settings.get('mel_scale')} mels "
        f"{settings.get('fmin_hz')}–{settings.get('fmax_hz')} Hz, ln range [{settings.get('mel_floor')}, "
        f"{settings.get('mel_ceiling')}]"
    )


def describe_metadata(entry: Mapping[str, Any]) -> str:
    """`read_file_metadata`'s result as text for people: the file's own fields, then the provenance, one per line."""
    provenance = entry.get("imgsound")
    state = f"imgsound metadata ({provenance['format']})" if provenance else "no imgsound metadata"
    rows: list[tuple[str, str]] = []
    for key, value in entry["text"].items():
        if provenance is not None and key in (PNG_KEY, "ICMT"):
            continue  # the JSON, shown field by field below
        label = f"{key} ({WAV_INFO_NAMES[key]})" if entry["format"] == "wav" and key in WAV_INFO_NAMES else key
        rows.append((label, value))
    if provenance:
        if "sample_id" in provenance:
            rows.append(("sample_id", str(provenance["sample_id"])))
        request = provenance.get("request", {})
        ordered = [key for key in REQUEST_KEYS if key in request] + [key for key in request if key not in REQUEST_KEYS]
        rows += [(key, json.dumps(request[key], ensure_ascii=False)) for key in ordered]
        skip = {"format", "request", "models", "mel", "sample_id", "software"}
        rows += [(key, str(value)) for key, value in provenance.items() if key not in skip]
        for role, model in provenance.get("models", {}).items():
            rows.append((f"{role} model", ", ".join(f"{k} {v}" for k, v in model.items())))
        if "mel" in provenance:
            rows.append(("mel", mel_summary(provenance["mel"])))
    width = max((len(label) for label, _ in rows), default=0)
    lines = [f"{entry['file']}: {entry['format'].upper()}, {state}"]
    for label, value in rows:
        continuation = "\n" + " " * (width + 4)
        lines.append(f"  {label.ljust(width)}  {value.replace(chr(10), continuation)}")
    return "\n".join(lines)


# --- honouring a file's mel settings ---------------------------------------------------------------------------------


def check_mel_settings(settings: Mapping[str, Any], name: str = "the file") -> None:
    """Raise `ProvenanceError` unless this version can vocode a spectrogram written with `settings`."""
    ours = mel_settings()
    if not isinstance(settings, Mapping):
        raise ProvenanceError(f"the mel settings of {name} are not a JSON object")
    missing = [key for key in (*MEL_GEOMETRY_KEYS, "mel_floor", "mel_ceiling") if key not in settings]
    if missing:
        raise ProvenanceError(f"the mel settings of {name} lack {', '.join(missing)}")
    differing = [
        f"{key} {settings[key]!r} (this version: {ours[key]!r})"
        for key in MEL_GEOMETRY_KEYS
        if settings[key] != ours[key]
    ]
    if differing:
        raise ProvenanceError(f"{name} was made with mel settings this version cannot play: {'; '.join(differing)}")
    floor, ceiling = settings["mel_floor"], settings["mel_ceiling"]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (floor, ceiling)) or not 0 < floor < ceiling:
        raise ProvenanceError(f"{name} has an invalid log-mel range (mel_floor {floor!r}, mel_ceiling {ceiling!r})")


def to_default_range(pixels: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """Re-express a [0, 1] spectrogram normalised with `settings`' log range in this version's range.

    `pixels`: any shape, float; returns float32 in [0, 1] (log-mels outside our range are clamped, as normalising
    does).
    """
    low, high = math.log(settings["mel_floor"]), math.log(settings["mel_ceiling"])
    log_mel = low + np.asarray(pixels, dtype=np.float64) * (high - low)
    ours = (log_mel - layout.LOG_MEL_MIN) / (layout.LOG_MEL_MAX - layout.LOG_MEL_MIN)
    return np.clip(ours, 0.0, 1.0).astype(np.float32)
