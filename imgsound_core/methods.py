"""The ways a sample is made: the paper's multimodal denoising and its two baselines, each with its request type.

A record or a sweep names its method (`"denoise"` when absent); the request type says which fields decide the
sample — what a spec's `params` may set, what a file's provenance keeps.
"""

from __future__ import annotations

import dataclasses

from imgsound_core.imprint import ImprintRequest
from imgsound_core.request import SampleRequest
from imgsound_core.sds import SDSSettings

REQUEST_TYPES: dict[str, type] = {"denoise": SampleRequest, "imprint": ImprintRequest, "sds": SDSSettings}


def request_fields(method: str | None = None) -> tuple[str, ...]:
    """The fields of `method`'s request type, in their declared order (`None`: the paper's method)."""
    return tuple(f.name for f in dataclasses.fields(REQUEST_TYPES[method or "denoise"]))
