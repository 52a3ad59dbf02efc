"""`python -m jobs.gallery SOURCE --out DIR`: the curation gallery of a sweep or of a server's output store.

    python -m jobs.gallery s3://bucket/table1 --out gallery/table1       # a sweep on S3 (boto3's usual credentials)
    python -m jobs.gallery results/tiny --out gallery/tiny               # a sweep folder (manifest.parquet + samples/)
    python -m jobs.gallery results/tiny/manifest.parquet --out gallery/tiny

The store side of `imgsound_core.gallery`, which builds the page and reads `imgsound generate` folders: here a
sweep's manifest rows (prompts, seeds, scores) and its `samples/<sample_id>/` files, read through jobs.store, or —
with no manifest — a server output store's `<sample_id>/sample.json` folders (what the HTTP service's `/gallery/`
shows). Exit status: 0 done, 2 bad source or target (one sentence, nothing written).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgsound_core.gallery import (
    DEFAULT_PAGE_SIZE,
    URI_PATTERN,
    GalleryError,
    GallerySample,
    check_target,
    default_title,
    read_sample_json,
    record_from_manifest_row,
    record_from_sample_json,
    unique_keys,
    write_gallery,
)
from jobs.manifest import MANIFEST_FILE, MANIFEST_PREFIX, SAMPLE_ID_PATTERN, consolidate, read_parquet_bytes
from jobs.store import Store, StoreError, open_store

EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class StoreFiles:
    """A sample's files under `prefix` in a store (a local folder or S3)."""

    store: Store
    prefix: str

    @property
    def where(self) -> str:
        return self.store.uri_for(self.prefix)

    def read(self, name: str) -> bytes:
        try:
            return self.store.get_bytes(f"{self.prefix}/{name}")
        except StoreError as error:
            raise GalleryError(str(error).rstrip(".")) from None


def manifest_rows(store: Store, manifest_key: str | None) -> list[dict[str, Any]] | None:
    """The manifest's rows: `manifest_key`, else `manifest.parquet`, else the consolidated parts; None if none."""
    import pyarrow as pa

    def table(key: str):
        try:
            return read_parquet_bytes(store.get_bytes(key))
        except FileNotFoundError:
            raise GalleryError(f"{store.uri_for(key)} does not exist") from None
        except (ValueError, pa.ArrowException) as error:  # not Parquet, or not the manifest's columns
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise GalleryError(f"{store.uri_for(key)} is not a readable manifest ({reason})") from None

    if manifest_key is not None:
        return table(manifest_key).to_pylist()
    if store.exists(MANIFEST_FILE):
        return table(MANIFEST_FILE).to_pylist()
    parts = [key for key in store.list(MANIFEST_PREFIX) if key.endswith(".parquet")]
    if parts:  # a sweep still running (or killed): its finished batches
        return consolidate(table(key) for key in parts).to_pylist()
    return None


def sample_folders(keys: list[str]) -> list[str]:
    """The sample folders among a store's keys: those holding a `sample.json`, sorted; hidden (`.`) and internal
    (`_probe/`) folders left out."""
    prefixes = {key.rpartition("/")[0] for key in keys if key.endswith("/sample.json")}
    return sorted(p for p in prefixes if p and not any(part.startswith((".", "_")) for part in p.split("/")))


def collect_store_samples(store: Store, manifest_key: str | None = None, workers: int = 16) -> list[GallerySample]:
    """The samples of a store: a sweep's (manifest rows, files under `samples/<id>/`) or, with no manifest, a server
    output store's (`<id>/sample.json` folders, read concurrently); GalleryError if none."""
    rows = manifest_rows(store, manifest_key)
    if rows is not None:
        if not rows:
            raise GalleryError(f"the manifest of {store.uri} has no rows: the sweep has not finished a sample yet")
        for row in rows:  # a sample id becomes a store prefix: it must name a folder under samples/, nothing else
            if not SAMPLE_ID_PATTERN.fullmatch(str(row["sample_id"])):
                raise GalleryError(
                    f"the manifest of {store.uri} names a sample {str(row['sample_id'])[:40]!r} that is not a sample id"
                )
        keys = unique_keys(str(row["sample_id"]) for row in rows)
        return [
            GallerySample(record_from_manifest_row(row, key), StoreFiles(store, f"samples/{row['sample_id']}"))
            for row, key in zip(rows, keys)
        ]
    prefixes = sample_folders(store.list())
    if not prefixes:
        raise GalleryError(f"{store.uri} holds no samples (no manifest.parquet, no manifest parts, no sample.json)")
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:  # S3: one GET each, latency-bound
        blobs = list(pool.map(lambda p: store.get_bytes(f"{p}/sample.json"), prefixes))
    data = [read_sample_json(blob, store.uri_for(f"{p}/sample.json")) for blob, p in zip(blobs, prefixes)]
    keys = unique_keys(str(d.get("sample_id") or p) for d, p in zip(data, prefixes))
    return [
        GallerySample(record_from_sample_json(d, p, key), StoreFiles(store, p))
        for d, p, key in zip(data, prefixes, keys)
    ]


def collect_sweep_samples(source: str | os.PathLike, endpoint_url: str | None = None) -> list[GallerySample]:
    """The samples of a sweep output (a folder, `file:///…` or `s3://bucket/prefix`), a manifest.parquet path or
    URI (its samples are read from `samples/<sample_id>/` next to it), or a server output store."""
    text = os.fspath(source)
    root, manifest_key = text, None
    if text.endswith(".parquet"):
        if not URI_PATTERN.match(text) and not Path(text).is_file():
            raise GalleryError(f"{text} does not exist")
        root, _, manifest_key = text.rstrip("/").rpartition("/")
        root = root or "."
    elif not URI_PATTERN.match(text):
        path = Path(text)
        if not path.exists():
            raise GalleryError(f"{path} does not exist")
        if not path.is_dir():
            raise GalleryError(f"{path} is neither a sweep output folder nor a manifest.parquet")
    try:
        return collect_store_samples(open_store(root, endpoint_url=endpoint_url), manifest_key=manifest_key)
    except StoreError as error:
        raise GalleryError(str(error).rstrip(".")) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.gallery", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", metavar="SOURCE", help="sweep output (folder, file:// or s3://) or manifest.parquet")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="the site's folder")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if an earlier gallery is there")
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, metavar="N", help="cards per page")
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    args = parser.parse_args(argv)
    try:
        if args.page_size < 1:
            raise GalleryError(f"--page-size must be at least 1, got {args.page_size}")
        check_target(args.out, args.overwrite)  # before reading a large source, not after
        samples = collect_sweep_samples(args.source, args.endpoint_url)
        built = write_gallery(samples, args.out, default_title(args.source), args.page_size, args.overwrite)
    except GalleryError as error:
        print(f"gallery: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(built.summary)
    return 0


if __name__ == "__main__":
    from imgsound_core.host import end_process

    end_process(main())
