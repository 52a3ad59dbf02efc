"""One-time conversion of pickled weights (`*.bin`) to safetensors, next to the originals.

Auffusion's UNet ships only as `unet/diffusion_pytorch_model.bin`, a pickle. Pickles can run code when loaded;
this reads them with `torch.load(weights_only=True)` (plain tensors only; anything else is refused), writes the
safetensors file atomically, re-reads it and checks every tensor is identical. diffusers and transformers prefer
the safetensors file once it exists, so the pickle is never opened again.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from imgsound_core.models.location import PICKLE_TO_SAFETENSORS
from imgsound_core.modes import umask_mode


class UnsafePickleError(ValueError):
    """The pickle holds something other than plain tensors and was refused."""


@dataclass(frozen=True)
class Conversion:
    pickle_path: Path
    safetensors_path: Path
    num_tensors: int
    skipped: bool  # True when the safetensors file already existed


def load_pickled_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a pickled state dict with `weights_only=True`; refuse anything that is not a dict of tensors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, … for bad files
        raise UnsafePickleError(
            f"{path} was refused: it is not a plain-tensor checkpoint ({type(error).__name__})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafePickleError(f"{path} does not hold a flat dict of tensors")
    return state


def convert_file(pickle_path: Path) -> Conversion:
    from safetensors.torch import load_file, save_file

    target = pickle_path.with_name(PICKLE_TO_SAFETENSORS[pickle_path.name])
    if target.exists():
        return Conversion(pickle_path, target, 0, skipped=True)
    state = load_pickled_state_dict(pickle_path)
    # safetensors stores no aliasing: give every tensor its own contiguous storage.
    owned = {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}
    handle, temp_name = tempfile.mkstemp(prefix=".convert-", suffix=".safetensors", dir=target.parent)
    os.close(handle)
    try:
        save_file(owned, temp_name, metadata={"format": "pt"})
        os.chmod(temp_name, umask_mode())  # mkstemp made it private
        reread = load_file(temp_name)
        if reread.keys() != owned.keys() or not all(torch.equal(reread[k], owned[k]) for k in owned):
            raise RuntimeError(f"the safetensors copy of {pickle_path} did not read back identically")
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return Conversion(pickle_path, target, len(owned), skipped=False)


def convert_model_dir(model_dir: str | os.PathLike) -> list[Conversion]:
    """Convert every known pickle in `model_dir`'s component folders (unet/, text_encoder/, vae/, …)."""
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    conversions = []
    for pickle_name in PICKLE_TO_SAFETENSORS:
        for path in sorted(root.glob(f"*/{pickle_name}")):
            conversions.append(convert_file(path))
    return conversions
