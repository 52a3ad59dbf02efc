"""A sweep worker: generates batches of grid points with the core sampler and writes them to the store.

Plain Python (the sweep wraps it in a Ray actor). Per batch: generate every sample in one batched pass, write each
sample's artifacts (`samples/<sample_id>/…`, `sample.json` last), then the batch's manifest part — so a manifest
row never names a file that is not there.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from typing import Any

import torch

from imgsound_core import __version__
from imgsound_core.artifacts import ARTIFACT_NAMES, render_artifacts
from imgsound_core.audio.vocoder import GriffinLimVocoder, HiFiGANVocoder
from imgsound_core.models.bundle import load_bundle, parse_dtype
from imgsound_core.request import SampleRequest
from imgsound_core.sampler import Sampler
from jobs.manifest import batch_part_key, parquet_bytes, table_from_rows
from jobs.spec import SweepSpec
from jobs.store import open_store

# Written last: its presence means the sample folder is complete.
ARTIFACT_ORDER = tuple(n for n in ARTIFACT_NAMES if n != "sample.json") + ("sample.json",)
URI_COLUMNS = {
    "image.png": "image_uri",
    "spectrogram.png": "spectrogram_uri",
    "spectrogram.npy": "spectrogram_npy_uri",
    "audio.wav": "audio_uri",
    "sample.json": "record_uri",
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SweepWorker:
    """Holds both models and the vocoder; `run(points)` generates and stores one batch."""

    def __init__(
        self, spec: dict[str, Any], output_uri: str, endpoint_url: str | None = None, torch_threads: int | None = None
    ) -> None:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        from imgsound_core.cli import _quiet_libraries

        _quiet_libraries()
        self.spec = SweepSpec.model_validate(spec)
        self.store = open_store(output_uri, endpoint_url=endpoint_url)
        self.device = resolve_device(self.spec.models.device)
        dtype = parse_dtype(self.spec.models.dtype)
        models = self.spec.models
        self.image = load_bundle(models.image, "image", device=self.device, dtype=dtype)
        audio_parts = {"unet", "vae", "text"} | ({"vocoder"} if self.spec.vocoder == "hifigan" else set())
        self.audio = load_bundle(models.audio, "audio", parts=audio_parts, device=self.device, dtype=dtype)
        vocoder = (
            HiFiGANVocoder(self.audio.vocoder, device=self.device, dtype=next(self.audio.vocoder.parameters()).dtype)
            if self.spec.vocoder == "hifigan"
            else GriffinLimVocoder()
        )
        self.sampler = Sampler(self.image, self.audio, vocoder, max_batch_samples=self.spec.batch_size)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, points: list[dict[str, Any]]) -> dict[str, Any]:
        """Generate `points` (dicts of sample_id, pair_index, sample_index, request) and store them.

        Returns `{"part": key, "sample_ids": [...]}`. Idempotent: a retried batch rewrites the same files.
        """
        requests = [SampleRequest.from_dict(p["request"]) for p in points]
        rows = []
        for result in self.sampler.generate(requests):
            point = points[int(result.key)]
            rows.append(self._store_sample(point, result))
        part = batch_part_key(p["sample_id"] for p in points)
        self.store.put_bytes(part, parquet_bytes(table_from_rows(rows)))
        return {"part": part, "sample_ids": [r["sample_id"] for r in rows]}

    def _store_sample(self, point: dict[str, Any], result) -> dict[str, Any]:
        spec, request = self.spec, result.request
        sample_id = point["sample_id"]
        record = {
            **request.to_dict(),
            "sample_id": sample_id,
            "sweep": spec.name,
            "pair_index": point["pair_index"],
            "sample_index": point["sample_index"],
            "image_model": self.image.describe(),
            "audio_model": self.audio.describe(),
            "vocoder": spec.vocoder,
            "timings_s": result.timings_s,
            "versions": {"imgsound": __version__, "torch": torch.__version__},
        }
        artifacts = render_artifacts(result.image, result.spectrogram, result.waveform, record, crop=spec.crop)
        uris = {}
        for name in ARTIFACT_ORDER:
            uris[URI_COLUMNS[name]] = self.store.put_bytes(f"samples/{sample_id}/{name}", artifacts[name])
        return {
            **{k: v for k, v in request.to_dict().items()},
            "sample_id": sample_id,
            "sweep": spec.name,
            "pair_index": point["pair_index"],
            "sample_index": point["sample_index"],
            "vocoder": spec.vocoder,
            "crop": spec.crop,
            "image_model": spec.models.image,
            "audio_model": spec.models.audio,
            "image_model_revision": self.image.revision,
            "audio_model_revision": self.audio.revision,
            "dtype": spec.models.dtype,
            "device": str(self.device),
            **uris,
            "denoise_s": result.timings_s["denoise"],
            "decode_s": result.timings_s["decode"],
            "vocode_s": result.timings_s["vocode"],
            "status": "ok",
            "worker": self.name,
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "clip_score": None,
            "clap_score": None,
            "cycle_mae": None,
            "cycle_correlation": None,
        }
