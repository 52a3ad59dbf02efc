"""The curation gallery: a static web page to look at, listen to, sort, filter and pick samples.

Source → records → site. `collect_samples(source)` reads an `imgsound generate` output folder into
`GallerySample`s: a `GalleryRecord` — what the page shows, JSON-ready, no paths — and the `SampleFiles` its
picture, spectrogram and sound are read from. Sweeps (a manifest and `samples/<sample_id>/`, in a folder or on S3)
and server output stores are read by `jobs.gallery` into the same `GallerySample`s: no storage code here.
`build_gallery` copies those three files into `DIR/media/<key>/`, writes small thumbnails next to them, the data script
`DIR/data/samples.js` and the page itself (`index.html`, `gallery.js`, `gallery.css` from `gallery_static/`), all in
a hidden temporary folder renamed into place: a DIR that exists is complete.

The page reads its data from `<script src="data/samples.js">`, which assigns `window.IMGSOUND_GALLERY`, and not
with fetch(): browsers refuse fetch() of local files from a `file://` page, while a script loads the same from
disk, any static host or a bucket. Every media URL in the data comes from a `media_url(record, role)` function;
`static_media_url` gives the site's relative paths, and a server passes its own routes to `data_script` to serve
the very same page over its output store:

    GET /gallery              → redirect to /gallery/ (the page's URLs are relative to it)
    GET /gallery/             → static_asset("index.html"); /gallery/gallery.js, /gallery/gallery.css likewise
    GET /gallery/data/samples.js
                              → samples = jobs.gallery.collect_store_samples(store)   (cache it: one listing)
                                data_script([s.record for s in samples],
                                            media_url=lambda record, role: f"media/{record.key}/{role}")
    GET /gallery/media/<key>/<role>
                              → the sample whose record.key is <key>: sample.files.read(MEDIA_SOURCES[role]);
                                for the *_thumb roles, make_thumbnail(those bytes).data (worth caching)

Chromium shares one localStorage between all `file://` pages, so favourites are kept under the gallery's id (a
hash of its sample ids): two galleries never mix their favourites. The export is `favourites.json`, a JSON list of
sample ids.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, UnidentifiedImageError, features

from imgsound_core.modes import umask_mode

DEFAULT_PAGE_SIZE = 50
DATA_SCRIPT = "data/samples.js"
STATIC_ASSETS = ("index.html", "gallery.js", "gallery.css")
# Present in every folder `build_gallery` writes: only such folders are ever replaced (with `overwrite`).
MARKER = ".imgsound-gallery"
DATA_VERSION = 1

# Thumbnails: a 256×1024 picture becomes 512×128 (a few kB of WebP against 70–300 kB of PNG), sharp enough for a
# card, small enough that a page of 50 cards loads at once. JPEG where Pillow was built without WebP.
THUMB_MAX_SIZE = (512, 256)
THUMB_FORMAT, THUMB_SUFFIX = ("WEBP", ".webp") if features.check("webp") else ("JPEG", ".jpg")
THUMB_QUALITY = 80

# Roles of a sample's media on the page → the file each one is in a sample folder, and in the gallery.
MEDIA_SOURCES = {
    "image": "image.png",
    "spectrogram": "spectrogram.png",
    "audio": "audio.wav",
    "image_thumb": "image.png",
    "spectrogram_thumb": "spectrogram.png",
}
MEDIA_FILES = {
    "image": "image.png",
    "spectrogram": "spectrogram.png",
    "audio": "audio.wav",
    "image_thumb": f"image.thumb{THUMB_SUFFIX}",
    "spectrogram_thumb": f"spectrogram.thumb{THUMB_SUFFIX}",
}
MEDIA_ROLES = tuple(MEDIA_FILES)
# Decoders meeting corrupt bytes raise more than OSError (truncated zlib streams, bad chunk headers).
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
URI_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# jobs.manifest's MANIFEST_FILE and MANIFEST_PREFIX, spelled out, to recognise a sweep and send it to jobs.gallery
# (test_gallery checks that they agree).
_SWEEP_MANIFEST, _SWEEP_PARTS = "manifest.parquet", "manifest/"
SWEEP_GALLERY_HINT = "build the gallery of a sweep or an output store with `python -m jobs.gallery SOURCE --out DIR`"


class GalleryError(Exception):
    """A source or target the user has to fix; the message is one sentence naming it."""


@dataclass(frozen=True)
class GalleryRecord:
    """One sample as the page shows it.

    `key` is unique within a gallery and safe in URLs and file names (it names the sample's media folder);
    `sample_id` is what favourites are exported as. `duration_s` and `aspect` (the spectrogram's width / height, so
    that cards keep their shape before the thumbnails arrive) are filled in when the files are read.
    """

    sample_id: str
    key: str
    image_prompt: str
    audio_prompt: str
    seed: int | None = None
    clip_score: float | None = None
    clap_score: float | None = None
    label: str = ""
    duration_s: float | None = None
    aspect: float | None = None


class SampleFiles(Protocol):
    """Where one sample's files are: `read` raises FileNotFoundError for a missing file."""

    where: str

    def read(self, name: str) -> bytes: ...


@dataclass(frozen=True)
class FolderFiles:
    folder: Path

    @property
    def where(self) -> str:
        return str(self.folder)

    def read(self, name: str) -> bytes:
        try:
            return (self.folder / name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(f"{self.folder / name}") from None
        except OSError as error:
            raise GalleryError(f"{self.folder / name} could not be read ({error.strerror})") from None


@dataclass(frozen=True)
class GallerySample:
    record: GalleryRecord
    files: SampleFiles


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    size: tuple[int, int]  # the thumbnail's (width, height)
    source_size: tuple[int, int]  # the full picture's


@dataclass(frozen=True)
class GalleryBuild:
    """What `build_gallery` wrote."""

    out: Path
    records: list[GalleryRecord]
    page_size: int

    @property
    def index(self) -> Path:
        return self.out / "index.html"

    @property
    def pages(self) -> int:
        return max(1, math.ceil(len(self.records) / self.page_size))

    @property
    def summary(self) -> str:
        samples = f"{len(self.records)} sample{'s' if len(self.records) != 1 else ''}"
        pages = f"{self.pages} page{'s' if self.pages != 1 else ''}"
        return f"wrote {self.index} ({samples}, {pages}): open it in a browser"


# ---- records ------------------------------------------------------------------------------------------------------


def _optional_float(value: Any) -> float | None:
    """A score as stored (float, None, NaN or garbage) → a finite float or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _optional_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def unique_keys(names: Iterable[str]) -> list[str]:
    """URL- and file-name-safe keys, one per name, unique even on case-insensitive disks ("a", "a-2", …)."""
    keys, taken = [], set()
    for name in names:
        base = _UNSAFE_KEY_CHARS.sub("_", name).strip("_")[:64] or "sample"
        key, n = base, 1
        while key.lower() in taken:
            n += 1
            key = f"{base}-{n}"
        taken.add(key.lower())
        keys.append(key)
    return keys


def record_from_sample_json(data: Mapping[str, Any], label: str, key: str = "") -> GalleryRecord:
    """A record from a `sample.json` (`imgsound generate`, the server); its folder name stands in for a missing id."""
    sample_id = str(data.get("sample_id") or label)
    return GalleryRecord(
        sample_id=sample_id,
        key=key or unique_keys([sample_id])[0],
        image_prompt=str(data.get("image_prompt", "")),
        audio_prompt=str(data.get("audio_prompt", "")),
        seed=_optional_int(data.get("seed")),
        clip_score=_optional_float(data.get("clip_score")),
        clap_score=_optional_float(data.get("clap_score")),
        label=label,
    )


def record_from_manifest_row(row: Mapping[str, Any], key: str = "") -> GalleryRecord:
    sample_id = str(row["sample_id"])
    pair, index = row.get("pair_index"), row.get("sample_index")
    return GalleryRecord(
        sample_id=sample_id,
        key=key or unique_keys([sample_id])[0],
        image_prompt=str(row.get("image_prompt") or ""),
        audio_prompt=str(row.get("audio_prompt") or ""),
        seed=_optional_int(row.get("seed")),
        clip_score=_optional_float(row.get("clip_score")),
        clap_score=_optional_float(row.get("clap_score")),
        label=f"pair {pair} · sample {index}" if pair is not None and index is not None else "",
    )


# ---- sources ------------------------------------------------------------------------------------------------------


def collect_samples(source: str | os.PathLike) -> list[GallerySample]:
    """The samples of an `imgsound generate` output folder (every folder under it holding a `sample.json`), in its
    own order; GalleryError if it holds none or cannot be read, or if `source` is a sweep (see `jobs.gallery`)."""
    text = os.fspath(source)
    path = Path(text)
    if URI_PATTERN.match(text) or text.endswith(".parquet"):
        raise GalleryError(f"{text} is not a folder of samples; {SWEEP_GALLERY_HINT}")
    if path.is_file():
        raise GalleryError(f"{path} is not a folder of samples")
    if not path.is_dir():
        raise GalleryError(f"{path} does not exist")
    if (path / _SWEEP_MANIFEST).is_file() or (path / _SWEEP_PARTS).is_dir():
        raise GalleryError(f"{path} is a sweep output; {SWEEP_GALLERY_HINT}")
    return _collect_from_folder(path)


def read_sample_json(data: bytes, where: str) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise GalleryError(f"{where} is not valid JSON") from None
    if not isinstance(record, dict):
        raise GalleryError(f"{where} is not a JSON object")
    return record


def _collect_from_folder(root: Path) -> list[GallerySample]:
    # Hidden folders are samples still being written (write_sample_dir's staging) or other tools' state.
    found = root.rglob("sample.json")
    folders = sorted({p.parent for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts)})
    if not folders:
        raise GalleryError(f"{root} holds no samples (no folder under it has a sample.json)")
    labels = [folder.relative_to(root).as_posix() if folder != root else root.name for folder in folders]
    data = [read_sample_json(FolderFiles(f).read("sample.json"), str(f / "sample.json")) for f in folders]
    keys = unique_keys(str(d.get("sample_id") or label) for d, label in zip(data, labels))
    return [
        GallerySample(record_from_sample_json(d, label, key), FolderFiles(folder))
        for d, label, key, folder in zip(data, labels, keys, folders)
    ]


# ---- media --------------------------------------------------------------------------------------------------------


def make_thumbnail(data: bytes, max_size: tuple[int, int] = THUMB_MAX_SIZE) -> Thumbnail:
    """A picture's bytes → a downscaled WebP (JPEG without WebP support); never upscales.

    Decodes the whole picture, so corrupt or truncated files raise here (ValueError, OSError, …).
    """
    with Image.open(io.BytesIO(data)) as picture:
        picture.load()
        source_size = picture.size
        # Grayscale spectrograms stay one channel (smaller files); everything else becomes RGB (drops alpha).
        picture = picture.convert("L" if picture.mode in ("L", "I", "I;16", "F", "1") else "RGB")
        picture.thumbnail(max_size, Image.Resampling.LANCZOS, reducing_gap=2.0)
        buffer = io.BytesIO()
        # WebP's method 2 encodes twice as fast as the default 4 for ~5 % more bytes; JPEG ignores it.
        picture.save(buffer, format=THUMB_FORMAT, quality=THUMB_QUALITY, method=2)
        return Thumbnail(buffer.getvalue(), picture.size, source_size)


def _wav_duration_s(data: bytes, where: str) -> float:
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(data))
    except (RuntimeError, TypeError, EOFError):  # soundfile.LibsndfileError is a RuntimeError
        raise GalleryError(f"{where}/audio.wav is not a sound file libsndfile can read") from None
    if info.samplerate <= 0 or info.frames <= 0:
        raise GalleryError(f"{where}/audio.wav holds no audio")
    return info.frames / info.samplerate


def _read(files: SampleFiles, name: str) -> bytes:
    try:
        return files.read(name)
    except FileNotFoundError:
        raise GalleryError(f"{files.where} has no {name}") from None


def export_sample(sample: GallerySample, folder: Path) -> GalleryRecord:
    """Copy a sample's picture, spectrogram and sound into `folder` with their thumbnails; the completed record.

    GalleryError (one sentence) for a missing file, a picture that does not decode, or unreadable audio.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files, aspect = sample.files, None
    for role in ("image", "spectrogram"):
        name = MEDIA_SOURCES[role]
        data = _read(files, name)
        try:
            thumb = make_thumbnail(data)
        except _DECODE_ERRORS:
            raise GalleryError(f"{files.where}/{name} is not a picture that decodes (corrupt or truncated)") from None
        (folder / MEDIA_FILES[role]).write_bytes(data)
        (folder / MEDIA_FILES[f"{role}_thumb"]).write_bytes(thumb.data)
        if role == "spectrogram":
            aspect = round(thumb.source_size[0] / thumb.source_size[1], 4)
    audio = _read(files, MEDIA_SOURCES["audio"])
    duration = _wav_duration_s(audio, files.where)
    (folder / MEDIA_FILES["audio"]).write_bytes(audio)
    return replace(sample.record, duration_s=round(duration, 3), aspect=aspect)


# ---- the page's data ----------------------------------------------------------------------------------------------


def static_media_url(record: GalleryRecord, role: str) -> str:
    """The static site's URL of a record's media, relative to index.html."""
    return f"media/{record.key}/{MEDIA_FILES[role]}"


def default_title(source: str | os.PathLike) -> str:
    """The page's title: "imgsound · " and the run's folder or prefix name (a manifest's folder for a manifest)."""
    text = os.fspath(source)
    if URI_PATTERN.match(text):
        parts = [part for part in text.split("/")[2:] if part]
    else:
        parts = list(Path(text).resolve().parts)
    if len(parts) > 1 and parts[-1].endswith(".parquet"):
        parts.pop()
    return f"imgsound · {parts[-1] if parts else text}"


def gallery_id(records: Sequence[GalleryRecord]) -> str:
    """Names the gallery's favourites in localStorage: the same samples → the same favourites."""
    return hashlib.sha256("\n".join(r.sample_id for r in records).encode()).hexdigest()[:16]


def record_json(record: GalleryRecord, media_url: Callable[[GalleryRecord, str], str]) -> dict[str, Any]:
    return {
        "id": record.sample_id,
        "key": record.key,
        "label": record.label,
        "image_prompt": record.image_prompt,
        "audio_prompt": record.audio_prompt,
        "seed": record.seed,
        "clip_score": record.clip_score,
        "clap_score": record.clap_score,
        "duration_s": record.duration_s,
        "aspect": record.aspect,
        "media": {role: media_url(record, role) for role in MEDIA_ROLES},
    }


def gallery_data(
    records: Sequence[GalleryRecord],
    media_url: Callable[[GalleryRecord, str], str] = static_media_url,
    title: str = "imgsound gallery",
    page_size: int = DEFAULT_PAGE_SIZE,
) -> dict[str, Any]:
    """What `window.IMGSOUND_GALLERY` holds. `media_url(record, role)` gives each of MEDIA_ROLES' URLs; URLs
    without a scheme or leading `/` are resolved against the page, like any relative link."""
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    return {
        "version": DATA_VERSION,
        "id": gallery_id(records),
        "title": title,
        "page_size": page_size,
        "samples": [record_json(r, media_url) for r in records],
    }


def data_script(
    records: Sequence[GalleryRecord],
    media_url: Callable[[GalleryRecord, str], str] = static_media_url,
    title: str = "imgsound gallery",
    page_size: int = DEFAULT_PAGE_SIZE,
) -> str:
    """The JavaScript the page loads from `data/samples.js`: one assignment of `gallery_data(...)`.

    ASCII-only, and `<` written as `\\u003c`, so that it is also safe inlined into a `<script>` element.
    """
    payload = json.dumps(
        gallery_data(records, media_url, title, page_size), ensure_ascii=True, separators=(",", ":"), allow_nan=False
    )
    # `<` only occurs inside JSON strings, where its escape means the same.
    payload = payload.replace("<", "\\u003c")
    return f"window.IMGSOUND_GALLERY = {payload};\n"


def static_asset(name: str) -> bytes:
    """One of STATIC_ASSETS (the page, its script and style), from the package."""
    if name not in STATIC_ASSETS:
        raise KeyError(f"{name!r} is not one of the gallery's static assets {STATIC_ASSETS}")
    return (resources.files("imgsound_core") / "gallery_static" / name).read_bytes()


# ---- the site -----------------------------------------------------------------------------------------------------


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse a DIR that is a file, a non-empty folder that is not a gallery, or a gallery without `overwrite`."""
    if not out.exists():
        return
    if not out.is_dir():
        raise GalleryError(f"--out {out} exists and is not a folder")
    if (out / MARKER).is_file():
        if not overwrite:
            raise GalleryError(f"{out} already holds a gallery; pass --overwrite to replace it")
    elif any(out.iterdir()):
        raise GalleryError(f"--out {out} is a folder that holds other files, not a gallery; choose another --out")


def build_gallery(
    samples: Sequence[GallerySample],
    out: str | os.PathLike,
    *,
    title: str = "imgsound gallery",
    page_size: int = DEFAULT_PAGE_SIZE,
    overwrite: bool = False,
    workers: int | None = None,
    progress: Callable[[int], Any] | None = None,
) -> GalleryBuild:
    """Write the gallery of `samples` to `out` (see the module docstring); `progress(1)` after each sample.

    Written under a hidden temporary name next to `out` and renamed into place, so a failure (GalleryError on the
    first bad sample) leaves `out` as it was. `overwrite` replaces only a folder an earlier build wrote.
    """
    out = Path(out)
    if not samples:
        raise GalleryError("the source holds no samples")
    if page_size < 1:
        raise GalleryError(f"the page size must be at least 1, got {page_size}")
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    # Threads: PIL decodes/encodes and S3 reads release the GIL; 2 per core keeps both busy.
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    try:
        records: list[GalleryRecord | None] = [None] * len(samples)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {
                pool.submit(export_sample, sample, staging / "media" / sample.record.key): i
                for i, sample in enumerate(samples)
            }
            try:
                for future in concurrent.futures.as_completed(futures):
                    records[futures[future]] = future.result()
                    if progress is not None:
                        progress(1)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # fail fast: skip the samples not started yet
                raise
        done = [r for r in records if r is not None]
        (staging / "data").mkdir()
        (staging / DATA_SCRIPT).write_text(data_script(done, title=title, page_size=page_size), encoding="ascii")
        for name in STATIC_ASSETS:
            (staging / name).write_bytes(static_asset(name))
        marker = {"version": DATA_VERSION, "samples": len(done), "id": gallery_id(done)}
        (staging / MARKER).write_text(json.dumps(marker) + "\n")
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return GalleryBuild(out=out, records=done, page_size=page_size)


def write_gallery(
    samples: Sequence[GallerySample], out: str | os.PathLike, title: str, page_size: int, overwrite: bool
) -> GalleryBuild:
    """`build_gallery` with a progress bar on stderr (the commands' way)."""
    import sys

    from tqdm import tqdm

    with tqdm(total=len(samples), unit="sample", desc="gallery", disable=None, file=sys.stderr) as bar:
        return build_gallery(samples, out, title=title, page_size=page_size, overwrite=overwrite, progress=bar.update)


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename `staging` to `out`; an existing `out` (an earlier gallery, or empty) is moved aside, then removed."""
    os.chmod(staging, umask_mode(directory=True))  # mkdtemp makes it 0o700; the site is a folder like any other
    if not out.exists():
        os.replace(staging, out)
        return
    aside = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(out, aside)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)
