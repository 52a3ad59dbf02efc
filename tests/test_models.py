"""Model bundles: loading from folders and from the hub cache, part selection, dtypes, clear failures."""

from __future__ import annotations

import pickle
import shutil
from types import SimpleNamespace

import pytest
import torch

from imgsound_core.models.bundle import (
    ModelMismatchError,
    ModelNotAvailableError,
    check_bundle,
    check_pair,
    load_bundle,
)
from imgsound_core.models.convert import UnsafePickleError, convert_model_dir


def test_load_only_the_parts_asked_for(tiny_models):
    bundle = load_bundle(tiny_models / "audio", "audio", parts={"unet"})
    assert bundle.unet is not None
    assert bundle.vae is None and bundle.text_encoder is None and bundle.vocoder is None
    assert bundle.scheduler_config["beta_schedule"] == "scaled_linear"
    full = load_bundle(tiny_models / "audio", "audio")
    assert full.vocoder is not None and full.tokenizer.model_max_length == 77


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loads_and_runs_on_cpu(tiny_models, dtype):
    bundle = load_bundle(tiny_models / "image", "image", parts={"unet", "text"}, dtype=dtype)
    assert bundle.unet.dtype == dtype and bundle.text_encoder.dtype == dtype
    from imgsound_core.sampler import predict_guided_eps
    from imgsound_core.text import encode_prompts

    text = encode_prompts(bundle.tokenizer, bundle.text_encoder, ["castle"])
    eps = predict_guided_eps(
        bundle.unet, torch.randn(1, 4, 8, 16), torch.tensor([500]), text, text, torch.tensor([7.5])
    )
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all()


def test_hub_id_loads_from_the_local_cache_only(tiny_models, tmp_path, monkeypatch):
    """A hub id resolves to the Hugging Face cache's snapshot (as after `imgsound download` or a hub download)."""
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-image"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_models / "image", repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    bundle = load_bundle("someone/tiny-image", "image", parts={"unet"})
    assert bundle.revision == commit
    assert bundle.describe()["source"] == "someone/tiny-image"
    with pytest.raises(ModelNotAvailableError, match="imgsound download"):
        load_bundle("someone/not-cached", "image", parts={"unet"})


def test_missing_folder_says_how_to_get_weights(tmp_path):
    with pytest.raises(ModelNotAvailableError) as error:
        load_bundle(tmp_path / "nowhere", "audio")
    message = str(error.value)
    assert "imgsound download" in message and "--audio-model" in message
    assert "\n" not in message


def test_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="no unet"):
        load_bundle(tmp_path, "image")


def test_malicious_pickle_is_refused_and_never_runs(tiny_models, tmp_path):
    model = tmp_path / "audio"
    shutil.copytree(tiny_models / "audio", model)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"weight": Payload()}))
    with pytest.raises(ModelNotAvailableError, match="UNet"):
        load_bundle(model, "audio", parts={"unet"})
    with pytest.raises(UnsafePickleError):
        convert_model_dir(model)
    assert not marker.exists()
    assert not (model / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_convert_pickle_to_safetensors_keeps_every_tensor(tiny_models, tmp_path):
    model = tmp_path / "audio"
    shutil.copytree(tiny_models / "audio", model)
    before = load_bundle(model, "audio", parts={"unet"}).unet.state_dict()
    conversions = convert_model_dir(model)
    assert [c.safetensors_path.name for c in conversions] == ["diffusion_pytorch_model.safetensors"]
    assert not conversions[0].skipped and conversions[0].num_tensors == len(before)
    (model / "unet" / "diffusion_pytorch_model.bin").unlink()  # now only the safetensors file can be read
    after = load_bundle(model, "audio", parts={"unet"}).unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert convert_model_dir(model) == []


def test_parts_that_do_not_fit_are_named(tiny_bundles):
    image, audio = tiny_bundles
    wide_text = SimpleNamespace(config=SimpleNamespace(hidden_size=768))
    bad = type(image)(**{**image.__dict__, "text_encoder": wide_text})
    with pytest.raises(ModelMismatchError, match="768"):
        check_bundle(bad)
    other_unet = SimpleNamespace(config=SimpleNamespace(in_channels=8, cross_attention_dim=32))
    bad_pair = type(audio)(**{**audio.__dict__, "unet": other_unet, "vae": None})
    with pytest.raises(ModelMismatchError, match="latent"):
        check_pair(image, bad_pair)


def test_tiny_vae_downsamples_by_8(tiny_bundles):
    image, _ = tiny_bundles
    assert 2 ** (len(image.vae.config.block_out_channels) - 1) == 8
    assert image.vae.config.scaling_factor == pytest.approx(0.18215)


def test_hub_id_finds_a_downloaded_folder_under_imgsound_models_dir(tiny_models, tmp_path, monkeypatch):
    """Specs keep hub ids (stable sample ids) while a cluster loads `imgsound download` folders from a volume."""
    from imgsound_core.models.download import write_source_record

    volume = tmp_path / "models"
    shutil.copytree(tiny_models / "image", volume / "image")
    write_source_record(volume / "image", "someone/image-model", "abc123")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotAvailableError):
        load_bundle("someone/image-model", "image", parts={"unet"})
    monkeypatch.setenv("IMGSOUND_MODELS_DIR", str(volume))
    bundle = load_bundle("someone/image-model", "image", parts={"unet"})
    assert bundle.path == volume / "image" and bundle.revision == "abc123"
    with pytest.raises(ModelNotAvailableError):
        load_bundle("someone/other-model", "image", parts={"unet"})


def test_tiny_models_never_touch_the_global_rng(tmp_path):
    """Weights come from each model's own generator: the caller's RNG stream is exactly as it was."""
    from imgsound_core.models.tiny import build_seeded

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    first = build_seeded(lambda: torch.nn.Linear(4, 3), seed=5)
    assert torch.equal(torch.rand(3), expected)
    second = build_seeded(lambda: torch.nn.Linear(4, 3), seed=5)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert first.weight.abs().max() <= 0.5  # ±1/√fan_in, fan_in = 4
    other = build_seeded(lambda: torch.nn.Linear(4, 3), seed=6)
    assert not torch.equal(first.weight, other.weight)
    norm = build_seeded(lambda: torch.nn.LayerNorm(4), seed=5)
    assert torch.equal(norm.weight, torch.ones(4)) and torch.equal(norm.bias, torch.zeros(4))  # constants kept
