"""The SDS baseline: its gradient against a direct computation, resumption, and a short run of the command."""

from __future__ import annotations

import json

import pytest
import soundfile
import torch
import torch.nn.functional as F
from PIL import Image

from imgsound_core.cli import main
from imgsound_core.sds import FourierImage, SDSRun, SDSSettings, image_view, sds_loss


def bilinear_matrix(source: int, target: int) -> torch.Tensor:
    """The `(target, source)` matrix of 1-D bilinear resizing (align_corners=False), column by column."""
    eye = torch.eye(source)[:, None, :]  # (source, 1, source): each basis vector as a 1-row signal
    return F.interpolate(eye, size=target, mode="linear", align_corners=False)[:, 0, :].T


def test_sds_loss_gradient_is_weighted_residual_over_batch():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    eps_hat, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    alpha_bar = torch.tensor(0.3)
    sds_loss(x, eps_hat, eps, alpha_bar).backward()
    assert torch.allclose(x.grad, (1 - 0.3) * (eps_hat - eps) / 4, atol=1e-6)


def test_image_sds_gradient_is_pushed_back_through_crop_and_resize():
    """∂L/∂picture = Σ_crops place(Σ_channels 2 · R_hᵀ (w(t)(ε̂ − ε)/B) R_w): autograd against the adjoint by hand."""
    height, width, crop, size, count = 16, 40, 16, 8, 3
    picture = torch.rand(1, height, width, requires_grad=True)
    view = image_view(picture, crop, count, size, torch.Generator().manual_seed(5))
    eps_hat, eps = torch.randn(count, 3, size, size), torch.randn(count, 3, size, size)
    alpha_bar = torch.tensor(0.8)
    sds_loss(view, eps_hat, eps, alpha_bar).backward()

    # The same crop offsets, drawn again from the same generator state.
    generator = torch.Generator().manual_seed(5)
    tops = torch.randint(0, height - crop + 1, (count,), generator=generator).tolist()
    lefts = torch.randint(0, width - crop + 1, (count,), generator=generator).tolist()
    resize = bilinear_matrix(crop, size)  # (size, crop)
    view_grad = (1 - alpha_bar) * (eps_hat - eps) / count  # ∂L/∂view
    expected = torch.zeros(1, height, width)
    for k, (top, left) in enumerate(zip(tops, lefts)):
        # view = 2 · R crop Rᵀ − 1, repeated over 3 channels → adjoint: 2 · Rᵀ G R summed over channels
        back = 2 * (resize.T @ view_grad[k] @ resize).sum(dim=0)
        expected[0, top : top + crop, left : left + crop] += back
    assert torch.allclose(picture.grad, expected, atol=1e-6)
    assert picture.grad.abs().sum() > 0


def test_fourier_image_is_a_picture_in_unit_range_and_deterministic():
    before = torch.random.get_rng_state()
    a = FourierImage(16, 32, channels=3, hidden=8, features=4, generator=torch.Generator().manual_seed(1))
    b = FourierImage(16, 32, channels=3, hidden=8, features=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), before)  # weights come from the seed, not the global RNG
    picture = a()
    assert picture.shape == (3, 16, 32) and 0 <= picture.min() and picture.max() <= 1
    assert torch.equal(a.frequencies, b.frequencies) and torch.allclose(picture, b())


SMALL = dict(height=64, width=256, crop_size=64, crops=2, hidden=8, features=4, iterations=4, image_start_step=2)


def load_priors(tiny_models):
    from imgsound_core.models.bundle import load_bundle
    from imgsound_core.models.deepfloyd import load_if_stage

    if_stage = load_if_stage(tiny_models / "if-stage-1", 1)
    audio = load_bundle(tiny_models / "audio", "audio", parts={"unet", "vae", "text"})
    return if_stage, audio


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_models):
    if_stage, audio = load_priors(tiny_models)
    settings = SDSSettings(image_prompt="castle", audio_prompt="bells", seed=3, **SMALL)
    whole = SDSRun(settings, if_stage, audio)
    losses = []
    whole.run(callback=lambda step, values: losses.append((step, sorted(values))))
    assert losses == [(1, ["audio"]), (2, ["audio"]), (3, ["audio", "image"]), (4, ["audio", "image"])]

    first = SDSRun(settings, if_stage, audio)
    first.run(until=3)
    first.save_checkpoint(tmp_path / "checkpoint.pt")
    resumed = SDSRun(settings, if_stage, audio)
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    assert resumed.step_index == 3
    resumed.run()
    assert torch.allclose(resumed.render(), whole.render(), atol=1e-6)
    assert not torch.allclose(SDSRun(settings, if_stage, audio).render(), whole.render(), atol=1e-4)  # it learned

    other = SDSRun(SDSSettings(image_prompt="castle", audio_prompt="bells", seed=4, **SMALL), if_stage, audio)
    with pytest.raises(ValueError, match="seed"):
        other.load_checkpoint(tmp_path / "checkpoint.pt")


def sds_command(tiny_models, out, *extra) -> list[str]:
    command = ["sds", "--image-prompt", "castle", "--audio-prompt", "bells", "--out", str(out)]
    command += ["--iterations", "4", "--image-start-step", "2", "--height", "64", "--width", "256"]
    command += ["--crop-size", "64", "--crops", "2", "--hidden", "8", "--features", "4", "--snapshot-every", "2"]
    command += ["--checkpoint-every", "1", "--audio-model", str(tiny_models / "audio")]
    return command + ["--stage-1-model", str(tiny_models / "if-stage-1"), *extra]


def test_sds_command_writes_every_artifact_and_resumes(tmp_path, tiny_models, capsys):
    out = tmp_path / "sds"
    assert main(sds_command(tiny_models, out, "--crop")) == 0
    folder = out / "sample_000"
    for name in ("image.png", "spectrogram.png", "spectrogram.npy", "audio.wav", "sample.json", "checkpoint.pt"):
        assert (folder / name).is_file(), name
    assert sorted(p.name for p in (folder / "snapshots").iterdir()) == ["step_000002"]
    assert (folder / "snapshots" / "step_000002" / "audio.wav").is_file()
    record = json.loads((folder / "sample.json").read_text())
    assert record["method"] == "sds" and record["iteration"] == 4 and record["image_guidance"] == 80.0
    with Image.open(folder / "spectrogram.png") as picture:
        assert picture.size == (256 - 32, 64)
    audio, rate = soundfile.read(folder / "audio.wav")
    assert rate == 16000 and len(audio) == (256 - 32) * 160

    # An interrupted sample (a checkpoint, no sample.json) resumes where it stopped.
    if_stage, audio_bundle = load_priors(tiny_models)
    settings = SDSSettings(image_prompt="castle", audio_prompt="bells", seed=0, **SMALL)
    partial = SDSRun(settings, if_stage, audio_bundle)
    partial.run(until=2)
    resumed_folder = tmp_path / "resumed" / "sample_000"
    resumed_folder.mkdir(parents=True)
    partial.save_checkpoint(resumed_folder / "checkpoint.pt")
    capsys.readouterr()
    assert main(sds_command(tiny_models, tmp_path / "resumed", "--crop")) == 0
    assert "resuming at iteration 2" in capsys.readouterr().err
    assert (resumed_folder / "spectrogram.npy").read_bytes() == (folder / "spectrogram.npy").read_bytes()

    assert main(sds_command(tiny_models, out)) == 0  # finished: skipped, untouched
    assert "is finished; skipped" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image-start-step", "9"], "image_start_step must be between 0 and iterations"),
        (["--crop-size", "128"], "crop_size 128 exceeds the picture"),
        (["--stage-1-model", "/nonexistent/if"], "stage I"),
    ],
)
def test_sds_bad_input_is_one_sentence(tmp_path, tiny_models, capsys, extra, message):
    assert main(sds_command(tiny_models, tmp_path / "o", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
