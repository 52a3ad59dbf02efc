"""Sweep specs: a YAML grid of prompt pairs × seeds, validated before any work, expanded purely and stably.

`expand(spec, models)` gives the same grid points, in the same order, with the same sample ids, every time: the
ids are the core's (`imgsound_core.identity.sample_id`: request, method, the models' identities, dtype, vocoder,
crop), the ones `imgsound generate` and the HTTP API give the same sample, so a resubmitted sweep recognises
finished work. No Ray here; storage only to read a spec's source pictures and sounds.

Sources (SDEdit: `init_images`, `init_audios`, `params.strength`): every listed source is crossed with every
prompt pair (source × pair × samples_per_pair, sources outermost, pictures before sounds). A sample's id names its
source by the SHA-256 of its bytes, so the files are read and hashed once, on the submitting machine, when the spec
is loaded (`load_spec` → `resolve_sources`); `expand` only reads those hashes and stays pure. The workers read the
sources again and refuse any whose bytes no longer match (`read_source`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imgsound_core.defaults import CLAP_MODEL_ID, CLIP_MODEL_ID, DEFAULT_AUDIO_MODEL, DEFAULT_IMAGE_MODEL
from imgsound_core.identity import (
    ModelIdentity,
    SampleContext,
    hashed_request,
    identify,
    identity_hash,
    sample_id,
    weight_bytes,
)
from imgsound_core.init_source import (
    MAX_SOURCE_BYTES,
    InitSource,
    InitSourceError,
    check_source_size,
    load_init_audio,
    load_init_image,
    read_source_file,
    source_sha256,
)
from imgsound_core.methods import REQUEST_TYPES, request_fields
from imgsound_core.models.location import resolve_model_path
from imgsound_core.request import DEFAULT_INIT_STRENGTH, RequestError, SampleRequest, check_crop

Method = Literal["denoise", "imprint", "sds"]
DEFAULT_IMAGE_PRIOR = "DeepFloyd/IF-I-M-v1.0"  # the SDS baseline's image prior (IF stage I), as the paper's


# Request fields a spec never sets under `params`: prompts come from the grid, seeds from `seed`, the sources'
# hashes from `init_images` / `init_audios`.
GRID_FIELDS = ("image_prompt", "audio_prompt", "seed", "init_image_sha256", "init_audio_sha256")
SOURCE_KEYS = {"image": "init_images", "audio": "init_audios"}


def param_fields(method: str) -> tuple[str, ...]:
    """The request fields a spec may set under `params`."""
    return tuple(n for n in request_fields(method) if n not in GRID_FIELDS)


PARAM_FIELDS = param_fields("denoise")


class SpecError(ValueError):
    """The spec is invalid; the message names the problem."""


class PromptPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str
    audio: str


class SourceFile(BaseModel):
    """One source to start samples from: a local path, `file:///abs/path` or `s3://bucket/key`, and the SHA-256 of
    its bytes. A spec may pin `sha256`; otherwise `resolve_sources` fills it in from the file."""

    model_config = ConfigDict(extra="forbid")

    uri: str
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="before")
    @classmethod
    def _plain_uri(cls, value: Any) -> Any:
        return {"uri": value} if isinstance(value, str) else value

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a source URI is empty")
        return value


class Models(BaseModel):
    """The weights a sweep runs (model ids or folders, dtype) and how its workers run them (device, compile).

    Only the models' identities and the dtype decide what a sample is; `device` and `compile` change speed alone,
    so they are in no sample id and may differ between runs of one sweep.
    """

    model_config = ConfigDict(extra="forbid")

    image: str = DEFAULT_IMAGE_MODEL
    audio: str = DEFAULT_AUDIO_MODEL
    dtype: Literal["fp32", "fp16", "bf16"] = "fp16"
    device: str = Field(default="auto", description="'auto': cuda when the worker has a GPU, else cpu")
    image_prior: str = Field(default=DEFAULT_IMAGE_PRIOR, description="method sds: DeepFloyd IF stage I")
    compile: bool | None = Field(
        default=None,
        description="torch.compile the UNets (denoise, imprint); None: on for CUDA workers, off on the CPU. How "
        "samples are computed, not what they are: not part of any sample id",
    )


class Scoring(BaseModel):
    """The optional scoring stage: CLIP and CLAP scores (and the vocoder cycle check) for every sample."""

    model_config = ConfigDict(extra="forbid")

    clip: str = Field(default=CLIP_MODEL_ID, description="CLIP model id or folder (the paper: ViT-B/16)")
    clap: str = Field(default=CLAP_MODEL_ID, description="CLAP model id or folder (the paper: HTSAT-unfused)")
    cycle: bool = Field(default=True, description="also the vocoder cycle check (cycle_mae, cycle_correlation)")
    device: str = Field(default="auto", description="'auto': cuda when the worker has a GPU, else cpu")
    batch_size: int = Field(default=32, ge=1, le=1024, description="samples per scoring call")


class SweepSpec(BaseModel):
    """A sweep: either `image_prompts` × `audio_prompts` (the full grid) or explicit `pairs`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    method: Method = Field(default="denoise", description="denoise (the paper's method), imprint or sds")
    image_prompts: list[str] | None = None
    audio_prompts: list[str] | None = None
    pairs: list[PromptPair] | None = None
    init_images: list[SourceFile] | None = Field(
        default=None, description="pictures to start from (SDEdit), each crossed with every pair; method denoise"
    )
    init_audios: list[SourceFile] | None = Field(
        default=None, description="sounds to start from (SDEdit), each crossed with every pair; method denoise"
    )
    samples_per_pair: int = Field(default=1, ge=1, le=100_000)
    seed: int = Field(default=0, ge=0, description="sample k of every pair uses seed + k (the paper's rule)")
    params: dict[str, Any] = Field(default_factory=dict)
    models: Models = Models()
    vocoder: Literal["hifigan", "griffinlim"] = "hifigan"
    crop: bool = False
    video: bool = Field(default=False, description="also write video.mp4 per sample (the playhead video)")
    output: str | None = Field(default=None, description="default output URI; --output overrides")
    batch_size: int = Field(default=16, ge=1, le=256, description="samples per worker call (one UNet batch)")
    workers: int | None = Field(
        default=None,
        ge=1,
        description="generating actors; default: one per GPU, else one per core as memory allows (cpu_generators)",
    )
    worker_resources: dict[str, float] | None = Field(
        default=None,
        description="custom Ray resources each generating actor asks for, besides its GPU (e.g. {accelerator: 1} on "
        "nodes started with --resources), so they are placed one per node that offers them",
    )
    writers: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="actors encoding and uploading; default: 2 per generating actor on GPUs, 1 on CPUs",
    )
    scoring: Scoring | None = Field(default=None, description="score every sample after generation (`scoring: {}`)")

    @field_validator("scoring", mode="before")
    @classmethod
    def _scoring_switch(cls, value: Any) -> Any:
        # `scoring: true` / `scoring: {}` both mean the paper's scorers; `false`/absent: no scoring stage.
        if value is True:
            return {}
        if value is False:
            return None
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name must not be empty")
        return value

    @field_validator("image_prompts", "audio_prompts")
    @classmethod
    def _prompts(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("the prompt list is empty")
            if any(not p.strip() for p in value):
                raise ValueError("a prompt is empty")
            if len(set(value)) != len(value):
                raise ValueError("a prompt is listed twice")
        return value

    @model_validator(mode="after")
    def _grid_or_pairs(self) -> SweepSpec:
        grid = self.image_prompts is not None or self.audio_prompts is not None
        if grid and self.pairs is not None:
            raise ValueError("give either image_prompts × audio_prompts or pairs, not both")
        if grid and (self.image_prompts is None or self.audio_prompts is None):
            raise ValueError("a grid needs both image_prompts and audio_prompts")
        if not grid and not self.pairs:
            raise ValueError("give image_prompts and audio_prompts, or a non-empty list of pairs")
        allowed = param_fields(self.method)
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown params for method {self.method}: {', '.join(unknown)} (allowed: {', '.join(allowed)})"
            )
        self._check_sources()
        # A source not hashed yet stands in with a placeholder hash: the request checks only the hash's form.
        source = None
        if self.sources():
            kind, file = self.sources()[0]
            source = (kind, file if file.sha256 else SourceFile(uri=file.uri, sha256="0" * 64))
        for image, audio in self.prompt_pairs():
            request = self._request(image, audio, source)
        check_crop(self.crop, request.width)
        return self

    def _check_sources(self) -> None:
        for key in SOURCE_KEYS.values():
            files = getattr(self, key)
            if files is None:
                continue
            if not files:
                raise ValueError(f"{key} is empty")
            if len({f.uri for f in files}) != len(files):
                raise ValueError(f"{key} lists a source twice")
        if self.sources() and self.method != "denoise":
            raise ValueError(f"init_images and init_audios are for method denoise, not {self.method}")
        strength = self.params.get("strength", DEFAULT_INIT_STRENGTH if self.sources() else 1.0)
        if self.sources() and strength == 1:
            raise ValueError(
                "params.strength 1 starts from pure noise and ignores init_images / init_audios: every source would "
                "give the same samples (leave strength out for the default, or give one below 1)"
            )
        if not self.sources() and isinstance(strength, int | float) and strength < 1:
            raise ValueError("params.strength below 1 starts from a source: give init_images or init_audios")

    def sources(self) -> list[tuple[str, SourceFile]]:
        """`(kind, source)` in grid order: the pictures, then the sounds ("image" / "audio")."""
        return [(kind, f) for kind, key in SOURCE_KEYS.items() for f in getattr(self, key) or []]

    def request(self, image_prompt: str, audio_prompt: str, source: tuple[str, SourceFile] | None = None):
        """Sample 0 of a pair (from `source`, a `(kind, SourceFile)` of `sources()`, if any): the method's request
        type with the spec's params. A source must have been hashed (`resolve_sources`)."""
        if source is not None and source[1].sha256 is None:
            raise SpecError(f"the source {source[1].uri} has not been hashed yet: load the spec with load_spec")
        return self._request(image_prompt, audio_prompt, source)

    def _request(self, image_prompt: str, audio_prompt: str, source: tuple[str, SourceFile] | None):
        request_type = REQUEST_TYPES[self.method]
        params = dict(self.params)
        if source is not None:
            kind, file = source
            params.setdefault("strength", DEFAULT_INIT_STRENGTH)
            params[f"init_{kind}_sha256"] = file.sha256
        return request_type(image_prompt=image_prompt, audio_prompt=audio_prompt, seed=self.seed, **params)

    def prompt_pairs(self) -> list[tuple[str, str]]:
        """The pairs in grid order: image-major (image prompt i, then every audio prompt)."""
        if self.pairs is not None:
            return [(p.image, p.audio) for p in self.pairs]
        return [(i, a) for i in self.image_prompts or [] for a in self.audio_prompts or []]

    @property
    def image_source(self) -> str:
        """The model that makes the picture: the image model, or for SDS its image prior (IF stage I)."""
        return self.models.image_prior if self.method == "sds" else self.models.image

    def context(self, models: SweepModels) -> SampleContext:
        """What, besides the request, decides a sample's output: hashed into every sample id (not the scoring)."""
        return SampleContext(models.image, models.audio, self.models.dtype, self.vocoder, self.crop, method=self.method)

    def legacy_id(self, request: Any) -> str:
        """The id this point had before model identities existed (models hashed as the spec names them)."""
        return identity_hash(
            hashed_request(request),
            self.method,
            self.image_source,
            self.models.audio,
            self.models.dtype,
            self.vocoder,
            self.crop,
        )


@dataclass(frozen=True)
class SweepModels:
    """The identities of a sweep's two models (`imgsound_core.identity`), resolved where the weights are."""

    image: ModelIdentity
    audio: ModelIdentity
    weight_bytes: int = 0  # both folders' weight files (`weight_bytes`), to size CPU generators; 0: not known

    @classmethod
    def identify(cls, spec: SweepSpec) -> SweepModels:
        """Identify the spec's models on this machine; `ModelNotAvailableError` when it does not hold them."""
        # Each folder resolved once: its identity and the size of its weights both read it.
        sources = ((spec.image_source, "image"), (spec.models.audio, "audio"))
        found = [(source, *resolve_model_path(source, role)) for source, role in sources]
        image, audio = (identify(source, path, revision) for source, path, revision in found)
        return cls(image, audio, sum(weight_bytes(path) for _, path, _ in found))

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image.__dict__, "audio": self.audio.__dict__, "weight_bytes": self.weight_bytes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepModels:
        return cls(ModelIdentity(**data["image"]), ModelIdentity(**data["audio"]), data.get("weight_bytes", 0))


@dataclass(frozen=True)
class GridPoint:
    sample_id: str
    pair_index: int
    sample_index: int
    request: Any  # the method's request type: SampleRequest, ImprintRequest or SDSSettings
    legacy_id: str  # the same point's id in manifests written before model identities (SweepSpec.legacy_id)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file, hashing its sources (`resolve_sources`); SpecError with one sentence on any
    problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise SpecError(f"cannot read the spec {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise SpecError(f"the spec {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SpecError(f"the spec {path} must be a YAML mapping")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        message = first["msg"].removeprefix("Value error, ")
        more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
        raise SpecError(f"the spec {path} is invalid: {where}: {message}{more}") from None
    except RequestError as error:
        raise SpecError(f"the spec {path} is invalid: params: {error}") from None
    try:
        return resolve_sources(spec)
    except SpecError as error:
        raise SpecError(f"the spec {path} is invalid: {error}") from None


def expand(spec: SweepSpec, models: SweepModels) -> list[GridPoint]:
    """Every grid point, in a stable order: sources in `sources()` order (when the spec has any), pairs in grid
    order, then samples 0..samples_per_pair−1. Pure: the sources' hashes are the spec's (`resolve_sources`)."""
    context = spec.context(models)
    points = []
    for source in spec.sources() or [None]:
        for pair_index, (image, audio) in enumerate(spec.prompt_pairs()):
            base = spec.request(image, audio, source)
            for sample_index, request in enumerate(base.expand(spec.samples_per_pair)):
                points.append(
                    GridPoint(sample_id(request, context), pair_index, sample_index, request, spec.legacy_id(request))
                )
    return points


def read_source(uri: str, endpoint_url: str | None = None) -> bytes:
    """The bytes of a source: a local path (relative to the current folder, as model folders are), `file:///…` or
    `s3://bucket/key` (through `jobs.store`: boto3's credentials, `endpoint_url` or `AWS_ENDPOINT_URL`). At most
    `MAX_SOURCE_BYTES` are read; `InitSourceError` (missing, empty, too large) or `StoreError` otherwise."""
    if uri.startswith("s3://"):
        from jobs.store import open_store

        folder, _, name = uri[len("s3://") :].rpartition("/")
        if not folder or not name:
            raise InitSourceError(f"{uri} names no object: write s3://bucket/key")
        try:
            data = open_store(f"s3://{folder}", endpoint_url=endpoint_url).get_head(name, MAX_SOURCE_BYTES + 1)
        except FileNotFoundError:
            raise InitSourceError(f"{uri} does not exist") from None
        check_source_size(len(data), uri)
        return data
    if uri.startswith("file:"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise InitSourceError(f"{uri} is not a local file URI: write file:///absolute/path or a plain path")
        return read_source_file(unquote(parsed.path), uri)
    return read_source_file(uri, uri)


def load_source(kind: str, data: bytes, height: int, width: int, name: str) -> InitSource:
    """A source's bytes ("image" or "audio") decoded for a `height × width` sample (`imgsound_core.init_source`)."""
    if kind == "image":
        return load_init_image(data, height, width, name=name)
    return load_init_audio(data, width, height, name=name)


def resolve_sources(spec: SweepSpec, endpoint_url: str | None = None) -> SweepSpec:
    """`spec` with every source's SHA-256 read from its bytes, each source decoded once to prove it usable.

    Runs where the spec is submitted, before any work: a missing, unreadable or changed (pinned `sha256`) source,
    or two sources with the same bytes (their samples would share ids), is a `SpecError`.
    """
    if not spec.sources():
        return spec
    from jobs.store import StoreError

    data = spec.model_dump()
    seen: dict[str, str] = {}
    defaults = SampleRequest(image_prompt="-", audio_prompt="-")
    height, width = (spec.params.get(name, getattr(defaults, name)) for name in ("height", "width"))
    for kind, key in SOURCE_KEYS.items():
        for index, entry in enumerate(data[key] or []):
            where = f"{key}[{index}]"
            try:
                content = read_source(entry["uri"], endpoint_url)
                load_source(kind, content, height, width, entry["uri"])
            except (InitSourceError, StoreError) as error:
                raise SpecError(f"{where}: {error}") from None
            digest = source_sha256(content)
            if entry["sha256"] is not None and entry["sha256"] != digest:
                raise SpecError(
                    f"{where}: {entry['uri']} has SHA-256 {digest}, not the {entry['sha256']} the spec pins"
                )
            if digest in seen:
                raise SpecError(f"{where}: {entry['uri']} holds the same bytes as {seen[digest]}")
            seen[digest] = entry["uri"]
            entry["sha256"] = digest
    return SweepSpec.model_validate(data)
