"""Colorization: the view seam and its pure functions, the sampler on tiny IF models (luminance kept, colour made up,
seeds), and `imgsound colorize` end to end and on every bad input.

The luminance tolerance: `colorize` returns pictures whose channel mean equals the input's to float round-off
(≤ 1e-5 here); once saved as 8-bit PNG, color.png's channel mean is within one grey level (1/255) of image.png's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgsound_core.colorize import (
    COLOUR_VIEW,
    ColorizeSettings,
    View,
    colorize,
    factorized_estimate,
    fit_gamut,
    luminance,
    noised,
    project,
    sum_components,
)
from imgsound_core.models.deepfloyd import load_if_stage
from tests.cli_helpers import run_main

PROMPT = "a colorful photo of kittens"
FAST = ColorizeSettings(steps=4, start_step=1)  # 3 stage-I steps + 4 stage-II steps
FAST_FLAGS = ("--steps", "4", "--start-step", "1")
GREY_LEVEL = 1 / 255


def _gradient_picture(height: int = 64, width: int = 256) -> torch.Tensor:
    """`(3, H, W)` in [0, 1]: coloured ramps whose grey runs from dark to light, away from pure black and white."""
    ramp = torch.linspace(0.15, 0.85, width).expand(height, width)
    return torch.stack([ramp, ramp.flip(-1), torch.full_like(ramp, 0.5)])


@pytest.fixture(scope="module")
def stages(tiny_models: Path):
    return load_if_stage(tiny_models / "if-stage-1", 1), load_if_stage(tiny_models / "if-stage-2", 2)


# --- the view seam --------------------------------------------------------------------------------------------------


def test_view_then_inverse_is_the_identity() -> None:
    x = torch.randn(2, 3, 8, 16, generator=torch.Generator().manual_seed(0))
    grey, colour = COLOUR_VIEW.forward(x)
    assert torch.allclose(COLOUR_VIEW.inverse((grey, colour)), x, atol=1e-6)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])  # grey: equal channels
    assert colour.mean(dim=1).abs().max() < 1e-6  # colour: zero channel mean
    assert torch.allclose(grey[:, 0], x.mean(dim=1))


def test_factorized_estimate_takes_each_component_from_its_own_estimate() -> None:
    """ε̂ = L(ε̂_0) + C(ε̂_1); with one estimate for both it is that estimate."""
    a, b = torch.randn(2, 1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    mixed = factorized_estimate(COLOUR_VIEW, [a, b])
    assert torch.allclose(luminance(mixed), luminance(a), atol=1e-6)
    assert torch.allclose(mixed - luminance(mixed), b - luminance(b), atol=1e-6)
    assert torch.allclose(factorized_estimate(COLOUR_VIEW, [a, a]), a, atol=1e-6)
    identity = View("identity", lambda x: (x,), sum_components)  # a one-component view leaves the estimate alone
    assert torch.equal(factorized_estimate(identity, [b]), b)


def test_project_replaces_only_the_luminance() -> None:
    x, reference = torch.randn(2, 2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    projected = project(COLOUR_VIEW, x, reference)
    assert torch.allclose(luminance(projected), luminance(reference), atol=1e-6)
    assert torch.allclose(projected - luminance(projected), x - luminance(x), atol=1e-6)


def test_noised_is_the_forward_process(stages) -> None:
    """√ᾱ_t·x₀ + √(1−ᾱ_t)·ε, the same as the stage's scheduler's add_noise."""
    scheduler = stages[0].scheduler
    x0, noise = torch.randn(2, 2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([726, 33])
    expected = scheduler.add_noise(x0, noise, t)
    assert torch.allclose(noised(x0, scheduler.alphas_cumprod[t], noise), expected, atol=1e-5)


def test_fit_gamut_keeps_the_luminance_inside_the_cube() -> None:
    """Out-of-gamut colour is scaled towards its grey until it fits; in-gamut colour is left alone."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 3
    x = x - luminance(x) + luminance(x).clamp(-1, 1)  # any colour on an in-range grey
    fitted = fit_gamut(x)
    assert fitted.min() >= -1 - 1e-6 and fitted.max() <= 1 + 1e-6
    assert torch.allclose(luminance(fitted), luminance(x), atol=1e-5)
    # grey 0.9, colour (0.3, −0.15, −0.15): red would be 1.2, so the colour shrinks by 1/3 — unlike a clamp, which
    # would make the mean 0.833.
    pixel = torch.tensor([1.2, 0.75, 0.75]).view(1, 3, 1, 1)
    assert torch.allclose(fit_gamut(pixel).flatten(), torch.tensor([1.0, 0.85, 0.85]), atol=1e-6)
    inside = torch.tensor([0.3, 0.0, -0.3]).view(1, 3, 1, 1)
    assert torch.equal(fit_gamut(inside), inside)


def test_settings_are_checked() -> None:
    for bad, words in (
        ({"steps": 0}, "steps"),
        ({"start_step": 30}, "start step"),
        ({"guidance_scale": float("nan")}, "guidance"),
        ({"noise_level": 1000}, "noise level"),
    ):
        with pytest.raises(ValueError, match=words):
            ColorizeSettings(**bad)
    assert ColorizeSettings().to_dict() == {
        "steps": 30,
        "guidance_scale": 10.0,
        "start_step": 7,
        "noise_level": 50,
        "negative_prompt": "",
    }


# --- the sampler on tiny models -------------------------------------------------------------------------------------


def test_colorize_keeps_the_luminance_and_makes_up_colour(stages, single_thread) -> None:
    """The output's channel mean is the input's (to 1e-5); its channels differ, so colour was generated."""
    pictures = torch.stack([_gradient_picture(), _gradient_picture().flip(-1)])
    out = colorize(*stages, pictures, [PROMPT, PROMPT], [0, 1], FAST)
    assert out.shape == (2, 3, 64, 256) and out.dtype == torch.float32
    assert (out.mean(dim=1) - pictures.mean(dim=1)).abs().max() < 1e-5
    assert (out[:, 0] - out[:, 1]).abs().mean() > 0.02 and (out[:, 1] - out[:, 2]).abs().mean() > 0.02
    assert (out[0] - out[1]).abs().mean() > 0.02  # other seed, other picture: other colours


def test_colorize_same_seed_same_output(stages, single_thread) -> None:
    picture = _gradient_picture()[None]
    first = colorize(*stages, picture, [PROMPT], [7], FAST)
    again = colorize(*stages, picture, [PROMPT], [7], FAST)
    other = colorize(*stages, picture, [PROMPT], [8], FAST)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 0.05


def test_colorize_sample_does_not_depend_on_its_batch_mates(stages, single_thread) -> None:
    """Every sample draws its noise from its own generator: alone or next to another picture, the same result — to
    float round-off, which guidance amplifies (< 1e-4 at guidance 1 here; ~3e-3 at 10 on these random models)."""
    settings = ColorizeSettings(steps=4, start_step=1, guidance_scale=1.0)
    pictures = torch.stack([_gradient_picture(), _gradient_picture().flip(-1)])
    both = colorize(*stages, pictures, [PROMPT, "a colorful photo of dogs"], [5, 6], settings)
    alone = colorize(*stages, pictures[1:], ["a colorful photo of dogs"], [6], settings)
    assert (both[1:] - alone).abs().max() < 1e-4


def test_colorize_refuses_sizes_the_models_cannot_split(stages) -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        colorize(*stages, torch.rand(1, 3, 60, 250), [PROMPT], [0], FAST)
    with pytest.raises(ValueError, match="1 pictures need 1 prompts"):
        colorize(*stages, torch.rand(1, 3, 64, 256), [PROMPT, PROMPT], [0], FAST)


# --- the command line -----------------------------------------------------------------------------------------------


def _sample_folder(root: Path, name: str = "sample_000", picture: torch.Tensor | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    pixels = (_gradient_picture() if picture is None else picture).permute(1, 2, 0).numpy()
    Image.fromarray((pixels * 255 + 0.5).astype(np.uint8)).save(folder / "image.png")
    (folder / "sample.json").write_text(json.dumps({"image_prompt": "a painting of castle towers", "seed": 3}))
    return folder


def _run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    outcome = run_main(capsys, *args)
    return outcome.code, outcome.out, outcome.err


def _models(tiny_models: Path) -> list[str]:
    return ["--stage-1-model", str(tiny_models / "if-stage-1"), "--stage-2-model", str(tiny_models / "if-stage-2")]


def _one_error(code: int, err: str) -> str:
    """Exit 2, no traceback, and the last stderr line is the only `imgsound: error:` line; returns it."""
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("imgsound: error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


def test_cli_colorize_writes_color_png_and_records_it(
    tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], single_thread, _no_debug
) -> None:
    """A root folder stands for its sample folders; color.png keeps image.png's grey to one grey level; sample.json
    keeps what it held and gains the colorization's parameters."""
    first = _sample_folder(tmp_path / "run")
    second = _sample_folder(tmp_path / "run", "sample_001", _gradient_picture().flip(-1))
    code, out, err = _run(
        capsys, "colorize", tmp_path / "run", "--prompt", PROMPT, "--seed", "5", *FAST_FLAGS, *_models(tiny_models)
    )
    assert code == 0, err
    for folder in (first, second):
        with Image.open(folder / "color.png") as picture:
            assert picture.mode == "RGB" and picture.size == (256, 64)
            color = np.asarray(picture, dtype=np.float64) / 255
        with Image.open(folder / "image.png") as picture:
            grey = np.asarray(picture.convert("RGB"), dtype=np.float64).mean(axis=2) / 255
        assert np.abs(color.mean(axis=2) - grey).max() <= GREY_LEVEL
        assert np.abs(color[..., 0] - color[..., 1]).mean() > 0.02
        record = json.loads((folder / "sample.json").read_text())
        assert record["image_prompt"] == "a painting of castle towers" and record["seed"] == 3
        colorization = record["colorization"]
        assert colorization["prompt"] == PROMPT and colorization["seed"] == 5 and colorization["output"] == "color.png"
        assert (colorization["steps"], colorization["start_step"], colorization["noise_level"]) == (4, 1, 50)
        assert colorization["stage_1_model"]["source"].endswith("if-stage-1")
    assert not list((tmp_path / "run").rglob(".*"))  # no temporary files left behind

    # An existing color.png is kept unless --overwrite; the same seed (and batch) gives the same pictures.
    before = {folder: (folder / "color.png").read_bytes() for folder in (first, second)}
    code, _, err = _run(capsys, "colorize", first, "--prompt", PROMPT, *FAST_FLAGS, *_models(tiny_models))
    assert "already exists" in _one_error(code, err)
    assert (first / "color.png").read_bytes() == before[first]
    code, _, err = _run(
        capsys, "colorize", tmp_path / "run", "--prompt", PROMPT, "--seed", "5", "--overwrite", *FAST_FLAGS,
        *_models(tiny_models),
    )  # fmt: skip
    assert code == 0, err
    assert {folder: (folder / "color.png").read_bytes() for folder in (first, second)} == before


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("empty prompt", "--prompt is empty"),
        ("long prompt", "characters long"),
        ("no sample folders", "holds no sample folders"),
        ("missing folder", "is not a folder"),
        ("missing image", "has no image.png"),
        ("unreadable image", "not a readable sample folder"),
        ("bad start step", "start step"),
        ("missing models", "licence"),
        ("wrong size", "multiples of 16"),
    ],
)
def test_cli_colorize_bad_input_is_one_sentence(
    case: str, words: str, tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], _no_debug
) -> None:
    folder = _sample_folder(tmp_path / "run")
    prompt, target, extra = PROMPT, folder, list(_models(tiny_models))
    if case == "empty prompt":
        prompt = "   "
    elif case == "long prompt":
        prompt = "kittens " * 100
    elif case == "no sample folders":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "missing folder":
        target = tmp_path / "nowhere"
    elif case == "missing image":
        (folder / "image.png").unlink()
    elif case == "unreadable image":
        (folder / "image.png").write_bytes(b"not a png")
    elif case == "bad start step":
        extra += ["--start-step", "30"]
    elif case == "missing models":
        extra = ["--stage-1-model", str(tmp_path / "no-if"), "--stage-2-model", str(tmp_path / "no-if")]
    elif case == "wrong size":
        folder = _sample_folder(tmp_path / "odd", picture=torch.rand(3, 60, 250))
        target = folder
    code, _, err = _run(capsys, "colorize", target, "--prompt", prompt, *FAST_FLAGS, *extra)
    assert words in _one_error(code, err)
    assert not (folder / "color.png").exists()


def test_cli_download_deepfloyd_prints_the_licence_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, _no_debug
) -> None:
    """`download --deepfloyd` says up front how to get access, then (offline here) fails in one sentence."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = _run(capsys, "download", tmp_path / "models", "--deepfloyd")
    assert "HF_HUB_OFFLINE" in _one_error(code, err)
    assert "licence" in err and "huggingface-cli login" in err and "DeepFloyd/IF-I-M-v1.0" in err
    assert not (tmp_path / "models" / "if-stage-1").exists()


def test_cli_colorize_video_stacks_the_colour_picture_over_the_spectrogram(
    tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], single_thread, _no_debug
) -> None:
    from imgsound_core.artifacts import wav_bytes

    folder = _sample_folder(tmp_path / "run")
    code, _, err = _run(capsys, "colorize", folder, "--prompt", PROMPT, "--video", *FAST_FLAGS, *_models(tiny_models))
    assert "has no spectrogram.png for --video" in _one_error(code, err)
    assert not (folder / "color.png").exists()  # checked before any work

    Image.fromarray(np.full((64, 256), 128, np.uint8)).save(folder / "spectrogram.png")
    (folder / "audio.wav").write_bytes(wav_bytes(np.zeros(256 * 160, np.float32)))
    code, _, err = _run(capsys, "colorize", folder, "--prompt", PROMPT, "--video", *FAST_FLAGS, *_models(tiny_models))
    assert code == 0, err
    video = (folder / "video_color.mp4").read_bytes()
    assert video[4:8] == b"ftyp"
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(folder / "video_color.mp4"))
    meta = next(reader)
    frame = np.frombuffer(next(reader), np.uint8).reshape(meta["size"][1], meta["size"][0], 3)
    reader.close()
    # Two pictures stacked: a coloured row (channels differ) above a grey one (the spectrogram, channels equal).
    spread = np.abs(frame[..., 0].astype(int) - frame[..., 1].astype(int)).mean(axis=1)
    coloured_rows = np.flatnonzero(spread > 8)
    assert len(coloured_rows) > 20
    grey_rows = np.flatnonzero((np.abs(frame.astype(int) - 128) < 6).all(axis=2).mean(axis=1) > 0.5)
    assert grey_rows.size > 20 and grey_rows.min() > coloured_rows.min()
