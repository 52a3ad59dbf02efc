"""Tiny, deterministic, random-weight models in exactly the real on-disk formats.

`write_tiny_models(DIR)` writes `DIR/image` (the Stable Diffusion 1.5 layout), `DIR/audio` (the Auffusion
layout: the same folders plus `vocoder/config.json` + `vocoder/vocoder.pt`, and the UNet as a pickle `.bin`
like the published Auffusion checkpoint), and the scorers' `DIR/clip` (CLIP ViT-B/16's format) and `DIR/clap`
(CLAP HTSAT-unfused's format), plus DeepFloyd IF's two pixel-space stages `DIR/if-stage-1` (the
`DeepFloyd/IF-I-*` layout: T5 text encoder in sharded safetensors, a sentencepiece T5 tokenizer, a 3 → 6 channel
UNet) and `DIR/if-stage-2` (the `DeepFloyd/IF-II-*` layout: a 6 → 6 channel UNet conditioned on the noise level,
and its `image_noising_scheduler`). The real loaders read them unchanged, so every code path that the
real weights take — tokenizer files, configs, safetensors, pickles, weight-normed vocoder checkpoints — runs in
tests and CI without a model hub.

Sizes are chosen so that 20 DDIM steps at 256×1024 take seconds on two CPU cores: attention only at the
lowest latent resolution, narrow channels, and a VAE that still downsamples by 8 (three downsamplers), so the
latent of a 256×1024 picture is 4×32×128 exactly as with SD-1.5.

The IF UNets are sized so that one classifier-free-guided step of stage I at 64×256 and of stage II at 256×1024
(the colorizer's sizes) takes a fraction of a second on a CPU: attention only at the lowest resolution, narrow
channels, but the real block types, embeddings and channel counts.

Random weights say nothing about pictures or sounds; they exercise shapes, dtypes, formats and numerics.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from imgsound_core.audio.hifigan import Generator, save_hifigan, tiny_hifigan_config
from imgsound_core.modes import umask_mode

# SD-1.5's scheduler/scheduler_config.json, verbatim in content: a PNDM config that DDIM reads (the paper's
# method builds its DDIMScheduler from this file).
SD15_SCHEDULER_CONFIG: dict = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

TEXT_HIDDEN_SIZE = 32
TOKENIZER_MAX_LENGTH = 77  # CLIP's context length, as in both real models
VAE_SCALING_FACTOR = 0.18215  # SD-1.5's; Auffusion inherits it


def build_seeded(factory: Callable[[], torch.nn.Module], seed: int, device: str | torch.device = "cpu"):
    """Build a model with `factory`, then give it weights drawn from its own generator seeded `seed`.

    diffusers and transformers initialise from the global RNG; that draw is made inside `fork_rng`, so the
    caller's RNG state is left as it was, and then replaced. Constant initialisations (norm scales of 1, zero
    biases) are kept; every other parameter is redrawn uniformly in ±1/√fan_in — the scale of PyTorch's default
    Linear/Conv initialisation — in the module's parameter order, so the same seed gives the same weights.
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = factory()
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.numel() == 0 or bool((parameter == parameter.flatten()[0]).all()):
                continue
            generator = generators.setdefault(
                parameter.device, torch.Generator(device=parameter.device).manual_seed(seed)
            )
            fan_in = parameter[0].numel() if parameter.ndim > 1 else parameter.numel()
            noise = torch.rand(parameter.shape, generator=generator, device=parameter.device)
            parameter.copy_((2 * noise - 1) / math.sqrt(fan_in))
    return model


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_clip_tokenizer(directory: Path) -> int:
    """Write a byte-level BPE vocabulary in CLIP's file format (vocab.json, merges.txt, configs).

    Every byte is a token, with and without the end-of-word marker, so any text tokenizes; there are no merges.
    Returns the vocabulary size.
    """
    directory.mkdir(parents=True, exist_ok=True)
    symbols = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": TOKENIZER_MAX_LENGTH,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return len(vocab)


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    # Three resolutions (32×128, 16×64, 8×32 for the 256×1024 latent); cross-attention only at the last.
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        attention_head_dim=8,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    # Four blocks = three 2× downsamplers = the real VAE's factor of 8.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=VAE_SCALING_FACTOR,
    )


def _tiny_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config)


def _write_model_index(directory: Path) -> None:
    """model_index.json; the vocoder folder is not a pipeline component (as in the published Auffusion repo)."""
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))


def _write_one_model(directory: Path, seed: int, unet_as_pickle: bool, with_vocoder: bool) -> None:
    """Write one complete model folder; `seed` fixes every random weight."""
    vocab_size = write_clip_tokenizer(directory / "tokenizer")
    text_encoder = build_seeded(lambda: _tiny_text_encoder(vocab_size), seed)
    text_encoder.save_pretrained(directory / "text_encoder", safe_serialization=True)
    unet = build_seeded(_tiny_unet, seed + 1)
    unet.save_pretrained(directory / "unet", safe_serialization=not unet_as_pickle)
    build_seeded(_tiny_vae, seed + 2).save_pretrained(directory / "vae", safe_serialization=True)
    (directory / "scheduler").mkdir(parents=True, exist_ok=True)
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG, indent=2))
    if with_vocoder:
        config = tiny_hifigan_config()
        save_hifigan(build_seeded(lambda: Generator(config), seed + 3), config, directory / "vocoder")
    _write_model_index(directory)


def write_tiny_clip(directory: Path, seed: int) -> None:
    """A CLIP model + processor in `openai/clip-vit-base-patch16`'s on-disk format (224-pixel input, CLIP norms)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab_size = write_clip_tokenizer(directory)
    tokenizer = CLIPTokenizer.from_pretrained(directory)
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": TOKENIZER_MAX_LENGTH,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=16,
    )
    build_seeded(lambda: CLIPModel(config), seed).save_pretrained(directory, safe_serialization=True)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)


def write_tiny_clap(directory: Path, seed: int) -> None:
    """A CLAP (HTSAT + RoBERTa) model + processor in `laion/clap-htsat-unfused`'s format (48 kHz, 64 mels, 10 s)."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for token in ("<s>", "<pad>", "</s>", "<unk>"):
        vocab[token] = len(vocab)
    for symbol in _bytes_to_unicode():
        vocab[symbol] = len(vocab)
    vocab["<mask>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = RobertaTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)
    features = ClapFeatureExtractor(
        feature_size=64,
        sampling_rate=48_000,
        hop_length=480,
        max_length_s=10,
        fft_window_size=1024,
        truncation="rand_trunc",
        padding="repeatpad",
        frequency_min=50,
        frequency_max=14_000,
    )
    config = ClapConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 80,
            "projection_dim": 16,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
        },
        # HTSAT: the last stage's width is patch_embeds_hidden_size · 2^(stages − 1) = hidden_size.
        audio_config={
            "hidden_size": 64,
            "patch_embeds_hidden_size": 8,
            "depths": [1, 1, 1, 1],
            "num_attention_heads": [1, 1, 2, 2],
            "projection_dim": 16,
            "window_size": 8,
            "spec_size": 256,
            "num_mel_bins": 64,
        },
        projection_dim=16,
    )
    build_seeded(lambda: ClapModel(config), seed).save_pretrained(directory, safe_serialization=True)
    ClapProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(directory)


# --- DeepFloyd IF ---------------------------------------------------------------------------------------------------

# The published IF schedulers (diffusers' conversion of the DeepFloyd checkpoints; §5.3 of the reference facts for
# stage I). Stage II differs only in sample_max_value 1.0; its image_noising_scheduler is a plain cosine DDPM that
# noises the upscaled stage-I picture ("noise level" = its timestep).
IF_STAGE_1_SCHEDULER_CONFIG: dict = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.16.0.dev0",
    "beta_end": 0.02,
    "beta_schedule": "squaredcos_cap_v2",
    "beta_start": 0.0001,
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.95,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.5,
    "thresholding": True,
    "trained_betas": None,
    "variance_type": "learned_range",
}
IF_STAGE_2_SCHEDULER_CONFIG: dict = {**IF_STAGE_1_SCHEDULER_CONFIG, "sample_max_value": 1.0}
IF_IMAGE_NOISING_SCHEDULER_CONFIG: dict = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.16.0.dev0",
    "beta_end": 0.02,
    "beta_schedule": "squaredcos_cap_v2",
    "beta_start": 0.0001,
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "thresholding": False,
    "trained_betas": None,
    "variance_type": "fixed_small",
}

IF_TEXT_HIDDEN_SIZE = 48  # T5's d_model (4096 for t5-v1_1-xxl); unlike the UNet's cross-attention width, as in IF
IF_CROSS_ATTENTION_DIM = 32
T5_EXTRA_IDS = 100  # <extra_id_0> … <extra_id_99>, appended after the sentencepiece pieces as in every T5 tokenizer

# The text the tiny T5 sentencepiece model is trained on: prompts of the kind the project uses, and every printable
# ASCII character, so that any ASCII prompt tokenizes without <unk> and decodes back to itself.
T5_TRAINING_TEXT = (
    "a colorful photo of a castle with bell towers",
    "a colorful photo of kittens with blue eyes and pink noses",
    "a colorful photo of puppies on green grass",
    "a colorful photo of a long train",
    "a colorful photo of tigers",
    "a colorful photo of an auto racing game",
    "a colorful photo of a blooming garden with many birds",
    "a painting of castle towers, grayscale",
    "a painting of cute dogs, grayscale",
    "a painting of furry kittens, grayscale",
    "a painting of mountains, a forest, a farm and a beach, grayscale",
    "bell ringing; dog barking; birds singing sweetly; a kitten meowing for attention",
    "a race car passing by and disappearing; train whistling; tiger growling",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789",
    "! \" # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~",
)


def write_t5_tokenizer(directory: Path) -> int:
    """Write a T5 tokenizer in its published format: `spiece.model` (sentencepiece unigram, T5's special ids: pad 0,
    eos 1, unk 2, no bos), `special_tokens_map.json` and `tokenizer_config.json`.

    The sentencepiece model is trained here, offline, on `T5_TRAINING_TEXT` with one thread (deterministic: the same
    bytes every time). Returns the tokenizer's size, extra ids included.
    """
    import io

    import sentencepiece

    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(T5_TRAINING_TEXT),
        model_writer=model,
        model_type="unigram",
        vocab_size=256,
        hard_vocab_limit=False,  # the text is small: take what it yields, up to 256 pieces
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (directory / "spiece.model").write_bytes(model.getvalue())
    pieces = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    extra = [f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)]
    special = {"additional_special_tokens": extra, "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        **special,
        "extra_ids": T5_EXTRA_IDS,
        "model_max_length": TOKENIZER_MAX_LENGTH,  # IF's text length; diffusers' IF pipelines use 77 as well
        "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return pieces + T5_EXTRA_IDS


def _tiny_t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    # t5-v1_1's shape of block (gated-GELU feed-forward, untied embeddings, relative position buckets), tiny.
    config = T5Config(
        vocab_size=vocab_size,
        d_model=IF_TEXT_HIDDEN_SIZE,
        d_kv=12,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _tiny_if_unet(stage: int):
    """IF's UNet structure (diffusers' conversion of the DeepFloyd checkpoints), tiny.

    Both stages: ResNet up/down-sampling blocks, "simple" cross-attention blocks whose keys are the T5 embeddings
    projected by `encoder_hid_proj` (encoder_hid_dim → cross_attention_dim), attention-pooled text added to the time
    embedding (`addition_embed_type="text"`), scale-shift norms, GELU, and 6 output channels: ε (3) and the
    learned-range variance interpolation (3). Stage I reads the 3-channel picture; stage II reads 6 channels
    (picture + upscaled stage-I picture) and embeds the noise level of that upscaled picture as a second timestep
    (`class_embed_type="timestep"`).
    """
    from diffusers import UNet2DConditionModel

    common = {
        "out_channels": 6,
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "cross_attention_dim": IF_CROSS_ATTENTION_DIM,
        "encoder_hid_dim": IF_TEXT_HIDDEN_SIZE,
        "attention_head_dim": 8,
        "addition_embed_type": "text",
        "addition_embed_type_num_heads": 2,
        "cross_attention_norm": "group_norm",
        "resnet_time_scale_shift": "scale_shift",
        "act_fn": "gelu",
        "norm_num_groups": 4,
        "upcast_attention": False,
    }
    if stage == 1:
        # 64×256 → 32×128 → 16×64; attention at the lowest resolution only (the real model: all but the first).
        return UNet2DConditionModel(
            sample_size=64,
            in_channels=3,
            down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
            block_out_channels=(8, 16, 32),
            layers_per_block=1,
            **common,
        )
    # 256×1024 → … → 16×64: five resolutions as in the upscaler, per-block layer counts, cross-attention only.
    return UNet2DConditionModel(
        sample_size=256,
        in_channels=6,
        down_block_types=("ResnetDownsampleBlock2D",) * 4 + ("SimpleCrossAttnDownBlock2D",),
        up_block_types=("SimpleCrossAttnUpBlock2D",) + ("ResnetUpsampleBlock2D",) * 4,
        block_out_channels=(4, 4, 8, 16, 32),
        layers_per_block=(1, 1, 1, 1, 2),
        class_embed_type="timestep",
        time_embedding_dim=32,
        time_embedding_act_fn="gelu",
        resnet_skip_time_act=True,
        resnet_out_scale_factor=1 / 0.7071,
        mid_block_scale_factor=1 / 0.7071,
        only_cross_attention=True,
        **common,
    )


def _write_if_model_index(directory: Path, stage: int) -> None:
    """model_index.json; the safety checker, its feature extractor and the watermarker are left out (null), as
    `from_pretrained(..., safety_checker=None, watermarker=None)` would save them."""
    index = {
        "_class_name": "IFPipeline" if stage == 1 else "IFSuperResolutionPipeline",
        "_diffusers_version": "0.16.0.dev0",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "watermarker": [None, None],
    }
    if stage == 2:
        index["image_noising_scheduler"] = ["diffusers", "DDPMScheduler"]
    (directory / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2))


def write_tiny_if_stage(directory: Path, stage: int, text_seed: int, unet_seed: int) -> None:
    """Write one IF stage folder (`DeepFloyd/IF-I-*` layout for stage 1, `DeepFloyd/IF-II-*` for stage 2).

    Both stages of the real model ship the same T5 encoder; pass the same `text_seed` to get that here too. The T5
    weights are saved in two safetensors shards with an index, as the published (multi-GB) encoder is.
    """
    if stage not in (1, 2):
        raise ValueError(f"IF stage must be 1 or 2, got {stage}")
    vocab_size = write_t5_tokenizer(directory / "tokenizer")
    text_encoder = build_seeded(lambda: _tiny_t5_encoder(vocab_size), text_seed)
    weights_bytes = sum(p.numel() * p.element_size() for p in text_encoder.parameters())
    text_encoder.save_pretrained(
        directory / "text_encoder", safe_serialization=True, max_shard_size=f"{weights_bytes * 6 // 10 // 1000}KB"
    )
    build_seeded(lambda: _tiny_if_unet(stage), unet_seed).save_pretrained(directory / "unet", safe_serialization=True)
    schedulers = {"scheduler": IF_STAGE_1_SCHEDULER_CONFIG if stage == 1 else IF_STAGE_2_SCHEDULER_CONFIG}
    if stage == 2:
        schedulers["image_noising_scheduler"] = IF_IMAGE_NOISING_SCHEDULER_CONFIG
    for name, config in schedulers.items():
        (directory / name).mkdir(parents=True, exist_ok=True)
        (directory / name / "scheduler_config.json").write_text(json.dumps(config, indent=2))
    _write_if_model_index(directory, stage)


def write_tiny_models(directory: str | os.PathLike, seed: int = 0) -> tuple[Path, Path]:
    """Write `directory/image` (SD-1.5 layout) and `directory/audio` (Auffusion layout); return both paths.

    Also written: the scorers' `directory/clip` and `directory/clap`, and DeepFloyd IF's `directory/if-stage-1` and
    `directory/if-stage-2` (the colorizer's models).

    Deterministic: the same seed writes byte-identical weights. Each model is written to a temporary folder and
    renamed into place, so an interrupted run never leaves a folder that looks complete. Existing `image`/`audio`
    folders are replaced.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    # Seeds 10 apart: each model draws its parts from seed, seed + 1, … (see _write_one_model).
    writers = {
        "image": lambda path: _write_one_model(path, seed * 40, unet_as_pickle=False, with_vocoder=False),
        "audio": lambda path: _write_one_model(path, seed * 40 + 10, unet_as_pickle=True, with_vocoder=True),
        "clip": lambda path: write_tiny_clip(path, seed * 40 + 20),
        "clap": lambda path: write_tiny_clap(path, seed * 40 + 30),
        # IF takes seeds left free in each block of 40 (so the models above keep their weights): the shared T5
        # encoder seed·40 + 4, the UNets seed·40 + 5 and seed·40 + 14.
        "if-stage-1": lambda path: write_tiny_if_stage(path, 1, text_seed=seed * 40 + 4, unet_seed=seed * 40 + 5),
        "if-stage-2": lambda path: write_tiny_if_stage(path, 2, text_seed=seed * 40 + 4, unet_seed=seed * 40 + 14),
    }
    paths = []
    for name, write in writers.items():
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            write(staging)
            staging.chmod(umask_mode(directory=True))  # mkdtemp made it private
            target = root / name
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        paths.append(root / name)
    return paths[0], paths[1]  # also written: root/clip, root/clap (scorers), root/if-stage-{1,2} (colorizer)
