"""Where a model's files are: a folder, a hub id's snapshot in the local Hugging Face cache, or a folder that
`imgsound download` wrote under `IMGSOUND_MODELS_DIR`. Never the network, and no torch: a sweep's driver resolves
and identifies models this way without loading them (or the libraries that run them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from imgsound_core.models.errors import ModelNotAvailableError


def missing_weights_message(role: str, source: str, why: str) -> str:
    flag = f"--{role}-model"
    return (
        f"The {role} model '{source}' is not available on this machine ({why}); download it with "
        f"`imgsound download models/` and pass `{flag} models/{role}`, or pass `{flag} PATH` to a local copy "
        f"(for tests and demos, `imgsound tiny-models models/` writes small random models)."
    )


# Pickle name → safetensors name, as diffusers and transformers name them (the loaders prefer the second).
PICKLE_TO_SAFETENSORS = {
    "diffusion_pytorch_model.bin": "diffusion_pytorch_model.safetensors",
    "pytorch_model.bin": "model.safetensors",
}
SOURCE_FILE = "imgsound_source.json"  # written by `imgsound download`: which hub repo and commit a folder holds


def find_downloaded(repo_id: str) -> tuple[Path, str | None] | None:
    """A folder written by `imgsound download` for `repo_id`, searched in `IMGSOUND_MODELS_DIR` (os.pathsep-separated).

    This lets a spec or config keep naming models by hub id (so sample ids stay the same everywhere) while a cluster
    loads them from a shared volume.
    """
    for root in filter(None, os.environ.get("IMGSOUND_MODELS_DIR", "").split(os.pathsep)):
        for source in sorted(Path(root).glob(f"*/{SOURCE_FILE}")):
            try:
                record = json.loads(source.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if record.get("repo_id") == repo_id:
                return source.parent, record.get("revision")
    return None


def resolve_model_path(source: str | os.PathLike, role: str, revision: str | None = None) -> tuple[Path, str | None]:
    """A local folder for `source`: the folder itself, the hub id's snapshot in the local Hugging Face cache, or a
    folder that `imgsound download` wrote for that hub id under `IMGSOUND_MODELS_DIR`.

    Returns `(path, revision)` where revision is the cached commit hash for a hub id.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "unet").is_dir() and not (path / "vae").is_dir() and not (path / "model_index.json").exists():
            raise ModelNotAvailableError(
                missing_weights_message(role, text, "the folder has no unet/, vae/ or model_index.json")
            )
        return path, None
    looks_like_path = text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", os.sep, 1)
    if looks_like_path and text.count("/") != 1:
        raise ModelNotAvailableError(missing_weights_message(role, text, "no such folder"))
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(text, revision=revision, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - any failure here means the same thing to the user
        downloaded = find_downloaded(text)
        if downloaded is not None:
            return downloaded
        if path.exists():
            raise ModelNotAvailableError(missing_weights_message(role, text, "it is not a folder")) from error
        raise ModelNotAvailableError(
            missing_weights_message(role, text, "no such folder, and not in the local Hugging Face cache")
        ) from error
    return snapshot, snapshot.name
