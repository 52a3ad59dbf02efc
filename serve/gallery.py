"""The gallery page of the HTTP service: the same static page as `imgsound gallery`, over the output store.

    GET /gallery/                       the page (index.html, gallery.js, gallery.css from the package)
    GET /gallery/data/samples.js        the samples in the store (re-listed at most every `refresh_s` seconds)
    GET /gallery/media/{key}/{role}     a sample's picture, spectrogram, thumbnails or audio (byte ranges served)

Media URLs are relative to the page, so it works under any route prefix. Thumbnails are made on first request
and kept (bounded). No Ray here: the Driver owns an instance and forwards its routes.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from typing import Any

from imgsound_core.gallery import (
    MEDIA_SOURCES,
    STATIC_ASSETS,
    GalleryError,
    GallerySample,
    data_script,
    make_thumbnail,
    static_asset,
)
from jobs.gallery import collect_store_samples

MEDIA_TYPES = {".png": "image/png", ".wav": "audio/wav", ".webp": "image/webp", ".jpg": "image/jpeg"}
ASSET_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}
THUMBNAIL_CACHE_SIZE = 4096
MAX_RANGE_DIGITS = 18  # byte offsets up to 10^18: parse no number longer than that
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)$")


class NotFound(Exception):
    """404, with a sentence."""


class RangeNotSatisfiable(Exception):
    """416: the requested byte range is outside the file."""


class StoreGallery:
    """Serves a store's samples to the gallery page. Thread-safe; cheap to call often."""

    def __init__(self, store: Any, refresh_s: float = 10.0, title: str = "imgsound: served samples") -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.title = title
        self._lock = threading.Lock()
        self._samples: dict[str, GallerySample] = {}
        self._listed_at = -float("inf")
        self._thumbnails: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def asset(self, name: str) -> tuple[bytes, str]:
        """index.html, gallery.js or gallery.css."""
        if name not in STATIC_ASSETS:
            raise NotFound(f"the gallery has no file {name!r}")
        return static_asset(name), ASSET_TYPES[name[name.rindex(".") :]]

    def samples(self) -> dict[str, GallerySample]:
        with self._lock:
            if time.monotonic() - self._listed_at >= self.refresh_s:
                try:
                    found = collect_store_samples(self.store)
                except GalleryError:
                    found = []  # an empty store: the page shows no cards
                self._samples = {s.record.key: s for s in found}
                self._listed_at = time.monotonic()
            return self._samples

    def data(self) -> str:
        """The page's data script; media URLs relative to the page."""
        records = [s.record for s in self.samples().values()]
        return data_script(records, media_url=lambda record, role: f"media/{record.key}/{role}", title=self.title)

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
