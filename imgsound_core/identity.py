"""Sample identity: one sample id and one `sample.json` record, whoever makes the sample.

The sample id names a sample's bytes: the output store keeps `<store>/<sample_id>/…` and a sweep skips grid points
whose id it has seen, so the id must hash *everything that decides the output* and *nothing else*:

    sample_id = sha256(canonical JSON of {
        "request": the method's request (prompts, negatives, seed, steps, scales, start steps, weight, size, …;
                   a source's SHA-256 and the strength only when the sample starts from a source),
        "context": {"image_model": model id, "audio_model": model id, "dtype", "vocoder", "crop"},
        "method":  "imprint" | "sds"   (absent for the paper's method, "denoise")
    })[:16 hex digits]

A *model id* says what the weights are, never where they lie or which device runs them:

- `org/name@<commit>` for a hub model whose revision is known (the Hugging Face cache's snapshot, or the
  `imgsound_source.json` that `imgsound download` writes next to the weights); `org/name` when it is not;
- `sha256:<32 hex>` for any other folder: a fingerprint of its configs (as parsed JSON), tokenizer files and the
  *tensors* of its weights (names, dtypes, shapes, bytes), so moving or copying the folder keeps the id, and so does
  `imgsound convert` (a pickle and its safetensors copy hold the same tensors).

The device is not in the id (CPU and CUDA give the same sample to float tolerance); the weights' dtype is.
For the SDS baseline the "image model" is its image prior, DeepFloyd IF stage I.

Fingerprints of large folders are cached per file (path, size, mtime) in `IMGSOUND_CACHE_DIR` (default
`~/.cache/imgsound`), so only the first run reads every weight.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgsound_core.models.location import PICKLE_TO_SAFETENSORS, SOURCE_FILE, resolve_model_path
from imgsound_core.request import content_id

DENOISE = "denoise"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Files that describe a folder but do not decide what its model computes.
SKIPPED_NAMES = frozenset({"imgsound_source.json", "README.md", "LICENSE", "LICENSE.md", ".gitattributes"})
SKIPPED_SUFFIXES = (".md", ".png", ".jpg", ".jpeg", ".gif", ".lock")


@dataclass(frozen=True)
class ModelIdentity:
    """What a model is. `key` goes into sample ids; the rest is the record's account of it."""

    key: str
    hub_id: str | None = None
    revision: str | None = None
    fingerprint: str | None = None

    def to_record(self, dtype: str | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": self.key,
            "hub_id": self.hub_id,
            "revision": self.revision,
            "fingerprint": self.fingerprint,
        }
        if dtype is not None:
            record["dtype"] = dtype
        return record

    @classmethod
    def of_hub(cls, hub_id: str, revision: str | None) -> ModelIdentity:
        return cls(key=f"{hub_id}@{revision}" if revision else hub_id, hub_id=hub_id, revision=revision)

    @classmethod
    def of_fingerprint(cls, fingerprint: str) -> ModelIdentity:
        return cls(key=f"sha256:{fingerprint[:32]}", fingerprint=fingerprint)


def identify(source: str | os.PathLike, path: str | os.PathLike, revision: str | None) -> ModelIdentity:
    """The identity of a model named `source` (hub id or folder) and found at the local folder `path`.

    `revision` is the commit a hub id resolved to (None for a folder). A folder written by `imgsound download` is
    its hub id and recorded commit; any other folder is its fingerprint.
    """
    path = Path(path)
    text = str(source)
    if revision is not None and not Path(text).expanduser().is_dir():
        return ModelIdentity.of_hub(text, revision)
    try:
        downloaded = json.loads((path / SOURCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        downloaded = None
    if isinstance(downloaded, dict) and isinstance(downloaded.get("repo_id"), str):
        return ModelIdentity.of_hub(downloaded["repo_id"], downloaded.get("revision"))
    return ModelIdentity.of_fingerprint(fingerprint_folder(path))


def model_identity(model: Any) -> ModelIdentity:
    """The identity of a loaded model: a `ModelBundle` or an IF stage (anything with source, path, revision)."""
    return identify(model.source, model.path, model.revision)


def identify_source(source: str | os.PathLike, role: str) -> ModelIdentity:
    """The identity of the model `source` (folder or hub id) without loading it: resolves the folder only.

    Raises `ModelNotAvailableError` (one sentence) when it is not on this machine.
    """
    path, revision = resolve_model_path(source, role)
    return identify(source, path, revision)


def dtype_name(dtype: Any) -> str:
    """ "fp32"/"fp16"/"bf16" for a torch dtype or one of those names (the id's spelling)."""
    text = str(dtype).removeprefix("torch.")
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(text, text)


@dataclass(frozen=True)
class SampleContext:
    """Everything besides the request that decides a sample's output."""

    image_model: ModelIdentity  # for the SDS baseline: its image prior (DeepFloyd IF stage I)
    audio_model: ModelIdentity
    dtype: str
    vocoder: str
    crop: bool
    method: str = DENOISE

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", dtype_name(self.dtype))


def hashed_request(request: Any) -> dict[str, Any]:
    """The request as the id hashes it: `identity_dict()` where the type has one (`SampleRequest` leaves out the
    fields added later while they hold their defaults, so earlier ids never change), else `to_dict()`."""
    identity_dict = getattr(request, "identity_dict", None)
    return identity_dict() if callable(identity_dict) else request.to_dict()


def sample_id(request: Any, context: SampleContext) -> str:
    """The sample id of `request` (a `SampleRequest`, `ImprintRequest` or `SDSSettings`) made in `context`."""
    return identity_hash(
        hashed_request(request),
        context.method,
        context.image_model.key,
        context.audio_model.key,
        context.dtype,
        context.vocoder,
        context.crop,
    )


def identity_hash(
    request: Mapping[str, Any], method: str, image_model: str, audio_model: str, dtype: str, vocoder: str, crop: bool
) -> str:
    """The hash behind `sample_id`, from plain values. Sweeps written before model ids existed named models as
    their specs did (hub id or folder path); `jobs.sweep` calls this with those names to recognise their rows."""
    payload: dict[str, Any] = {
        "request": dict(request),
        "context": {
            "image_model": image_model,
            "audio_model": audio_model,
            "dtype": dtype_name(dtype),
            "vocoder": vocoder,
            "crop": bool(crop),
        },
    }
    if method != DENOISE:
        payload["method"] = method
    return content_id(payload)


def library_versions() -> dict[str, str]:
    """The versions of imgsound and the libraries that shape its output."""
    import diffusers
    import torch
    import transformers

    from imgsound_core import __version__

    # Plain strings: torch's version is a `str` subclass of torch's own, which would make every record that crosses
    # processes (a sweep's batches) need torch to be unpickled.
    return {
        "imgsound": __version__,
        "torch": str(torch.__version__),
        "diffusers": str(diffusers.__version__),
        "transformers": str(transformers.__version__),
    }


def utc_now() -> str:
    """A record's `created_utc`: now, to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def sample_record(
    request: Any,
    context: SampleContext,
    *,
    sample_index: int,
    device: str,
    timings_s: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    prompt_tokens_dropped: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The `sample.json` record of one sample, the same whichever caller makes it.

    Holds the method (when not the paper's), every request field, the sample id, the models' identities (no local
    paths), dtype, vocoder, crop, the device it ran on, timings, library versions and the time; `extra` adds the
    caller's own keys (a sweep's name and grid position, a worker's name). `prompt_tokens_dropped` (`{field:
    tokens}`, `text.prompt_truncation`) is recorded when a prompt was too long for its text encoder.
    """
    record: dict[str, Any] = {}
    if context.method != DENOISE:
        record["method"] = context.method
    record.update(request.to_dict())
    record.update(
        {
            "sample_id": sample_id(request, context),
            "sample_index": sample_index,
            "image_model": context.image_model.to_record(context.dtype),
            "audio_model": context.audio_model.to_record(context.dtype),
            "dtype": context.dtype,
            "vocoder": context.vocoder,
            "crop": context.crop,
            "device": device,
            "timings_s": dict(timings_s or {}),
            "versions": library_versions(),
            "created_utc": utc_now(),
        }
    )
    if prompt_tokens_dropped:
        record["prompt_tokens_dropped"] = dict(prompt_tokens_dropped)
    record.update(extra or {})
    return record


# --- fingerprints ---------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """imgsound's per-user cache folder: `IMGSOUND_CACHE_DIR`, default `~/.cache/imgsound` (not created here).

    It holds the fingerprint cache (`fingerprints.json`) and the compiled UNet kernels (`torch-compile/`).
    """
    return Path(os.environ.get("IMGSOUND_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "imgsound"))


def fingerprint_folder(folder: str | os.PathLike) -> str:
    """SHA-256 over a model folder's contents as the loaders read them (see the module docstring).

    Every file below `folder` counts except hidden ones and documentation; JSON files count as parsed (key order
    and spacing do not matter); weights count as tensors, under the safetensors name the loaders prefer, and a
    pickle with a safetensors copy beside it is skipped (the loaders read the copy).
    """
    root = Path(folder)
    entries: dict[str, str] = {}
    cache = _FingerprintCache.load()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if path.name in SKIPPED_NAMES or path.suffix.lower() in SKIPPED_SUFFIXES:
            continue
        name = relative.as_posix()
        if path.suffix == ".bin":
            converted = _safetensors_name(path.name, PICKLE_TO_SAFETENSORS)
            if converted is not None:
                if (path.parent / converted).exists():
                    continue
                name = (relative.parent / converted).as_posix()
        entries[name] = cache.digest(path)
    cache.save()
    if not entries:
        raise ValueError(f"{root} holds no model files to fingerprint")
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def weight_bytes(folder: str | os.PathLike) -> int:
    """The bytes of the weight files below `folder` as the loaders read them: a pickle with a safetensors copy beside
    it counts once (as in `fingerprint_folder`). What a loaded model holds is about this (fp32 files) or twice it
    (fp16 files run in fp32)."""
    total = 0
    for path in Path(folder).rglob("*"):
        if not path.is_file() or path.suffix.lower() not in WEIGHT_SUFFIXES:
            continue
        converted = _safetensors_name(path.name, PICKLE_TO_SAFETENSORS) if path.suffix == ".bin" else None
        if converted is not None and (path.parent / converted).exists():
            continue
        total += path.stat().st_size
    return total


def _safetensors_name(name: str, mapping: Mapping[str, str]) -> str | None:
    """`diffusion_pytorch_model[.variant].bin` → the safetensors name the loaders would prefer, else None."""
    for pickle_name, safetensors_name in mapping.items():
        stem, base = pickle_name.removesuffix(".bin"), safetensors_name.removesuffix(".safetensors")
        if name == pickle_name:
            return safetensors_name
        if name.startswith(stem + ".") and name.endswith(".bin"):  # a variant: stem.fp16.bin
            return base + name[len(stem) : -len(".bin")] + ".safetensors"
    return None


def file_digest(path: Path) -> str:
    """One file's part of a fingerprint: tensors for weights, parsed JSON for configs, bytes for anything else."""
    suffix = path.suffix.lower()
    if suffix in WEIGHT_SUFFIXES:
        return _tensors_digest(path)
    if suffix == ".json":
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
        else:
            return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensors_digest(path: Path) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor, in name order, whatever the container format.

    Pickles are read with `weights_only=True` (plain tensors only); nested dicts (a HiFi-GAN checkpoint's
    `{"generator": state_dict}`) flatten to dotted names.
    """
    import torch

    tensors: dict[str, torch.Tensor] = {}
    others: dict[str, str] = {}  # non-tensor entries of a pickle (an epoch counter…): their values still count
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            for name in file.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                tensors[name] = file.get_tensor(name)
    else:

        def flatten(prefix: str, value: Any) -> None:
            if isinstance(value, torch.Tensor):
                tensors[prefix] = value
            elif isinstance(value, Mapping):
                for key, item in value.items():
                    flatten(f"{prefix}.{key}" if prefix else str(key), item)
            else:
                others[prefix] = repr(value)

        flatten("", torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    for name in sorted(others):
        digest.update(f"{name}|{others[name]}|".encode())
    return digest.hexdigest()


class _FingerprintCache:
    """File digests keyed by (resolved path, size, mtime): a model folder is read in full once per machine."""

    def __init__(self, file: Path | None, entries: dict[str, str]) -> None:
        self.file = file
        self.entries = entries
        self.changed = False

    @classmethod
    def load(cls) -> _FingerprintCache:
        file = cache_dir() / "fingerprints.json"
        try:
            entries = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            entries = {}
        return cls(file, entries if isinstance(entries, dict) else {})

    def digest(self, path: Path) -> str:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        found = self.entries.get(key)
        if isinstance(found, str):
            return found
        self.entries[key] = file_digest(path)
        self.changed = True
        return self.entries[key]

    def save(self) -> None:
        """Best effort: a read-only home or a race with another process only costs a recomputation later."""
        if not self.changed or self.file is None:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=".fingerprints.", dir=self.file.parent)
            with os.fdopen(handle, "w") as out:
                json.dump(self.entries, out)
            os.replace(temp, self.file)
        except OSError:
            pass
