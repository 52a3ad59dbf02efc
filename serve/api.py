"""The HTTP API's request and response bodies (FastAPI/pydantic), and their mapping to the core's types.

Field names and defaults are the core `SampleRequest`'s (the paper's defaults); unknown fields are a 422.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from imgsound_core.init_source import source_sha256
from imgsound_core.request import DEFAULT_INIT_STRENGTH, RequestError, SampleRequest, check_crop
from serve.config import Limits
from serve.jobs import MAX_WEBHOOK_URL_CHARS

# The paper's defaults live in one place: the core request type.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(SampleRequest)}

OutputName = Literal["image", "spectrogram", "spectrogram_npy", "audio", "record", "video"]
# The default outputs; "video" (an MP4 with a moving playhead, ~2–3 s of CPU a sample) is opt-in.
ALL_OUTPUTS: tuple[str, ...] = ("image", "spectrogram", "spectrogram_npy", "audio", "record")
# Which artifact file each output name is.
OUTPUT_FILES = {
    "image": "image.png",
    "spectrogram": "spectrogram.png",
    "spectrogram_npy": "spectrogram.npy",
    "audio": "audio.wav",
    "record": "sample.json",
    "video": "video.mp4",
}


# Body fields that name a source to start from (SDEdit); the request carries their SHA-256 instead.
SOURCE_FIELDS = {"image": "init_image", "audio": "init_audio"}


class SourceTooLarge(RequestError):
    """A source (after base64) larger than `limits.max_source_bytes`: a 413."""


class GenerateBody(BaseModel):
    """POST /v1/generate. Sample i has seed `seed + i`."""

    model_config = ConfigDict(extra="forbid")

    image_prompt: str = Field(description="what the spectrogram should look like")
    audio_prompt: str = Field(description="what it should sound like")
    image_negative: str = DEFAULTS["image_negative"]
    audio_negative: str = DEFAULTS["audio_negative"]
    steps: int = DEFAULTS["steps"]
    image_guidance: float = DEFAULTS["image_guidance"]
    audio_guidance: float = DEFAULTS["audio_guidance"]
    image_start_step: int | None = Field(
        default=None, description="default: 10 % of the steps, rounded (10 at 100 steps); 0 if audio_start_step > 0"
    )
    audio_start_step: int = DEFAULTS["audio_start_step"]
    audio_weight: float = DEFAULTS["audio_weight"]
    seed: int = DEFAULTS["seed"]
    num_samples: int = 1
    height: int = DEFAULTS["height"]
    width: int = DEFAULTS["width"]
    vocoder: Literal["hifigan", "griffinlim"] = "hifigan"
    crop: bool = Field(default=False, description="drop the last 32 columns of pictures and audio")
    outputs: list[OutputName] = Field(
        default_factory=lambda: list(ALL_OUTPUTS),
        description="which files to return (and store); add 'video' for an MP4 of the spectrogram with a playhead",
    )
    inline: bool = Field(
        default=True, description="return the outputs as base64; with an output store, false returns URIs only"
    )
    init_image: str | None = Field(
        default=None,
        description="a picture to start from (SDEdit), base64 of its file (PNG, JPEG, WebP, GIF, BMP, TIFF): made "
        "grayscale, resized to height × width and encoded by the image model's VAE",
    )
    init_audio: str | None = Field(
        default=None,
        description="a sound to start from (SDEdit), base64 of its file (WAV, FLAC, OGG, MP3): cut or padded to the "
        "width's duration, turned into the audio model's log-mel picture and encoded by its VAE",
    )
    strength: float | None = Field(
        default=None,
        description=f"0 < s ≤ 1, the share of the schedule re-run from the source (1: pure noise, the source "
        f"ignored); default {DEFAULT_INIT_STRENGTH} with a source, 1 without",
    )

    @field_validator(
        "steps",
        "image_guidance",
        "audio_guidance",
        "image_start_step",
        "audio_start_step",
        "audio_weight",
        "seed",
        "num_samples",
        "height",
        "width",
        "strength",
        mode="before",
    )
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        # JSON's true/false are not numbers, though Python's bool is an int.
        if isinstance(value, bool):
            raise ValueError("must be a number, not true or false")
        return value

    def to_requests(self, limits: Limits) -> list[SampleRequest]:
        """Validate against the core's rules and the server's limits; RequestError names the field."""
        return self.requests_and_sources(limits)[0]

    def requests_and_sources(self, limits: Limits) -> tuple[list[SampleRequest], dict[str, bytes]]:
        """`to_requests`, and the sources' bytes it decoded to hash them (`source_bytes`), for the caller that loads
        them: a source is decoded once per request."""
        if not 1 <= self.num_samples <= limits.max_samples_per_request:
            raise RequestError(
                f"num_samples must be between 1 and {limits.max_samples_per_request}, got {self.num_samples}"
            )
        if self.steps > limits.max_steps:
            raise RequestError(f"steps must be at most {limits.max_steps} on this server, got {self.steps}")
        if self.height > limits.max_height or self.width > limits.max_width:
            raise RequestError(
                f"height × width must be at most {limits.max_height} × {limits.max_width} on this server, "
                f"got {self.height} × {self.width}"
            )
        for name in ("image_prompt", "audio_prompt", "image_negative", "audio_negative"):
            if len(getattr(self, name)) > limits.max_prompt_chars:
                raise RequestError(f"{name} is longer than {limits.max_prompt_chars} characters")
        sources = self.source_bytes(limits)
        strength = self.strength
        if strength is None:
            strength = DEFAULT_INIT_STRENGTH if sources else 1.0
        elif strength < 1.0 and not sources:
            raise RequestError(
                f"strength {strength:g} re-runs part of the schedule from a source: give init_image or init_audio"
            )
        fields = self.model_dump(
            exclude={"num_samples", "vocoder", "crop", "outputs", "inline", "strength", *SOURCE_FIELDS.values()}
        )
        hashes = {
            f"{field}_sha256": source_sha256(sources[kind]) for kind, field in SOURCE_FIELDS.items() if kind in sources
        }
        requests = SampleRequest(**fields, **hashes, strength=strength).expand(self.num_samples)
        check_crop(self.crop, self.width)
        return requests, sources

    def source_bytes(self, limits: Limits) -> dict[str, bytes]:
        """`{"image"|"audio": file bytes}` of the sources in the body: strict base64, not empty, at most
        `limits.max_source_bytes` each (SourceTooLarge, checked before decoding). Whether the bytes are a picture or
        a sound is the loader's to say (`imgsound_core.init_source`)."""
        found = {}
        for kind, field in SOURCE_FIELDS.items():
            text = getattr(self, field)
            if text is None:
                continue
            if len(text) // 4 * 3 > limits.max_source_bytes + 2:  # the decoded size, give or take the padding
                raise SourceTooLarge(
                    f"{field} is larger than {limits.max_source_bytes} bytes, the largest source this server takes"
                )
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(f"{field} is not base64 (RFC 4648, without line breaks)") from None
            if not data:
                raise RequestError(f"{field} is empty")
            if len(data) > limits.max_source_bytes:
                raise SourceTooLarge(
                    f"{field} is larger than {limits.max_source_bytes} bytes, the largest source this server takes"
                )
            found[kind] = data
        return found


class SampleOut(BaseModel):
    """One sample: its parameters and seed, and each requested output as base64 or as a URI."""

    sample_id: str
    index: int
    seed: int
    parameters: dict
    base64: dict[str, str] = Field(default_factory=dict, description="output name → base64 file bytes")
    uris: dict[str, str] = Field(default_factory=dict, description="output name → URI (when a store is set)")


class GenerateResponse(BaseModel):
    samples: list[SampleOut]
    timings_s: dict[str, float]
    warnings: list[str] = Field(default_factory=list, description="e.g. a prompt too long for its text encoder")


class Health(BaseModel):
    status: Literal["ok"]
    samples_in_flight: int
    max_samples_in_flight: int


class JobBody(GenerateBody):
    """POST /v1/jobs: a /v1/generate body, run in the background. Its files go to the output store (URIs only:
    `inline` is ignored), and are served at /v1/jobs/{job_id}/samples/{index}/{output}."""

    webhook_url: str | None = Field(
        default=None,
        max_length=MAX_WEBHOOK_URL_CHARS,
        description="http(s) URL that gets one POST of the final job JSON, signed "
        "`X-Imgsound-Signature: sha256=<hex HMAC-SHA256 of the body>`",
    )

    def generation(self) -> GenerateBody:
        """The /v1/generate body this job runs (its files by URI)."""
        return GenerateBody.model_validate(self.model_dump(exclude={"webhook_url"}) | {"inline": False})

    def requests_and_sources(self, limits: Limits) -> tuple[list[SampleRequest], dict[str, bytes]]:
        return self.generation().requests_and_sources(limits)


class JobSubmitted(BaseModel):
    job_id: str
    status_url: str


class JobProgress(BaseModel):
    steps_done: int
    steps_total: int = Field(description="DDIM steps the job's samples take (0 until it starts)")


class JobView(BaseModel):
    """GET /v1/jobs/{job_id}; also each server-sent event's data, and the webhook's body."""

    job_id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: JobProgress
    created: str = Field(description="ISO 8601, UTC")
    finished: str | None = Field(default=None, description="ISO 8601, UTC; set once the job has ended")
    samples: list[SampleOut] = Field(default_factory=list, description="as /v1/generate's, with URIs")
    warnings: list[str] = Field(default_factory=list)
    error: str | None = Field(default=None, description="why the job failed")
