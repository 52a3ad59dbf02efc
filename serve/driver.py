"""The Driver: the HTTP ingress — authentication, validation, admission and each request's DDIM loop.

Per request it holds the latents in a core `StepScheduler` and, at every step, sends that request's rows to
both UNet deployments concurrently; their `@serve.batch` merges the rows of every request in flight — at
whatever step each is — into one forward (continuous batching: a new request joins the next forward). Then
the core combines the estimates and takes the DDIM step, exactly as the CLI does, so the same seed gives the same
sample with the same id (`imgsound_core.identity`). Everything else is another deployment's: admission is the
Gatekeeper's (service-wide, so any number of Driver replicas share one limit), decoding the UNet's and the
Vocoder's, files and store writes the Renderer's. Failed remote calls are retried (a step is a pure function of
its inputs) and then answered with a 503. Asynchronous jobs (`/v1/jobs`) run the very same `_generate` in the
background; their state, heartbeat, cancellation and webhooks are serve/jobs.py's, and live in the output store, so
any replica answers for any job. Nothing else here is per-process state the service depends on: run as many
replicas as the HTTP load needs.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayError, RayTaskError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from imgsound_core import __version__
from imgsound_core.identity import ModelIdentity, SampleContext, sample_record
from imgsound_core.init_source import InitSource, InitSourceError, blend_latents, load_init_audio, load_init_image
from imgsound_core.noise import initial_latents, latent_shape
from imgsound_core.request import RequestError
from imgsound_core.scheduler import ModelInputs, StepScheduler
from imgsound_core.text import truncation_warning
from jobs.store import StoreError, open_store
from serve import playground
from serve.admission import Refused
from serve.api import (
    OUTPUT_FILES,
    GenerateBody,
    GenerateResponse,
    Health,
    JobBody,
    JobSubmitted,
    JobView,
    SampleOut,
    SourceTooLarge,
)
from serve.auth import ApiKeys
from serve.config import AppArgs
from serve.gallery import NotFound, RangeNotSatisfiable, byte_range
from serve.gallery import asset as gallery_file
from serve.jobs import (
    JobNotFound,
    JobQueueFull,
    JobRunner,
    JobStateUnreadable,
    StepHook,
    WebhookRefused,
    WebhookSecret,
)
from serve.metrics import DriverMetrics, fetch, node_metrics_urls, service_exposition

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="imgsound",
    version=__version__,
    description="Images that sound: spectrograms that look like a picture and play as natural audio.",
)


def body_schema(model: type) -> dict[str, Any]:
    """A route's body schema for the OpenAPI page: the routes parse their bodies themselves, after the API key."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


GENERATE_OPENAPI = body_schema(GenerateBody)
JOBS_OPENAPI = body_schema(JobBody)
REPLICA_HEADER = "X-Imgsound-Replica"  # on job answers: which Driver replica answered


def validation_problem(errors: list[dict[str, Any]]) -> JSONResponse:
    """422 naming each bad field. The offending input is not echoed: it may not be JSON (NaN) or may be huge."""
    problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in problems)
    return JSONResponse(status_code=422, content={"detail": problems, "message": summary})


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return validation_problem(list(error.errors()))


UNIT_PIXELS = 256 * 1024  # one unit of work: a sample of the paper's size


def request_work(request) -> float:
    """A sample's work in units (its pixels over a 256×1024 sample's)."""
    return request.height * request.width / UNIT_PIXELS


def latent_work(latent_hw: tuple[int, int]) -> float:
    """The work of one latent row of `(h, w)` (the VAE's 8× downsampling)."""
    return latent_hw[0] * latent_hw[1] * 64 / UNIT_PIXELS


async def nothing() -> None:
    """An awaitable for a call not made (see `both`)."""


async def both(first, second) -> tuple[Any, Any]:
    """Await two calls at once; when one fails, the other is cancelled (not left running for nobody)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = group.create_task(first), group.create_task(second)
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None  # the first failure, as the callers' except clauses expect
    return tasks[0].result(), tasks[1].result()


def source_warnings(sources: dict[str, InitSource], strength: float) -> list[str]:
    """What the answer says of its sources: a sound cut or padded to the width, and sources ignored at strength 1."""
    warnings = [source.note for source in sources.values() if source.note]
    if sources and strength == 1.0:
        fields = " and ".join(f"init_{kind}" for kind in sources)
        warnings.append(
            f"strength 1 starts from pure noise, so {fields} is ignored: the samples and their ids are those of "
            "plain generation"
        )
    return warnings


class ServiceUnavailable(Exception):
    """A deployment did not answer after the retries; the message says which."""


class BodyRejected(Exception):
    """The request body was refused before it was parsed: too large (413), too slow (408), too many at once (429)."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class InternalError(Exception):
    """A deployment raised on this request (a bug, not an outage): 500."""


def replica_id() -> str:
    """This Serve replica's id (random; names no host or path)."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit tests of the class)
        return "local"


# Exceptions a deployment raises on purpose; they reach the Driver as themselves, not as a failure.
PASSTHROUGH = (StoreError, NotFound, RangeNotSatisfiable)


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(api)
class Driver:
    def __init__(
        self,
        image_unet: DeploymentHandle,
        audio_unet: DeploymentHandle,
        vocoder: DeploymentHandle,
        renderer: DeploymentHandle,
        gatekeeper: DeploymentHandle,
        gallery: DeploymentHandle,
        args: dict[str, Any],
    ) -> None:
        self.args = AppArgs.model_validate(args)
        keys_file = self.args.auth.api_keys_file
        self.api_keys = ApiKeys.from_file(keys_file) if keys_file else ApiKeys.disabled()
        self.image_unet = image_unet
        self.audio_unet = audio_unet
        self.vocoder = vocoder
        self.renderer = renderer
        self.gatekeeper = gatekeeper
        self.gallery = gallery
        self.metrics = DriverMetrics()
        self.samples_in_flight = 0  # this replica's share, for the gauge; the limit is the Gatekeeper's
        self.bodies_in_progress: dict[str, int] = {}  # client address → bodies it is still sending here
        self.body_bytes_buffered = 0  # bytes of bodies still arriving, over every client
        self._model_info: dict[str, Any] | None = None
        self.replica = replica_id()
        self.jobs = self._job_runner()

    def _job_runner(self) -> JobRunner | None:
        """Jobs keep their state in the output store: none without one."""
        if self.args.output_store is None:
            return None
        settings = self.args.jobs
        secret_file = settings.webhook_secret_file
        return JobRunner(
            open_store(self.args.output_store),
            settings,
            replica=self.replica,
            admit=lambda owner, samples: self._call("Gatekeeper", self.gatekeeper.admit, owner, samples),
            release=lambda ticket: self.gatekeeper.release.remote(ticket),
            user_errors=(RequestError, StoreError, ServiceUnavailable, InternalError),
            webhook_secret=WebhookSecret.from_file(secret_file) if secret_file else None,
            on_end=lambda status: self.metrics.jobs.inc(tags={"status": status}),
        )

    # ---- remote calls -------------------------------------------------------------------------------------
    async def _call(self, deployment: str, method, *payload, work: float = 1.0, timeout_s: float | None = None):
        """Call a deployment method; a limit of `timeout_s` (default: `resilience.call_timeout_s`) per unit of
        `work`; a retry only when the replica died; ServiceUnavailable in the end.

        A call that timed out is cancelled (the replica drops the work: see the Vocoder and the Renderer) and not
        sent again: its replica is alive but busy, and a second copy would only add to what it is behind on.
        """
        resilience = self.args.resilience
        limit = (timeout_s or resilience.call_timeout_s) * max(1.0, work)
        for attempt in range(resilience.max_retries + 1):
            response = method.remote(*payload)
            try:
                return await asyncio.wait_for(response, timeout=limit)
            except asyncio.CancelledError:
                response.cancel()  # a sibling call failed, or the client left: the replica drops this work too
                raise
            except RayTaskError as error:
                cause = getattr(error, "cause", None)
                if isinstance(cause, PASSTHROUGH):
                    raise cause from None
                # The deployment's own code raised: retrying the same inputs would raise again.
                logger.error("%s raised: %s", deployment, error)
                raise InternalError(f"the {deployment} deployment failed on this request") from None
            except TimeoutError:
                response.cancel()
                logger.warning("%s call timed out after %.1f s; not retried", deployment, limit)
                raise ServiceUnavailable(
                    f"the {deployment} deployment did not answer within {limit:.0f} s; try again shortly"
                ) from None
            except (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError) as error:
                response.cancel()
                logger.warning("%s call failed (attempt %d): %r", deployment, attempt + 1, error)
                if attempt == resilience.max_retries:
                    raise ServiceUnavailable(
                        f"the {deployment} deployment failed ({type(error).__name__}) {attempt + 1} times; "
                        "try again shortly"
                    ) from None
                self.metrics.retries.inc(tags={"target": deployment})
                await asyncio.sleep(resilience.retry_backoff_s * (attempt + 1))
            except RayError as error:
                response.cancel()
                logger.warning("%s call failed: %r", deployment, error)
                raise ServiceUnavailable(
                    f"the {deployment} deployment failed ({type(error).__name__}); try again shortly"
                ) from None
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
            if vocoder["identity"] != audio["identity"]:
                # The sample id names the audio model; a vocoder from other weights would make other sounds.
                raise ServiceUnavailable("the Vocoder deployment loads another model than AudioUNet")
            self._model_info = {"image": image, "audio": audio, "vocoder": vocoder}
        return self._model_info

    def _context(self, info: dict[str, Any], body: GenerateBody) -> SampleContext:
        """What, besides the request, decides these samples: the same fields as the CLI's and a sweep's."""
        image_dtype, audio_dtype = info["image"]["dtype"], info["audio"]["dtype"]
        return SampleContext(
            image_model=ModelIdentity(**info["image"]["identity"]),
            audio_model=ModelIdentity(**info["audio"]["identity"]),
            dtype=image_dtype if image_dtype == audio_dtype else f"{image_dtype}/{audio_dtype}",
            vocoder=body.vocoder,
            crop=body.crop,
        )

    async def _unet(self, model: str, handle: DeploymentHandle, inputs: ModelInputs) -> torch.Tensor | None:
        if len(inputs) == 0:
            return None
        work = len(inputs) * latent_work(tuple(inputs.latents.shape[-2:]))
        return await self._call(f"{model.capitalize()}UNet", handle.predict, inputs, work=work)

    # ---- the DDIM loop of one request -----------------------------------------------------------------------
    async def _denoise(
        self, requests, info, on_step: StepHook | None = None, source: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, float]:
        """The clean latents `(N, C, h, w)`, and when (perf_counter) the first step was taken.

        `source`, the clean latent of the picture/sound the requests start from (below strength 1), is noised with
        each sample's own seed to its first step (`StepScheduler.add_sample`), as the CLI does.

        `on_step(steps_done, steps_total)` is called before the first step and after each one (a job's progress);
        what it raises ends the loop there, at a step boundary (a job's cancellation).
        """
        scheduler = StepScheduler(info["image"]["scheduler_config"], max_batch_samples=len(requests))
        channels = info["image"]["latent_channels"]
        states = []
        for index, request in enumerate(requests):
            shape = latent_shape(request.height, request.width, channels)
            noise = initial_latents([request.seed], shape)[0]
            states.append(scheduler.add_sample(str(index), request, noise, source))
        steps_total = max(state.schedule.num_steps - state.step_index for state in states)
        steps_done = 0
        if on_step is not None:
            on_step(steps_done, steps_total)
        finished = {}
        first_step_at = None
        while scheduler.has_work():
            started = time.perf_counter()
            plan = scheduler.schedule()
            eps_image, eps_audio = await both(
                self._unet("image", self.image_unet, plan.image), self._unet("audio", self.audio_unet, plan.audio)
            )
            for state in scheduler.update(plan, eps_image, eps_audio):
                finished[int(state.key)] = state.latents
            done_at = time.perf_counter()
            first_step_at = first_step_at or done_at
            self.metrics.step_latency.observe(done_at - started)
            steps_done += 1  # every sample of a request takes the same steps together
            if on_step is not None:
                on_step(steps_done, steps_total)
        return torch.stack([finished[i] for i in range(len(requests))]), first_step_at or time.perf_counter()

    async def _load_sources(self, data: dict[str, bytes], request) -> dict[str, InitSource]:
        """The body's sources (`GenerateBody.requests_and_sources`) as pictures for their VAEs, checked before any
        admission or model work: InitSourceError (a 422) otherwise. Decoding runs in a thread (a large JPEG or MP3
        takes a moment), so the replica keeps answering meanwhile."""
        if not data:
            return {}

        def load() -> dict[str, InitSource]:
            loaded = {}
            if "image" in data:
                loaded["image"] = load_init_image(data["image"], request.height, request.width, name="init_image")
            if "audio" in data:
                loaded["audio"] = load_init_audio(data["audio"], request.width, request.height, name="init_audio")
            return loaded

        return await asyncio.to_thread(load)

    async def _source_latent(self, sources: dict[str, InitSource], request) -> torch.Tensor | None:
        """z₀ `(C, h, w)` of the request's sources: the picture by the image model's VAE (the ImageUNet deployment
        holds it), the sound's mel picture by the audio model's VAE (the Vocoder's), blended by the audio weight as
        the CLI does (`Sampler.source_latent`); None at strength 1, where the sources are ignored."""
        if not sources or request.strength == 1.0:
            return None
        work = request_work(request)

        def encode(role: str, deployment: str, handle: DeploymentHandle):
            if role not in sources:
                return nothing()
            return self._call(deployment, handle.encode, sources[role].pixels()[None], work=work)

        image, audio = await both(
            encode("image", "ImageUNet", self.image_unet), encode("audio", "Vocoder", self.vocoder)
        )
        return blend_latents(
            None if image is None else image[0], None if audio is None else audio[0], request.audio_weight
        )

    async def _admit(self, key_label: str | None, count: int) -> str:
        decision = await self._call("Gatekeeper", self.gatekeeper.admit, key_label, count)
        if not decision.admitted:
            raise Refused(decision)
        return decision.ticket

    def _release(self, ticket: str) -> None:
        # Fire and forget: the answer does not wait for it, and a lost release expires with its ticket.
        self.gatekeeper.release.remote(ticket)

    async def _truncation(self, request) -> dict[str, int]:
        """`{field: tokens dropped}` of the request's prompts that are too long for their text encoders."""
        image, audio = await both(
            self._call("ImageUNet", self.image_unet.dropped_tokens, [request.image_prompt, request.image_negative]),
            self._call("AudioUNet", self.audio_unet.dropped_tokens, [request.audio_prompt, request.audio_negative]),
        )
        fields = ("image_prompt", "image_negative", "audio_prompt", "audio_negative")
        return {field: n for field, n in zip(fields, [*image, *audio], strict=True) if n}

    async def _generate(
        self,
        body: GenerateBody,
        requests,
        key_label: str | None,
        ticket: str | None = None,
        on_step: StepHook | None = None,
        sources: dict[str, InitSource] | None = None,
        arrived: float | None = None,
    ) -> GenerateResponse:
        """The samples of a request: `/v1/generate`'s answer, and a job's work (already admitted: `ticket`, which
        its caller then releases; `on_step` follows the steps, see `_denoise`). `sources`: the pictures/sounds it
        starts from (`_load_sources`); `arrived`: when (perf_counter) the request reached this replica, before its
        body was read — the start of the `admit` and `first_step` timings (default: now)."""
        arrived = time.perf_counter() if arrived is None else arrived
        info = await self.model_info()
        context = self._context(info, body)
        own_ticket = ticket is None
        if own_ticket:
            ticket = await self._admit(key_label, len(requests))
        # The prompts are the same for every sample; their length check runs beside the denoising, not before it.
        truncation = asyncio.create_task(self._truncation(requests[0]))
        self.samples_in_flight += len(requests)
        self.metrics.samples_in_flight.set(self.samples_in_flight)
        try:
            t0 = time.perf_counter()
            source = await self._source_latent(sources or {}, requests[0])
            latents, first_step_at = await self._denoise(requests, info, on_step, source)
            truncated = await truncation
            t1 = time.perf_counter()
            work = sum(request_work(request) for request in requests)
            decode_s = self.args.resilience.decode_timeout_s
            images, (spectrograms, waveforms) = await both(
                self._call("ImageUNet", self.image_unet.decode, latents, work=work, timeout_s=decode_s),
                self._call("Vocoder", self.vocoder.decode, latents, body.vocoder, work=work, timeout_s=decode_s),
            )
            t2 = time.perf_counter()
            timings = {"denoise": t1 - t0, "decode": t2 - t1}
            records = [
                sample_record(
                    request,
                    context,
                    sample_index=i,
                    device=info["image"]["device"],
                    timings_s=timings,
                    prompt_tokens_dropped=truncated,
                )
                for i, request in enumerate(requests)
            ]
            rendered = await self._call(
                "Renderer",
                self.renderer.render,
                images,
                spectrograms,
                waveforms,
                records,
                body.crop,
                list(body.outputs),
                body.inline,
                work=work * (2 if "video" in body.outputs else 1),
                timeout_s=decode_s,
            )
            if isinstance(rendered, StoreError):
                raise rendered
        finally:
            truncation.cancel()  # done by now, unless the request failed before it was awaited
            self.samples_in_flight -= len(requests)
            self.metrics.samples_in_flight.set(self.samples_in_flight)
            if own_ticket:
                self._release(ticket)
        samples = [
            SampleOut(
                sample_id=record["sample_id"],
                index=index,
                seed=record["seed"],
                parameters=record,
                base64=files.base64,
                uris=files.uris,
            )
            for index, (record, files) in enumerate(zip(records, rendered))
        ]
        self.metrics.samples_generated.inc(len(samples))
        warnings = [
            truncation_warning(field, n, info[field.split("_")[0]]["context_tokens"]) for field, n in truncated.items()
        ]
        warnings += source_warnings(sources or {}, requests[0].strength)
        return GenerateResponse(
            samples=samples,
            timings_s={
                "admit": t0 - arrived,  # model info, and the Gatekeeper's answer
                "first_step": first_step_at - arrived,  # time to first step: how soon a request joins the batch
                **timings,
                "render": time.perf_counter() - t2,
            },
            warnings=warnings,
        )

    def _authenticate(self, request: Request) -> str | None:
        """The key's label (never the key) when keys are configured; a 401 when the request has no valid key."""
        if not self.api_keys.enabled:
            return None
        label = self.api_keys.authenticate(request.headers.get("authorization"))
        if label is None:
            message = "a valid API key is required: send `Authorization: Bearer <key>`"
            if request.headers.get("authorization"):
                message = "the API key is not valid"
            raise HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})
        return label

    async def _read_body(self, request: Request) -> bytes:
        """The request body, bounded in size, in time and in how many one client may be sending at once.

        A client that opens many connections and trickles their bodies would otherwise hold every one of this
        replica's request slots; here it holds at most `max_body_reads_per_client`, each for at most
        `body_timeout_s`, and a declared size over `max_body_bytes` is refused without reading a byte.
        """
        limits = self.args.limits
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > 15:
                raise BodyRejected(400, "the Content-Length header is not a number of bytes")
            if int(declared) > limits.max_body_bytes:
                raise BodyRejected(413, f"the request body is larger than {limits.max_body_bytes} bytes")
        client = request.client.host if request.client else "unknown"
        if self.bodies_in_progress.get(client, 0) >= limits.max_body_reads_per_client:
            raise BodyRejected(
                429, "this client is already sending too many request bodies; retry later", limits.retry_after_s
            )
        self.bodies_in_progress[client] = self.bodies_in_progress.get(client, 0) + 1

        received = 0

        async def receive() -> bytes:
            nonlocal received
            chunks = []
            async for chunk in request.stream():
                if received + len(chunk) > limits.max_body_bytes:
                    raise BodyRejected(413, f"the request body is larger than {limits.max_body_bytes} bytes")
                if self.body_bytes_buffered + len(chunk) > limits.max_body_bytes_buffered:
                    # Many large bodies at once (sources, in base64): memory is bounded for the replica as a whole.
                    raise BodyRejected(
                        503,
                        "this replica is receiving too many large request bodies; retry later",
                        limits.retry_after_s,
                    )
                received += len(chunk)
                self.body_bytes_buffered += len(chunk)
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(receive(), timeout=limits.body_timeout_s)
        except TimeoutError:
            raise BodyRejected(408, f"the request body did not arrive within {limits.body_timeout_s:g} s") from None
        finally:
            self.body_bytes_buffered -= received
            remaining = self.bodies_in_progress[client] - 1
            if remaining:
                self.bodies_in_progress[client] = remaining
            else:
                del self.bodies_in_progress[client]

    def _unavailable(self, message: str) -> JSONResponse:
        return JSONResponse(
            status_code=503, content={"detail": message}, headers={"Retry-After": str(self.args.limits.retry_after_s)}
        )

    async def _parse_body(self, request: Request, model: type[GenerateBody]) -> GenerateBody | JSONResponse:
        """The body as `model`, or the answer to a body that is refused (413, 408, 429) or invalid (422)."""
        try:
            return model.model_validate_json(await self._read_body(request))
        except BodyRejected as error:
            self.metrics.failures.inc(tags={"reason": f"body_{error.status}"})
            headers = {"Connection": "close"}  # a client that misbehaved once gets no keep-alive
            if error.retry_after_s is not None:
                headers["Retry-After"] = str(error.retry_after_s)
            return JSONResponse(status_code=error.status, content={"detail": str(error)}, headers=headers)
        except ValidationError as error:
            self.metrics.failures.inc(tags={"reason": "invalid"})
            return validation_problem([{**e, "loc": ("body", *e.get("loc", ()))} for e in error.errors()])

    @staticmethod
    def _refused(error: Refused) -> JSONResponse:
        headers = {}
        if error.decision.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(error.decision.retry_after_s + 0.5)))
        status = Refused.STATUS.get(error.decision.reason or "queue_full", 503)
        return JSONResponse(status_code=status, content={"detail": str(error)}, headers=headers)

    # ---- HTTP ------------------------------------------------------------------------------------------------
    @api.post("/v1/generate", response_model=GenerateResponse, openapi_extra=GENERATE_OPENAPI)
    async def generate(self, request: Request):
        arrived = time.perf_counter()
        # The key is checked before the body is read: an unauthenticated client gets nothing parsed.
        key_label = self._authenticate(request)
        body = await self._parse_body(request, GenerateBody)
        if isinstance(body, JSONResponse):
            return body
        started = time.perf_counter()
        outcome = "internal"  # anything not answered below is a bug: counted as one
        try:
            requests, data = body.requests_and_sources(self.args.limits)
            sources = await self._load_sources(data, requests[0])
            response = await self._generate(body, requests, key_label, sources=sources, arrived=arrived)
            outcome = "ok"
            return response
        except SourceTooLarge as error:
            outcome = "invalid"
            raise HTTPException(status_code=413, detail=str(error)) from None
        except (RequestError, InitSourceError) as error:
            outcome = "invalid"
            raise HTTPException(status_code=422, detail=str(error)) from None
        except Refused as error:
            reason = error.decision.reason or "queue_full"
            outcome = {"too_large": "invalid"}.get(reason, reason)
            return self._refused(error)
        except StoreError as error:
            outcome = "store_unavailable"
            return self._unavailable(f"the output store failed: {error}")
        except InternalError as error:
            return JSONResponse(status_code=500, content={"detail": str(error)})
        except ServiceUnavailable as error:
            outcome = "unavailable"
            return self._unavailable(str(error))
        finally:
            if outcome != "ok":
                self.metrics.failures.inc(tags={"reason": outcome})
            self.metrics.request_latency.observe(time.perf_counter() - started, tags={"outcome": outcome})

    # ---- asynchronous jobs (serve/jobs.py) ---------------------------------------------------------------------
    def _runner(self) -> JobRunner:
        if self.jobs is None:
            raise HTTPException(
                status_code=409,
                detail="this server has no output store (args.output_store), which jobs keep their state and files "
                "in: use POST /v1/generate",
            )
        return self.jobs

    def _job_answer(self, content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(
            status_code=status_code, content=content, headers={REPLICA_HEADER: self.replica, **(headers or {})}
        )

    @contextlib.contextmanager
    def _job_lookup(self) -> Iterator[JobRunner]:
        """The runner, with its lookup errors as HTTP: 404 for unknown ids, other keys' jobs, ids of the wrong shape
        (and any id on a server without a store); 503 when the store cannot be read."""
        if self.jobs is None:
            raise HTTPException(status_code=404, detail="there is no such job: this server has no output store")
        try:
            yield self.jobs
        except JobNotFound:
            raise HTTPException(
                status_code=404, detail="there is no such job (job ids come from POST /v1/jobs)"
            ) from None
        except (StoreError, JobStateUnreadable) as error:
            raise HTTPException(
                status_code=503,
                detail=f"the job's state could not be read or written: {error}",
                headers={"Retry-After": str(self.args.limits.retry_after_s)},
            ) from None

    async def _job_state(self, job_id: str, key_label: str | None):
        with self._job_lookup() as runner:
            return await runner.state(job_id, key_label)

    @api.post("/v1/jobs", status_code=202, response_model=JobSubmitted, openapi_extra=JOBS_OPENAPI)
    async def submit_job(self, request: Request):
        """Start a /v1/generate body in the background: 202 with the job's id and status URL, at once."""
        key_label = self._authenticate(request)
        runner = self._runner()
        body = await self._parse_body(request, JobBody)
        if isinstance(body, JSONResponse):
            return body
        try:
            requests, data = body.requests_and_sources(self.args.limits)
            sources = await self._load_sources(data, requests[0])
            await runner.check_webhook(body.webhook_url)
            generation = body.generation()

            async def work(ticket: str, on_step: StepHook) -> tuple[list[dict[str, Any]], list[str]]:
                answer = await self._generate(generation, requests, key_label, ticket, on_step, sources)
                return [sample.model_dump() for sample in answer.samples], answer.warnings

            state = await runner.submit(owner=key_label, samples=len(requests), webhook_url=body.webhook_url, work=work)
        except SourceTooLarge as error:
            raise HTTPException(status_code=413, detail=str(error)) from None
        except (RequestError, InitSourceError, WebhookRefused) as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        except Refused as error:
            return self._refused(error)
        except JobQueueFull as error:
            return self._unavailable(str(error))
        except StoreError as error:
            return self._unavailable(f"the output store failed: {error}")
        except ServiceUnavailable as error:
            return self._unavailable(str(error))
        status_url = f"{request.url.path.rstrip('/')}/{state.job_id}"
        return self._job_answer({"job_id": state.job_id, "status_url": status_url}, 202, {"Location": status_url})

    @api.get("/v1/jobs/{job_id}", response_model=JobView)
    async def job_status(self, job_id: str, request: Request):
        """The job's status, progress and, once it succeeded, its samples (as /v1/generate's, by URI)."""
        state = await self._job_state(job_id, self._authenticate(request))
        return self._job_answer(state.public())

    @api.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse)
    async def job_events(self, job_id: str, request: Request):
        """Server-sent events: `progress` (the job's JSON) on every change, `end` with the final state; then the
        stream ends. Read it with the Authorization header (fetch() and a stream reader in a browser)."""
        state = await self._job_state(job_id, self._authenticate(request))
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", REPLICA_HEADER: self.replica}
        return StreamingResponse(self.jobs.events(state), media_type="text/event-stream", headers=headers)

    @api.delete("/v1/jobs/{job_id}", response_model=JobView)
    async def cancel_job(self, job_id: str, request: Request):
        """Cancel: 202 and the job ends `cancelled` at its next step boundary (its slots freed); 200 and its state,
        unchanged, when it had already ended."""
        key_label = self._authenticate(request)
        with self._job_lookup() as runner:
            state, asked = await runner.cancel(job_id, key_label)
        return self._job_answer(state.public(), 202 if asked else 200)

    @api.get("/v1/jobs/{job_id}/samples/{index}/{output}")
    async def job_file(self, job_id: str, index: int, output: str, request: Request) -> Response:
        """One file of a finished job's sample (`output` as in the body's `outputs`); byte ranges served."""
        state = await self._job_state(job_id, self._authenticate(request))
        if not 0 <= index < len(state.samples) or output not in state.samples[index].get("uris", {}):
            raise HTTPException(status_code=404, detail=f"the job has no {output[:40]!r} file for sample {index}")
        sample_id = state.samples[index]["sample_id"]
        content, media_type = await self._gallery_call(self.gallery.sample_file, sample_id, OUTPUT_FILES[output])
        return self._ranged(content, media_type, request, {"Cache-Control": "private, max-age=3600"})

    # ---- the playground (serve/playground.py) --------------------------------------------------------------------
    @api.get("/", include_in_schema=False)
    async def playground_page(self, request: Request) -> Response:
        if not request.url.path.endswith("/"):  # under a route prefix: the page's links are relative
            return RedirectResponse(url=request.url.path + "/", status_code=302)
        return await self.playground_asset("index.html")

    @api.get("/playground/{name}", include_in_schema=False)
    async def playground_asset(self, name: str) -> Response:
        try:
            content, media_type = playground.asset(name)
        except playground.UnknownAsset as error:
            raise HTTPException(status_code=404, detail=str(error)) from None
        return Response(content=content, media_type=media_type, headers=playground.HEADERS)

    @api.get("/v1/health", response_model=Health)
    async def health(self) -> Health | JSONResponse:
        try:
            state = await asyncio.wait_for(self.gatekeeper.snapshot.remote(), timeout=5)
        except (RayError, TimeoutError):
            return self._unavailable("the Gatekeeper deployment does not answer")
        return Health(
            status="ok",
            samples_in_flight=state["samples_in_flight"],
            max_samples_in_flight=state["max_samples_in_flight"],
        )

    @api.get("/metrics")
    async def metrics(self) -> Response:
        """The whole service's imgsound metrics: every node's Ray export, summed over processes."""

        def collect() -> str:
            texts = []
            for url in node_metrics_urls():
                try:
                    texts.append(fetch(url))
                except OSError as error:  # a node going away must not take the scrape down
                    logger.warning("metrics of %s unreadable: %r", url, error)
            return service_exposition(texts)

        text = await asyncio.to_thread(collect)
        return Response(content=text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---- the gallery of the output store (its own deployment reads it) ------------------------------------
    @api.get("/gallery", include_in_schema=False)
    async def gallery_root(self, request: Request) -> Response:
        self._authenticate(request)
        return RedirectResponse(url=request.url.path + "/", status_code=302)  # the page's links are relative

    async def _gallery_call(self, method, *payload):
        try:
            return await self._call("Gallery", method, *payload)
        except NotFound as error:
            raise HTTPException(status_code=404, detail=str(error)) from None
        except StoreError as error:
            raise HTTPException(status_code=503, detail=f"the output store failed: {error}") from None

    @api.get("/gallery/", include_in_schema=False)
    async def gallery_page(self, request: Request) -> Response:
        return await self.gallery_asset("index.html", request)

    @api.get("/gallery/data/samples.js", include_in_schema=False)
    async def gallery_data(self, request: Request) -> Response:
        self._authenticate(request)
        script, etag = await self._gallery_call(self.gallery.data)
        headers = {"Cache-Control": "no-cache", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(content=script, media_type="text/javascript", headers=headers)

    @api.get("/gallery/media/{key}/{role}", include_in_schema=False)
    async def gallery_media(self, key: str, role: str, request: Request) -> Response:
        self._authenticate(request)
        content, media_type = await self._gallery_call(self.gallery.media, key, role)
        return self._ranged(content, media_type, request, {"Cache-Control": "max-age=3600"})

    @staticmethod
    def _ranged(content: bytes, media_type: str, request: Request, headers: dict[str, str]) -> Response:
        """The file, or the byte range the request asks for (206; 416 outside the file)."""
        try:
            span = byte_range(request.headers.get("range"), len(content))
        except RangeNotSatisfiable as error:
            return JSONResponse(status_code=416, content={"detail": str(error)})
        headers = {"Accept-Ranges": "bytes", **headers}
        if span is None:
            return Response(content=content, media_type=media_type, headers=headers)
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        return Response(content=content[start : end + 1], status_code=206, media_type=media_type, headers=headers)

    @api.get("/gallery/{asset}", include_in_schema=False)
    async def gallery_asset(self, asset: str, request: Request) -> Response:
        self._authenticate(request)
        if not await self._call("Gallery", self.gallery.enabled):
            raise HTTPException(status_code=404, detail="this server has no output store, so there is no gallery")
        try:
            content, media_type = gallery_file(asset)
        except NotFound as error:
            raise HTTPException(status_code=404, detail=str(error)) from None
        return Response(content=content, media_type=media_type)
