"""A sweep's two kinds of work on a batch of grid points: generating (models, the accelerator) and writing (files).

Plain Python; the sweep runs them as stages of one streaming pipeline (jobs/pipeline.py), so the accelerator
generates the next batch while the previous one is encoded and uploaded.

- `SweepWorker.generate(points)` → `GeneratedBatch`: every sample of the batch in one batched pass, with its
  record (sample id, settings, model identities, timings) and its manifest row, less the files' URIs.
- `SampleWriter.write(batch)` (jobs/writer.py, which needs no torch): each sample's artifacts
  (`samples/<sample_id>/…`, `sample.json` last), then the batch's manifest part — so a manifest row never names a
  file that is not there.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from imgsound_core.audio.vocoder import GriffinLimVocoder, HiFiGANVocoder
from imgsound_core.host import prepare_model_process
from imgsound_core.identity import SampleContext, model_identity, sample_id, sample_record
from imgsound_core.imprint import ImprintSampler
from imgsound_core.init_source import InitSourceError, source_sha256
from imgsound_core.methods import REQUEST_TYPES
from imgsound_core.models.bundle import audio_parts, load_bundle, parse_dtype
from imgsound_core.sampler import Sampler
from imgsound_core.text import prompt_truncation
from jobs.manifest import COLUMNS
from jobs.spec import SweepSpec, load_source, read_source
from jobs.writer import GeneratedBatch, GeneratedSample, SampleWriter


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SweepWorker:
    """Holds both models and the vocoder; `generate(points)` makes one batch, `run(points)` also stores it."""

    def __init__(
        self,
        spec: dict[str, Any],
        output_uri: str | None = None,
        endpoint_url: str | None = None,
        torch_threads: int | None = None,
    ) -> None:
        prepare_model_process(torch_threads)
        from imgsound_core.cli import quiet_libraries

        quiet_libraries()
        self.spec = SweepSpec.model_validate(spec)
        self.writer = SampleWriter(spec, output_uri, endpoint_url) if output_uri is not None else None
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
        # Compiled (on CUDA by default) bucket by bucket as batches arrive: a sweep's batches are all one size
        # but its last, so a warm-up of every bucket would compile graphs that never run.
        if method == "denoise":
            self.sampler = Sampler(self.image, self.audio, self.vocoder, self.spec.batch_size, compile=models.compile)
        elif method == "imprint":
            self.sampler = ImprintSampler(
                self.image, self.audio, self.vocoder, self.spec.batch_size, compile=models.compile
            )
        self.context = SampleContext(
            model_identity(self.image),
            model_identity(self.audio),
            models.dtype,
            self.spec.vocoder,
            self.spec.crop,
            method=method,
        )
        self.name = worker_name()
        self.endpoint_url = endpoint_url
        self._source_bytes: dict[str, tuple[str, bytes]] = {}  # sha256 → (uri, bytes), read once per worker
        self._source_latents: dict[tuple, torch.Tensor] = {}  # (sources, size, audio weight) → clean latent

    def run(self, points: list[dict[str, Any]]) -> dict[str, Any]:
        """Generate `points` and store them (the worker needs an `output_uri`): `{"part", "sample_ids"}`."""
        if self.writer is None:
            raise RuntimeError("this worker has no store: pass output_uri to store what it generates")
        return self.writer.write(self.generate(points))

    def generate(self, points: list[dict[str, Any]]) -> GeneratedBatch:
        """Generate `points` (dicts of sample_id, pair_index, sample_index, request), in one batched pass.

        Refuses the whole batch, before any work, if a point's id is not the one these models give it.
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
        samples = [self._sample(points[int(result.key)], result) for result in self._generate(requests)]
        return GeneratedBatch(points=points, samples=samples)

    def _generate(self, requests: list) -> Iterator[Any]:
        """Results with `key`, `request`, `image`, `spectrogram`, `waveform`, `timings_s`, whatever the method."""
        if self.spec.method == "denoise":
            yield from self.sampler.generate(requests, init=[self._source_latent(r) for r in requests])
            return
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

    def _source_latent(self, request) -> torch.Tensor | None:
        """The clean latent a request starts from (None at strength 1), computed once per source and size."""
        if request.strength >= 1.0:
            return None
        key = (
            request.init_image_sha256,
            request.init_audio_sha256,
            request.height,
            request.width,
            request.audio_weight,
        )
        if key not in self._source_latents:
            pictures = {}
            for kind in ("image", "audio"):
                digest = getattr(request, f"init_{kind}_sha256")
                if digest is not None:
                    uri, data = self._source(kind, digest)
                    pictures[kind] = load_source(kind, data, request.height, request.width, uri).pixels()
            self._source_latents[key] = self.sampler.source_latent(**pictures, audio_weight=request.audio_weight)
        return self._source_latents[key]

    def _source(self, kind: str, digest: str) -> tuple[str, bytes]:
        """`(uri, bytes)` of the spec's source whose planned SHA-256 is `digest`, read here and checked against it:
        a file changed since the sweep was planned would be stored under an id that names other bytes."""
        if digest not in self._source_bytes:
            planned = [f for k, f in self.spec.sources() if k == kind and f.sha256 == digest]
            if not planned:
                raise RuntimeError(f"no init_{kind}s entry of the spec has the planned SHA-256 {digest}")
            uri = planned[0].uri
            try:
                data = read_source(uri, self.endpoint_url)
            except InitSourceError as error:
                raise RuntimeError(f"the source {error}") from None
            found = source_sha256(data)
            if found != digest:
                raise RuntimeError(
                    f"the source {uri} changed since the sweep was planned (SHA-256 {found}, planned {digest}); "
                    "resubmit the sweep to plan it with the new bytes"
                )
            self._source_bytes[digest] = (uri, data)
        return self._source_bytes[digest]

    def _sample(self, point: dict[str, Any], result) -> GeneratedSample:
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
        settings = request.to_dict()
        row = {
            **{column: None for column in COLUMNS},
            **{k: v for k, v in settings.items() if k in COLUMNS},
            "sample_id": record["sample_id"],
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
            "denoise_s": result.timings_s["denoise"],
            "decode_s": result.timings_s["decode"],
            "vocode_s": result.timings_s["vocode"],
            "status": "ok",
            "worker": self.name,
        }
        original = getattr(result, "original_spectrogram", None)  # imprint: the spectrogram before the imprint
        return GeneratedSample(
            point=point,
            record=record,
            row=row,
            image=_array(result.image),
            spectrogram=_array(result.spectrogram),
            waveform=_array(result.waveform),
            pictures={"spectrogram_original.png": _array(original)} if original is not None else {},
        )


def worker_name() -> str:
    """`host:pid`, and inside a Ray worker `host/node-id:pid`: nodes of one machine (or of one pod template) share a
    host name, and the manifest's `worker` column should tell the nodes apart."""
    name = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            name = f"{name}/{ray.get_runtime_context().get_node_id()[:12]}"
    except ImportError:  # the worker runs without Ray (in-process sweeps, tests)
        pass
    return f"{name}:{os.getpid()}"


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
