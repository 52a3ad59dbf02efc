"""The gallery page of the HTTP service: the same static page as `imgsound gallery`, over the output store.

    GET /gallery/                       the page (index.html, gallery.js, gallery.css from the package)
    GET /gallery/data/samples.js        the samples in the store (kept current every `refresh_s` seconds)
    GET /gallery/media/{key}/{role}     a sample's picture, spectrogram, thumbnails or audio (byte ranges served)

Media URLs are relative to the page, so it works under any route prefix. The listing is incremental: each refresh
lists the store's keys once and reads only the `sample.json` files it has not seen, and the page's data script is
rebuilt only when the set of samples changed (and answered with an ETag, so browsers revalidate for free). A
`sample.json` that cannot be read is skipped and counted, never the end of the listing. `StoreGallery` is plain
Python; `GalleryDeployment` serves it from replicas of its own, so gallery traffic never shares a thread pool
with generation.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from imgsound_core.gallery import (
    MEDIA_SOURCES,
    STATIC_ASSETS,
    GalleryError,
    GallerySample,
    data_script,
    make_thumbnail,
    read_sample_json,
    record_from_sample_json,
    static_asset,
    unique_keys,
)
from jobs.gallery import StoreFiles, sample_folders
from jobs.manifest import SAMPLE_ID_PATTERN

MEDIA_TYPES = {".png": "image/png", ".wav": "audio/wav", ".webp": "image/webp", ".jpg": "image/jpeg"}
# A job's files (serve/jobs.py), read by sample id and file name: only a sample folder's own files.
SAMPLE_FILE_TYPES = {
    "image.png": "image/png",
    "spectrogram.png": "image/png",
    "spectrogram.npy": "application/octet-stream",
    "audio.wav": "audio/wav",
    "sample.json": "application/json",
    "video.mp4": "video/mp4",
}
ASSET_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}
THUMBNAIL_CACHE_SIZE = 4096
MAX_RANGE_DIGITS = 18  # byte offsets up to 10^18: parse no number longer than that
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)$")


class NotFound(Exception):
    """404, with a sentence."""


class RangeNotSatisfiable(Exception):
    """416: the requested byte range is outside the file."""


def asset(name: str) -> tuple[bytes, str]:
    """The page's own files (index.html, gallery.js, gallery.css) and their media types; nothing else."""
    if name not in STATIC_ASSETS:
        raise NotFound(f"the gallery has no file {name!r}")
    return static_asset(name), ASSET_TYPES[name[name.rindex(".") :]]


class StoreGallery:
    """Serves a server output store's samples (`<sample_id>/sample.json` folders) to the gallery page. Thread-safe."""

    def __init__(
        self, store: Any, refresh_s: float = 10.0, title: str = "imgsound: served samples", read_workers: int = 16
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.title = title
        self.read_workers = read_workers
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}  # prefix → its sample.json
        self._bad: dict[str, str] = {}  # prefix → why its sample.json was skipped
        self._samples: dict[str, GallerySample] = {}
        self._script: tuple[str, str] | None = None  # (data script, its ETag), built on demand after a change
        self._listed_at = -float("inf")
        self._refreshing = threading.Lock()
        self._thumbnails: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    @property
    def bad_records(self) -> dict[str, str]:
        """Sample folders whose sample.json was skipped, with the reason."""
        with self._lock:
            return dict(self._bad)

    def refresh(self) -> bool:
        """List the store once; read the sample.json of folders not seen before; forget vanished ones.

        Returns whether the set of samples changed. Store failures propagate (StoreError) and leave the last
        listing in place.
        """
        prefixes = set(sample_folders(self.store.list()))
        with self._lock:
            known = set(self._records) | set(self._bad)
        new = sorted(prefixes - known)

        def read(prefix: str) -> tuple[str, dict[str, Any] | None, str | None]:
            where = self.store.uri_for(f"{prefix}/sample.json")
            try:
                return prefix, read_sample_json(self.store.get_bytes(f"{prefix}/sample.json"), where), None
            except FileNotFoundError:
                return prefix, None, None  # deleted since the listing: seen again at the next one if it returns
            except GalleryError as error:
                return prefix, None, str(error)

        with ThreadPoolExecutor(max_workers=self.read_workers) as pool:  # S3: one GET each, latency-bound
            results = list(pool.map(read, new))
        with self._lock:
            changed = bool(known - prefixes)
            for prefix in known - prefixes:
                self._records.pop(prefix, None)
                self._bad.pop(prefix, None)
            for prefix, record, problem in results:
                if record is not None:
                    self._records[prefix] = record
                    changed = True
                elif problem is not None:
                    self._bad[prefix] = problem
            if changed or not self._samples and self._records:
                ordered = sorted(self._records)
                keys = unique_keys(str(self._records[p].get("sample_id") or p) for p in ordered)
                self._samples = {
                    key: GallerySample(record_from_sample_json(self._records[p], p, key), StoreFiles(self.store, p))
                    for p, key in zip(ordered, keys)
                }
                self._script = None
            self._listed_at = time.monotonic()
        return changed

    def samples(self) -> dict[str, GallerySample]:
        if time.monotonic() - self._listed_at >= self.refresh_s:
            with self._refreshing:  # one refresh at a time: concurrent requests wait for it rather than repeat it
                if time.monotonic() - self._listed_at >= self.refresh_s:
                    self.refresh()
        with self._lock:
            return self._samples

    def data(self) -> tuple[str, str]:
        """The page's data script (media URLs relative to the page) and its ETag; rebuilt only after a change."""
        samples = self.samples()
        with self._lock:
            if self._script is None:
                records = [s.record for s in samples.values()]
                script = data_script(
                    records, media_url=lambda record, role: f"media/{record.key}/{role}", title=self.title
                )
                self._script = (script, '"' + hashlib.sha256(script.encode()).hexdigest()[:32] + '"')
            return self._script

    def media(self, key: str, role: str) -> tuple[bytes, str]:
        """A sample's file for a page role; thumbnails are made once and cached."""
        if role not in MEDIA_SOURCES:
            raise NotFound(f"unknown media role {role!r} (one of {', '.join(MEDIA_SOURCES)})")
        sample = self.samples().get(key)
        if sample is None:
            raise NotFound(f"no sample {key!r} in the output store")
        source = MEDIA_SOURCES[role]
        if role.endswith("_thumb"):
            with self._lock:
                cached = self._thumbnails.get((key, role))
            if cached is None:
                try:
                    cached = make_thumbnail(self._read(sample, source)).data
                except (OSError, ValueError, SyntaxError) as error:  # Pillow's errors for corrupt pictures
                    raise NotFound(
                        f"{source} of sample {key} is not a readable picture ({type(error).__name__})"
                    ) from None
                with self._lock:
                    self._thumbnails[(key, role)] = cached
                    while len(self._thumbnails) > THUMBNAIL_CACHE_SIZE:
                        self._thumbnails.popitem(last=False)
            kind = "image/webp" if cached[:4] == b"RIFF" else "image/jpeg"
            return cached, kind
        return self._read(sample, source), MEDIA_TYPES[source[source.rindex(".") :]]

    @staticmethod
    def _read(sample: GallerySample, name: str) -> bytes:
        try:
            return sample.files.read(name)
        except FileNotFoundError:
            raise NotFound(f"{name} of sample {sample.record.key} is missing") from None


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive `(start, end)` of a single `Range: bytes=…` header; None for the whole file."""
    if not header:
        return None
    match = _RANGE_RE.match(header.strip())
    if match is None:
        return None  # malformed or several ranges: the whole file, as RFC 9110 allows
    first, last = match.groups()
    if len(first) > MAX_RANGE_DIGITS or len(last) > MAX_RANGE_DIGITS:
        raise RangeNotSatisfiable(f"the range asks for bytes beyond any {size}-byte file")
    if first == "" and last == "":
        return None
    if first == "":  # a suffix: the last N bytes
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable(f"an empty suffix range of a {size}-byte file")
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(f"bytes {start}-{last} are outside a {size}-byte file")
    return start, end


@serve.deployment(max_ongoing_requests=32)
class GalleryDeployment:
    """The gallery's own replicas: listing, thumbnails and media
    reads happen here, never in the Driver or the Renderer, so gallery traffic cannot slow generation down."""

    def __init__(self, output_store: str | None) -> None:
        from ray.serve import metrics

        from jobs.store import open_store

        self.gallery = StoreGallery(open_store(output_store)) if output_store else None
        self.bad_records = metrics.Gauge(
            "imgsound_gallery_bad_records", "Sample folders of the output store whose sample.json the gallery skipped"
        )

    def _gallery(self) -> StoreGallery:
        if self.gallery is None:
            raise NotFound("this server has no output store, so there is no gallery")
        return self.gallery

    def enabled(self) -> bool:
        return self.gallery is not None

    async def data(self) -> tuple[str, str]:
        gallery = self._gallery()
        answer = await asyncio.to_thread(gallery.data)
        self.bad_records.set(len(gallery.bad_records))
        return answer

    async def media(self, key: str, role: str) -> tuple[bytes, str]:
        return await asyncio.to_thread(self._gallery().media, key, role)

    async def sample_file(self, sample_id: str, name: str) -> tuple[bytes, str]:
        """A file of the sample folder `<sample_id>/` as the Renderer wrote it (a job's result: no listing needed,
        so a sample is served the moment it is written)."""
        if not SAMPLE_ID_PATTERN.fullmatch(sample_id) or name not in SAMPLE_FILE_TYPES:
            raise NotFound("no such sample file")
        store = self._gallery().store
        try:
            return await asyncio.to_thread(store.get_bytes, f"{sample_id}/{name}"), SAMPLE_FILE_TYPES[name]
        except FileNotFoundError:
            raise NotFound(f"{name} of sample {sample_id} is missing from the output store") from None
