"""Tests for sample videos: the MP4 that `imgsound generate --video` and `imgsound video` write, decoded back with the
bundled ffmpeg (length, sound, playhead position), the pure frame function and its layouts, `render_video` /
`render_artifacts(video=True)` without any folder, and every bad input of the `video` command.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from imgsound_core.artifacts import ARTIFACT_NAMES, VIDEO_NAME, render_artifacts, wav_bytes
from imgsound_core.cli import main
from imgsound_core.video import (
    DEFAULT_FPS,
    MARGIN_PX,
    PICTURE_GAP_PX,
    PLAYHEAD_RGB,
    compose_canvas,
    playhead_column,
    render_frame,
    render_video,
)
from tests.cli_helpers import assert_user_error, run_main

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
SAMPLE_RATE_HZ = 16000
# Cheap generation: 2 steps at 64 × 256, cropped to 224 columns = 2.24 s of audio.
WIDTH, CROPPED_WIDTH, HEIGHT = 256, 224, 64
PROMPTS = {"image_prompt": "a lighthouse at dusk", "audio_prompt": "waves on a beach"}


@pytest.fixture(scope="module")
def samples(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two cropped tiny samples written by `imgsound generate --video`."""
    out = tmp_path_factory.mktemp("video") / "run"
    code = main(
        [
            "generate",
            *("--image-prompt", PROMPTS["image_prompt"], "--audio-prompt", PROMPTS["audio_prompt"]),
            *("--image-model", str(tiny_models / "image"), "--audio-model", str(tiny_models / "audio")),
            *("--steps", "2", "--image-start-step", "1", "--height", str(HEIGHT), "--width", str(WIDTH)),
            *("--num-samples", "2", "--crop", "--video", "--out", str(out)),
        ]
    )
    assert code == 0
    return out


# --- decoding helpers -----------------------------------------------------------------------------------------------


def probe(path: Path) -> str:
    """What ffmpeg says about a file (`ffmpeg -i` prints it on stderr and exits 1 for want of an output)."""
    return subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr


def container_duration_s(path: Path) -> float:
    match = re.search(r"Duration: (\d+):(\d+):(\d+\.\d+)", probe(path))
    assert match, probe(path)
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def decode_audio(path: Path, rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """The MP4's sound as mono float32 at `rate_hz` (the edit list that hides AAC's priming is applied)."""
    raw = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "s16le", "-ac", "1", "-ar", str(rate_hz), "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768


def decode_frames(path: Path) -> tuple[list[np.ndarray], float]:
    """Every video frame as (H, W, 3) uint8, and the stream's frame rate."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(frame, dtype=np.uint8).reshape(height, width, 3) for frame in reader]
    return frames, float(meta["fps"])


def correlation_at(reference: np.ndarray, decoded: np.ndarray, lag: int) -> float:
    """Pearson correlation of reference[n] with decoded[n + lag] over their overlap."""
    a, b = (reference, decoded[lag:]) if lag >= 0 else (reference[-lag:], decoded)
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def top_level_boxes(mp4: bytes) -> list[str]:
    """The MP4's top-level box types in file order."""
    boxes, offset = [], 0
    while offset + 8 <= len(mp4):
        size = int.from_bytes(mp4[offset : offset + 4], "big")
        kind = mp4[offset + 4 : offset + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(mp4[offset + 8 : offset + 16], "big")
        boxes.append(kind)
        if size < 8:
            break
        offset += size
    return boxes


def playhead_centre(frame: np.ndarray, base: np.ndarray, top: int, bottom: int, left: int, width: int) -> float:
    """Centre (frame column) of the columns of the picture area that differ most from the frame without playhead."""
    region = np.s_[top:bottom, left : left + width]
    difference = np.abs(frame[region].astype(np.float32) - base[region].astype(np.float32)).mean(axis=(0, 2))
    columns = np.flatnonzero(difference > 0.5 * difference.max())
    assert columns.max() - columns.min() <= 8, columns  # one bar, not scattered coding noise
    return left + float(np.average(columns, weights=difference[columns]))


def sample_canvas(folder: Path, captions: bool = True):
    return compose_canvas(None, (folder / "spectrogram.png").read_bytes(), "spectrogram", captions=captions, **PROMPTS)


# --- the MP4 of a generated sample --------------------------------------------------------------------------------


def test_generate_video_writes_an_mp4_browsers_play(samples: Path) -> None:
    """`generate --video` puts video.mp4 in each folder: H.264 High/yuv420p with even sizes, AAC, index first."""
    for folder in sorted(samples.iterdir()):
        mp4 = (folder / "video.mp4").read_bytes()
        boxes = top_level_boxes(mp4)
        assert boxes[0] == "ftyp" and boxes.index("moov") < boxes.index("mdat"), boxes  # +faststart
        info = probe(folder / "video.mp4")
        video = re.search(r"Video: h264 .*?yuv420p.*?, (\d+)x(\d+)", info)
        assert video, info
        width, height = map(int, video.groups())
        assert width % 2 == 0 and height % 2 == 0
        assert width == CROPPED_WIDTH + 2 * MARGIN_PX
        assert f"{DEFAULT_FPS} fps" in info
        assert re.search(r"Audio: aac \(LC\).*16000 Hz, mono", info), info
        assert "title           : imgsound sample" in info  # provenance tags


def test_video_lasts_as_long_as_the_audio(samples: Path) -> None:
    """The MP4 lasts as long as audio.wav to within one frame, and has ceil(duration · fps) frames."""
    folder = samples / "sample_000"
    wav_s = soundfile.info(folder / "audio.wav").duration
    assert wav_s == pytest.approx(CROPPED_WIDTH / 100)  # the cropped picture's 224 columns
    # ffmpeg prints the duration to 10 ms.
    assert abs(container_duration_s(folder / "video.mp4") - wav_s) <= 1 / DEFAULT_FPS + 0.005
    frames, fps = decode_frames(folder / "video.mp4")
    assert fps == DEFAULT_FPS
    assert len(frames) == math.ceil(wav_s * DEFAULT_FPS)


def test_video_sound_matches_the_wav(samples: Path) -> None:
    """The decoded AAC correlates > 0.9 with audio.wav, best aligned within AAC's priming range, and also unshifted:
    the MP4's edit list removes the encoder delay, so sound and playhead start together."""
    for folder in sorted(samples.iterdir()):
        reference, rate = soundfile.read(folder / "audio.wav", dtype="float32")
        assert rate == SAMPLE_RATE_HZ
        decoded = decode_audio(folder / "video.mp4")
        assert abs(len(decoded) - len(reference)) <= 1024 * 2, (len(decoded), len(reference))
        best = max(range(-2048, 2049, 1), key=lambda lag: correlation_at(reference, decoded, lag))
        assert correlation_at(reference, decoded, best) > 0.9, best
        assert correlation_at(reference, decoded, 0) > 0.9


def test_video_command_playhead_is_where_the_sound_is(
    samples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`imgsound video --fps 100 --out`: in frames decoded at 25/50/75 % of the duration, the playhead is at 25/50/75 %
    of the (cropped) picture's width ± 2 px, and where `playhead_column` puts it for that frame's time ± 1 px."""
    folder, out = samples / "sample_001", tmp_path / "clip.mp4"
    outcome = run_main(capsys, "video", folder, "--out", out, "--fps", "100")
    assert outcome.code == 0, outcome.err
    assert str(out) in outcome.err  # status lines go to stderr, like every command's "wrote …"
    duration_s = soundfile.info(folder / "audio.wav").duration
    frames, fps = decode_frames(out)
    canvas = sample_canvas(folder)
    assert frames[0].shape == canvas.base.shape
    assert canvas.width == CROPPED_WIDTH
    for fraction in (0.25, 0.5, 0.75):
        index = round(fraction * duration_s * fps)
        centre = playhead_centre(frames[index], canvas.base, canvas.top, canvas.bottom, canvas.left, canvas.width)
        assert abs(centre - (canvas.left + fraction * canvas.width)) <= 2, (fraction, centre)
        assert abs(centre - playhead_column(canvas, index / fps / duration_s)) <= 1, (fraction, centre)


# --- frames and layouts (no encoding) -----------------------------------------------------------------------------


def random_picture(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 200, size=shape, dtype=np.uint8)


def test_render_frame_draws_only_the_playhead() -> None:
    """A frame is the base plus a ≤ 5 px bar over the picture's rows, centred on round(f · (W − 1)); the base is
    never modified; at 0 and 1 the bar is clipped to the picture's first and last columns."""
    spectrogram = random_picture(64, 301, 1, seed=1)
    canvas = compose_canvas(None, spectrogram, "spectrogram", captions=False)
    before = canvas.base.copy()
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        frame = render_frame(canvas, fraction)
        rows, columns = np.nonzero((frame != canvas.base).any(axis=2))
        assert rows.min() >= canvas.top and rows.max() < canvas.bottom
        assert columns.min() >= canvas.left and columns.max() < canvas.left + canvas.width
        assert columns.max() - columns.min() + 1 <= 5
        centre = canvas.left + round(fraction * (canvas.width - 1))
        assert columns.min() <= centre <= columns.max()
        assert (frame[canvas.top : canvas.bottom, centre] == PLAYHEAD_RGB).all()
    assert np.array_equal(canvas.base, before)
    assert render_frame(canvas, 0.0)[canvas.top, canvas.left].tolist() == list(PLAYHEAD_RGB)
    assert render_frame(canvas, 1.0)[canvas.top, canvas.left + canvas.width - 1].tolist() == list(PLAYHEAD_RGB)


def test_frame_sizes_are_even_and_margins_white() -> None:
    """Odd pictures still give even frame sizes (yuv420p); the picture sits 40 px in, on white."""
    canvas = compose_canvas(None, random_picture(63, 301, 1, seed=2), "spectrogram", captions=False)
    height, width, _ = canvas.base.shape
    assert height % 2 == 0 and width % 2 == 0
    assert (height, width) == (63 + 2 * MARGIN_PX + 1, 301 + 2 * MARGIN_PX + 1)
    assert (canvas.top, canvas.left) == (MARGIN_PX, MARGIN_PX)
    assert (canvas.base[:MARGIN_PX] == 255).all() and (canvas.base[:, :MARGIN_PX] == 255).all()


def test_captions_change_the_frame() -> None:
    """Captions add the prompts (dark text) above and below the picture; without them the frame is only the picture
    in its margin; another prompt draws other text."""
    spectrogram = random_picture(64, 400, 1, seed=3)
    plain = compose_canvas(None, spectrogram, "spectrogram", captions=False, **PROMPTS)
    captioned = compose_canvas(None, spectrogram, "spectrogram", captions=True, **PROMPTS)
    assert plain.base.shape[0] == 64 + 2 * MARGIN_PX
    assert captioned.base.shape[0] > plain.base.shape[0]
    above = captioned.base[MARGIN_PX : captioned.top]
    below = captioned.base[captioned.bottom : -MARGIN_PX]
    assert (above < 100).any() and (below < 100).any()  # black type in both caption blocks
    assert np.array_equal(captioned.base[captioned.top : captioned.bottom], plain.base[plain.top : plain.bottom])
    other = compose_canvas(None, spectrogram, "spectrogram", image_prompt="a cat", audio_prompt="a bell")
    assert not np.array_equal(other.base[: other.top], captioned.base[: captioned.top])


def test_long_captions_wrap_to_the_picture_width() -> None:
    """A prompt wider than the picture wraps onto more lines and never draws into the side margins."""
    spectrogram = random_picture(32, 200, 1, seed=4)
    short = compose_canvas(None, spectrogram, "spectrogram", image_prompt="a cat")
    long = compose_canvas(None, spectrogram, "spectrogram", image_prompt="a painting of castle towers " * 4)
    assert long.top > short.top
    assert (long.base[:, :MARGIN_PX] == 255).all() and (long.base[:, MARGIN_PX + 200 :] == 255).all()


def test_both_layout_stacks_the_picture_over_the_spectrogram() -> None:
    """`both`: the RGB picture, a 30 px white gap, then the spectrogram; the playhead spans both and the gap."""
    image = random_picture(48, 160, 3, seed=5)
    spectrogram = random_picture(64, 160, 1, seed=6)
    canvas = compose_canvas(image, spectrogram, "both", captions=False)
    top, left = canvas.top, canvas.left
    assert np.array_equal(canvas.base[top : top + 48, left : left + 160], image)
    gap = canvas.base[top + 48 : top + 48 + PICTURE_GAP_PX, left : left + 160]
    assert (gap == 255).all()
    lower = canvas.base[top + 48 + PICTURE_GAP_PX : top + 48 + PICTURE_GAP_PX + 64, left : left + 160]
    assert np.array_equal(lower, np.repeat(spectrogram[..., None], 3, axis=2))
    assert canvas.bottom == top + 48 + PICTURE_GAP_PX + 64
    frame = render_frame(canvas, 0.5)
    column = playhead_column(canvas, 0.5)
    assert (frame[canvas.top : canvas.bottom, column] == PLAYHEAD_RGB).all()
    single = compose_canvas(image, spectrogram, "image", captions=False)
    assert single.base.shape[0] < canvas.base.shape[0]
    assert np.array_equal(single.base[top : top + 48, left : left + 160], image)


# --- without a folder ------------------------------------------------------------------------------------------------


def test_render_artifacts_adds_the_video_only_when_asked(tmp_path: Path) -> None:
    """`render_artifacts(..., video=True)` returns video.mp4 (before sample.json, which stays last) whose length is
    the cropped audio's; without `video` the artifacts are the usual five."""
    generator = torch.Generator().manual_seed(0)
    image, spectrogram = torch.rand(3, 32, 200, generator=generator), torch.rand(32, 200, generator=generator)
    waveform = torch.rand(200 * 160, generator=generator) * 0.2 - 0.1
    record = {**PROMPTS, "sample_id": "0123456789abcdef"}
    assert tuple(render_artifacts(image, spectrogram, waveform, record, crop=True)) == ARTIFACT_NAMES
    artifacts = render_artifacts(image, spectrogram, waveform, record, crop=True, video=True, video_fps=25)
    assert list(artifacts)[-2:] == [VIDEO_NAME, "sample.json"]
    (tmp_path / VIDEO_NAME).write_bytes(artifacts[VIDEO_NAME])
    wav_s = soundfile.info(io.BytesIO(artifacts["audio.wav"])).duration
    assert wav_s == pytest.approx(168 / 100)
    frames, fps = decode_frames(tmp_path / VIDEO_NAME)
    assert fps == 25 and len(frames) == math.ceil(wav_s * 25)
    assert frames[0].shape[1] == 168 + 2 * MARGIN_PX


def test_render_video_takes_arrays_and_bytes(tmp_path: Path) -> None:
    """`render_video` is bytes out for a waveform array as for WAV bytes, and the sound survives (a 440 Hz tone)."""
    t = np.arange(SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    picture = random_picture(32, 100, 1, seed=7)
    from_array = render_video(None, picture, tone, audio_prompt="a tone", fps=10)
    from_bytes = render_video(None, _png(picture), wav_bytes(tone), fps=10)
    for name, data in (("array.mp4", from_array), ("bytes.mp4", from_bytes)):
        assert data[4:8] == b"ftyp"
        (tmp_path / name).write_bytes(data)
        decoded = decode_audio(tmp_path / name)
        assert correlation_at(tone, decoded, 0) > 0.9
        assert len(decode_frames(tmp_path / name)[0]) == 10


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --- bad input ------------------------------------------------------------------------------------------------------


def copy_sample(samples: Path, tmp_path: Path, name: str = "sample") -> Path:
    target = tmp_path / name
    shutil.copytree(samples / "sample_000", target)
    (target / "video.mp4").unlink()
    return target


def test_video_of_a_folder_of_samples_writes_one_mp4_each(
    samples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder holding sample folders stands for all of them: one video.mp4 in each; an existing one is kept
    unless --overwrite."""
    root = tmp_path / "results"
    for name in ("a", "b"):
        copy_sample(samples, root, name)
    outcome = run_main(capsys, "video", root, "--layout", "both", "--no-captions", "--fps", "10")
    assert outcome.code == 0, outcome.err
    for name in ("a", "b"):
        frames, _ = decode_frames(root / name / "video.mp4")
        assert frames[0].shape[0] == HEIGHT * 2 + PICTURE_GAP_PX + 2 * MARGIN_PX  # picture over spectrogram
    before = (root / "a" / "video.mp4").read_bytes()
    assert_user_error(run_main(capsys, "video", root / "a"), "already exists", "--overwrite")
    assert (root / "a" / "video.mp4").read_bytes() == before
    outcome = run_main(capsys, "video", root / "a", "--overwrite", "--fps", "12")
    assert outcome.code == 0, outcome.err
    assert decode_frames(root / "a" / "video.mp4")[1] == 12


@pytest.mark.parametrize(
    ("breakage", "words"),
    [
        pytest.param("no-samples", ("holds no sample folders",), id="folder-without-samples"),
        pytest.param("no-wav", ("has no audio.wav",), id="missing-wav"),
        pytest.param("no-picture", ("has no image.png",), id="missing-picture"),
        pytest.param("corrupt-png", ("spectrogram.png", "not a readable picture"), id="corrupt-png"),
        pytest.param("corrupt-wav", ("audio.wav", "not a WAV file"), id="corrupt-wav"),
        pytest.param("corrupt-json", ("sample.json", "cannot be read"), id="corrupt-record"),
        pytest.param("not-a-folder", ("is not a folder",), id="not-a-folder"),
        pytest.param("two-with-out", ("--out",), id="out-with-two-samples"),
        pytest.param("out-not-mp4", (".mp4",), id="out-not-mp4"),
        pytest.param("fps", ("--fps",), id="fps-too-high"),
    ],
)
def test_video_bad_input_is_one_sentence(
    samples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: str, words: tuple[str, ...]
) -> None:
    """Every bad input exits 2 with one sentence naming the problem, and writes no video."""
    folder = copy_sample(samples, tmp_path)
    args: list[str | Path] = ["video", folder]
    if breakage == "no-samples":
        (tmp_path / "empty" / "nested").mkdir(parents=True)
        args = ["video", tmp_path / "empty"]
    elif breakage == "no-wav":
        (folder / "audio.wav").unlink()
    elif breakage == "no-picture":
        (folder / "image.png").unlink()
        args += ["--layout", "image"]
    elif breakage == "corrupt-png":
        (folder / "spectrogram.png").write_bytes((folder / "spectrogram.png").read_bytes()[:200])
    elif breakage == "corrupt-wav":
        (folder / "audio.wav").write_bytes(b"RIFF....WAVEnot really")
    elif breakage == "corrupt-json":
        (folder / "sample.json").write_text("{not json")
    elif breakage == "not-a-folder":
        args = ["video", folder / "audio.wav"]
    elif breakage == "two-with-out":
        args = ["video", folder, copy_sample(samples, tmp_path, "other"), "--out", tmp_path / "x.mp4"]
    elif breakage == "out-not-mp4":
        args += ["--out", tmp_path / "x.avi"]
    elif breakage == "fps":
        args += ["--fps", "1000"]
    assert_user_error(run_main(capsys, *args), *words)
    assert not list(tmp_path.rglob("*.mp4")) and not list(tmp_path.rglob("*.avi"))
