"""Tests for the provenance inside the files: PNG text chunks and WAV RIFF INFO written by `render_artifacts` and
`imgsound generate`, read back by our reader and by other readers (Pillow, soundfile, the `wave` module, ffmpeg);
`imgsound info`; `image-to-audio` honouring (or refusing) the mel settings a PNG carries; bad files.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import wave
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from imgsound_core import provenance
from imgsound_core.artifacts import png_bytes, render_artifacts, wav_bytes
from imgsound_core.cli import main
from tests.cli_helpers import assert_user_error, run_main

PROMPTS = {"image_prompt": "a château at dusk, grayscale", "audio_prompt": "bells ringing — 鐘の音"}
WIDTH, CROPPED_WIDTH, HEIGHT = 256, 224, 64


def record(**updates) -> dict:
    """A sample record as the CLI writes it, with the fields that must stay out of the files (clock, timings)."""
    return {
        **PROMPTS,
        "image_negative": "blurry",
        "audio_negative": "",
        "steps": 7,
        "image_guidance": 7.5,
        "audio_guidance": 9.0,
        "image_start_step": 2,
        "audio_start_step": 0,
        "audio_weight": 0.4,
        "seed": 1234,
        "height": 32,
        "width": 200,
        "sample_id": "0123456789abcdef",
        "image_model": {"id": "org/image@abc", "hub_id": "org/image", "revision": "abc", "dtype": "fp16"},
        "audio_model": {"id": "sha256:0f", "hub_id": None, "revision": None, "fingerprint": "0f", "dtype": "fp16"},
        "device": "cuda",
        "vocoder": "hifigan",
        "dtype": "fp16",
        "timings_s": {"denoise": 1.25},
        "created_utc": "2026-01-01T00:00:00+00:00",
        **updates,
    }


def artifacts_of(rec: dict, seed: int = 0, crop: bool = True) -> dict[str, bytes]:
    generator = torch.Generator().manual_seed(seed)
    image, spectrogram = torch.rand(3, 32, 200, generator=generator), torch.rand(32, 200, generator=generator)
    waveform = torch.rand(200 * 160, generator=generator) * 0.2 - 0.1
    return render_artifacts(image, spectrogram, waveform, rec, crop=crop)


@pytest.fixture(scope="module")
def generated(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cropped tiny sample folder written by `imgsound generate`."""
    out = tmp_path_factory.mktemp("provenance") / "run"
    code = main(
        [
            "generate",
            *("--image-prompt", PROMPTS["image_prompt"], "--audio-prompt", PROMPTS["audio_prompt"]),
            *("--image-model", str(tiny_models / "image"), "--audio-model", str(tiny_models / "audio")),
            *("--steps", "2", "--image-start-step", "1", "--height", str(HEIGHT), "--width", str(WIDTH)),
            *("--seed", "42", "--crop", "--vocoder", "griffinlim", "--out", str(out)),
        ]
    )
    assert code == 0
    return out / "sample_000"


# --- PNG ------------------------------------------------------------------------------------------------------------


def test_png_text_chunks_round_trip() -> None:
    """Both PNGs carry the reproducible record (request, sample id, models, vocoder, crop, mel settings) as an
    `imgsound` JSON chunk plus Title/Description/Software/Source, readable by Pillow and by our reader; timings, the
    clock and local paths stay out; the pixels are unchanged."""
    rec = record()
    artifacts = artifacts_of(rec)
    for name, mode in (("image.png", "RGB"), ("spectrogram.png", "L")):
        with Image.open(io.BytesIO(artifacts[name])) as picture:
            picture.load()
            assert (picture.mode, picture.size) == (mode, (168, 32))
            text = dict(picture.text)
        assert text == provenance.read_png_text(artifacts[name])
        stored = json.loads(text["imgsound"])
        assert stored["artifact"] == name and stored["format"] == provenance.FORMAT
        assert stored["request"] == {key: rec[key] for key in provenance.REQUEST_KEYS}
        assert stored["sample_id"] == rec["sample_id"] and stored["vocoder"] == "hifigan"
        assert stored["crop_columns"] == 32 and stored["audio_samples"] == 168 * 160
        assert stored["models"]["image"] == {
            "id": "org/image@abc",
            "hub_id": "org/image",
            "revision": "abc",
            "dtype": "fp16",
        }
        assert stored["mel"] == provenance.mel_settings()
        assert stored["mel"]["hop_length"] == 160 and stored["mel"]["n_mels"] == 256
        assert "timings_s" not in stored and "created_utc" not in stored and "device" not in stored
        assert (
            text["Description"] == f"Image prompt: {PROMPTS['image_prompt']}\nAudio prompt: {PROMPTS['audio_prompt']}"
        )
        assert text["Title"] == "imgsound sample 0123456789abcdef"
        assert text["Software"].startswith("imgsound ") and "org/image" in text["Source"]
    plain = png_bytes(torch.rand(8, 8))
    assert provenance.read_png_text(plain) == {}


def test_files_are_the_same_bytes_whatever_the_clock() -> None:
    """Two renders of one sample that differ only in timings and timestamps give identical PNGs and WAVs; another
    prompt gives other bytes."""
    first = artifacts_of(record())
    again = artifacts_of(record(timings_s={"denoise": 99.0}, created_utc="2030-05-05T00:00:00+00:00"))
    other = artifacts_of(record(audio_prompt="a dog barking"))
    for name in ("image.png", "spectrogram.png", "audio.wav"):
        assert first[name] == again[name], name
        assert first[name] != other[name], name


# --- WAV ------------------------------------------------------------------------------------------------------------


def riff_chunk_ids(data: bytes) -> list[bytes]:
    ids, offset = [], 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        ids.append(chunk_id)
        offset += 8 + size + (size & 1)
    return ids


def test_wav_info_round_trip_and_other_readers(tmp_path: Path) -> None:
    """audio.wav holds a LIST/INFO chunk after its data (INAM audio prompt, ISBJ image prompt, ICMT the JSON, ISFT);
    soundfile, the `wave` module and ffmpeg still read the same samples, and soundfile and ffmpeg see the title."""
    rec = record()
    data = artifacts_of(rec)["audio.wav"]
    waveform = np.sin(np.arange(168 * 160) / 7.0).astype(np.float32) * 0.3
    bare_wav = wav_bytes(waveform)
    assert riff_chunk_ids(bare_wav) == [b"fmt ", b"data"]
    assert riff_chunk_ids(data) == [b"fmt ", b"data", b"LIST"]
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    info = provenance.read_wav_info(data)
    assert info["INAM"] == PROMPTS["audio_prompt"] and info["ISBJ"] == PROMPTS["image_prompt"]
    assert info["ISFT"] == provenance.SOFTWARE
    stored = json.loads(info["ICMT"])
    assert stored["artifact"] == "audio.wav" and stored["sample_id"] == rec["sample_id"]
    assert stored["request"]["seed"] == 1234 and stored["mel"]["sample_rate_hz"] == 16000

    data = wav_bytes(waveform, info=info)  # the same INFO over known samples, to compare readers against
    bare, _ = soundfile.read(io.BytesIO(bare_wav), dtype="int16")
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert rate == 16000 and samples.shape == (168 * 160,) and np.array_equal(samples, bare)
    with soundfile.SoundFile(io.BytesIO(data)) as sound:
        assert sound.title == PROMPTS["audio_prompt"]
        assert sound.software == provenance.SOFTWARE
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getframerate(), reader.getnframes(), reader.getsampwidth()) == (16000, 168 * 160, 2)
        assert np.array_equal(np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2"), samples)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    decoded = subprocess.run(
        [ffmpeg, "-v", "error", "-i", "-", "-f", "s16le", "-"], input=data, capture_output=True, check=True
    ).stdout
    assert np.array_equal(np.frombuffer(decoded, dtype="<i2"), samples)
    (tmp_path / "audio.wav").write_bytes(data)  # a file: ffmpeg seeks to the INFO chunk after the data
    described = subprocess.run([ffmpeg, "-hide_banner", "-i", tmp_path / "audio.wav"], capture_output=True).stderr
    assert f"title           : {PROMPTS['audio_prompt']}" in described.decode("utf-8")


def test_with_wav_info_replaces_and_pads() -> None:
    """Adding INFO twice leaves one INFO chunk (the new one); odd-length values are padded so the file stays valid."""
    base = wav_bytes(np.zeros(1601, dtype=np.float32))
    once = provenance.with_wav_info(base, {"INAM": "odd", "ICMT": "even"})
    twice = provenance.with_wav_info(once, {"INAM": "new title"})
    assert riff_chunk_ids(twice).count(b"LIST") == 1
    assert provenance.read_wav_info(twice) == {"INAM": "new title"}
    assert provenance.read_wav_info(once) == {"INAM": "odd", "ICMT": "even"}
    assert len(once) % 2 == 0 and soundfile.info(io.BytesIO(once)).frames == 1601


# --- the command line -----------------------------------------------------------------------------------------------


def test_generate_writes_provenance_and_info_prints_it(generated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Generated files carry the sample's parameters (matching sample.json); `imgsound info` prints them for people
    and as JSON."""
    sample_json = json.loads((generated / "sample.json").read_text())
    files = [generated / name for name in ("image.png", "spectrogram.png", "audio.wav")]
    outcome = run_main(capsys, "info", *files)
    assert outcome.code == 0, outcome.err
    for path in files:
        assert f"{path}: {path.suffix[1:].upper()}, imgsound metadata ({provenance.FORMAT})" in outcome.out
    assert outcome.out.count(sample_json["sample_id"]) >= 3
    assert f"INAM (title)      {PROMPTS['audio_prompt']}" in outcome.out
    assert "seed              42" in outcome.out and "16000 Hz, n_fft 2048, hop 160" in outcome.out

    outcome = run_main(capsys, "info", "--json", *files)
    assert outcome.code == 0, outcome.err
    entries = json.loads(outcome.out)
    assert [entry["format"] for entry in entries] == ["png", "png", "wav"]
    for entry in entries:
        stored = entry["imgsound"]
        assert stored["sample_id"] == sample_json["sample_id"]
        assert stored["request"] == {key: sample_json[key] for key in provenance.REQUEST_KEYS}
        assert stored["vocoder"] == "griffinlim" and stored["crop_columns"] == 32
        assert stored["models"]["image"]["id"] == sample_json["image_model"]["id"]


def test_info_on_a_plain_picture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A PNG that imgsound did not write is not an error: its own text chunks are shown, and no imgsound metadata."""
    picture = tmp_path / "plain.png"
    picture.write_bytes(png_bytes(torch.rand(8, 8), {"Author": "someone"}))
    outcome = run_main(capsys, "info", picture)
    assert outcome.code == 0, outcome.err
    assert "PNG, no imgsound metadata" in outcome.out and "Author  someone" in outcome.out
    entry = json.loads(run_main(capsys, "info", "--json", picture).out)[0]
    assert entry["imgsound"] is None and entry["text"] == {"Author": "someone"}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param(None, ("cannot be read",), id="missing"),
        pytest.param(b"hello, world", ("neither a PNG, a WAV nor an MP4",), id="text-file"),
        pytest.param("truncated-png", ("damaged PNG",), id="truncated-png"),
        pytest.param("truncated-wav", ("damaged WAV",), id="truncated-wav"),
        pytest.param("bad-json", ("not valid JSON",), id="bad-imgsound-json"),
        pytest.param("broken-mp4", ("not a video ffmpeg can read",), id="broken-mp4"),
    ],
)
def test_info_bad_files_are_one_sentence(
    generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content, words: tuple[str, ...]
) -> None:
    path = tmp_path / "file"
    if content == "broken-mp4":
        path.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64)
    elif content == "truncated-png":
        path.write_bytes((generated / "spectrogram.png").read_bytes()[:300])
    elif content == "truncated-wav":
        path.write_bytes((generated / "audio.wav").read_bytes()[:-100])
    elif content == "bad-json":
        path.write_bytes(png_bytes(torch.rand(8, 8), {"imgsound": "{oops"}))
    elif content is not None:
        path.write_bytes(content)
    assert_user_error(run_main(capsys, "info", path), *words)


# --- image-to-audio and stored mel settings -------------------------------------------------------------------------


def picture_with_settings(path: Path, pixels: np.ndarray, **mel_updates) -> Path:
    """A grey PNG whose imgsound metadata has the current mel settings with `mel_updates` applied."""
    stored = provenance.sample_provenance(record())
    stored["mel"] = {**stored["mel"], **mel_updates}
    path.write_bytes(png_bytes(torch.from_numpy(pixels), provenance.png_text(stored, "spectrogram.png")))
    return path


def test_image_to_audio_uses_the_stored_mel_settings(
    generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a generated spectrogram.png, one pixel column is one 10 ms column (224 columns → the sample's own 2.24 s,
    not the aspect-ratio default), and the command says it used the stored settings; the same pixels without
    metadata fall back to the defaults."""
    out = tmp_path / "from-png.wav"
    outcome = run_main(capsys, "image-to-audio", generated / "spectrogram.png", out)
    assert outcome.code == 0, outcome.err
    assert "using the mel settings stored in" in outcome.err and "hop 160" in outcome.err
    samples, rate = soundfile.read(out, dtype="float32")
    assert (rate, samples.shape) == (16000, (CROPPED_WIDTH * 160,))
    assert samples.shape[0] == soundfile.info(generated / "audio.wav").frames

    plain = tmp_path / "plain.png"
    with Image.open(generated / "spectrogram.png") as picture:
        picture.convert("L").save(plain)  # pixels only
    outcome = run_main(capsys, "image-to-audio", plain, tmp_path / "plain.wav")
    assert outcome.code == 0 and "mel settings" not in outcome.err
    aspect_columns = round(CROPPED_WIDTH * 256 / HEIGHT)
    assert soundfile.info(tmp_path / "plain.wav").frames == aspect_columns * 160


def test_image_to_audio_honours_a_stored_log_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A PNG normalised over a wider log range (ceiling 2000 instead of 200) means louder sound for the same pixels;
    with this version's range it plays exactly like a plain picture."""
    pixels = np.full((64, 50), 0.3, dtype=np.float32)  # quiet enough that neither version clips
    pixels[20:24] = 0.5
    levels = {}
    for name, updates in (("ours", {}), ("wider", {"mel_ceiling": 2000.0})):
        picture = picture_with_settings(tmp_path / f"{name}.png", pixels, **updates)
        out = tmp_path / f"{name}.wav"
        assert run_main(capsys, "image-to-audio", picture, out, "--seconds", "0.5").code == 0
        levels[name] = float(np.sqrt(np.mean(soundfile.read(out, dtype="float32")[0] ** 2)))
    plain = tmp_path / "plain.png"
    plain.write_bytes(png_bytes(torch.from_numpy(pixels)))
    assert run_main(capsys, "image-to-audio", plain, tmp_path / "plain.wav", "--seconds", "0.5").code == 0
    plain_samples = soundfile.read(tmp_path / "plain.wav", dtype="float32")[0]
    assert np.allclose(soundfile.read(tmp_path / "ours.wav", dtype="float32")[0], plain_samples, atol=1e-4)
    assert levels["wider"] < 0.5 and levels["wider"] > 2 * levels["ours"], levels  # pixels 0.3–0.5: ×2 to ×3.2


@pytest.mark.parametrize(
    ("updates", "words"),
    [
        pytest.param({"hop_length": 256}, ("hop_length 256", "cannot play"), id="other-hop"),
        pytest.param({"sample_rate_hz": 22050}, ("sample_rate_hz",), id="other-rate"),
        pytest.param({"representation": "linear-stft"}, ("representation",), id="other-representation"),
        pytest.param({"mel_floor": -1.0}, ("log-mel range",), id="bad-range"),
        pytest.param({"format": "imgsound.provenance/2"}, ("imgsound.provenance/2",), id="newer-format"),
    ],
)
def test_image_to_audio_refuses_settings_it_cannot_honour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], updates: dict, words: tuple[str, ...]
) -> None:
    """Mel settings this version cannot play (another STFT geometry, rate or representation, a broken range, a newer
    metadata format) are one sentence and no output."""
    pixels = np.random.default_rng(0).random((64, 40)).astype(np.float32)
    path = tmp_path / "foreign.png"
    if "format" in updates:
        stored = {**provenance.sample_provenance(record()), **updates}
        path.write_bytes(png_bytes(torch.from_numpy(pixels), {"imgsound": json.dumps(stored)}))
    else:
        picture_with_settings(path, pixels, **updates)
    out = tmp_path / "out.wav"
    assert_user_error(run_main(capsys, "image-to-audio", path, out), *words)
    assert not out.exists()


def test_info_reads_a_videos_provenance(tiny_models, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["generate", "--image-model", tiny_models / "image", "--audio-model", tiny_models / "audio", "--steps", "1"]
    args += ["--image-prompt", "castle = towers; #1", "--audio-prompt", "bells", "--height", "64", "--width", "128"]
    assert run_main(capsys, *args, "--vocoder", "griffinlim", "--video", "--out", out).code == 0
    record = json.loads((out / "sample_000" / "sample.json").read_text())
    outcome = run_main(capsys, "info", "--json", out / "sample_000" / "video.mp4")
    assert outcome.code == 0, outcome.err
    entry = json.loads(outcome.out)[0]
    assert entry["format"] == "mp4" and entry["imgsound"]["sample_id"] == record["sample_id"]
    assert entry["imgsound"]["request"]["image_prompt"] == "castle = towers; #1"  # ffmetadata's escapes undone
    assert entry["imgsound"]["artifact"] == "video.mp4"
    text = run_main(capsys, "info", out / "sample_000" / "video.mp4").out
    assert "MP4, imgsound metadata" in text and record["sample_id"] in text
