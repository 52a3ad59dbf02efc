"""A sweep worker: generates batches of grid points with the core sampler and writes them to the store.

Plain Python (the sweep wraps it in a Ray actor). Per batch: generate every sample in one batched pass, write each
sample's artifacts (`samples/<sample_id>/…`, `sample.json` last), then the batch's manifest part — so a manifest
row never names a file that is not there.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch

from imgsound_core.artifacts import render_artifacts
from imgsound_core.audio.vocoder import GriffinLimVocoder, HiFiGANVocoder
from imgsound_core.identity import SampleContext, model_identity, sample_id, sample_record
from imgsound_core.imprint import ImprintSampler
from imgsound_core.methods import REQUEST_TYPES
from imgsound_core.models.bundle import audio_parts, load_bundle, parse_dtype
from imgsound_core.sampler import Sampler
from imgsound_core.text import prompt_truncation
from jobs.manifest import COLUMNS, batch_part_key, parquet_bytes, table_from_rows
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
        from imgsound_core.cli import quiet_libraries

        quiet_libraries()
        self.spec = SweepSpec.model_validate(spec)
        self.store = open_store(output_uri, endpoint_url=endpoint_url)
        self.device = resolve_device(self.spec.models.device)
        dtype = parse_dtype(self.spec.models.dtype)
        models, method = self.spec.models, self.spec.method
        if method == "sds":  # IF stage I is the image prior; no image model
            from imgsound_core.models.deepfloyd import load_if_stage

            self.image = load_if_stage(models.image_prior, 1, device=self.device, dtype=dtype)
        else:
            self.image = load_bundle(models.image, "image", device=self.device, dtype=dtype)
        parts = audio_parts(self.spec.vocoder)
        self.audio = load_bundle(models.audio, "audio", parts=parts, device=self.device, dtype=dtype)
        self.vocoder = HiFiGANVocoder.from_bundle(self.audio) if self.spec.vocoder == "hifigan" else GriffinLimVocoder()
        if method == "denoise":
            self.sampler = Sampler(self.image, self.audio, self.vocoder, max_batch_samples=self.spec.batch_size)
        elif method == "imprint":
            self.sampler = ImprintSampler(self.image, self.audio, self.vocoder, self.spec.batch_size)
        self.context = SampleContext(
            model_identity(self.image),
            model_identity(self.audio),
            models.dtype,
            self.spec.vocoder,
            self.spec.crop,
            method=method,
        )
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, points: list[dict[str, Any]]) -> dict[str, Any]:
        """Generate `points` (dicts of sample_id, pair_index, sample_index, request) and store them.

        Returns `{"part": key, "sample_ids": [...]}`. Idempotent: a retried batch rewrites the same files.
        """
        request_type = REQUEST_TYPES[self.spec.method]
        requests = [request_type.from_dict(p["request"]) for p in points]
        for point, request in zip(points, requests):
            own = sample_id(request, self.context)
            if own != point["sample_id"]:
                # The weights here are not the ones the sweep was planned with (another revision or folder on
                # this node): writing them under the planned id would store a different sample under it.
                raise RuntimeError(
                    f"this worker's models ({self.context.image_model.key}, {self.context.audio_model.key}) are "
                    f"not the ones the sweep was planned with (sample {point['sample_id']} would be {own})"
                )
        rows = []
        for result in self._generate(requests):
            point = points[int(result.key)]
            rows.append(self._store_sample(point, result))
        part = batch_part_key(p["sample_id"] for p in points)
        self.store.put_bytes(part, parquet_bytes(table_from_rows(rows)))
        return {"part": part, "sample_ids": [r["sample_id"] for r in rows]}

    def _generate(self, requests: list) -> Iterator[Any]:
        """Results with `key`, `request`, `image`, `spectrogram`, `waveform`, `timings_s`, whatever the method."""
        if self.spec.method != "sds":
            yield from self.sampler.generate(requests)
            return
        from imgsound_core.sds import SDSRun

        for index, settings in enumerate(requests):  # one optimisation per sample: nothing to batch across them
            started = time.perf_counter()
            run = SDSRun(settings, self.image, self.audio, device=self.device)
            run.run()
            optimised = time.perf_counter()
            image, spectrogram, waveform = run.sample(self.vocoder)
            yield SimpleNamespace(
                key=str(index),
                request=settings,
                image=image,
                spectrogram=spectrogram,
                waveform=waveform,
                timings_s={"denoise": optimised - started, "decode": 0.0, "vocode": time.perf_counter() - optimised},
            )

    def _store_sample(self, point: dict[str, Any], result) -> dict[str, Any]:
        spec, request = self.spec, result.request
        record = sample_record(
            request,
            self.context,
            sample_index=point["sample_index"],
            device=str(self.device),
            timings_s=result.timings_s,
            extra={"sweep": spec.name, "pair_index": point["pair_index"]},
            prompt_tokens_dropped=prompt_truncation(request, self.image.tokenizer, self.audio.tokenizer),
        )
        sample_id = record["sample_id"]
        settings = request.to_dict()
        original = getattr(result, "original_spectrogram", None)  # imprint: the spectrogram before the imprint
        artifacts = render_artifacts(
            result.image,
            result.spectrogram,
            result.waveform,
            record,
            crop=spec.crop,
            extra_pictures={"spectrogram_original.png": original} if original is not None else None,
            video=spec.video,
        )
        uris = {}
        for name in [n for n in artifacts if n != "sample.json"] + ["sample.json"]:  # sample.json last: complete
            uri = self.store.put_bytes(f"samples/{sample_id}/{name}", artifacts[name])
            if name in URI_COLUMNS:
                uris[URI_COLUMNS[name]] = uri
        return {
            **{column: None for column in COLUMNS},
            **{k: v for k, v in settings.items() if k in COLUMNS},
            "sample_id": sample_id,
            "sweep": spec.name,
            "method": spec.method,
            "settings_json": json.dumps(settings, sort_keys=True),
            "pair_index": point["pair_index"],
            "sample_index": point["sample_index"],
            "vocoder": spec.vocoder,
            "crop": spec.crop,
            "image_model": spec.image_source,
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
        }
