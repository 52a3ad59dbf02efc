"""A sweep's writing stage: a generated batch → its files and its manifest part, in the exactly-once order.

`SampleWriter.write(batch)` stores each sample's artifacts (`samples/<sample_id>/…`, `sample.json` last), then the
batch's manifest part, so a manifest row never names a file that is not there. The batch comes from
`jobs.worker.SweepWorker.generate` as plain arrays; this module needs neither torch nor the model libraries, so a
writer process starts in a fraction of a second and holds no model runtime (jobs/pipeline.py's write stage).
"""

from __future__ import annotations

import datetime as dt
import os
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgsound_core.artifacts import render_artifacts
from jobs.manifest import batch_part_key, parquet_bytes, table_from_rows
from jobs.spec import SweepSpec
from jobs.store import open_store

URI_COLUMNS = {
    "image.png": "image_uri",
    "spectrogram.png": "spectrogram_uri",
    "spectrogram.npy": "spectrogram_npy_uri",
    "audio.wav": "audio_uri",
    "video.mp4": "video_uri",
    "sample.json": "record_uri",
}


@dataclass
class GeneratedSample:
    """One generated sample on its way to storage. Arrays are float32 numpy (they cross processes as they are).

    Attributes:
        point: the grid point's payload (sample_id, pair_index, sample_index, request).
        record: `sample.json`'s content (`imgsound_core.identity.sample_record`).
        row: the sample's manifest row without the artifact URIs and the write time.
        image: `(3, H, W)` in [0, 1]; spectrogram: `(H, W)` in [0, 1]; waveform: `(W · 160,)` at 16 kHz.
        pictures: further spectrogram pictures by file name (imprint: the spectrogram before the imprint).
    """

    point: dict[str, Any]
    record: dict[str, Any]
    row: dict[str, Any]
    image: np.ndarray
    spectrogram: np.ndarray
    waveform: np.ndarray
    pictures: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class GeneratedBatch:
    """A batch of generated samples, in the order of the batch's points (`points` names them all)."""

    points: list[dict[str, Any]]
    samples: list[GeneratedSample]


class SampleWriter:
    """Encodes generated samples into their files and writes them, then the batch's manifest part. No models.

    Storage is latency-bound (an S3 PUT waits tens of milliseconds whatever its size), so a batch's files go up
    `UPLOAD_THREADS` at a time while the next samples are encoded — in an order that keeps the exactly-once rules:
    every sample's other files, then the `sample.json` files (a sample is complete once its record is there), then
    the part (a manifest row only after its artifacts). Samples are encoded `RENDER_THREADS` at a time: PNG's
    deflate, numpy and ffmpeg run outside the GIL, so a batch of 16 at 256×1024 took 0.4 s instead of 0.8 s on two
    cores — what a sweep's end waits for once the last batch is generated.
    """

    UPLOAD_THREADS = 8  # below botocore's default connection pool (10)
    RENDER_THREADS = min(4, os.cpu_count() or 1)

    def __init__(self, spec: dict[str, Any], output_uri: str, endpoint_url: str | None = None) -> None:
        self.spec = SweepSpec.model_validate(spec)
        self.store = open_store(output_uri, endpoint_url=endpoint_url)

    def write(self, batch: GeneratedBatch, keep: tuple[str, ...] = ()) -> dict[str, Any]:
        """Store every sample of `batch`, then its part; `{"part", "sample_ids", "files"}`.

        Idempotent: a retried batch rewrites the same files and the same part. `files` holds, per sample, the
        bytes of the artifacts named in `keep` (for a later stage that needs them, e.g. scoring, without reading
        them back from the store).
        """
        rows, files, records, uploads = [], [], [], []
        with (
            ThreadPoolExecutor(self.UPLOAD_THREADS, thread_name_prefix="upload") as pool,
            ThreadPoolExecutor(self.RENDER_THREADS, thread_name_prefix="render") as renderers,
        ):
            for sample, artifacts in zip(batch.samples, renderers.map(self._render, batch.samples), strict=True):
                sample_id = sample.record["sample_id"]
                uris = {
                    URI_COLUMNS[name]: self.store.uri_for(f"samples/{sample_id}/{name}")
                    for name in artifacts
                    if name in URI_COLUMNS
                }
                for name, data in artifacts.items():
                    if name != "sample.json":
                        uploads.append(pool.submit(self.store.put_bytes, f"samples/{sample_id}/{name}", data))
                records.append((f"samples/{sample_id}/sample.json", artifacts["sample.json"]))
                created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                rows.append({**sample.row, **uris, "created_utc": created})
                files.append({name: artifacts[name] for name in keep})
            _wait_all(uploads)
            _wait_all([pool.submit(self.store.put_bytes, key, data) for key, data in records])
        part = batch_part_key(p["sample_id"] for p in batch.points)
        self.store.put_bytes(part, parquet_bytes(table_from_rows(rows)))
        return {"part": part, "sample_ids": [r["sample_id"] for r in rows], "files": files}

    def _render(self, sample: GeneratedSample) -> dict[str, bytes]:
        return render_artifacts(
            sample.image,
            sample.spectrogram,
            sample.waveform,
            sample.record,
            crop=self.spec.crop,
            extra_pictures=sample.pictures,
            video=self.spec.video,
        )


def _wait_all(futures: list[Future]) -> None:
    """Wait for every upload, then raise the first failure (none is left running behind the caller's back)."""
    wait(futures)
    for future in futures:
        future.result()
