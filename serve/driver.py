"""The driver: the HTTP ingress that runs each request's DDIM loop over the remote UNets.

Per request it holds the latents in a core `StepScheduler` and, at every step, sends that request's rows to
both UNet deployments concurrently; their `@serve.batch` merges the rows of every request in flight — at
whatever step each is — into one forward (continuous batching: a new request joins the next forward). Then
the core combines the estimates and takes the DDIM step, exactly as the CLI does, so the same seed gives the same
sample. Failed remote calls are retried (a step is a pure function of its inputs) and then answered with a 503.
"""

import asyncio
import base64
import logging
import time
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.handle import DeploymentHandle

from imgsound_core import __version__
from imgsound_core.artifacts import render_artifacts
from imgsound_core.noise import initial_latents, latent_shape
from imgsound_core.request import RequestError
from imgsound_core.scheduler import ModelInputs, StepScheduler
from jobs.store import Store, StoreError, open_store
from serve.api import OUTPUT_FILES, GenerateBody, GenerateResponse, Health, SampleOut
from serve.config import AppArgs
from serve.gallery import NotFound, RangeNotSatisfiable, StoreGallery, byte_range
from serve.metrics import ServeMetrics

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="imgsound",
    version=__version__,
    description="Images that sound: spectrograms that look like a picture and play as natural audio.",
)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 naming each bad field. The offending input is not echoed: it may not be JSON (NaN) or may be huge."""
    problems = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in error.errors()
    ]
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in problems)
    return JSONResponse(status_code=422, content={"detail": problems, "message": summary})


class ServiceUnavailable(Exception):
    """A deployment did not answer after the retries; the message says which."""


class QueueFull(Exception):
    pass


class InternalError(Exception):
    """A deployment raised on this request (a bug, not an outage): 500."""


def open_output_store(uri: str | None) -> Store | None:
    """The output store (`file:///dir`, a folder, or `s3://bucket/prefix`); None for inline-only serving."""
    if uri is None:
        return None
    store = open_store(uri)
    store.check_writable()  # fail at start-up, not on the first request
    return store


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(api)
class Driver:
    def __init__(
        self,
        image_unet: DeploymentHandle,
        audio_unet: DeploymentHandle,
        vocoder: DeploymentHandle,
        args: dict[str, Any],
    ) -> None:
        self.args = AppArgs.model_validate(args)
        self.image_unet = image_unet
        self.audio_unet = audio_unet
        self.vocoder = vocoder
        self.metrics = ServeMetrics()
        self.samples_in_flight = 0
        self._model_info: dict[str, Any] | None = None
        self.store = open_output_store(self.args.output_store)
        self.gallery = StoreGallery(self.store) if self.store is not None else None

    # ---- remote calls -------------------------------------------------------------------------------------
    async def _call(self, deployment: str, method, *payload):
        """Call a deployment method with a timeout; retry on replica failure; ServiceUnavailable at the end."""
        resilience = self.args.resilience
        for attempt in range(resilience.max_retries + 1):
            response = method.remote(*payload)
            try:
                return await asyncio.wait_for(response, timeout=resilience.call_timeout_s)
            except RayTaskError as error:
                # The deployment's own code raised: retrying the same inputs would raise again.
                logger.error("%s raised: %s", deployment, error)
                raise InternalError(f"the {deployment} deployment failed on this request") from None
            except (RayError, TimeoutError) as error:
                response.cancel()
                logger.warning("%s call failed (attempt %d): %r", deployment, attempt + 1, error)
                if attempt == resilience.max_retries:
                    reason = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
                    raise ServiceUnavailable(
                        f"the {deployment} deployment failed ({reason}) {attempt + 1} times; try again shortly"
                    ) from None
                self.metrics.retries.labels(deployment=deployment).inc()
                await asyncio.sleep(resilience.retry_backoff_s * (attempt + 1))
        raise AssertionError("unreachable")

    async def model_info(self) -> dict[str, Any]:
        if self._model_info is None:
            image, audio, vocoder = await asyncio.gather(
                self._call("ImageUNet", self.image_unet.model_info),
                self._call("AudioUNet", self.audio_unet.model_info),
                self._call("Vocoder", self.vocoder.model_info),
            )
            if image["latent_channels"] != audio["latent_channels"]:
                raise ServiceUnavailable("the image and audio models do not share a latent space")
            self._model_info = {"image": image, "audio": audio, "vocoder": vocoder}
        return self._model_info

    async def _unet(self, model: str, handle: DeploymentHandle, inputs: ModelInputs) -> torch.Tensor | None:
        if len(inputs) == 0:
            return None
        output = await self._call(f"{model.capitalize()}UNet", handle.predict, inputs)
        self.metrics.observe_unet(model, output.batch_samples, output.batch_timesteps, output.batch_requests)
        return output.eps

    # ---- the DDIM loop of one request -----------------------------------------------------------------------
    async def _denoise(self, requests, info) -> torch.Tensor:
        scheduler = StepScheduler(info["image"]["scheduler_config"], max_batch_samples=len(requests))
        channels = info["image"]["latent_channels"]
        for index, request in enumerate(requests):
            shape = latent_shape(request.height, request.width, channels)
            scheduler.add(str(index), request, initial_latents([request.seed], shape)[0])
        finished = {}
        while scheduler.has_work():
            started = time.perf_counter()
            plan = scheduler.schedule()
            eps_image, eps_audio = await asyncio.gather(
                self._unet("image", self.image_unet, plan.image), self._unet("audio", self.audio_unet, plan.audio)
            )
            for state in scheduler.update(plan, eps_image, eps_audio):
                finished[int(state.key)] = state.latents
            self.metrics.step_latency.observe(time.perf_counter() - started)
        return torch.stack([finished[i] for i in range(len(requests))])

    def _admit(self, count: int) -> None:
        limit = self.args.limits.max_samples_in_flight
        if self.samples_in_flight + count > limit:
            raise QueueFull(f"{self.samples_in_flight} samples are in flight (limit {limit}); retry later")
        self.samples_in_flight += count
        self.metrics.samples_in_flight.set(self.samples_in_flight)

    def _release(self, count: int) -> None:
        self.samples_in_flight -= count
        self.metrics.samples_in_flight.set(self.samples_in_flight)

    async def _generate(self, body: GenerateBody) -> GenerateResponse:
        requests = body.to_requests(self.args.limits)
        info = await self.model_info()
        self._admit(len(requests))
        try:
            t0 = time.perf_counter()
            latents = await self._denoise(requests, info)
            t1 = time.perf_counter()
            images, (spectrograms, waveforms) = await asyncio.gather(
                self._call("ImageUNet", self.image_unet.decode, latents),
                self._call("Vocoder", self.vocoder.decode, latents, body.vocoder),
            )
            t2 = time.perf_counter()
        finally:
            self._release(len(requests))
        context = {
            "image_model": info["image"]["model"],
            "audio_model": info["audio"]["model"],
            "vocoder": body.vocoder,
        }
        samples = []
        for index, request in enumerate(requests):
            sample_id = request.sample_id(context)
            record = {
                **request.to_dict(),
                "sample_id": sample_id,
                "sample_index": index,
                **context,
                "timings_s": {"denoise": t1 - t0, "decode": t2 - t1},
                "versions": {"imgsound": __version__},
            }
            artifacts = await asyncio.to_thread(  # PNG/WAV encoding, and ffmpeg for a video, block
                render_artifacts,
                images[index],
                spectrograms[index],
                waveforms[index],
                record,
                crop=body.crop,
                video="video" in body.outputs,
            )
            out = SampleOut(sample_id=sample_id, index=index, seed=request.seed, parameters=record)
            wanted = {OUTPUT_FILES[name]: name for name in body.outputs}
            if self.store is not None:
                # The id hashes everything that decides the sample, so an existing folder holds the same sample;
                # sample.json goes last, so a folder with one is complete.
                for file in sorted(artifacts, key=lambda name: name == "sample.json"):
                    uri = await asyncio.to_thread(self.store.put_bytes, f"{sample_id}/{file}", artifacts[file])
                    if file in wanted:
                        out.uris[wanted[file]] = uri
            if body.inline or self.store is None:
                out.base64 = {name: base64.b64encode(artifacts[file]).decode("ascii") for file, name in wanted.items()}
            samples.append(out)
        self.metrics.samples_generated.inc(len(samples))
        return GenerateResponse(samples=samples, timings_s={"denoise": t1 - t0, "decode": t2 - t1})

    # ---- HTTP ------------------------------------------------------------------------------------------------
    @api.post("/v1/generate", response_model=GenerateResponse)
    async def generate(self, body: GenerateBody):
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._generate(body)
        except RequestError as error:
            outcome = "invalid"
            raise HTTPException(status_code=422, detail=str(error)) from None
        except QueueFull as error:
            outcome = "queue_full"
            return JSONResponse(
                status_code=503,
                content={"detail": str(error)},
                headers={"Retry-After": str(self.args.limits.retry_after_s)},
            )
        except StoreError as error:
            outcome = "store_unavailable"
            return JSONResponse(
                status_code=503,
                content={"detail": f"the output store failed: {error}"},
                headers={"Retry-After": str(self.args.limits.retry_after_s)},
            )
        except InternalError as error:
            outcome = "internal"
            return JSONResponse(status_code=500, content={"detail": str(error)})
        except ServiceUnavailable as error:
            outcome = "unavailable"
            return JSONResponse(
                status_code=503,
                content={"detail": str(error)},
                headers={"Retry-After": str(self.args.limits.retry_after_s)},
            )
        finally:
            if outcome != "ok":
                self.metrics.failures.labels(reason=outcome).inc()
            self.metrics.request_latency.labels(outcome=outcome).observe(time.perf_counter() - started)

    @api.get("/v1/health", response_model=Health)
    async def health(self) -> Health:
        return Health(
            status="ok",
            samples_in_flight=self.samples_in_flight,
            max_samples_in_flight=self.args.limits.max_samples_in_flight,
        )

    @api.get("/metrics")
    async def metrics(self) -> Response:
        return Response(content=self.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---- the gallery of the output store -------------------------------------------------------------------
    def _gallery(self) -> StoreGallery:
        if self.gallery is None:
            raise HTTPException(status_code=404, detail="this server has no output store, so there is no gallery")
        return self.gallery

    @api.get("/gallery", include_in_schema=False)
    async def gallery_root(self, request: Request) -> Response:
        return RedirectResponse(url=request.url.path + "/", status_code=302)  # the page's links are relative

    @api.get("/gallery/", include_in_schema=False)
    async def gallery_page(self) -> Response:
        content, media_type = self._gallery().asset("index.html")
        return Response(content=content, media_type=media_type)

    @api.get("/gallery/data/samples.js", include_in_schema=False)
    async def gallery_data(self) -> Response:
        try:
            script = await asyncio.to_thread(self._gallery().data)
        except StoreError as error:
            return JSONResponse(status_code=503, content={"detail": f"the output store failed: {error}"})
        return Response(content=script, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    @api.get("/gallery/media/{key}/{role}", include_in_schema=False)
    async def gallery_media(self, key: str, role: str, request: Request) -> Response:
        try:
            content, media_type = await asyncio.to_thread(self._gallery().media, key, role)
            span = byte_range(request.headers.get("range"), len(content))
        except NotFound as error:
            raise HTTPException(status_code=404, detail=str(error)) from None
        except RangeNotSatisfiable as error:
            return JSONResponse(status_code=416, content={"detail": str(error)})
        except StoreError as error:
            return JSONResponse(status_code=503, content={"detail": f"the output store failed: {error}"})
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "max-age=3600"}
        if span is None:
            return Response(content=content, media_type=media_type, headers=headers)
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        return Response(content=content[start : end + 1], status_code=206, media_type=media_type, headers=headers)

    @api.get("/gallery/{asset}", include_in_schema=False)
    async def gallery_asset(self, asset: str) -> Response:
        try:
            content, media_type = self._gallery().asset(asset)
        except NotFound as error:
            raise HTTPException(status_code=404, detail=str(error)) from None
        return Response(content=content, media_type=media_type)
