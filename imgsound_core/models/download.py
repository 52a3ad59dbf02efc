"""`imgsound download`: fetch the real weights from the Hugging Face hub into a folder, then convert pickles.

Only what the method loads is fetched — per component its configs, tokenizer files and one weights file
(safetensors when published, else the pickle, which is then converted once) — not the multi-GB single-file
checkpoints or fp16/EMA variants that the hub repos also hold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from imgsound_core.models.bundle import SOURCE_FILE
from imgsound_core.models.convert import Conversion, convert_model_dir

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "vocoder")
WEIGHT_PREFERENCE = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)
SMALL_FILE_SUFFIXES = (".json", ".txt")


def select_files(repo_files: Iterable[str]) -> list[str]:
    """The files of a diffusers-layout repo that the method needs (pure: testable on a file list)."""
    files = set(repo_files)
    chosen = {"model_index.json"} & files
    for component in COMPONENTS:
        in_folder = sorted(f for f in files if f.startswith(component + "/") and f.count("/") == 1)
        chosen.update(f for f in in_folder if f.endswith(SMALL_FILE_SUFFIXES))
        if component == "vocoder":
            chosen.update(f for f in in_folder if f.endswith(".pt"))
            continue
        for name in WEIGHT_PREFERENCE:
            if f"{component}/{name}" in files:
                chosen.add(f"{component}/{name}")
                break
    return sorted(chosen)


def download_model(repo_id: str, target: Path, revision: str | None = None) -> tuple[Path, list[Conversion]]:
    """Download `repo_id` into `target` (resumable; existing complete files are kept) and convert pickles."""
    from huggingface_hub import HfApi, snapshot_download

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise RuntimeError(f"cannot download {repo_id}: HF_HUB_OFFLINE is set")
    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception as error:  # noqa: BLE001 - network, auth and not-found errors all end the same way
        raise RuntimeError(f"cannot list {repo_id} on the Hugging Face hub ({type(error).__name__}: {error})") from None
    wanted = select_files(files)
    if not any(f.startswith("unet/") for f in wanted):
        raise RuntimeError(f"{repo_id} has no unet/ weights in the diffusers layout")
    target.mkdir(parents=True, exist_ok=True)
    snapshot_download(repo_id, revision=revision, local_dir=target, allow_patterns=wanted)
    conversions = convert_model_dir(target)
    try:
        commit = HfApi().model_info(repo_id, revision=revision).sha
    except Exception:  # noqa: BLE001 - provenance only; the files are complete either way
        commit = revision
    write_source_record(target, repo_id, commit)
    return target, conversions


def write_source_record(target: Path, repo_id: str, revision: str | None) -> None:
    """Record which hub repo (and commit) `target` holds, so `IMGSOUND_MODELS_DIR` lookups find it by id."""
    record = {"repo_id": repo_id, "revision": revision}
    (target / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
