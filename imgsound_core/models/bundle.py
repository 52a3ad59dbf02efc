"""Model bundles: the parts of one latent diffusion model, loaded from a directory or a hub id.

An image bundle (Stable Diffusion 1.5 layout) holds a UNet, a VAE, a CLIP text encoder + tokenizer and the scheduler
config; an audio bundle (Auffusion layout) adds the HiFi-GAN vocoder. Only the parts a caller asks for are
loaded (a UNet server needs no VAE). Loading is diffusers'/transformers' own `from_pretrained` on a folder;
a hub id is resolved to the local Hugging Face cache only — generation never downloads several GB behind the
user's back; `imgsound download` does that, explicitly.

Pickled weights (Auffusion's UNet ships as a `.bin`) are read with `torch.load(weights_only=True)`, which refuses
arbitrary objects; `imgsound convert` turns them into safetensors once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imgsound_core.defaults import DEFAULT_AUDIO_MODEL, DEFAULT_IMAGE_MODEL  # noqa: F401 - re-exported
from imgsound_core.models.errors import ModelMismatchError, ModelNotAvailableError  # noqa: F401 - re-exported
from imgsound_core.models.location import missing_weights_message, resolve_model_path

UNET, VAE, TEXT, VOCODER = "unet", "vae", "text", "vocoder"
IMAGE_PARTS = frozenset({UNET, VAE, TEXT})
AUDIO_PARTS = frozenset({UNET, VAE, TEXT, VOCODER})


def audio_parts(vocoder: str) -> frozenset[str]:
    """The audio model's parts that sampling needs: its HiFi-GAN only when `vocoder` is "hifigan"."""
    return AUDIO_PARTS if vocoder == "hifigan" else AUDIO_PARTS - {VOCODER}


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def describe_weights(model: Any) -> dict[str, Any]:
    """Provenance of loaded weights (a `ModelBundle`, an IF stage): source, local path, revision, dtype, device."""
    return {
        "source": model.source,
        "path": str(model.path),
        "revision": model.revision,
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
    }


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}") from None


def parse_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a valid torch device (try 'cpu' or 'cuda')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but this torch build or machine has no CUDA GPU")
    return device


@dataclass(frozen=True)
class ModelBundle:
    """The loaded parts of one model. Parts not asked for are None.

    Attributes:
        role: "image" or "audio" (used in messages and provenance).
        source: the directory or hub id it was loaded from; `path` is the resolved local folder.
        scheduler_config: the raw `scheduler/scheduler_config.json` dict.
    """

    role: str
    source: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    scheduler_config: dict
    unet: Any = None
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    vocoder: Any = None
    revision: str | None = None
    parts: frozenset = field(default_factory=frozenset)

    @property
    def latent_channels(self) -> int:
        if self.unet is not None:
            return int(self.unet.config.in_channels)
        if self.vae is not None:
            return int(self.vae.config.latent_channels)
        raise ModelMismatchError(f"the {self.role} bundle has neither a UNet nor a VAE loaded")

    def describe(self) -> dict[str, Any]:
        """Provenance: where the weights came from and how they run."""
        return describe_weights(self)


def _read_scheduler_config(path: Path, role: str, source: str) -> dict:
    config_file = path / "scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        raise ModelNotAvailableError(
            missing_weights_message(role, source, "scheduler/scheduler_config.json is missing")
        )
    try:
        return json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelNotAvailableError(
            f"The {role} model's scheduler config {config_file} is unreadable: {error}."
        ) from None


def _has_safetensors(component_dir: Path) -> bool:
    """Say which format to read, so diffusers neither guesses (and logs an error) nor prefers a pickle.

    Pickles (`*.bin`) are then read by diffusers with `torch.load(weights_only=True)`.
    """
    return any(component_dir.glob("*.safetensors"))


def _is_pickle_refusal(error: BaseException) -> bool:
    """diffusers wraps torch's weights-only refusal in an OSError; look through the chain for it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "UnpicklingError" or "weights_only" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _load_part(loader, role: str, source: str, part: str):
    try:
        return loader()
    except Exception as error:  # noqa: BLE001 - every loader failure becomes one sentence for the user
        if _is_pickle_refusal(error):
            raise ModelNotAvailableError(
                f"The {role} model's {part} in '{source}' is a pickle holding more than plain tensors and was "
                f"refused (weights-only loading); convert trusted weights with `imgsound convert`."
            ) from None
        if not isinstance(error, OSError | ValueError | RuntimeError | EOFError | KeyError):
            raise
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise ModelNotAvailableError(
            f"The {role} model's {part} in '{source}' could not be loaded ({first_line[:300]}); check the folder, "
            f"or re-download it with `imgsound download`."
        ) from None


def load_bundle(
    source: str | os.PathLike,
    role: str,
    *,
    parts: Iterable[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> ModelBundle:
    """Load the `parts` (subset of unet, vae, text, vocoder) of the model at `source` (a folder or hub id).

    Raises:
        ModelNotAvailableError: weights missing or unreadable — one sentence saying how to get them.
        ModelMismatchError: the parts do not fit together (e.g. text width ≠ UNet cross-attention width).
    """
    if role not in ("image", "audio"):
        raise ValueError(f"role must be 'image' or 'audio', got {role!r}")
    wanted = frozenset(parts) if parts is not None else (IMAGE_PARTS if role == "image" else AUDIO_PARTS)
    unknown = wanted - AUDIO_PARTS
    if unknown:
        raise ValueError(f"unknown model part(s): {', '.join(sorted(unknown))}")
    device = torch.device(device)
    path, resolved_revision = resolve_model_path(source, role, revision)
    text_source = str(source)
    scheduler_config = _read_scheduler_config(path, role, text_source)

    unet = vae = text_encoder = tokenizer = vocoder = None
    if UNET in wanted:
        from diffusers import UNet2DConditionModel

        unet = _load_part(
            lambda: UNet2DConditionModel.from_pretrained(
                path, subfolder="unet", torch_dtype=dtype, use_safetensors=_has_safetensors(path / "unet")
            ),
            role,
            text_source,
            "UNet",
        )
        unet = unet.to(device).eval().requires_grad_(False)
    if VAE in wanted:
        from diffusers import AutoencoderKL

        vae = _load_part(
            lambda: AutoencoderKL.from_pretrained(
                path, subfolder="vae", torch_dtype=dtype, use_safetensors=_has_safetensors(path / "vae")
            ),
            role,
            text_source,
            "VAE",
        )
        vae = vae.to(device).eval().requires_grad_(False)
    if TEXT in wanted:
        from transformers import CLIPTextModel, CLIPTokenizer

        tokenizer = _load_part(
            lambda: CLIPTokenizer.from_pretrained(path / "tokenizer"), role, text_source, "tokenizer"
        )
        text_encoder = _load_part(
            lambda: CLIPTextModel.from_pretrained(path / "text_encoder", dtype=dtype),
            role,
            text_source,
            "text encoder",
        )
        text_encoder = text_encoder.to(device).eval().requires_grad_(False)
    if VOCODER in wanted:
        from imgsound_core.audio.hifigan import load_hifigan

        # HiFi-GAN runs in float32 on the CPU (half-precision CPU kernels are slow or missing there); on a GPU
        # it runs at the bundle's dtype as in the reference code.
        vocoder_dtype = dtype if device.type == "cuda" else torch.float32
        vocoder_dir = path / "vocoder"
        if not vocoder_dir.is_dir():
            raise ModelNotAvailableError(
                missing_weights_message(role, text_source, "it has no vocoder/ folder (config.json + vocoder.pt)")
            )
        vocoder = _load_part(
            lambda: load_hifigan(vocoder_dir, device=device, dtype=vocoder_dtype), role, text_source, "vocoder"
        )

    bundle = ModelBundle(
        role=role,
        source=text_source,
        path=path,
        device=device,
        dtype=dtype,
        scheduler_config=scheduler_config,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        vocoder=vocoder,
        revision=resolved_revision,
        parts=wanted,
    )
    check_bundle(bundle)
    return bundle


def check_bundle(bundle: ModelBundle) -> None:
    """Check that the loaded parts fit together; one sentence per mismatch."""
    unet, vae, text_encoder = bundle.unet, bundle.vae, bundle.text_encoder
    if unet is not None and vae is not None and unet.config.in_channels != vae.config.latent_channels:
        raise ModelMismatchError(
            f"the {bundle.role} model's UNet takes {unet.config.in_channels} latent channels but its VAE makes "
            f"{vae.config.latent_channels}"
        )
    if unet is not None and text_encoder is not None:
        width = text_encoder.config.hidden_size
        if unet.config.cross_attention_dim != width:
            raise ModelMismatchError(
                f"the {bundle.role} model's text encoder gives {width}-wide embeddings but its UNet attends to "
                f"{unet.config.cross_attention_dim}"
            )


def check_pair(image: ModelBundle, audio: ModelBundle) -> None:
    """The method needs one shared latent space: same latent channels, and the same VAE downsampling."""
    if image.latent_channels != audio.latent_channels:
        raise ModelMismatchError(
            f"the image model uses {image.latent_channels} latent channels and the audio model "
            f"{audio.latent_channels}; they must share one latent space"
        )
    if image.vae is not None and audio.vae is not None:
        image_factor = 2 ** (len(image.vae.config.block_out_channels) - 1)
        audio_factor = 2 ** (len(audio.vae.config.block_out_channels) - 1)
        if image_factor != audio_factor:
            raise ModelMismatchError(
                f"the image VAE downsamples by {image_factor} and the audio VAE by {audio_factor}; they must match"
            )
