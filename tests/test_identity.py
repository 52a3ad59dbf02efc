"""Sample identity: one id and one record whoever makes the sample; model ids that say what the weights are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imgsound_core.identity import (
    ModelIdentity,
    SampleContext,
    fingerprint_folder,
    identify_source,
    identity_hash,
    sample_id,
    sample_record,
)
from imgsound_core.imprint import ImprintRequest
from imgsound_core.models.convert import convert_model_dir
from imgsound_core.request import SampleRequest, content_id
from imgsound_core.sds import SDSSettings

IMAGE = ModelIdentity.of_hub("org/image", "abc123")
AUDIO = ModelIdentity.of_fingerprint("f" * 64)


def request(**changes) -> SampleRequest:
    return SampleRequest(image_prompt="castle", audio_prompt="bells", steps=4, image_start_step=1, **changes)


def context(**changes) -> SampleContext:
    fields = dict(image_model=IMAGE, audio_model=AUDIO, dtype="fp32", vocoder="hifigan", crop=False)
    return SampleContext(**{**fields, **changes})


def test_the_id_hashes_everything_that_decides_the_sample():
    base = sample_id(request(), context())
    assert len(base) == 16 and base == sample_id(request(), context())
    others = {
        "seed": sample_id(request(seed=1), context()),
        "request field": sample_id(request(audio_weight=0.4), context()),
        "crop": sample_id(request(), context(crop=True)),
        "dtype": sample_id(request(), context(dtype="fp16")),
        "vocoder": sample_id(request(), context(vocoder="griffinlim")),
        "image model": sample_id(request(), context(image_model=ModelIdentity.of_hub("org/image", "def456"))),
        "audio model": sample_id(request(), context(audio_model=ModelIdentity.of_fingerprint("e" * 64))),
    }
    assert base not in others.values() and len(set(others.values())) == len(others), others
    assert sample_id(request(image_guidance=10), context()) == sample_id(request(image_guidance=10.0), context())
    # torch's dtype names and ours are one dtype
    assert sample_id(request(), context(dtype="float16")) == sample_id(request(), context(dtype="fp16"))


def test_methods_have_their_own_ids():
    imprint = ImprintRequest(image_prompt="castle", audio_prompt="bells")
    sds = SDSSettings(image_prompt="castle", audio_prompt="bells")
    ids = {
        sample_id(imprint, context(method="imprint")),
        sample_id(imprint.__class__(image_prompt="castle", audio_prompt="bells", ratio=0.4), context(method="imprint")),
        sample_id(sds, context(method="sds")),
        sample_id(request(), context()),
    }
    assert len(ids) == 4


def test_the_hash_is_the_one_earlier_sweeps_used():
    """Sweep manifests written before model identities hashed the spec's model names this way; `identity_hash`
    with those names must give the same ids, or resubmitting an old sweep would redo it."""
    old_context = {"image_model": "org/image", "audio_model": "models/audio", "dtype": "fp16", "vocoder": "hifigan"}
    old_context["crop"] = True
    old = content_id({"request": request().to_dict(), "context": old_context})
    assert identity_hash(request().to_dict(), "denoise", "org/image", "models/audio", "fp16", "hifigan", True) == old
    imprint = ImprintRequest(image_prompt="a", audio_prompt="b")
    old_imprint = content_id({"method": "imprint", "request": imprint.to_dict(), "context": old_context})
    assert identity_hash(imprint.to_dict(), "imprint", "org/image", "models/audio", "fp16", "hifigan", True) == (
        old_imprint
    )


def test_the_record_names_models_by_identity_not_path(tiny_models):
    record = sample_record(request(seed=3), context(), sample_index=2, device="cuda", timings_s={"denoise": 1.0})
    assert record["sample_id"] == sample_id(request(seed=3), context())
    assert {k: record[k] for k in SampleRequest.field_names()} == request(seed=3).to_dict()
    assert record["image_model"] == {
        "id": "org/image@abc123",
        "hub_id": "org/image",
        "revision": "abc123",
        "fingerprint": None,
        "dtype": "fp32",
    }
    assert record["audio_model"]["id"] == "sha256:" + "f" * 32
    assert (record["dtype"], record["vocoder"], record["crop"], record["device"]) == ("fp32", "hifigan", False, "cuda")
    assert record["sample_index"] == 2 and record["timings_s"] == {"denoise": 1.0}
    assert {"imgsound", "torch", "diffusers", "transformers"} <= set(record["versions"])
    assert "method" not in record
    assert sample_record(request(), context(method="imprint"), sample_index=0, device="cpu")["method"] == "imprint"
    json.dumps(record)  # a record is plain JSON


def test_moving_a_model_folder_keeps_its_identity(tiny_models, tmp_path):
    first = tmp_path / "a" / "image"
    shutil.copytree(tiny_models / "image", first)
    before = identify_source(first, "image")
    assert before.key.startswith("sha256:") and before.hub_id is None
    moved = tmp_path / "elsewhere" / "models" / "sd"
    moved.parent.mkdir(parents=True)
    shutil.move(first, moved)
    assert identify_source(moved, "image") == before
    assert identify_source(tiny_models / "image", "image") == before  # the original, at its own path
    # Reformatting a config keeps it; changing a value in it does not.
    config = moved / "unet" / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps(data, indent=7, sort_keys=True))
    assert fingerprint_folder(moved) == before.fingerprint
    config.write_text(json.dumps({**data, "norm_eps": data.get("norm_eps", 1e-5) * 2}))
    assert fingerprint_folder(moved) != before.fingerprint


def test_converting_pickles_to_safetensors_keeps_the_identity(tiny_models, tmp_path):
    folder = tmp_path / "audio"
    shutil.copytree(tiny_models / "audio", folder)
    assert list(folder.glob("unet/*.bin")), "the tiny audio model ships its UNet as a pickle, as Auffusion does"
    before = fingerprint_folder(folder)
    assert convert_model_dir(folder)
    assert list(folder.glob("unet/*.safetensors"))
    assert fingerprint_folder(folder) == before
    # Other tensors are another model.
    (folder / "unet" / "diffusion_pytorch_model.bin").unlink()
    from safetensors.torch import load_file, save_file

    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, weights)
    assert fingerprint_folder(folder) != before


def test_hub_models_are_their_id_and_revision(tiny_models, tmp_path, monkeypatch):
    """A hub id from the cache is `id@commit`; a folder `imgsound download` wrote is the id and commit it records,
    so naming it by path or by hub id gives the same identity."""
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_models / "image", cache / "models--someone--tiny-image" / "snapshots" / commit)
    (cache / "models--someone--tiny-image" / "refs").mkdir(parents=True)
    (cache / "models--someone--tiny-image" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert identify_source("someone/tiny-image", "image") == ModelIdentity.of_hub("someone/tiny-image", commit)

    downloaded = tmp_path / "models" / "image"
    shutil.copytree(tiny_models / "image", downloaded)
    (downloaded / "imgsound_source.json").write_text(json.dumps({"repo_id": "org/sd", "revision": "c0ffee"}))
    assert identify_source(downloaded, "image").key == "org/sd@c0ffee"
    monkeypatch.setenv("IMGSOUND_MODELS_DIR", str(tmp_path / "models"))
    assert identify_source("org/sd", "image").key == "org/sd@c0ffee"


def test_fingerprints_are_cached_per_file(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGSOUND_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    import imgsound_core.identity as identity

    real = identity.file_digest
    monkeypatch.setattr(identity, "file_digest", lambda path: calls.append(path) or real(path))
    first = fingerprint_folder(tiny_models / "image")
    assert calls and (tmp_path / "cache" / "fingerprints.json").is_file()
    calls.clear()
    assert fingerprint_folder(tiny_models / "image") == first and calls == []


@pytest.mark.parametrize("command", ["generate", "imprint"])
def test_cli_ids_survive_moving_the_models(tiny_models, tmp_path, command):
    """The same command with the model folders moved gives the same sample ids (and the same records)."""
    from imgsound_core.cli import main

    def run(models: Path, out: Path) -> dict:
        args = [command, "--image-model", str(models / "image"), "--audio-model", str(models / "audio")]
        args += ["--image-prompt", "castle", "--audio-prompt", "bells", "--height", "64", "--width", "64"]
        if command == "generate":
            args += ["--steps", "2", "--image-start-step", "0"]
        else:
            args += ["--image-steps", "2", "--audio-steps", "2"]
        assert main([*args, "--out", str(out)]) == 0
        return json.loads((out / "sample_000" / "sample.json").read_text())

    here = tmp_path / "here"
    for role in ("image", "audio"):
        shutil.copytree(tiny_models / role, here / role)
    first = run(here, tmp_path / "one")
    there = tmp_path / "there"
    shutil.move(here, there)
    second = run(there, tmp_path / "two")
    assert first["sample_id"] == second["sample_id"]
    volatile = {"timings_s", "created_utc"}
    assert {k: v for k, v in first.items() if k not in volatile} == {
        k: v for k, v in second.items() if k not in volatile
    }
