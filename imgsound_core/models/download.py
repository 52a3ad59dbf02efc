"""`imgsound download`: fetch the real weights from the Hugging Face hub into a folder, then convert pickles.

Only what the method loads is fetched — per component its configs, tokenizer files and one weights file
(safetensors when published, else the pickle, which is then converted once) — not the multi-GB single-file
checkpoints or fp16/EMA variants that the hub repos also hold.

DeepFloyd IF repos (gated: the licence must be accepted on each model page and this machine logged in) are laid out
differently: a T5-XXL encoder in several shards, a sentencepiece tokenizer, stage II's image-noising scheduler. For
them the fp16 variant is fetched (what the reference loads; half the 19 GB of T5 in float32), and stage II's copy of
T5 is left out, since the colorizer reuses stage I's text embeddings. Errors on an IF repo say how to get access.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from imgsound_core.models.convert import Conversion, convert_model_dir
from imgsound_core.models.deepfloyd import is_deepfloyd, licence_note
from imgsound_core.models.location import SOURCE_FILE

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


IF_COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler", "image_noising_scheduler")
IF_SMALL_FILE_SUFFIXES = (".json", ".txt", ".model")  # .model: T5's sentencepiece `spiece.model`
# A weights file, whole or one shard: e.g. model.fp16-00001-of-00002.safetensors, diffusion_pytorch_model.bin.
_WEIGHTS_FILE = re.compile(
    r"^(?:diffusion_pytorch_model|model|pytorch_model)(?:\.(?P<variant>[a-z0-9_]+))?(?:-\d{5}-of-\d{5})?"
    r"\.(?P<format>safetensors|bin)$"
)
# The index of a sharded one: model.safetensors.index.json, model.safetensors.index.fp16.json.
_WEIGHTS_INDEX = re.compile(
    r"^(?:diffusion_pytorch_model|model|pytorch_model)\.(?P<format>safetensors|bin)\.index"
    r"(?:\.(?P<variant>[a-z0-9_]+))?\.json$"
)


def is_if_layout(repo_files: Iterable[str]) -> bool:
    """A DeepFloyd-IF-style repo: a T5 sentencepiece tokenizer or stage II's image-noising scheduler."""
    files = set(repo_files)
    return "tokenizer/spiece.model" in files or "image_noising_scheduler/scheduler_config.json" in files


def _one_weight_set(names: list[str], variant: str | None) -> list[str]:
    """One component's weights: `variant` if published, else full precision; safetensors before pickles; every shard
    of the chosen set and its index."""
    for wanted_variant in dict.fromkeys((variant, None)):
        for wanted_format in ("safetensors", "bin"):
            chosen = [
                name
                for name in names
                for match in [_WEIGHTS_FILE.match(name) or _WEIGHTS_INDEX.match(name)]
                if match and match["variant"] == wanted_variant and match["format"] == wanted_format
            ]
            if any(_WEIGHTS_FILE.match(name) for name in chosen):
                return chosen
    return []


def select_if_files(repo_files: Iterable[str], text_encoder: bool = True, variant: str | None = "fp16") -> list[str]:
    """The files of a DeepFloyd IF repo that the colorizer needs (pure: testable on a file list).

    Per component: configs and tokenizer files, and one set of weights (see `_one_weight_set`). No safety checker,
    watermarker or feature extractor. `text_encoder=False` leaves T5 out (stage II reuses stage I's embeddings).
    """
    files = set(repo_files)
    chosen = {"model_index.json"} & files
    for component in IF_COMPONENTS:
        if component == "text_encoder" and not text_encoder:
            continue
        names = sorted(f.split("/", 1)[1] for f in files if f.startswith(component + "/") and f.count("/") == 1)
        chosen.update(
            f"{component}/{name}"
            for name in names
            if name.endswith(IF_SMALL_FILE_SUFFIXES) and not _WEIGHTS_INDEX.match(name)
        )
        chosen.update(f"{component}/{name}" for name in _one_weight_set(names, variant))
    return sorted(chosen)


# A transformers-layout repo (the CLIP and CLAP scorers): configs, tokenizer and processor files, one weights file.
SCORER_SMALL_FILES = (
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)
SCORER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def select_scorer_files(repo_files: Iterable[str]) -> list[str]:
    """The files of a transformers-layout repo that a scorer loads: top-level configs and tokenizer files, and one
    weights file (safetensors when published). Pure: testable on a file list."""
    files = set(repo_files)
    chosen = [name for name in SCORER_SMALL_FILES if name in files]
    weights = next((name for name in SCORER_WEIGHTS if name in files), None)
    return sorted(chosen + ([weights] if weights else []))


def download_scorer(repo_id: str, target: Path, revision: str | None = None) -> Path:
    """Download a CLIP/CLAP scorer repo into `target` and record its source (for `IMGSOUND_MODELS_DIR` lookups)."""
    from huggingface_hub import HfApi, snapshot_download

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise RuntimeError(f"cannot download {repo_id}: HF_HUB_OFFLINE is set")
    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except Exception as error:  # noqa: BLE001 - network, auth and not-found errors all end the same way
        raise RuntimeError(
            f"cannot list {repo_id} on the Hugging Face hub ({type(error).__name__}: {_first_line(error)})"
        ) from None
    wanted = select_scorer_files(s.rfilename for s in info.siblings or [])
    if not any(name in wanted for name in SCORER_WEIGHTS):
        raise RuntimeError(f"{repo_id} has no model.safetensors or pytorch_model.bin at its top level")
    target.mkdir(parents=True, exist_ok=True)
    snapshot_download(repo_id, revision=revision, local_dir=target, allow_patterns=wanted)
    write_source_record(target, repo_id, info.sha or revision)
    return target


def download_model(repo_id: str, target: Path, revision: str | None = None) -> tuple[Path, list[Conversion]]:
    """Download `repo_id` into `target` (resumable; existing complete files are kept) and convert pickles."""
    from huggingface_hub import HfApi, snapshot_download

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise RuntimeError(f"cannot download {repo_id}: HF_HUB_OFFLINE is set")
    # Every DeepFloyd repo is gated: a 401/403 there means "accept the licence and log in", so say how.
    access = f"; {licence_note((repo_id,))}" if is_deepfloyd(repo_id) else ""
    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception as error:  # noqa: BLE001 - network, auth and not-found errors all end the same way
        raise RuntimeError(
            f"cannot list {repo_id} on the Hugging Face hub ({type(error).__name__}: {_first_line(error)}){access}"
        ) from None
    if is_if_layout(files):
        # Stage II (it has the image-noising scheduler) reads stage I's text embeddings: skip its 9 GB T5 copy.
        wanted = select_if_files(files, text_encoder="image_noising_scheduler/scheduler_config.json" not in files)
    else:
        wanted = select_files(files)
    if not any(f.startswith("unet/") for f in wanted):
        raise RuntimeError(f"{repo_id} has no unet/ weights in the diffusers layout")
    target.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(repo_id, revision=revision, local_dir=target, allow_patterns=wanted)
    except Exception as error:
        if not access:
            raise
        raise RuntimeError(
            f"cannot download {repo_id} ({type(error).__name__}: {_first_line(error)}){access}"
        ) from None
    conversions = convert_model_dir(target)
    try:
        commit = HfApi().model_info(repo_id, revision=revision).sha
    except Exception:  # noqa: BLE001 - provenance only; the files are complete either way
        commit = revision
    write_source_record(target, repo_id, commit)
    return target, conversions


def _first_line(error: BaseException) -> str:
    """The hub's errors run to several lines (request ids, URLs); the first says what happened."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def write_source_record(target: Path, repo_id: str, revision: str | None) -> None:
    """Record which hub repo (and commit) `target` holds, so `IMGSOUND_MODELS_DIR` lookups find it by id."""
    record = {"repo_id": repo_id, "revision": revision}
    (target / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
