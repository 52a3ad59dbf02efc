"""The Renderer deployment: a sample's files (PNG / WAV / NPY / MP4 / sample.json) and their store writes.

Encoding (and ffmpeg for a video, 2–3 s of CPU a sample) and uploads run here, on CPU replicas of their own, so
the ingress never blocks on them and rendering scales by adding replicas.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from ray import serve

from imgsound_core.artifacts import render_artifacts
from imgsound_core.host import prepare_model_process
from jobs.store import Store, StoreError, open_store
from serve.api import OUTPUT_FILES
from serve.metrics import StageMetrics, WorkAbandoned


def open_output_store(uri: str | None) -> Store | None:
    """The output store (`file:///dir`, a folder, or `s3://bucket/prefix`); None for inline-only serving."""
    if uri is None:
        return None
    store = open_store(uri)
    store.check_writable()  # fail at start-up, not on the first request
    return store


@dataclass
class RenderedSample:
    """One sample's outputs: base64 bytes by output name (when inline) and store URIs (when a store is set)."""

    base64: dict[str, str] = field(default_factory=dict)
    uris: dict[str, str] = field(default_factory=dict)


@serve.deployment(max_ongoing_requests=8)
class RendererDeployment:
    """`output_store`: None, or the URI every sample is also written to as `<sample_id>/<file>`."""

    def __init__(self, output_store: str | None, torch_threads: int | None = None) -> None:
        prepare_model_process(torch_threads)
        self.store = open_output_store(output_store)
        self.metrics = StageMetrics("render")

    def _render_one(
        self,
        stop: threading.Event,
        image: torch.Tensor,
        spectrogram: torch.Tensor,
        waveform: torch.Tensor,
        record: dict[str, Any],
        crop: bool,
        outputs: list[str],
        inline: bool,
    ) -> RenderedSample:
        if stop.is_set():  # the caller has gone: nobody would receive these files
            self.metrics.dropped(1)
            raise WorkAbandoned
        artifacts = render_artifacts(image, spectrogram, waveform, record, crop=crop, video="video" in outputs)
        wanted = {OUTPUT_FILES[name]: name for name in outputs}
        rendered = RenderedSample()
        if self.store is not None:
            # The id hashes everything that decides the sample, so an existing folder holds the same sample;
            # sample.json goes last, so a folder with one is complete.
            for file in sorted(artifacts, key=lambda name: name == "sample.json"):
                uri = self.store.put_bytes(f"{record['sample_id']}/{file}", artifacts[file])
                if file in wanted:
                    rendered.uris[wanted[file]] = uri
        if inline or self.store is None:
            rendered.base64 = {name: base64.b64encode(artifacts[file]).decode("ascii") for file, name in wanted.items()}
        self.metrics.finished(1)
        return rendered

    async def render(
        self,
        images: torch.Tensor,
        spectrograms: torch.Tensor,
        waveforms: torch.Tensor,
        records: list[dict[str, Any]],
        crop: bool,
        outputs: list[str],
        inline: bool,
    ) -> list[RenderedSample] | StoreError:
        """The files of a request's samples (`(B, 3, H, W)` pictures, `(B, H, W)` spectrograms, `(B, W·160)`
        waveforms, one record each). A store failure is returned, not raised: the Driver answers it with a 503. A
        cancelled call (its caller timed out or left) renders no sample that has not started."""
        stop = threading.Event()
        try:
            return await asyncio.gather(
                *(
                    asyncio.to_thread(
                        self._render_one, stop, images[i], spectrograms[i], waveforms[i], record, crop, outputs, inline
                    )
                    for i, record in enumerate(records)
                )
            )
        except StoreError as error:
            return error
        except asyncio.CancelledError:
            stop.set()
            raise
