"""The imprint baseline: its formula on known arrays, its runs against the core sampler, its command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from imgsound_core.audio.vocoder import HiFiGANVocoder, spectrogram_to_waveform
from imgsound_core.cli import main
from imgsound_core.decode import decode_latents, spectrogram_from_decoded
from imgsound_core.imprint import ImprintRequest, ImprintSampler, imprint_latents, imprint_spectrogram
from imgsound_core.provenance import read_file_metadata
from imgsound_core.request import RequestError
from imgsound_core.sampler import Sampler

SMALL = {"height": 64, "width": 256, "image_steps": 3, "audio_steps": 4}


def test_the_formula_on_known_arrays():
    spectrogram = torch.tensor([[0.8, 0.4, 1.0, 0.0]])
    gray = torch.tensor([[0.0, 1.0, 0.25, 0.5]])
    # g' = 1 − g = [1, 0, 0.75, 0.5]; mask = 1 − 0.5·g' = [0.5, 1, 0.625, 0.75]
    expected = torch.tensor([[0.4, 0.4, 0.625, 0.0]])
    assert torch.allclose(imprint_spectrogram(spectrogram, gray), expected)
    # Not inverted, ρ = 1: bright pixels silence: mask = 1 − g = [1, 0, 0.75, 0.5]
    assert torch.allclose(
        imprint_spectrogram(spectrogram, gray, ratio=1.0, invert=False), torch.tensor([[0.8, 0.0, 0.75, 0.0]])
    )
    assert torch.equal(imprint_spectrogram(spectrogram, gray, ratio=0.0), spectrogram)
    with pytest.raises(ValueError, match="ratio"):
        imprint_spectrogram(spectrogram, gray, ratio=1.5)
    with pytest.raises(ValueError, match="shape"):
        imprint_spectrogram(spectrogram, gray[:, :2])


def test_noise_is_one_stream_image_first():
    image, audio = imprint_latents(7, (4, 8, 32))
    generator = torch.Generator().manual_seed(7)
    assert torch.equal(image, torch.randn((1, 4, 8, 32), generator=generator)[0])
    assert torch.equal(audio, torch.randn((1, 4, 8, 32), generator=generator)[0])


def test_imprint_equals_its_parts_computed_one_by_one(tiny_bundles):
    image_bundle, audio_bundle = tiny_bundles
    vocoder = HiFiGANVocoder(audio_bundle.vocoder)
    requests = ImprintRequest(image_prompt="castle", audio_prompt="bells", seed=3, **SMALL).expand(2)
    results = list(ImprintSampler(image_bundle, audio_bundle, vocoder).generate(requests))
    assert [r.request.seed for r in results] == [3, 4]

    # By hand for sample 1: each model alone on its own latent, decoded, imprinted, vocoded.
    sampler = Sampler(image_bundle, audio_bundle, vocoder)
    request = requests[1]
    image_latent, audio_latent = imprint_latents(request.seed, (4, 8, 32))
    ((image_state, _),) = sampler.denoise([request.image_request()], latents=[image_latent])
    ((audio_state, _),) = sampler.denoise([request.audio_request()], latents=[audio_latent])
    picture = decode_latents(image_bundle.vae, image_state.latents[None])[0]
    original = spectrogram_from_decoded(decode_latents(audio_bundle.vae, audio_state.latents[None]))[0]
    imprinted = original * (0.5 + 0.5 * picture.mean(dim=0))
    assert torch.allclose(results[1].image, picture, atol=1e-5)
    assert torch.allclose(results[1].original_spectrogram, original, atol=1e-5)
    assert torch.allclose(results[1].spectrogram, imprinted, atol=1e-5)
    waveform = spectrogram_to_waveform(imprinted[None], vocoder)[0]
    assert torch.allclose(results[1].waveform, waveform, atol=1e-4)
    assert not torch.allclose(results[0].spectrogram, results[1].spectrogram)  # the seed matters


def test_request_validation():
    with pytest.raises(RequestError, match="ratio"):
        ImprintRequest(image_prompt="a", audio_prompt="b", ratio=2)
    with pytest.raises(RequestError, match="steps"):
        ImprintRequest(image_prompt="a", audio_prompt="b", image_steps=0)
    with pytest.raises(RequestError, match="unknown imprint field"):
        ImprintRequest.from_dict({"image_prompt": "a", "audio_prompt": "b", "rho": 0.5})
    a = ImprintRequest(image_prompt="a", audio_prompt="b")
    assert ImprintRequest.from_dict(a.to_dict()) == a


def model_flags(tiny_models) -> list[str]:
    return ["--image-model", str(tiny_models / "image"), "--audio-model", str(tiny_models / "audio")]


def test_imprint_command_writes_the_generate_layout(tmp_path, tiny_models):
    out = tmp_path / "imprint"
    flags = ["imprint", "--image-prompt", "castle", "--audio-prompt", "bells", "--num-samples", "2", "--crop"]
    flags += ["--image-steps", "2", "--audio-steps", "3", "--height", "64", "--width", "256", "--out", str(out)]
    assert main(flags + model_flags(tiny_models)) == 0
    for index in range(2):
        folder = out / f"sample_{index:03d}"
        record = json.loads((folder / "sample.json").read_text())
        assert record["method"] == "imprint" and record["seed"] == index and record["ratio"] == 0.5
        with Image.open(folder / "spectrogram.png") as spectrogram, Image.open(folder / "image.png") as picture:
            assert spectrogram.size == (256 - 32, 64) and picture.size == (256 - 32, 64)
            imprinted = np.asarray(spectrogram, dtype=np.float64) / 255
            gray = np.asarray(picture.convert("RGB"), dtype=np.float64).mean(axis=2) / 255
        with Image.open(folder / "spectrogram_original.png") as original:
            s = np.asarray(original, dtype=np.float64) / 255
        # The files agree with the formula up to 8-bit rounding of the three pictures.
        assert np.abs(imprinted - s * (0.5 + 0.5 * gray)).max() < 3 / 255
        audio, rate = soundfile.read(folder / "audio.wav")
        assert rate == 16000 and len(audio) == (256 - 32) * 160
        # The files say how they were made: imprint's own settings, not the method's.
        for name in ("spectrogram.png", "spectrogram_original.png"):
            stored = read_file_metadata(folder / name)["imgsound"]
            assert stored["method"] == "imprint" and stored["request"]["ratio"] == 0.5
            assert stored["request"]["image_steps"] == 2 and "steps" not in stored["request"]
    assert main(flags + model_flags(tiny_models)) == 2  # exists, no --overwrite


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--ratio", "1.5"], "ratio must be a number between 0 and 1"),
        (["--image-steps", "0"], "steps must be between 1"),
        (["--height", "60"], "height"),
    ],
)
def test_imprint_bad_input_is_one_sentence(tmp_path, tiny_models, capsys, flags, message):
    command = ["imprint", "--image-prompt", "a", "--audio-prompt", "b", "--out", str(tmp_path / "o"), *flags]
    assert main(command + model_flags(tiny_models)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_imprint_resume_makes_only_the_missing_samples(tiny_models, tmp_path, capsys):
    import shutil

    from tests.cli_helpers import run_main

    out = tmp_path / "out"
    args = ["imprint", *model_flags(tiny_models), "--image-prompt", "castle", "--audio-prompt", "bells"]
    args += ["--image-steps", "2", "--audio-steps", "2", "--height", "64", "--width", "64", "--num-samples", "2"]
    args += ["--vocoder", "griffinlim", "--out", str(out)]
    assert run_main(capsys, *args).code == 0
    kept = (out / "sample_000" / "image.png").stat().st_mtime_ns
    shutil.rmtree(out / "sample_001")
    outcome = run_main(capsys, *args, "--resume")
    assert outcome.code == 0 and "1 of 2 samples are finished and kept" in outcome.err, outcome.err
    assert (out / "sample_000" / "image.png").stat().st_mtime_ns == kept and (
        out / "sample_001" / "audio.wav"
    ).is_file()
