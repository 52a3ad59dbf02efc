"""Tests for the `imgsound` command line: help, generation end to end, reproducibility, every user error, and the
tiny-models / convert / download / image-to-audio / audio-to-spectrogram subcommands.

A few tests run the installed `imgsound` console script in a subprocess, to prove the real exit code, the real
stderr and the absence of tracebacks; the rest call `imgsound_core.cli.main` in-process, which is much cheaper.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from imgsound_core.cli import build_parser, main
from imgsound_core.models.download import select_files
from imgsound_core.request import SampleRequest
from tests.cli_helpers import Outcome, assert_user_error, run_main

IMGSOUND = Path(sys.executable).with_name("imgsound")
SAMPLE_RATE_HZ = 16000
HOP = 160  # audio samples per spectrogram column
ARTIFACTS = {"image.png", "spectrogram.png", "spectrogram.npy", "audio.wav", "sample.json"}
# Cheap generation: three DDIM steps, the image model joining at step 1.
FAST = ("--steps", "3", "--image-start-step", "1")
SMALL = ("--height", "64", "--width", "256")


def _subprocess_env(**updates: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("IMGSOUND_DEBUG", "IMGSOUND_IMAGE_MODEL", "IMGSOUND_AUDIO_MODEL")
    }
    env["HF_HUB_OFFLINE"] = "1"
    env.update(updates)
    return env


def run_script(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 120) -> Outcome:
    """Run the installed console script."""
    done = subprocess.run(
        [str(IMGSOUND), *map(str, args)],
        capture_output=True,
        text=True,
        env=env or _subprocess_env(),
        timeout=timeout,
        check=False,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def generate_args(models: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    """`generate` on the tiny models; later flags in `extra` override the defaults given here."""
    return [
        "generate",
        "--image-prompt",
        "a lighthouse at dusk",
        "--audio-prompt",
        "waves on a beach",
        "--image-model",
        models / "image",
        "--audio-model",
        models / "audio",
        "--out",
        out,
        *FAST,
        *extra,
    ]


def assert_usage_error(outcome: Outcome, flag: str) -> None:
    """argparse's rejection: exit code 2, a usage line, and the flag named in the message."""
    assert outcome.code == 2, outcome
    assert outcome.err.startswith("usage: imgsound"), outcome.err
    assert "Traceback" not in outcome.err
    assert flag in outcome.err.strip().splitlines()[-1], outcome.err


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under `root` (hidden ones included)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


class _RunsCommand:
    """Pickles as a call of `os.system`: loading it without `weights_only` would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def write_malicious_pickle(path: Path, marker: Path) -> None:
    """A torch checkpoint whose unpickling would create `marker`."""
    torch.save({"weight": _RunsCommand(f"touch {shlex.quote(str(marker))}")}, path)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(path, dtype="float32")
    return samples, rate


def read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def spectral_centroid_hz(samples: np.ndarray, rate: int) -> float:
    power = np.abs(np.fft.rfft(samples.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(samples.shape[0], 1.0 / rate)
    return float((freqs * power).sum() / power.sum())


def tone(freq_hz: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    mono = (0.5 * np.sin(2 * math.pi * freq_hz * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The parser's own subcommands (name → subparser)."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the parser has no subcommands")


# --- help ---------------------------------------------------------------------------------------------------------


def test_help_lists_every_subcommand() -> None:
    """`imgsound --help` (the real console script) exits 0 and names every subcommand the parser defines."""
    names = subcommands()
    assert {"generate", "tiny-models", "download", "convert", "image-to-audio", "audio-to-spectrogram"} <= set(names)
    outcome = run_script("--help", timeout=60)
    assert outcome.code == 0, outcome
    for name in names:
        assert name in outcome.out, name


def test_generate_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """`imgsound generate --help` exits 0 and shows every long option of the generate parser."""
    flags = {
        option
        for action in subcommands()["generate"]._actions
        for option in action.option_strings
        if option.startswith("--")
    }
    assert {"--image-prompt", "--audio-prompt", "--seed", "--crop", "--vocoder", "--out"} <= flags
    outcome = run_main(capsys, "generate", "--help")
    assert outcome.code == 0, outcome
    for flag in flags:
        assert flag in outcome.out, flag


# --- generate -----------------------------------------------------------------------------------------------------


E2E_ARGS = ("--num-samples", "2", "--seed", "7", "--crop")


@pytest.fixture(scope="module")
def e2e_out(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT of the console script run with two cropped default-size samples from seed 7 (must succeed)."""
    out = tmp_path_factory.mktemp("e2e") / "out"
    outcome = run_script(*generate_args(tiny_models, out, *E2E_ARGS))
    assert outcome.code == 0, outcome.err
    assert "Traceback" not in outcome.err
    return out


@pytest.fixture(scope="module")
def in_process_runs(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The e2e command again, in-process ("again"), and one uncropped default-size sample from seed 8 ("seed8")."""
    root = tmp_path_factory.mktemp("in-process-runs")
    runs = {"again": E2E_ARGS, "seed8": ("--seed", "8")}
    for name, extra in runs.items():
        assert main([str(a) for a in generate_args(tiny_models, root / name, *extra)]) == 0
    return {name: root / name for name in runs}


def test_generate_end_to_end(e2e_out: Path, tiny_models: Path) -> None:
    """The console script writes two complete, cropped samples with per-sample seeds and full provenance."""
    # Exactly the two sample folders: no hidden `.sample_*.partial` staging folders left behind.
    assert sorted(p.name for p in e2e_out.iterdir()) == ["sample_000", "sample_001"]
    for index, seed in ((0, 7), (1, 8)):
        folder = e2e_out / f"sample_{index:03d}"
        assert {p.name for p in folder.iterdir()} == ARTIFACTS
        with Image.open(folder / "image.png") as picture:
            assert (picture.mode, picture.size) == ("RGB", (992, 256))
        with Image.open(folder / "spectrogram.png") as picture:
            assert (picture.mode, picture.size) == ("L", (992, 256))
        spectrogram = read_npy(folder / "spectrogram.npy")
        assert spectrogram.dtype == np.float32 and spectrogram.shape == (256, 1024)
        assert 0.0 <= spectrogram.min() and spectrogram.max() <= 1.0
        info = soundfile.info(folder / "audio.wav")
        assert (info.samplerate, info.frames) == (SAMPLE_RATE_HZ, 158720)

        record = json.loads((folder / "sample.json").read_text())
        expected = SampleRequest(
            image_prompt="a lighthouse at dusk", audio_prompt="waves on a beach", steps=3, image_start_step=1, seed=seed
        ).to_dict()
        assert {name: record[name] for name in SampleRequest.field_names()} == expected
        assert record["sample_index"] == index
        # A folder without hub provenance is its fingerprint; no local path is recorded.
        assert record["image_model"]["id"].startswith("sha256:") and record["image_model"]["hub_id"] is None
        assert record["audio_model"]["id"].startswith("sha256:")
        assert str(tiny_models) not in json.dumps(record)
        assert record["vocoder"] == "hifigan"
        assert record["crop_columns"] == 32
        assert record["audio_samples"] == 158720
        assert {"denoise", "decode", "vocode", "model_load"} <= set(record["timings_s"])
        assert all(value >= 0 for value in record["timings_s"].values())
    first, second = (json.loads((e2e_out / f"sample_{i:03d}" / "sample.json").read_text()) for i in (0, 1))
    assert first["sample_id"] != second["sample_id"]


def test_generate_is_reproducible(e2e_out: Path, in_process_runs: dict[str, Path]) -> None:
    """The same command (here once as a process, once in-process) gives byte-identical spectrograms and audio;
    another seed gives different ones."""
    again, other = in_process_runs["again"], in_process_runs["seed8"]
    for sample in ("sample_000", "sample_001"):
        for name in ("spectrogram.npy", "audio.wav", "spectrogram.png", "image.png"):
            assert (e2e_out / sample / name).read_bytes() == (again / sample / name).read_bytes(), (sample, name)
    for name in ("spectrogram.npy", "audio.wav"):
        assert (e2e_out / "sample_000" / name).read_bytes() != (other / "sample_000" / name).read_bytes(), name


def test_generate_default_size_without_crop(in_process_runs: dict[str, Path]) -> None:
    """Without --crop every file keeps all 1024 columns and the audio all 163840 samples (10.24 s)."""
    folder = in_process_runs["seed8"] / "sample_000"
    for name, mode in (("image.png", "RGB"), ("spectrogram.png", "L")):
        with Image.open(folder / name) as picture:
            assert (picture.mode, picture.size) == (mode, (1024, 256))
    assert read_npy(folder / "spectrogram.npy").shape == (256, 1024)
    samples, rate = read_wav(folder / "audio.wav")
    assert (rate, samples.shape) == (SAMPLE_RATE_HZ, (163840,))
    record = json.loads((folder / "sample.json").read_text())
    assert (record["crop_columns"], record["audio_samples"]) == (0, 163840)


def test_sample_i_uses_seed_plus_i(e2e_out: Path, in_process_runs: dict[str, Path]) -> None:
    """Sample 1 of `--seed 7 --num-samples 2` is sample 0 of `--seed 8`, whatever its batch-mates."""
    first = read_npy(e2e_out / "sample_000" / "spectrogram.npy")
    second = read_npy(e2e_out / "sample_001" / "spectrogram.npy")
    alone = read_npy(in_process_runs["seed8"] / "sample_000" / "spectrogram.npy")
    assert np.abs(second - alone).max() < 1e-4
    assert np.abs(first - alone).max() > 1e-3  # the comparison can tell seeds apart


def test_generate_other_size_keeps_its_height(
    tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 64×256 the files are 64 rows high (cropped to 224 columns) and the audio is columns × 160 samples."""
    out = tmp_path / "out"
    outcome = run_main(capsys, *generate_args(tiny_models, out, *SMALL, "--crop"))
    assert outcome.code == 0, outcome.err
    folder = out / "sample_000"
    for name in ("image.png", "spectrogram.png"):
        with Image.open(folder / name) as picture:
            assert picture.size == (224, 64)
    assert read_npy(folder / "spectrogram.npy").shape == (64, 256)
    samples, rate = read_wav(folder / "audio.wav")
    assert (rate, samples.shape) == (SAMPLE_RATE_HZ, (224 * HOP,))


def test_generate_with_griffin_lim(tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--vocoder griffinlim` needs no HiFi-GAN weights and writes audio of the right length that is not silent."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    shutil.rmtree(models / "audio" / "vocoder")
    size = ("--height", "64", "--width", "64")
    assert_user_error(run_main(capsys, *generate_args(models, tmp_path / "hifi", *size)), "vocoder")
    outcome = run_main(capsys, *generate_args(models, tmp_path / "gl", *size, "--vocoder", "griffinlim"))
    assert outcome.code == 0, outcome.err
    samples, rate = read_wav(tmp_path / "gl" / "sample_000" / "audio.wav")
    assert (rate, samples.shape) == (SAMPLE_RATE_HZ, (64 * HOP,))
    assert np.abs(samples).max() > 0
    record = json.loads((tmp_path / "gl" / "sample_000" / "sample.json").read_text())
    assert record["vocoder"] == "griffinlim"


# --- generate: user errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        pytest.param(("--image-prompt", ""), ("--image-prompt",), id="empty-prompt"),
        pytest.param(("--audio-prompt", "  \t "), ("--audio-prompt",), id="blank-prompt"),
        pytest.param(("--steps", "0"), ("steps",), id="zero-steps"),
        pytest.param(("--steps", "100000"), ("steps", "999"), id="too-many-steps"),
        pytest.param(("--height", "100"), ("height", "multiple of 8"), id="height-not-multiple-of-8"),
        pytest.param(("--width", "0"), ("width",), id="zero-width"),
        pytest.param(("--audio-weight", "1.5"), ("--audio-weight",), id="weight-above-1"),
        pytest.param(("--image-guidance", "nan"), ("--image-guidance", "finite"), id="nan-guidance"),
        pytest.param(("--audio-guidance", "-1"), ("--audio-guidance",), id="negative-guidance"),
        pytest.param(("--image-start-step", "2", "--audio-start-step", "1"), ("must be 0",), id="both-start-late"),
        pytest.param(
            ("--steps", "4", "--image-start-step", "5"), ("--image-start-step", "--steps (4)"), id="start-after-end"
        ),
        pytest.param(
            ("--image-model", "/nonexistent"), ("imgsound download", "--image-model"), id="missing-model-folder"
        ),
        pytest.param(("--device", "cuda"), ("cuda",), id="cuda-without-gpu"),
        # before any model loads: the missing model folder is not what it complains about
        pytest.param(
            ("--crop", "--width", "32", "--image-model", "/nonexistent"), ("crop drops",), id="crop-too-narrow"
        ),
        pytest.param(("--image-prompt", "\ud800"), ("--image-prompt", "lone surrogate"), id="lone-surrogate"),
    ],
)
def test_generate_rejects_bad_input(
    tiny_models: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    words: tuple[str, ...],
) -> None:
    """Each invalid request or unusable model/device ends with exit 2, one `imgsound: error:` line, no files."""
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    out = tmp_path / "out"
    assert_user_error(run_main(capsys, *generate_args(tiny_models, out, *SMALL, *extra)), *words)
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (("--num-samples", "0"), "--num-samples"),
        (("--batch-size", "-2"), "--batch-size"),
        (("--vocoder", "wavenet"), "--vocoder"),
        (("--dtype", "fp64"), "--dtype"),
        (("--steps", "three"), "--steps"),
    ],
)
def test_generate_argparse_errors(
    tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], flag: str
) -> None:
    """Malformed flag values are refused by the parser: exit 2, usage line, the flag named."""
    out = tmp_path / "out"
    assert_usage_error(run_main(capsys, *generate_args(tiny_models, out, *extra)), flag)
    assert not out.exists()


def test_generate_needs_out(tiny_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out is required."""
    args = generate_args(tiny_models, Path("unused"))
    index = args.index("--out")
    assert_usage_error(run_main(capsys, *args[:index], *args[index + 2 :]), "--out")


def test_generate_without_cached_hub_weights(tmp_path: Path) -> None:
    """Default hub ids, offline, with an empty Hugging Face cache: one sentence saying how to get the weights."""
    out = tmp_path / "out"
    home = tmp_path / "hf-home"
    home.mkdir()
    env = _subprocess_env(HF_HOME=str(home))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(name, None)
    args = ["generate", "--image-prompt", "a", "--audio-prompt", "b", "--out", out, *FAST]
    message = assert_user_error(run_script(*args, env=env), "imgsound download", "--image-model")
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert not out.exists()


def test_generate_corrupted_unet_config(tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model folder with an unreadable unet/config.json is a one-line error naming the UNet."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    (models / "audio" / "unet" / "config.json").write_text('{"in_channels": 4,')
    out = tmp_path / "out"
    assert_user_error(run_main(capsys, *generate_args(models, out, *SMALL)), "audio", "UNet", "config.json")
    assert not out.exists()


@pytest.fixture()
def malicious_models(tiny_models: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny models whose audio UNet pickle would create a marker file when unpickled unsafely."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    marker = tmp_path / "MARKER"
    write_malicious_pickle(models / "audio" / "unet" / "diffusion_pytorch_model.bin", marker)
    return models, marker


def test_generate_refuses_malicious_pickle(
    malicious_models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pickle that runs code when loaded is never executed: exit 2, one line naming the weights, no marker."""
    models, marker = malicious_models
    out = tmp_path / "out"
    outcome = run_main(capsys, *generate_args(models, out, *SMALL))
    assert_user_error(outcome, "audio", "UNet")
    assert not marker.exists()
    assert not out.exists()


def test_generate_malicious_pickle_message_says_refused(
    malicious_models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error for a code-running pickle says it was refused and points at `imgsound convert`."""
    models, marker = malicious_models
    outcome = run_main(capsys, *generate_args(models, tmp_path / "out", *SMALL))
    assert not marker.exists()
    assert_user_error(outcome, "refused", "imgsound convert")


def test_generate_keeps_existing_samples_unless_overwrite(
    tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing sample folder is left byte-identical (exit 2); --overwrite replaces it with a complete sample."""
    out = tmp_path / "out"
    (out / "sample_000").mkdir(parents=True)
    (out / "sample_000" / "audio.wav").write_bytes(b"an earlier take")
    (out / "sample_000" / "notes.txt").write_text("keep me")
    before = tree_digest(out)
    assert_user_error(run_main(capsys, *generate_args(tiny_models, out, *SMALL)), "sample_000", "--overwrite")
    assert tree_digest(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["sample_000"]

    outcome = run_main(capsys, *generate_args(tiny_models, out, *SMALL, "--overwrite"))
    assert outcome.code == 0, outcome.err
    assert sorted(p.name for p in out.iterdir()) == ["sample_000"]
    assert {p.name for p in (out / "sample_000").iterdir()} == ARTIFACTS
    assert soundfile.info(out / "sample_000" / "audio.wav").frames == 256 * HOP


def test_generate_out_is_a_file(tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out naming an existing file is refused, and the file is untouched."""
    out = tmp_path / "out"
    out.write_text("not a folder")
    assert_user_error(run_main(capsys, *generate_args(tiny_models, out, *SMALL)), "--out", "not a folder")
    assert out.read_text() == "not a folder"


# --- tiny-models --------------------------------------------------------------------------------------------------


def test_tiny_models_are_deterministic_and_load_as_a_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same seed writes byte-identical trees, another seed other weights; diffusers loads and runs the image
    model as a StableDiffusionPipeline without a safety checker."""
    for name, seed in (("first", "3"), ("again", "3"), ("other", "4")):
        outcome = run_main(capsys, "tiny-models", tmp_path / name, "--seed", seed)
        assert outcome.code == 0, outcome.err
    first, again, other = (tree_digest(tmp_path / name) for name in ("first", "again", "other"))
    assert first == again
    assert {"image/unet/diffusion_pytorch_model.safetensors", "audio/unet/diffusion_pytorch_model.bin"} <= set(first)
    assert {"audio/vocoder/config.json", "audio/vocoder/vocoder.pt", "image/model_index.json"} <= set(first)
    assert set(other) == set(first)
    weights = [name for name in first if name.endswith((".safetensors", ".bin", ".pt"))]
    assert all(first[name] != other[name] for name in weights)

    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "first" / "image")
    assert pipeline.safety_checker is None
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline("a cat", num_inference_steps=1, height=64, width=64, output_type="np").images
    assert images.shape == (1, 64, 64, 3)


# --- convert ------------------------------------------------------------------------------------------------------


def test_convert_pickled_unet(tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`convert` writes unet/diffusion_pytorch_model.safetensors with the pickle's exact tensors, once."""
    from safetensors.torch import load_file

    model = tmp_path / "audio"
    shutil.copytree(tiny_models / "audio", model)
    pickle_path = model / "unet" / "diffusion_pytorch_model.bin"
    converted = model / "unet" / "diffusion_pytorch_model.safetensors"
    assert not converted.exists()

    outcome = run_main(capsys, "convert", model)
    assert outcome.code == 0, outcome.err
    assert "tensors" in outcome.out
    original = torch.load(pickle_path, map_location="cpu", weights_only=True)
    copy = load_file(converted)
    assert copy.keys() == original.keys()
    assert all(torch.equal(copy[name], original[name]) for name in original)
    first_bytes = converted.read_bytes()

    outcome = run_main(capsys, "convert", model)
    assert outcome.code == 0, outcome.err
    assert "already converted" in outcome.out
    assert converted.read_bytes() == first_bytes


def test_convert_refuses_malicious_pickle(
    tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A code-running pickle is refused without running it, and no safetensors file appears."""
    model = tmp_path / "audio"
    shutil.copytree(tiny_models / "audio", model)
    marker = tmp_path / "MARKER"
    write_malicious_pickle(model / "unet" / "diffusion_pytorch_model.bin", marker)
    assert_user_error(run_main(capsys, "convert", model), "refused")
    assert not marker.exists()
    assert not (model / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_convert_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder that does not exist is a one-line error."""
    assert_user_error(run_main(capsys, "convert", tmp_path / "nowhere"), "not a folder")


# --- image-to-audio -----------------------------------------------------------------------------------------------


def write_line_picture(path: Path, row: int, height: int = 100, width: int = 30) -> Path:
    """A black picture with one bright horizontal line (3 rows thick) starting at `row`."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[row : row + 3] = 255
    Image.fromarray(pixels, mode="L").save(path)
    return path


def test_image_to_audio_pitch_follows_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A line near the top plays high, near the bottom low; the length keeps the aspect ratio at 256 rows."""
    centroids = {}
    for name, row in (("high", 6), ("low", 90)):
        picture = write_line_picture(tmp_path / f"{name}.png", row)
        out = tmp_path / f"{name}.wav"
        outcome = run_main(capsys, "image-to-audio", picture, out)
        assert outcome.code == 0, outcome.err
        samples, rate = read_wav(out)
        # 30 columns at 100 rows → round(30 · 256 / 100) = 77 columns of 160 samples.
        assert (rate, samples.shape) == (SAMPLE_RATE_HZ, (77 * HOP,))
        centroids[name] = spectral_centroid_hz(samples, rate)
    assert centroids["high"] > 4000, centroids
    assert centroids["low"] < 1500, centroids


def test_image_to_audio_seconds_with_hifigan(
    tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--seconds 2` gives 32000 samples whatever the picture; the HiFi-GAN vocoder loads from --audio-model."""
    picture = write_line_picture(tmp_path / "line.png", 40)
    out = tmp_path / "out.wav"
    args = ("--seconds", "2", "--vocoder", "hifigan", "--audio-model", tiny_models / "audio")
    outcome = run_main(capsys, "image-to-audio", picture, out, *args)
    assert outcome.code == 0, outcome.err
    samples, rate = read_wav(out)
    assert (rate, samples.shape) == (SAMPLE_RATE_HZ, (32000,))
    assert np.abs(samples).max() > 0


@pytest.mark.parametrize(
    ("picture_bytes", "out_name", "extra", "words"),
    [
        pytest.param(b"this is not a picture", "out.wav", (), ("not a picture",), id="unreadable-picture"),
        pytest.param(None, "out.mp3", (), (".wav",), id="not-wav-output"),
        pytest.param(None, "out.wav", ("--seconds", "0"), ("--seconds",), id="zero-seconds"),
    ],
)
def test_image_to_audio_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    picture_bytes: bytes | None,
    out_name: str,
    extra: tuple[str, ...],
    words: tuple[str, ...],
) -> None:
    """Bad pictures, outputs or durations are one-line errors and write nothing."""
    picture = tmp_path / "picture.png"
    if picture_bytes is None:
        write_line_picture(picture, 10)
    else:
        picture.write_bytes(picture_bytes)
    out = tmp_path / out_name
    assert_user_error(run_main(capsys, "image-to-audio", picture, out, *extra), *words)
    assert not out.exists()


def test_image_to_audio_missing_picture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A picture path that does not exist is a one-line error."""
    assert_user_error(run_main(capsys, "image-to-audio", tmp_path / "none.png", tmp_path / "o.wav"), "none.png")


# --- audio-to-spectrogram -----------------------------------------------------------------------------------------


def spectrogram_of(
    capsys: pytest.CaptureFixture[str], wav: Path, tmp_path: Path, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Run audio-to-spectrogram; return the PNG's pixels and the .npy array."""
    png, npy = tmp_path / f"{name}.png", tmp_path / f"{name}.npy"
    outcome = run_main(capsys, "audio-to-spectrogram", wav, png, "--npy", npy)
    assert outcome.code == 0, outcome.err
    with Image.open(png) as picture:
        assert picture.mode == "L"
        pixels = np.asarray(picture)
    return pixels, read_npy(npy)


def test_audio_to_spectrogram(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """1 s at 16 kHz → 256×100; 1.5 s of 44.1 kHz stereo is resampled (150 columns) and keeps its pitch."""
    low_wav, high_wav = tmp_path / "low.wav", tmp_path / "high.wav"
    soundfile.write(low_wav, tone(1000, 1.0, SAMPLE_RATE_HZ), SAMPLE_RATE_HZ)
    soundfile.write(high_wav, tone(6000, 1.5, 44100, channels=2), 44100)

    low_png, low = spectrogram_of(capsys, low_wav, tmp_path, "low")
    assert low_png.shape == (256, 100)
    assert low.dtype == np.float32 and low.shape == (256, 100)
    assert 0.0 <= low.min() and low.max() <= 1.0
    assert np.abs(low_png.astype(np.float32) - low * 255).max() <= 0.5 + 1e-3

    high_png, high = spectrogram_of(capsys, high_wav, tmp_path, "high")
    assert high_png.shape == (256, 150) and high.shape == (256, 150)
    # Row 0 is the highest band: the 6 kHz tone peaks far above the 1 kHz one.
    low_row, high_row = int(low.mean(axis=1).argmax()), int(high.mean(axis=1).argmax())
    assert high_row < 64 < 128 < low_row, (high_row, low_row)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param(b"RIFF but not really a sound file", ("not a sound file",), id="not-audio"),
        pytest.param(None, ("shorter",), id="too-short"),
    ],
)
def test_audio_to_spectrogram_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, words: tuple[str, ...]
) -> None:
    """Unreadable or too-short audio is a one-line error and writes nothing."""
    wav = tmp_path / "in.wav"
    if content is None:
        soundfile.write(wav, tone(440, 0.005, SAMPLE_RATE_HZ), SAMPLE_RATE_HZ)
    else:
        wav.write_bytes(content)
    png, npy = tmp_path / "out.png", tmp_path / "out.npy"
    assert_user_error(run_main(capsys, "audio-to-spectrogram", wav, png, "--npy", npy), *words)
    assert not png.exists() and not npy.exists()


# --- download -----------------------------------------------------------------------------------------------------


def test_download_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, `download` ends with exit 2 and one error sentence, and creates no model folders."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = tmp_path / "models"
    outcome = run_main(capsys, "download", target)
    assert outcome.code == 2, outcome
    assert "Traceback" not in outcome.err
    errors = [line for line in outcome.err.splitlines() if line.startswith("imgsound: error: ")]
    assert len(errors) == 1 and outcome.err.strip().splitlines()[-1] == errors[0], outcome.err
    assert "HF_HUB_OFFLINE" in errors[0]
    assert not (target / "image").exists() and not (target / "audio").exists()


SD15_REPO_FILES = [
    ".gitattributes",
    "README.md",
    "feature_extractor/preprocessor_config.json",
    "model_index.json",
    "safety_checker/config.json",
    "safety_checker/model.fp16.safetensors",
    "safety_checker/model.safetensors",
    "safety_checker/pytorch_model.bin",
    "safety_checker/pytorch_model.fp16.bin",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin",
    "text_encoder/pytorch_model.fp16.bin",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.bin",
    "unet/diffusion_pytorch_model.non_ema.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "v1-5-pruned-emaonly.ckpt",
    "v1-5-pruned-emaonly.safetensors",
    "v1-5-pruned.ckpt",
    "v1-5-pruned.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.fp16.bin",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
]

AUFFUSION_REPO_FILES = [
    ".gitattributes",
    "README.md",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.bin",
    "vae/config.json",
    "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.safetensors",
    "vocoder/config.json",
    "vocoder/vocoder.pt",
]

TOKENIZER_FILES = [
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
]


def test_select_files_stable_diffusion() -> None:
    """From the SD-1.5 repo: configs, tokenizer and one safetensors per component; no checkpoints, variants or
    safety checker."""
    chosen = select_files(SD15_REPO_FILES)
    assert chosen == sorted(
        [
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            *TOKENIZER_FILES,
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
        ]
    )
    assert not any(name.endswith(".ckpt") or "fp16" in name or "non_ema" in name for name in chosen)


def test_select_files_auffusion() -> None:
    """From an Auffusion-like repo: the pickled UNet (its only form), safetensors where published, the vocoder."""
    chosen = select_files(AUFFUSION_REPO_FILES)
    assert chosen == sorted(
        [
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/pytorch_model.bin",
            *TOKENIZER_FILES,
            "unet/config.json",
            "unet/diffusion_pytorch_model.bin",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "vocoder/config.json",
            "vocoder/vocoder.pt",
        ]
    )


# --- output locations, overwrite, modes ------------------------------------------------------------------------------

ONE_STEP = ("--steps", "1", "--image-start-step", "0", "--height", "64", "--width", "64", "--vocoder", "griffinlim")


def test_an_unwritable_out_is_refused_before_any_model_loads(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    # the models do not exist: the complaint must be about --out, which is checked first
    args = generate_args(tmp_path / "no-models", tmp_path / "a-file" / "out", *ONE_STEP)
    assert_user_error(run_main(capsys, *args), "--out", "is a file, not a folder")
    args = generate_args(tmp_path / "no-models", tmp_path / "a-file", *ONE_STEP)
    assert_user_error(run_main(capsys, *args), "--out", "is not a folder")


def test_overwrite_replaces_the_whole_result_set(tiny_models, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(capsys, *generate_args(tiny_models, out, *ONE_STEP, "--num-samples", "3")).code == 0
    assert sorted(p.name for p in out.iterdir()) == ["sample_000", "sample_001", "sample_002"]
    (out / "notes.txt").write_text("mine")  # not a sample folder: kept
    outcome = run_main(capsys, *generate_args(tiny_models, out, *ONE_STEP, "--seed", "9", "--overwrite"))
    assert outcome.code == 0, outcome.err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "sample_000"]
    assert json.loads((out / "sample_000" / "sample.json").read_text())["seed"] == 9


def test_files_and_folders_get_the_umask_modes(tiny_models, tmp_path, capsys):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        out = tmp_path / "out"
        assert run_main(capsys, *generate_args(tiny_models, out, *ONE_STEP)).code == 0
        assert run_main(capsys, "cycle-check", out).code == 0  # rewrites sample.json
        folder = out / "sample_000"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}
        wav = tmp_path / "again.wav"
        assert run_main(capsys, "image-to-audio", folder / "spectrogram.png", wav).code == 0
        assert stat.S_IMODE(wav.stat().st_mode) == 0o644
        os.umask(0o077)
        assert run_main(capsys, "audio-to-spectrogram", folder / "audio.wav", tmp_path / "private.png").code == 0
        assert stat.S_IMODE((tmp_path / "private.png").stat().st_mode) == 0o600  # the umask decides, both ways
    finally:
        os.umask(previous)


def test_spectrogram_commands_refuse_to_overwrite_without_the_flag(tiny_models, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(capsys, *generate_args(tiny_models, out, *ONE_STEP)).code == 0
    wav, png = tmp_path / "replay.wav", tmp_path / "replay.png"
    wav.write_bytes(b"precious")
    png.write_bytes(b"precious")
    assert_user_error(
        run_main(capsys, "image-to-audio", out / "sample_000" / "spectrogram.png", wav), "already exists", "--overwrite"
    )
    assert_user_error(
        run_main(capsys, "audio-to-spectrogram", out / "sample_000" / "audio.wav", png), "already exists", "--overwrite"
    )
    assert wav.read_bytes() == b"precious" and png.read_bytes() == b"precious"
    assert run_main(capsys, "image-to-audio", out / "sample_000" / "spectrogram.png", wav, "--overwrite").code == 0
    assert run_main(capsys, "audio-to-spectrogram", out / "sample_000" / "audio.wav", png, "--overwrite").code == 0
    assert wav.read_bytes()[:4] == b"RIFF" and png.read_bytes()[:4] == b"\x89PNG"


def test_version_and_torch_dtype_names(tiny_models, tmp_path, capsys):
    from imgsound_core import __version__

    outcome = run_main(capsys, "--version")
    assert outcome.code == 0 and outcome.out.strip() == f"imgsound {__version__}"
    out = tmp_path / "out"
    assert run_main(capsys, *generate_args(tiny_models, out, *ONE_STEP, "--dtype", "float32")).code == 0
    record = json.loads((out / "sample_000" / "sample.json").read_text())
    assert record["dtype"] == "fp32"  # the same id as --dtype fp32
    outcome = run_main(capsys, *generate_args(tiny_models, tmp_path / "x", *ONE_STEP, "--dtype", "float64"))
    assert outcome.code == 2 and "float64" in outcome.err


def test_help_texts_say_what_each_command_writes_and_uses(capsys):
    tiny = run_main(capsys, "tiny-models", "--help").out
    for folder in ("DIR/image", "DIR/audio", "DIR/clip", "DIR/clap", "DIR/if-stage-1", "DIR/if-stage-2"):
        assert folder in " ".join(tiny.split()), folder
    score = "".join(run_main(capsys, "score", "--help").out.split())  # argparse may wrap at a hyphen
    assert "openai/clip-vit-base-patch16" in score and "laion/clap-htsat-unfused" in score and "[cpu]" in score
    assert "safetensors" in run_main(capsys, "convert", "--help").out
    for command in ("imprint", "sds"):
        assert "griffinlim (no weights)" in " ".join(run_main(capsys, command, "--help").out.split())
    download = run_main(capsys, "download", "--help").out
    assert "--device" not in download and "--dtype" not in download


def test_a_prompt_longer_than_the_text_encoder_reads_is_reported_once(tiny_models, tmp_path, capsys):
    long_prompt = " ".join(["castle"] * 100)  # one token a word, plus the start and end markers
    out = tmp_path / "out"
    outcome = run_main(
        capsys, *generate_args(tiny_models, out, *ONE_STEP, "--image-prompt", long_prompt, "--num-samples", "2")
    )
    assert outcome.code == 0, outcome.err
    warnings = [line for line in outcome.err.splitlines() if line.startswith("imgsound: warning:")]
    from transformers import CLIPTokenizer

    tokens = len(CLIPTokenizer.from_pretrained(tiny_models / "image" / "tokenizer")(long_prompt).input_ids)
    assert tokens > 77
    assert len(warnings) == 1 and f"--image-prompt is {tokens} tokens long" in warnings[0]
    assert f"reads 77: the last {tokens - 77} are ignored" in warnings[0]
    for index in range(2):
        record = json.loads((out / f"sample_{index:03d}" / "sample.json").read_text())
        assert record["prompt_tokens_dropped"] == {"image_prompt": tokens - 77}
    short = run_main(capsys, *generate_args(tiny_models, tmp_path / "short", *ONE_STEP))
    assert "warning" not in short.err
    assert "prompt_tokens_dropped" not in json.loads((tmp_path / "short" / "sample_000" / "sample.json").read_text())


def test_progress_covers_decoding_and_writing_on_a_terminal(tiny_models, tmp_path):
    """On a terminal (a pseudo-terminal here) a second bar follows decoding, vocoding and writing, sample by
    sample, after the denoising bar."""
    import shlex
    import shutil
    import subprocess
    import sys

    if shutil.which("script") is None:
        pytest.skip("util-linux `script` (a pseudo-terminal) is not installed")
    command = [
        sys.executable,
        "-m",
        "imgsound_core.cli",
        *map(str, generate_args(tiny_models, tmp_path / "o", *ONE_STEP)),
    ]
    done = subprocess.run(
        # a pseudo-terminal of 120 columns (without a size, tqdm draws bars of width 0)
        [
            "script",
            "-qec",
            "stty cols 120 rows 40; " + shlex.join([*command, "--num-samples", "2", "--video"]),
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "denoising" in done.stdout and "decoding, vocoding, writing, video" in done.stdout
    assert "2/2" in done.stdout


def test_resume_keeps_finished_samples_and_makes_the_rest(tiny_models, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    args = generate_args(tiny_models, out, *ONE_STEP, "--num-samples", "3")
    assert run_main(capsys, *args).code == 0
    before = {name: tree_digest(out / name) for name in ("sample_000", "sample_002")}
    kept_mtime = (out / "sample_000" / "image.png").stat().st_mtime_ns
    expected = read_npy(out / "sample_001" / "spectrogram.npy")
    expected_id = json.loads((out / "sample_001" / "sample.json").read_text())["sample_id"]
    shutil.rmtree(out / "sample_001")  # as if the run had been interrupted there

    refused = run_main(capsys, *args)
    assert_user_error(refused, "already exists", "--resume", "--overwrite")
    outcome = run_main(capsys, *args, "--resume")
    assert outcome.code == 0, outcome.err
    assert "2 of 3 samples are finished and kept" in outcome.err
    assert (out / "sample_000" / "image.png").stat().st_mtime_ns == kept_mtime  # not made again
    assert {name: tree_digest(out / name) for name in ("sample_000", "sample_002")} == before
    # the same sample the first run made (alone now, not in a batch of 3: equal to float round-off, same id)
    assert np.abs(read_npy(out / "sample_001" / "spectrogram.npy") - expected).max() < 1e-4
    assert json.loads((out / "sample_001" / "sample.json").read_text())["sample_id"] == expected_id
    again = run_main(capsys, *args, "--resume")
    assert again.code == 0 and "3 of 3" in again.err  # nothing left to do

    other = run_main(
        capsys, *generate_args(tiny_models, out, *ONE_STEP, "--num-samples", "3", "--seed", "5"), "--resume"
    )
    assert_user_error(other, "holds another sample", "--overwrite")
    assert_user_error(run_main(capsys, *args, "--resume", "--overwrite"), "--resume", "--overwrite")
