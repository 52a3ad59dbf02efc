"""DeepFloyd IF: the tiny stage folders (real on-disk formats, read by diffusers' own IF pipelines), the loader and
its messages, prompt encoding and the denoising loops checked against diffusers' pipelines, and the download's file
selection and licence notes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from imgsound_core.colorize import ColorizeSettings, sample_stage_1, sample_stage_2
from imgsound_core.models.bundle import ModelMismatchError, ModelNotAvailableError
from imgsound_core.models.deepfloyd import (
    DEFAULT_IF_STAGE_1,
    encode_if_prompts,
    guided_noise,
    load_if_stage,
)
from imgsound_core.models.download import download_model, is_if_layout, select_if_files
from imgsound_core.models.tiny import write_tiny_if_stage

PROMPTS = ["a colorful photo of a castle with bell towers", "Puppies on green grass!"]


@pytest.fixture(scope="module")
def stages(tiny_models: Path):
    """Stage I with its T5 encoder, stage II without (as the colorizer loads them); fp32 on the CPU."""
    return load_if_stage(tiny_models / "if-stage-1", 1), load_if_stage(tiny_models / "if-stage-2", 2)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- the tiny folders -----------------------------------------------------------------------------------------------


def test_tiny_if_folders_have_the_published_layout(tiny_models: Path) -> None:
    """Both stages: model_index, the sentencepiece tokenizer files, T5 in shards with an index, UNet and schedulers."""
    for stage in (1, 2):
        files = set(_digest(tiny_models / f"if-stage-{stage}"))
        assert {
            "model_index.json",
            "scheduler/scheduler_config.json",
            "tokenizer/spiece.model",
            "tokenizer/tokenizer_config.json",
            "tokenizer/special_tokens_map.json",
            "text_encoder/config.json",
            "text_encoder/model.safetensors.index.json",
            "text_encoder/model-00001-of-00002.safetensors",
            "text_encoder/model-00002-of-00002.safetensors",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
        } <= files
        assert ("image_noising_scheduler/scheduler_config.json" in files) == (stage == 2)
    # The real stages ship the same T5; the tiny ones do too.
    one, two = _digest(tiny_models / "if-stage-1"), _digest(tiny_models / "if-stage-2")
    assert one["text_encoder/model-00001-of-00002.safetensors"] == two["text_encoder/model-00001-of-00002.safetensors"]
    assert one["unet/diffusion_pytorch_model.safetensors"] != two["unet/diffusion_pytorch_model.safetensors"]


def test_tiny_if_stage_is_deterministic(tmp_path: Path) -> None:
    """Same seeds → byte-identical folders (sentencepiece training included); another UNet seed → other weights."""
    for name, unet_seed in (("first", 5), ("again", 5), ("other", 6)):
        write_tiny_if_stage(tmp_path / name, 1, text_seed=4, unet_seed=unet_seed)
    first, again, other = (_digest(tmp_path / name) for name in ("first", "again", "other"))
    assert first == again
    assert first["unet/diffusion_pytorch_model.safetensors"] != other["unet/diffusion_pytorch_model.safetensors"]
    assert first["tokenizer/spiece.model"] == other["tokenizer/spiece.model"]


def test_diffusers_if_pipelines_load_and_run_the_tiny_folders(tiny_models: Path, single_thread) -> None:
    """`IFPipeline` and `IFSuperResolutionPipeline.from_pretrained(folder)` read the folders and generate."""
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    stage_1 = IFPipeline.from_pretrained(tiny_models / "if-stage-1")
    stage_2 = IFSuperResolutionPipeline.from_pretrained(tiny_models / "if-stage-2")
    assert stage_1.safety_checker is None and stage_2.watermarker is None
    assert stage_2.image_noising_scheduler.config.variance_type == "fixed_small"
    for pipe in (stage_1, stage_2):
        pipe.set_progress_bar_config(disable=True)
    low = stage_1(PROMPTS[0], num_inference_steps=2, height=16, width=32, output_type="pt").images
    assert low.shape == (1, 3, 16, 32)
    high = stage_2(image=low, prompt=PROMPTS[0], num_inference_steps=2, height=64, width=128, output_type="pt")
    assert high.images.shape == (1, 3, 64, 128) and torch.isfinite(high.images).all()


def test_t5_tokenizer_round_trips(tiny_models: Path) -> None:
    """transformers' T5Tokenizer reads spiece.model; ASCII text encodes without <unk>, ends in </s>, decodes back."""
    from transformers import T5Tokenizer

    tokenizer = T5Tokenizer.from_pretrained(tiny_models / "if-stage-1" / "tokenizer")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    texts = [*PROMPTS, "Bell ringing; 3 dogs barking (loudly) at 12:30 - #tigers & [racing] cars?"]
    for text in texts:
        ids = tokenizer(text).input_ids
        assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids, (text, ids)
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1  # T5's extra ids sit at the end


# --- loading --------------------------------------------------------------------------------------------------------


def test_loader_reads_both_stages(stages) -> None:
    """Stage I: the 3 → 6 channel UNet, T5 and the published stage-I scheduler; stage II: 6 → 6 with a noise-level
    embedding, both schedulers, and no text encoder unless asked for."""
    stage_1, stage_2 = stages
    assert stage_1.unet.config.in_channels == 3 and stage_1.unet.config.out_channels == 6
    assert stage_1.text_encoder is not None and stage_1.text_width == stage_1.text_encoder.config.d_model
    config = stage_1.scheduler.config
    assert (config.variance_type, config.thresholding, config.sample_max_value) == ("learned_range", True, 1.5)
    assert (config.beta_schedule, config.dynamic_thresholding_ratio) == ("squaredcos_cap_v2", 0.95)
    assert stage_2.unet.config.in_channels == 6 and stage_2.unet.config.class_embed_type == "timestep"
    assert stage_2.text_encoder is None and stage_2.image_noising_scheduler is not None
    assert stage_2.scheduler.config.sample_max_value == 1.0
    assert stage_1.describe()["source"].endswith("if-stage-1")


def test_loader_reads_the_fp16_variant_layout_that_download_writes(tiny_models: Path, tmp_path: Path) -> None:
    """`imgsound download --deepfloyd` keeps only the fp16 variant (`*.fp16*.safetensors`); the loader finds it."""
    from diffusers import UNet2DConditionModel
    from transformers import T5EncoderModel

    source = tiny_models / "if-stage-1"
    folder = tmp_path / "if-stage-1"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("unet", "text_encoder"))
    unet = UNet2DConditionModel.from_pretrained(source / "unet").half()
    unet.save_pretrained(folder / "unet", variant="fp16")
    text = T5EncoderModel.from_pretrained(source / "text_encoder").half()
    text.save_pretrained(folder / "text_encoder", variant="fp16", max_shard_size="150KB")
    assert any(".fp16" in p.name for p in (folder / "text_encoder").iterdir())
    loaded = load_if_stage(folder, 1)
    assert loaded.unet.dtype == torch.float32  # fp16 weights, loaded at the caller's dtype
    weight = next(iter(loaded.unet.state_dict().values()))
    assert torch.equal(weight, next(iter(unet.state_dict().values())).float())


def test_missing_weights_say_how_to_get_gated_if(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id not in the cache, a missing folder, a folder that is no model: one sentence with the licence and
    login steps and the download command."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("IMGSOUND_MODELS_DIR", raising=False)
    (tmp_path / "not-a-model").mkdir()
    for source in (DEFAULT_IF_STAGE_1, str(tmp_path / "nowhere"), str(tmp_path / "not-a-model")):
        with pytest.raises(ModelNotAvailableError) as caught:
            load_if_stage(source, 1)
        message = str(caught.value)
        assert "\n" not in message and "licence" in message and "huggingface-cli login" in message, message
        assert "HF_TOKEN" in message and "imgsound download models/ --deepfloyd" in message, message
        assert "--stage-1-model models/if-stage-1" in message, message


def test_wrong_stage_or_model_is_named(tiny_models: Path, tmp_path: Path) -> None:
    """model_index.json names the pipeline; without it the UNet's channels tell the stages apart."""
    with pytest.raises(ModelMismatchError, match="holds IFSuperResolutionPipeline, not DeepFloyd IF stage I"):
        load_if_stage(tiny_models / "if-stage-2", 1)
    with pytest.raises(ModelMismatchError, match="holds StableDiffusionPipeline"):
        load_if_stage(tiny_models / "image", 1)
    shutil.copytree(
        tiny_models / "if-stage-2", tmp_path / "no-index", ignore=shutil.ignore_patterns("model_index.json")
    )
    with pytest.raises(ModelMismatchError, match="6 → 6 channels, but IF stage I has 3 → 6"):
        load_if_stage(tmp_path / "no-index", 1)


# --- prompts and guided noise ---------------------------------------------------------------------------------------


def test_prompt_embeddings_equal_diffusers_encode_prompt(tiny_models: Path, stages) -> None:
    from diffusers import IFPipeline

    pipe = IFPipeline.from_pretrained(tiny_models / "if-stage-1")
    expected, negative = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=True)
    assert torch.allclose(encode_if_prompts(stages[0], PROMPTS), expected, atol=1e-6)
    assert torch.allclose(encode_if_prompts(stages[0], ["", ""]), negative, atol=1e-6)


def test_guided_noise_is_cfg_on_epsilon_with_the_prompt_branch_variance(stages) -> None:
    """ε̂ = ε∅ + s(ε_y − ε∅) on channels 0–2; channels 3–5 (variance) come from the prompt branch; per-row scales."""
    stage_1, _ = stages
    embeds = encode_if_prompts(stage_1, PROMPTS)
    negative = encode_if_prompts(stage_1, ["", ""])
    x = torch.randn(2, 3, 16, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([700, 100])
    raw = stage_1.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([negative, embeds])).sample
    eps, variance = guided_noise(stage_1.unet, x, t, embeds, negative, torch.tensor([1.0, 7.0]))
    uncond, cond = raw.chunk(2)
    assert torch.allclose(eps[0], cond[0, :3], atol=1e-5)
    assert torch.allclose(eps[1], uncond[1, :3] + 7.0 * (cond[1, :3] - uncond[1, :3]), atol=1e-4)
    assert torch.allclose(variance, cond[:, 3:], atol=1e-6)


# --- the denoising loops against diffusers' pipelines ---------------------------------------------------------------


def test_stage_1_loop_equals_ifpipeline(tiny_models: Path, stages, single_thread) -> None:
    """Without a reference, `sample_stage_1` is IF's own sampling: same embeddings, seeds and steps → diffusers'
    IFPipeline's output (learned-range variance and dynamic thresholding included)."""
    from diffusers import IFPipeline

    stage_1, _ = stages
    embeds = (encode_if_prompts(stage_1, PROMPTS), encode_if_prompts(stage_1, ["", ""]))
    settings = ColorizeSettings(steps=4, guidance_scale=7.0, start_step=0)
    seeds = (11, 12)
    ours = sample_stage_1(stage_1, embeds, (16, 32), [torch.Generator().manual_seed(s) for s in seeds], settings)
    pipe = IFPipeline.from_pretrained(tiny_models / "if-stage-1")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        prompt_embeds=embeds[0],
        negative_prompt_embeds=embeds[1],
        num_inference_steps=4,
        guidance_scale=7.0,
        height=16,
        width=32,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="pt",
    ).images
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_stage_2_loop_equals_ifsuperresolutionpipeline(tiny_models: Path, stages, single_thread) -> None:
    """Without a reference, `sample_stage_2` is IF's own super-resolution: upscale, noise to the noise level, and
    denoise conditioned on it → diffusers' IFSuperResolutionPipeline's output."""
    from diffusers import IFSuperResolutionPipeline

    stage_1, stage_2 = stages
    embeds = (encode_if_prompts(stage_1, PROMPTS[:1]), encode_if_prompts(stage_1, [""]))
    low_res = torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    settings = ColorizeSettings(steps=3, guidance_scale=5.0, start_step=0, noise_level=100)
    ours = sample_stage_2(stage_2, low_res, embeds, (64, 128), [torch.Generator().manual_seed(5)], settings)
    pipe = IFSuperResolutionPipeline.from_pretrained(tiny_models / "if-stage-2", text_encoder=None)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        image=low_res,
        prompt_embeds=embeds[0],
        negative_prompt_embeds=embeds[1],
        num_inference_steps=3,
        guidance_scale=5.0,
        noise_level=100,
        height=64,
        width=128,
        generator=[torch.Generator().manual_seed(5)],
        output_type="pt",
    ).images
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


# --- download -------------------------------------------------------------------------------------------------------

IF_I_REPO_FILES = [
    ".gitattributes",
    "README.md",
    "LICENSE",
    "feature_extractor/preprocessor_config.json",
    "model_index.json",
    "safety_checker/config.json",
    "safety_checker/model.fp16.safetensors",
    "safety_checker/model.safetensors",
    "safety_checker/pytorch_model.bin",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model-00001-of-00002.safetensors",
    "text_encoder/model-00002-of-00002.safetensors",
    "text_encoder/model.fp16-00001-of-00002.safetensors",
    "text_encoder/model.fp16-00002-of-00002.safetensors",
    "text_encoder/model.safetensors.index.fp16.json",
    "text_encoder/model.safetensors.index.json",
    "text_encoder/pytorch_model-00001-of-00002.bin",
    "text_encoder/pytorch_model-00002-of-00002.bin",
    "text_encoder/pytorch_model.bin.index.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer/spiece.model",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "watermarker/diffusion_pytorch_model.safetensors",
    "pytorch_model.bin",
]
IF_II_REPO_FILES = [
    *(f for f in IF_I_REPO_FILES if not f.startswith("model_index")),
    "image_noising_scheduler/scheduler_config.json",
    "model_index.json",
]


def test_select_if_files_takes_the_fp16_variant_and_no_safety_checker() -> None:
    stage_1 = select_if_files(IF_I_REPO_FILES)
    assert stage_1 == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16-00001-of-00002.safetensors",
        "text_encoder/model.fp16-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.fp16.json",
        "tokenizer/special_tokens_map.json",
        "tokenizer/spiece.model",
        "tokenizer/tokenizer_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ]
    full = select_if_files(IF_I_REPO_FILES, variant=None)
    assert (
        "text_encoder/model-00002-of-00002.safetensors" in full and "text_encoder/model.safetensors.index.json" in full
    )
    assert not any(".fp16" in name or name.endswith(".bin") for name in full)
    stage_2 = select_if_files(IF_II_REPO_FILES, text_encoder=False)
    assert "image_noising_scheduler/scheduler_config.json" in stage_2
    assert not any(name.startswith("text_encoder/") for name in stage_2)
    assert is_if_layout(IF_I_REPO_FILES) and not is_if_layout(["unet/config.json", "vae/config.json"])


def test_download_of_a_gated_if_repo_explains_the_licence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 401/403 from the hub on a DeepFloyd repo becomes one sentence saying: accept the licence, log in."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise PermissionError("403 Client Error: Access to model DeepFloyd/IF-I-M-v1.0 is restricted.\nRequest ID: x")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", refuse)
    with pytest.raises(RuntimeError) as caught:
        download_model(DEFAULT_IF_STAGE_1, tmp_path / "if-stage-1")
    message = str(caught.value)
    assert "403" in message and "licence" in message and "huggingface-cli login" in message and "\n" not in message

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda *a, **k: IF_I_REPO_FILES)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(RuntimeError, match="cannot download .*licence"):
        download_model(DEFAULT_IF_STAGE_1, tmp_path / "if-stage-1")
