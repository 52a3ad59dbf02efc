"""The serving app's settings: what `serve run serve.app:build_app` and the YAML configs pass as `args`.

Deployment-level knobs (replicas, autoscaling, `ray_actor_options` such as `num_gpus`, `max_ongoing_requests`,
`user_config` batch knobs) live in the Serve YAML's `deployments:` list, where Ray Serve applies them; this file
holds what the code itself reads: models, precision, limits and the output store.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from imgsound_core.init_source import MAX_SOURCE_BYTES
from imgsound_core.models.bundle import DEFAULT_AUDIO_MODEL, DEFAULT_IMAGE_MODEL
from imgsound_core.request import MAX_STEPS

DEPLOYMENT_NAMES = ("ImageUNet", "AudioUNet", "Vocoder", "Renderer", "Gallery", "Gatekeeper", "Driver")
API_KEYS_FILE_ENV = "IMGSOUND_API_KEYS_FILE"
WEBHOOK_SECRET_FILE_ENV = "IMGSOUND_WEBHOOK_SECRET_FILE"


class ModelPlacement(BaseModel):
    """Where one deployment's weights come from and how they run."""

    model_config = ConfigDict(extra="forbid")

    model: str
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "cpu"  # "cuda" on GPU replicas: Ray sets CUDA_VISIBLE_DEVICES to the replica's GPU
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads per replica (None: torch's own)")
    compile: bool | None = Field(
        default=None,
        description="UNet deployments: torch.compile the UNet, padded to batch buckets and warmed up at replica start "
        "for every bucket up to the deployment's max_batch_size (imgsound_core.compile); None: on for cuda, off for "
        "cpu. The vocoder ignores it",
    )


class Limits(BaseModel):
    """Hard limits of the HTTP API (requests beyond them get a 422 naming the limit)."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(default=200, ge=1, le=MAX_STEPS)
    max_samples_per_request: int = Field(default=8, ge=1)
    max_height: int = Field(default=512, ge=8)
    max_width: int = Field(default=2048, ge=8)
    max_prompt_chars: int = Field(default=500, ge=1)
    max_samples_in_flight: int = Field(
        default=64, ge=1, description="service-wide, over every Driver replica; beyond this, 503 + Retry-After"
    )
    retry_after_s: int = Field(default=5, ge=1)
    max_body_bytes: int = Field(
        default=12 << 20,
        ge=1024,
        description="larger request bodies are a 413, refused before they are read; the default holds two sources of "
        "max_source_bytes in base64 (4/3 of their size)",
    )
    max_body_bytes_buffered: int = Field(
        default=256 << 20,
        ge=1024,
        description="bytes of request bodies one Driver replica holds while they arrive, over all clients; a body "
        "that would go beyond gets a 503 with Retry-After (memory stays bounded under many large sources)",
    )
    max_source_bytes: int = Field(
        default=4 << 20,
        ge=1,
        le=MAX_SOURCE_BYTES,
        description="the largest picture or sound file (init_image, init_audio) a request may start from (413)",
    )
    body_timeout_s: float = Field(default=10.0, gt=0, description="a body not received in full by then is a 408")
    max_body_reads_per_client: int = Field(
        default=64,
        ge=1,
        description="bodies one client address may be sending to one Driver replica at once (429); a quarter of "
        "the Driver's max_ongoing_requests, so that one client's slow bodies cannot hold every slot",
    )
    admission_ticket_ttl_s: float = Field(
        default=3600.0, gt=0, description="a request's admission expires after this (its Driver replica died)"
    )


class Resilience(BaseModel):
    """How the driver treats a remote call that fails or takes too long.

    Time-outs grow with the work: a call's limit is the per-unit time × the work it carries, one unit being one
    256×1024 sample (a request of 4 samples at 256×2048 is 8 units). Only calls whose replica died are retried (a
    step is a pure function of its inputs, and Serve replaces dead replicas); a call that timed out on a live
    replica is not sent again — its work is cancelled there, and the request is answered with a 503.
    """

    model_config = ConfigDict(extra="forbid")

    call_timeout_s: float = Field(
        default=120.0, gt=0, description="one UNet step call per unit of work, queueing for a batch included"
    )
    decode_timeout_s: float = Field(
        default=120.0, gt=0, description="decoding + vocoding, and rendering files, per unit of work"
    )
    max_retries: int = Field(default=3, ge=0, description="retries of a call whose replica died")
    retry_backoff_s: float = Field(default=1.0, ge=0)


class Auth(BaseModel):
    """API keys and per-key rate limits; off unless a key file is named (here or by IMGSOUND_API_KEYS_FILE)."""

    model_config = ConfigDict(extra="forbid")

    api_keys_file: str | None = Field(
        default=None,
        description="one key per line as the lowercase hex SHA-256 of the key (`python -m serve.auth new-key`); "
        "read by every Driver replica at start-up; default: the IMGSOUND_API_KEYS_FILE variable of `serve run`",
    )
    samples_per_minute: float | None = Field(default=None, gt=0, description="per key; None: no rate limit")
    burst: int | None = Field(default=None, ge=1, description="samples a key may use at once (default: the rate)")


class Jobs(BaseModel):
    """Asynchronous jobs (`POST /v1/jobs`, serve/jobs.py): their queue, heartbeat, event streams and webhooks.

    Jobs keep their state in the output store, so they need `output_store`.
    """

    model_config = ConfigDict(extra="forbid")

    max_queued: int = Field(
        default=64, ge=0, description="jobs waiting for admission, per Driver replica; beyond this, 503 + Retry-After"
    )
    admission_poll_s: float = Field(default=0.5, gt=0, description="how often a queued job asks to be admitted")
    heartbeat_s: float = Field(
        default=2.0,
        gt=0,
        description="a running job's state is rewritten at least this often; 5 intervals "
        "without a write and readers report the job failed (its replica stopped)",
    )
    progress_interval_s: float = Field(default=0.5, gt=0, description="progress is written at most this often")
    cancel_poll_s: float = Field(
        default=0.5, gt=0, description="how often the running replica looks for a cancel sent to another replica"
    )
    events_poll_s: float = Field(
        default=0.25, gt=0, description="event streams of jobs that run on another replica read the store this often"
    )
    events_keepalive_s: float = Field(default=15.0, gt=0, description="a comment line on a quiet event stream")
    events_max_s: float = Field(default=900.0, gt=0, description="an event stream ends after this; clients reconnect")
    webhook_secret_file: str | None = Field(
        default=None,
        description="the HMAC-SHA256 key of webhook signatures (at least 16 characters), read by every Driver "
        "replica at start-up; default: the IMGSOUND_WEBHOOK_SECRET_FILE variable of `serve run`. Without one, a "
        "job with a webhook_url is refused",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="call webhook hosts that resolve to loopback, private, link-local or other non-public "
        "addresses (off: such URLs are a 422)",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="per delivery attempt")
    webhook_attempts: int = Field(default=5, ge=1, le=20)
    webhook_backoff_s: float = Field(default=1.0, ge=0, description="waits 1×, 2×, 4×, … this between attempts")


class Renderer(BaseModel):
    """The Renderer deployment's CPU threads (PNG/WAV/MP4 encoding)."""

    model_config = ConfigDict(extra="forbid")

    torch_threads: int | None = Field(default=None, ge=1)


class AppArgs(BaseModel):
    """The `args` of the Serve application (see serve/config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    image: ModelPlacement = ModelPlacement(model=DEFAULT_IMAGE_MODEL)
    audio: ModelPlacement = ModelPlacement(model=DEFAULT_AUDIO_MODEL)
    vocoder: ModelPlacement | None = Field(
        default=None, description="the audio VAE + HiFi-GAN; defaults to the audio model's placement"
    )
    limits: Limits = Limits()
    resilience: Resilience = Resilience()
    auth: Auth = Auth()
    renderer: Renderer = Renderer()
    jobs: Jobs = Jobs()
    output_store: str | None = Field(
        default=None,
        description="None: artifacts inline as base64; 'file:///dir', a folder or 's3://bucket/prefix': also "
        "written there (jobs.store) and returned as URIs",
    )

    @property
    def vocoder_placement(self) -> ModelPlacement:
        return self.vocoder or self.audio


class BatchConfig(BaseModel):
    """`user_config` of a UNet deployment: Serve batching knobs, changeable at run time (`reconfigure`)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=16, ge=1, description="samples per UNet forward (each is 2 CFG rows)")
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
