"""The ways a sample is made: the paper's multimodal denoising and its two baselines, each with its request type.

A record or a sweep names its method (`"denoise"` when absent); the request type says which fields decide the
sample — what a spec's `params` may set, what a file's provenance keeps. The baselines' request types live here,
beside `SampleRequest`'s entry, rather than with their samplers (imgsound_core/imprint.py, imgsound_core/sds.py,
which re-export them): without torch, so that a sweep's driver validates, identifies and plans without importing
it (1.1 s of its start-up on two cores).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imgsound_core.request import RequestError, SampleRequest, check_text, known_fields


@dataclass(frozen=True)
class ImprintRequest:
    """One imprint sample; the defaults are the reference's (50 / 100 steps, guidance 7.5 / 7.5, ρ 0.5, inverted)."""

    image_prompt: str
    audio_prompt: str
    image_negative: str = ""
    audio_negative: str = ""
    image_steps: int = 50
    audio_steps: int = 100
    image_guidance: float = 7.5
    audio_guidance: float = 7.5
    ratio: float = 0.5
    invert: bool = True
    seed: int = 0
    height: int = 256
    width: int = 1024

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float) or not 0 <= self.ratio <= 1:
            raise RequestError(f"ratio must be a number between 0 and 1, got {self.ratio!r}")
        if not isinstance(self.invert, bool):
            raise RequestError("invert must be true or false")
        self.image_request()  # the two runs validate prompts, steps, scales, seed and size
        self.audio_request()

    def image_request(self) -> SampleRequest:
        """The picture: the image model alone (the audio model never joins)."""
        return SampleRequest(
            image_prompt=self.image_prompt,
            audio_prompt=self.audio_prompt,
            image_negative=self.image_negative,
            audio_negative=self.audio_negative,
            steps=self.image_steps,
            image_guidance=self.image_guidance,
            audio_guidance=self.audio_guidance,
            image_start_step=0,
            audio_start_step=self.image_steps,
            seed=self.seed,
            height=self.height,
            width=self.width,
        )

    def audio_request(self) -> SampleRequest:
        """The spectrogram: the audio model alone."""
        return dataclasses.replace(
            self.image_request(), steps=self.audio_steps, image_start_step=self.audio_steps, audio_start_step=0
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImprintRequest:
        return cls(**known_fields(cls, data, "imprint"))

    def expand(self, num_samples: int) -> list[ImprintRequest]:
        """Sample i has seed `seed + i`, as in the method."""
        return [dataclasses.replace(self, seed=r.seed) for r in self.image_request().expand(num_samples)]


@dataclass(frozen=True)
class SDSSettings:
    """An SDS run; defaults are the reference's examples (40 000 iterations, guidance 80 / 10, weights 0.4 / 1,
    the image prior joining at iteration 5 000, 8 crops, a 1-channel 256×1024 picture, AdamW 1e-4 / 1e-3)."""

    image_prompt: str
    audio_prompt: str
    image_negative: str = ""
    audio_negative: str = ""
    iterations: int = 40_000
    image_start_step: int = 5_000
    image_guidance: float = 80.0
    audio_guidance: float = 10.0
    image_weight: float = 0.4
    audio_weight: float = 1.0
    learning_rate: float = 1e-4
    weight_decay: float = 1e-3
    crops: int = 8
    crop_size: int = 256
    channels: int = 1
    height: int = 256
    width: int = 1024
    hidden: int = 256
    features: int = 128
    feature_scale: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("image_prompt", "audio_prompt", "image_negative", "audio_negative"):
            check_text(name, getattr(self, name))
        if not self.image_prompt.strip() or not self.audio_prompt.strip():
            raise RequestError("image_prompt and audio_prompt must not be empty")
        for name in ("iterations", "crops", "crop_size", "hidden", "features"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise RequestError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.image_start_step <= self.iterations:
            raise RequestError(f"image_start_step must be between 0 and iterations ({self.iterations})")
        if self.channels not in (1, 3):
            raise RequestError(f"channels must be 1 or 3, got {self.channels}")
        if self.height % 8 or self.width % 8 or self.height < 8 or self.width < 8:
            raise RequestError(f"height and width must be positive multiples of 8, got {self.height}×{self.width}")
        if self.crop_size > min(self.height, self.width):
            raise RequestError(f"crop_size {self.crop_size} exceeds the picture ({self.height}×{self.width})")
        for name in ("image_guidance", "audio_guidance", "image_weight", "audio_weight", "learning_rate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise RequestError(f"{name} must be a finite number ≥ 0, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise RequestError(f"seed must be a non-negative integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SDSSettings:
        return cls(**known_fields(cls, data, "SDS"))

    def expand(self, num_samples: int) -> list[SDSSettings]:
        """Sample i has seed `seed + i`."""
        if num_samples < 1:
            raise RequestError(f"num_samples must be at least 1, got {num_samples}")
        return [dataclasses.replace(self, seed=self.seed + i) for i in range(num_samples)]


REQUEST_TYPES: dict[str, type] = {"denoise": SampleRequest, "imprint": ImprintRequest, "sds": SDSSettings}


def request_fields(method: str | None = None) -> tuple[str, ...]:
    """The fields of `method`'s request type, in their declared order (`None`: the paper's method)."""
    return tuple(f.name for f in dataclasses.fields(REQUEST_TYPES[method or "denoise"]))
