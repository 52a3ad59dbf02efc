"""The one request type: what a single sample is, validated at the edge.

A `SampleRequest` carries everything that decides a sample's pixels and sound (prompts, negatives, scales, start
steps, weight, step count, seed, size), with the paper's defaults. The CLI, the HTTP API and sweep specs all build
it; unknown keys are errors; its canonical JSON, with the models and settings that also decide the output, is
hashed into the sample id (`identity.py`). Validation errors are `RequestError`
with one sentence that names the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The training schedule has 1000 timesteps, and SD's DDIM config offsets every step by one (`steps_offset: 1`):
# 1000 DDIM steps would ask for timestep 1000, which does not exist, so 999 is the most.
MAX_STEPS = 999
MAX_PROMPT_CHARS = 1000
MAX_GUIDANCE = 100.0
MAX_SIDE_PIXELS = 4096
SIZE_MULTIPLE = 8  # the VAE downsamples by 8
MAX_SEED = 2**63 - 1
# The warm start: the image model joins after this share of the steps (the paper's 10 of 100).
WARM_START_PERCENT = 10
# The reference code crops 32 pixel columns (0.32 s) off the right edge, where the decoders leave a dark band.
CROP_COLUMNS = 32
# Starting from a source picture or sound (SDEdit): the share of the schedule re-run when a source is given and no
# strength is. 0.6 keeps the source's layout while leaving both models 60 % of the steps to make it their own.
DEFAULT_INIT_STRENGTH = 0.6
# Fields added after sample ids were first issued: at these values they are left out of the hashed request, so
# every earlier sample keeps its id (`SampleRequest.identity_dict`).
LATER_FIELD_DEFAULTS: dict[str, Any] = {"init_image_sha256": None, "init_audio_sha256": None, "strength": 1.0}


class RequestError(ValueError):
    """A request parameter is invalid; the message is one sentence naming the field."""


def known_fields(request_type: type, data: Mapping[str, Any], what: str = "request") -> dict[str, Any]:
    """`data` as keyword arguments of the dataclass `request_type`; unknown keys and missing prompts are errors
    (a misspelt key must not silently fall back to a default)."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(request_type)})
    if unknown:
        raise RequestError(f"unknown {what} field(s): {', '.join(unknown)}")
    for required in ("image_prompt", "audio_prompt"):
        if required not in data:
            raise RequestError(f"{required} is required")
    return dict(data)


def check_text(name: str, value: object, max_chars: int = MAX_PROMPT_CHARS) -> None:
    """A prompt: a string of at most `max_chars` characters that UTF-8 can encode (a lone surrogate such as
    "\\ud800", which some JSON and YAML parsers let through, cannot reach a tokenizer)."""
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string")
    if len(value) > max_chars:
        raise RequestError(f"{name} is {len(value)} characters long; the limit is {max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{name} is not valid text (it holds a lone surrogate code point)") from None


def default_image_start_step(steps: int, audio_start_step: int = 0) -> int:
    """The image model's first step when none is given: the paper's 10 % of the steps, rounded (half to even, as
    Table 1's reduced grids scale it): 10 at 100 steps, 2 at 20, 0 at 5; 0 when the audio model starts late (one
    of the two must denoise the first step)."""
    if audio_start_step > 0:
        return 0
    return round(steps * WARM_START_PERCENT / 100)


def check_crop(crop: bool, width: int) -> None:
    """`crop` drops the last `CROP_COLUMNS` columns: the picture must be wider than that (checked before any work)."""
    if crop and width <= CROP_COLUMNS:
        raise RequestError(f"crop drops the last {CROP_COLUMNS} columns, so width must be more than that, got {width}")


def first_step_index(steps: int, strength: float) -> int:
    """The step index an SDEdit start begins at: `steps − round(strength · steps)`, at most `steps − 1` (at least one
    step is run). Strength 1 is index 0 (the whole schedule); 0.6 of 100 steps is index 40."""
    return min(steps - round(strength * steps), steps - 1)


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def content_id(payload: Mapping[str, Any]) -> str:
    """A stable id: the first 16 hex digits of SHA-256 over the canonical JSON of `payload`."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class SampleRequest:
    """One sample of the multimodal denoising method.

    Defaults are the paper's: 100 steps, guidance 10 / 10, the image model joins after 10 % of the steps (step 10 of
    100; `image_start_step=None` asks for that share of any step count), the audio model at step 0, audio weight
    0.5, 256×1024 pixels (a 4×32×128 latent, 10.24 s of 16 kHz audio), seed 0.
    `seed` is this sample's own seed (a request for N samples with seed s makes seeds s, s+1, …, s+N−1).

    Starting from a source (SDEdit): `init_image_sha256` / `init_audio_sha256` name the bytes of a source picture /
    sound (its file's SHA-256, lowercase hex) and `strength` (0 < s ≤ 1) the share of the schedule re-run: the
    sample starts at step index `first_step_index(steps, strength)` from the source's latent noised to that step. The
    caller supplies the source itself (`Sampler.generate(..., init=…)`); the request only names it, so that the id
    names the sample's bytes. Strength 1 re-runs everything from pure noise: the source is ignored, so its hashes
    are dropped here and the request (and its id) is plain generation's. Below 1 a source is required.
    """

    image_prompt: str
    audio_prompt: str
    image_negative: str = ""
    audio_negative: str = ""
    steps: int = 100
    image_guidance: float = 10.0
    audio_guidance: float = 10.0
    image_start_step: int | None = None  # None: default_image_start_step(steps, audio_start_step)
    audio_start_step: int = 0
    audio_weight: float = 0.5
    seed: int = 0
    height: int = 256
    width: int = 1024
    init_image_sha256: str | None = None
    init_audio_sha256: str | None = None
    strength: float = 1.0

    def __post_init__(self) -> None:
        for name in ("image_prompt", "audio_prompt", "image_negative", "audio_negative"):
            check_text(name, getattr(self, name))
        for name in ("image_prompt", "audio_prompt"):
            if not getattr(self, name).strip():
                raise RequestError(f"{name} must not be empty")
        if self.image_start_step is None and isinstance(self.steps, int) and isinstance(self.audio_start_step, int):
            object.__setattr__(self, "image_start_step", default_image_start_step(self.steps, self.audio_start_step))
        for name in ("steps", "image_start_step", "audio_start_step", "seed", "height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise RequestError(f"{name} must be an integer, got {value!r}")
        for name in ("image_guidance", "audio_guidance", "audio_weight", "strength"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RequestError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise RequestError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 1 <= self.steps <= MAX_STEPS:
            raise RequestError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        for name in ("image_guidance", "audio_guidance"):
            if not 0.0 <= getattr(self, name) <= MAX_GUIDANCE:
                raise RequestError(f"{name} must be between 0 and {MAX_GUIDANCE:g}, got {getattr(self, name)}")
        if not 0.0 <= self.audio_weight <= 1.0:
            raise RequestError(f"audio_weight must be between 0 and 1, got {self.audio_weight}")
        for name in ("image_start_step", "audio_start_step"):
            if not 0 <= getattr(self, name) <= self.steps:
                raise RequestError(f"{name} must be between 0 and steps ({self.steps}), got {getattr(self, name)}")
        if min(self.image_start_step, self.audio_start_step) != 0:
            raise RequestError("image_start_step or audio_start_step must be 0, or no model denoises the first step")
        if not 0 <= self.seed <= MAX_SEED:
            raise RequestError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value % SIZE_MULTIPLE or not SIZE_MULTIPLE <= value <= MAX_SIDE_PIXELS:
                raise RequestError(
                    f"{name} must be a multiple of {SIZE_MULTIPLE} between {SIZE_MULTIPLE} and {MAX_SIDE_PIXELS}, "
                    f"got {value}"
                )
        self._check_init()

    def _check_init(self) -> None:
        """The source fields: hashes are SHA-256 hex digests, 0 < strength ≤ 1, a source below 1, none at 1."""
        for name in ("init_image_sha256", "init_audio_sha256"):
            value = getattr(self, name)
            if value is not None and not _is_sha256(value):
                raise RequestError(f"{name} must be a SHA-256 digest (64 lowercase hex digits), got {value!r}")
        if not 0.0 < self.strength <= 1.0:
            raise RequestError(f"strength must be more than 0 and at most 1, got {self.strength}")
        if self.strength == 1.0:
            # The whole schedule from pure noise: no source reaches the sample, so none may name it (same id).
            object.__setattr__(self, "init_image_sha256", None)
            object.__setattr__(self, "init_audio_sha256", None)
        elif self.init_image_sha256 is None and self.init_audio_sha256 is None:
            raise RequestError(
                f"strength {self.strength:g} starts from a source: give init_image_sha256 or init_audio_sha256"
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleRequest:
        """Build from a mapping; unknown keys are an error (a misspelt key must not silently fall back)."""
        return cls(**known_fields(cls, data))

    def to_dict(self) -> dict[str, Any]:
        """Every field (the record's and a sweep payload's form; `from_dict` reads it back)."""
        return dataclasses.asdict(self)

    def identity_dict(self) -> dict[str, Any]:
        """`to_dict()` less the later fields (`LATER_FIELD_DEFAULTS`) that hold their defaults: what the sample id
        hashes, so that a request without a source has the id it had before sources existed."""
        return {
            k: v for k, v in self.to_dict().items() if k not in LATER_FIELD_DEFAULTS or v != LATER_FIELD_DEFAULTS[k]
        }

    @property
    def start_index(self) -> int:
        """The step index this sample starts at: 0, or `first_step_index(steps, strength)` from a source."""
        return first_step_index(self.steps, self.strength)

    @property
    def steps_to_run(self) -> int:
        """The DDIM steps this sample takes: `steps − start_index`."""
        return self.steps - self.start_index

    def with_seed(self, seed: int) -> SampleRequest:
        return dataclasses.replace(self, seed=seed)

    def expand(self, num_samples: int) -> list[SampleRequest]:
        """The requests of samples 0..num_samples−1: sample i has seed `seed + i` (the reference code's rule)."""
        if num_samples < 1:
            raise RequestError(f"num_samples must be at least 1, got {num_samples}")
        if self.seed + num_samples - 1 > MAX_SEED:
            raise RequestError("seed + num_samples exceeds the largest seed")
        return [self.with_seed(self.seed + i) for i in range(num_samples)]
