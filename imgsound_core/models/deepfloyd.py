"""DeepFloyd IF: the pixel-space cascade used to colorize spectrograms (and by the SDS baseline), loaded from a folder,
the local Hugging Face cache or a folder `imgsound download --deepfloyd` wrote.

IF denoises pixels, not latents. Stage I makes 64-pixel pictures from T5-XXL text embeddings `(N, 77, 4096)`;
stage II makes 256-pixel pictures from noise, the text and the stage-I picture upscaled 4× and noised to a "noise
level" (a timestep of its own `image_noising_scheduler`, fed to the UNet as a class label). Both UNets predict 6
channels per pixel: the noise ε (3) and v (3), which sets the DDPM posterior variance inside its learned range,

    log σ²_t = ((v + 1) / 2) · log β_t + (1 − (v + 1) / 2) · log β̃_t      (Nichol & Dhariwal 2021, Eq. 15),

and their DDPM schedulers clip the predicted x₀ by dynamic thresholding (Imagen): s = max(1, min(q₀.₉₅(|x̂₀|),
sample_max_value)), x̂₀ ← clamp(x̂₀, −s, s) / s.

An `IFStage` is a typed value like `ModelBundle`: the UNet, a scheduler, and — for the stage that embeds text —
the T5 encoder and tokenizer. As with the other models, a hub id is only looked up locally; nothing is downloaded
here. The weights are gated on the hub (the DeepFloyd IF licence must be accepted on each model page first), so
every "missing weights" message says so.

`encode_if_prompts` and `guided_noise` are what a caller needs for one guided noise estimate of a batch (the
colorizer, an SDS loss). No sampling loop here: see `imgsound_core.colorize`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgsound_core.composition import guided_eps

# The models the paper's colorization (and its SDS baseline) uses; the XL/L variants load the same way.
from imgsound_core.defaults import DEFAULT_IF_STAGE_1, DEFAULT_IF_STAGE_2  # noqa: F401, E402 - re-exported
from imgsound_core.models.bundle import (
    ModelMismatchError,
    ModelNotAvailableError,
    _has_safetensors,
    _load_part,
    describe_weights,
)
from imgsound_core.models.location import resolve_model_path

IF_TEXT_LENGTH = 77  # tokens; T5 reads longer text, but IF was trained on 77 (diffusers hard-codes it too)
IF_UPSCALE = 4  # stage II: 64 → 256 pixels
IF_HUB_PREFIX = "DeepFloyd/"
STAGE_NAMES = {1: "stage I", 2: "stage II"}
STAGE_FLAGS = {1: "--stage-1-model", 2: "--stage-2-model"}
PIPELINE_CLASSES = {1: "IFPipeline", 2: "IFSuperResolutionPipeline"}  # model_index.json's _class_name
STAGE_FOLDERS = {1: "if-stage-1", 2: "if-stage-2"}  # what `imgsound download --deepfloyd` and `tiny-models` write


def is_deepfloyd(repo_id: str) -> bool:
    """Whether `repo_id` names a DeepFloyd repo on the hub (all of them are gated)."""
    return str(repo_id).startswith(IF_HUB_PREFIX)


def licence_note(repo_ids: tuple[str, ...] = (DEFAULT_IF_STAGE_1, DEFAULT_IF_STAGE_2)) -> str:
    """One sentence on getting access to gated DeepFloyd IF weights."""
    pages = " and ".join(f"https://huggingface.co/{repo}" for repo in repo_ids)
    return (
        f"DeepFloyd IF's weights are gated on the Hugging Face hub: accept the DeepFloyd IF licence on {pages} while "
        f"logged in, then log this machine in with `huggingface-cli login` (or set HF_TOKEN) before downloading"
    )


def _missing_message(stage: int, source: str, why: str) -> str:
    repo = source if is_deepfloyd(source) else (DEFAULT_IF_STAGE_1 if stage == 1 else DEFAULT_IF_STAGE_2)
    flag, folder = STAGE_FLAGS[stage], STAGE_FOLDERS[stage]
    return (
        f"The DeepFloyd IF {STAGE_NAMES[stage]} model '{source}' is not available on this machine ({why}); "
        f"{licence_note((repo,))}, run `imgsound download models/ --deepfloyd` and pass `{flag} models/{folder}` "
        f"(for tests and demos, `imgsound tiny-models models/` writes small random ones in models/{folder})."
    )


def _why_missing(source: str) -> str:
    path = Path(source).expanduser()
    if path.is_dir():
        return "the folder has no unet/ or model_index.json"
    if path.exists():
        return "it is not a folder"
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return "not in the local Hugging Face cache, nor downloaded under IMGSOUND_MODELS_DIR"
    return "no such folder"


def _weights_variant(component_dir: Path) -> str | None:
    """The variant "fp16" when a component holds only fp16 weights (what `imgsound download --deepfloyd` fetches)."""
    names = [p.name for p in component_dir.glob("*") if p.suffix in (".safetensors", ".bin")]
    if names and all(".fp16." in name or ".fp16-" in name for name in names):
        return "fp16"
    return None


@dataclass(frozen=True)
class IFStage:
    """One loaded IF stage. Parts not asked for are None.

    Attributes:
        stage: 1 (text → 64 px) or 2 (64 px → 256 px).
        source: the folder or hub id it was loaded from; `path` is the resolved local folder.
        scheduler: the stage's `DDPMScheduler` (learned-range variance, dynamic thresholding). Treat it as a
            config: samplers build their own copy with `DDPMScheduler.from_config`, since `set_timesteps` mutates.
        image_noising_scheduler: stage II's scheduler for noising the upscaled stage-I picture; None for stage I.
        text_encoder, tokenizer: T5, when loaded (stage II normally reuses stage I's embeddings).
    """

    stage: int
    source: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    unet: Any
    scheduler: Any
    image_noising_scheduler: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    revision: str | None = None

    @property
    def text_width(self) -> int:
        """The width D of the T5 embeddings `(N, 77, D)` the UNet reads (4096 for T5-XXL)."""
        return int(self.unet.config.encoder_hid_dim)

    @property
    def downsample_factor(self) -> int:
        """Picture sides must be multiples of this (one 2× downsampler between consecutive UNet blocks)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def describe(self) -> dict[str, Any]:
        """Provenance: where the weights came from and how they run."""
        return describe_weights(self)


def load_if_stage(
    source: str | os.PathLike,
    stage: int,
    *,
    text: bool | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> IFStage:
    """Load IF stage `stage` (1 or 2) from a folder or hub id at `dtype` on `device`.

    Args:
        text: load the T5 encoder and tokenizer; default: for stage I only (stage II reuses its embeddings, as the
            reference colorizer does, which saves a second 9 GB encoder).
    Raises:
        ModelNotAvailableError: weights missing or unreadable — one sentence, with the licence and login steps.
        ModelMismatchError: the folder holds a model that is not this IF stage, or its parts do not fit.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel

    if stage not in (1, 2):
        raise ValueError(f"IF stage must be 1 or 2, got {stage}")
    text = stage == 1 if text is None else text
    device = torch.device(device)
    source = str(source)
    try:
        path, resolved_revision = resolve_model_path(source, f"IF {STAGE_NAMES[stage]}", revision)
    except ModelNotAvailableError:
        raise ModelNotAvailableError(_missing_message(stage, source, _why_missing(source))) from None
    role = f"DeepFloyd IF {STAGE_NAMES[stage]}"
    _check_pipeline_class(path, stage, source)
    for folder in ("unet", "scheduler") + (("image_noising_scheduler",) if stage == 2 else ()):
        if not (path / folder).is_dir():
            raise ModelNotAvailableError(_missing_message(stage, source, f"it has no {folder}/ folder"))

    unet = _load_part(
        lambda: UNet2DConditionModel.from_pretrained(
            path,
            subfolder="unet",
            torch_dtype=dtype,
            variant=_weights_variant(path / "unet"),
            use_safetensors=_has_safetensors(path / "unet"),
        ),
        role,
        source,
        "UNet",
    )
    unet = unet.to(device).eval().requires_grad_(False)
    scheduler = _load_part(
        lambda: DDPMScheduler.from_pretrained(path, subfolder="scheduler"), role, source, "scheduler"
    )
    noising = None
    if stage == 2:
        noising = _load_part(
            lambda: DDPMScheduler.from_pretrained(path, subfolder="image_noising_scheduler"),
            role,
            source,
            "image noising scheduler",
        )
    text_encoder = tokenizer = None
    if text:
        from transformers import T5EncoderModel, T5Tokenizer

        if not (path / "text_encoder").is_dir() or not (path / "tokenizer").is_dir():
            raise ModelNotAvailableError(
                _missing_message(stage, source, "it has no text_encoder/ or tokenizer/ folder")
            )
        tokenizer = _load_part(lambda: T5Tokenizer.from_pretrained(path / "tokenizer"), role, source, "tokenizer")
        text_encoder = _load_part(
            lambda: T5EncoderModel.from_pretrained(
                path / "text_encoder",
                dtype=dtype,
                variant=_weights_variant(path / "text_encoder"),
                use_safetensors=_has_safetensors(path / "text_encoder"),
            ),
            role,
            source,
            "text encoder",
        )
        text_encoder = text_encoder.to(device).eval().requires_grad_(False)

    loaded = IFStage(
        stage=stage,
        source=source,
        path=path,
        device=device,
        dtype=dtype,
        unet=unet,
        scheduler=scheduler,
        image_noising_scheduler=noising,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        revision=resolved_revision,
    )
    check_if_stage(loaded)
    return loaded


def _check_pipeline_class(path: Path, stage: int, source: str) -> None:
    """A folder's model_index.json names its pipeline: say so when it is another stage or another model."""
    try:
        class_name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return  # no (readable) index: the parts' own checks decide
    if class_name is not None and class_name != PIPELINE_CLASSES[stage]:
        raise ModelMismatchError(
            f"'{source}' holds {class_name}, not DeepFloyd IF {STAGE_NAMES[stage]} ({PIPELINE_CLASSES[stage]})"
        )


def check_if_stage(stage: IFStage) -> None:
    """The folder must hold the stage it was loaded as; one sentence per mismatch."""
    name = f"the DeepFloyd IF {STAGE_NAMES[stage.stage]} model '{stage.source}'"
    config = stage.unet.config
    in_channels = 3 if stage.stage == 1 else 6
    if config.in_channels != in_channels or config.out_channels != 6:
        raise ModelMismatchError(
            f"{name} has a UNet with {config.in_channels} → {config.out_channels} channels, but IF "
            f"{STAGE_NAMES[stage.stage]} has {in_channels} → 6 (is it the other stage, or not IF at all?)"
        )
    if config.encoder_hid_dim is None:
        raise ModelMismatchError(f"{name} has a UNet without a T5 projection (encoder_hid_dim); it is not IF")
    if stage.stage == 2 and config.class_embed_type is None:
        raise ModelMismatchError(f"{name} has a UNet that takes no noise level (class_embed_type); it is not IF-II")
    if stage.scheduler.config.variance_type != "learned_range":
        raise ModelMismatchError(
            f"{name} has a {stage.scheduler.config.variance_type!r} scheduler; IF uses learned-range variance"
        )
    if stage.text_encoder is not None and stage.text_encoder.config.d_model != stage.text_width:
        raise ModelMismatchError(
            f"{name}: its text encoder gives {stage.text_encoder.config.d_model}-wide embeddings but its UNet reads "
            f"{stage.text_width}"
        )


def check_if_pair(stage_1: IFStage, stage_2: IFStage) -> None:
    """Stage II reads stage I's text embeddings, so both must use the same text width."""
    if stage_1.stage != 1 or stage_2.stage != 2:
        raise ModelMismatchError("the colorizer needs IF stage I first and stage II second")
    if stage_1.text_width != stage_2.text_width:
        raise ModelMismatchError(
            f"IF stage I's text embeddings are {stage_1.text_width} wide but stage II reads {stage_2.text_width}; "
            f"they must come from the same T5 encoder"
        )


@torch.no_grad()
def encode_if_prompts(stage: IFStage, prompts: list[str] | tuple[str, ...]) -> torch.Tensor:
    """T5 embeddings `(N, 77, D)` of `prompts`, exactly as diffusers' `IFPipeline.encode_prompt` makes them.

    Text is lower-cased and stripped (IF's preprocessing without caption cleaning), padded to 77 tokens, and
    encoded with the attention mask, so padding does not leak into the embeddings. Longer prompts are truncated.
    """
    if stage.text_encoder is None or stage.tokenizer is None:
        raise ValueError(f"IF {STAGE_NAMES[stage.stage]} was loaded without its text encoder (text=False)")
    texts = [prompt.lower().strip() for prompt in prompts]
    tokens = stage.tokenizer(
        texts,
        padding="max_length",
        max_length=IF_TEXT_LENGTH,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    device = stage.text_encoder.device
    hidden = stage.text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]
    return hidden.to(stage.unet.dtype)


@torch.no_grad()
def guided_noise(
    unet,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    guidance_scale: torch.Tensor | float,
    class_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One IF UNet call for B samples with classifier-free guidance.

    ε̂ = ε(x, ∅) + s · (ε(x, y) − ε(x, ∅)); the variance channels v are the prompt branch's (diffusers' IF
    pipelines and the reference colorizer do the same).

    Args:
        sample: `(B, C, H, W)` UNet input: the noisy picture (C = 3) for stage I; for stage II the noisy picture
            and the noised upscaled stage-I picture, concatenated (C = 6).
        timesteps: `(B,)` integer timesteps, or a scalar shared by the batch.
        prompt_embeds, negative_embeds: `(B, 77, D)` T5 embeddings.
        guidance_scale: `(B,)` or a float.
        class_labels: stage II's `(B,)` noise levels; None for stage I.
    Returns:
        `(eps, variance)`, each `(B, 3, H, W)` float32 on the sample's device.
    """
    B = sample.shape[0]
    device, dtype = unet.device, unet.dtype
    timesteps = torch.as_tensor(timesteps, device=device).reshape(-1).expand(B)
    guidance_scale = torch.as_tensor(guidance_scale, dtype=torch.float32, device=device).reshape(-1).expand(B)
    # rows: [uncond_0..uncond_{B-1}, cond_0..cond_{B-1}]
    model_input = torch.cat([sample, sample]).to(device=device, dtype=dtype)
    context = torch.cat([negative_embeds, prompt_embeds]).to(device=device, dtype=dtype)
    labels = None if class_labels is None else torch.cat([class_labels, class_labels]).to(device)
    output = unet(model_input, torch.cat([timesteps, timesteps]), encoder_hidden_states=context, class_labels=labels)
    eps_uncond, eps_cond = output.sample.float()[:, :3].chunk(2)
    variance = output.sample.float()[B:, 3:]
    return guided_eps(eps_uncond, eps_cond, guidance_scale).to(sample.device), variance.to(sample.device)
