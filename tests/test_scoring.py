"""CLIP and CLAP scores on tiny real-format models, against hand computations of the paper's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imgsound_core.scoring import ClapScorer, ClipScorer, prepare_clap_audio, spectrogram_windows

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def clip(tiny_models) -> ClipScorer:
    return ClipScorer(str(tiny_models / "clip"))


@pytest.fixture(scope="module")
def clap(tiny_models) -> ClapScorer:
    return ClapScorer(str(tiny_models / "clap"))


def test_windows_follow_the_reference_evaluator():
    assert spectrogram_windows(torch.rand(256, 1024)).shape == (25, 256, 256, 3)
    assert spectrogram_windows(torch.rand(256, 992)).shape == (24, 256, 256, 3)
    ramp = torch.arange(64).float().repeat(8, 1) / 64  # 8×64: windows start every column
    windows = spectrogram_windows(ramp)
    assert windows.shape == (57, 8, 8, 3)
    assert windows[1, 0, 0, 0] == int(1 / 64 * 255)  # the second window starts one stride (8/8 = 1) in
    assert spectrogram_windows(torch.full((8, 8), 0.999))[0, 0, 0, 0] == 254  # truncation, not rounding
    color = torch.rand(3, 8, 16)
    assert np.array_equal(spectrogram_windows(color), spectrogram_windows(color.mean(dim=0)))


def hand_clip_score(scorer: ClipScorer, spectrogram: torch.Tensor, prompt: str) -> float:
    """Resize each window to 224 (bicubic), scale to [0, 1], CLIP-normalise, embed, mean cosine, floor at 0."""
    model = scorer.model
    pixels = []
    for window in spectrogram_windows(spectrogram):
        resized = np.asarray(Image.fromarray(window).resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float64)
        pixels.append(((resized / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1))
    with torch.inference_mode():
        image = model.get_image_features(pixel_values=torch.tensor(np.stack(pixels), dtype=torch.float32))
        tokens = scorer.processor.tokenizer([prompt], padding=True, return_tensors="pt")
        text = model.get_text_features(**tokens)
    image = image if isinstance(image, torch.Tensor) else image.pooler_output
    text = text if isinstance(text, torch.Tensor) else text.pooler_output
    cosine = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    return max(float(cosine.mean()), 0.0)


def test_clip_score_equals_the_hand_computation(clip):
    generator = torch.Generator().manual_seed(0)
    spectrograms = [torch.rand(64, 256, generator=generator), torch.rand(3, 64, 64, generator=generator)]
    prompts = ["a painting of castle towers, grayscale", "dogs"]
    scores = clip.score(spectrograms, prompts)
    for spectrogram, prompt, score in zip(spectrograms, prompts, scores):
        assert score == pytest.approx(hand_clip_score(clip, spectrogram, prompt), abs=1e-4)
        assert 0.0 <= score <= 1.0


def test_clip_scores_are_floored_at_zero(clip):
    """Over many prompts the random model gives negative raw cosines too; every score is max(raw, 0)."""
    spectrogram = torch.rand(32, 64, generator=torch.Generator().manual_seed(1))
    prompts = [f"prompt number {i}" for i in range(16)]
    scores = clip.score([spectrogram] * len(prompts), prompts)
    raw = [hand_clip_score(clip, spectrogram, p) for p in prompts]
    assert scores == pytest.approx(raw, abs=1e-4)


def test_clap_audio_is_resampled_to_48k_and_peak_normalised():
    audio = 0.2 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    prepared = prepare_clap_audio(audio, 16000)
    assert prepared.shape == (48000,) and np.abs(prepared).max() == pytest.approx(1.0, abs=1e-6)


def test_clap_score_is_the_cosine_the_reference_reads_from_the_logits(clap):
    """The reference computes logits_per_audio / exp(logit_scale_a); ours normalises the embeddings itself."""
    rng = np.random.default_rng(0)
    waveforms = [rng.normal(0, 0.1, 16000 * 2).astype(np.float32), rng.normal(0, 0.3, 16000).astype(np.float32)]
    prompts = ["dog barking", "bell ringing"]
    scores = clap.score(waveforms, 16000, prompts)
    for waveform, prompt, score in zip(waveforms, prompts, scores):
        audio = prepare_clap_audio(waveform, 16000)
        inputs = clap.processor(text=[prompt], audio=[audio], sampling_rate=48000, padding=True, return_tensors="pt")
        with torch.inference_mode():
            output = clap.model(**inputs)
            reference = float(output.logits_per_audio[0, 0] / clap.model.logit_scale_a.exp())
        assert score == pytest.approx(max(reference, 0.0), abs=1e-5)


def test_cycle_check_separates_a_round_trip_from_a_shuffled_pair():
    from imgsound_core.audio.griffinlim import griffin_lim
    from imgsound_core.audio.spectrogram import denormalize_spectrogram
    from imgsound_core.scoring import cycle_consistency

    rows = torch.arange(256).float()[:, None]
    columns = torch.arange(200).float()[None, :]
    pictures = [
        (0.35 + 0.45 * (torch.sin(rows / 9 + columns / 25) > 0.3)).float(),  # diagonal stripes
        (0.35 + 0.45 * ((columns // 20) % 2 == 0) * (rows > 128)).float(),  # low-frequency bursts
    ]
    audio = [griffin_lim(denormalize_spectrogram(p)) for p in pictures]
    own = [cycle_consistency(p.numpy(), a)["correlation"] for p, a in zip(pictures, audio)]
    swapped = [
        cycle_consistency(pictures[0].numpy(), audio[1])["correlation"],
        cycle_consistency(pictures[1].numpy(), audio[0])["correlation"],
    ]
    assert min(own) > 0.6
    assert max(swapped) < min(own) - 0.3


def test_score_and_cycle_check_commands_write_into_sample_json(tiny_models, tmp_path, capsys):
    import json

    from imgsound_core.cli import main

    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "--image-prompt",
                "castle",
                "--audio-prompt",
                "bells",
                "--steps",
                "2",
                "--image-start-step",
                "1",
                "--num-samples",
                "2",
                "--height",
                "64",
                "--width",
                "128",
                "--image-model",
                str(tiny_models / "image"),
                "--audio-model",
                str(tiny_models / "audio"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (
        main(["score", str(out), "--clip-model", str(tiny_models / "clip"), "--clap-model", str(tiny_models / "clap")])
        == 0
    )
    assert "CLIP" in capsys.readouterr().out
    assert main(["cycle-check", str(out)]) == 0
    for folder in ("sample_000", "sample_001"):
        record = json.loads((out / folder / "sample.json").read_text())
        assert 0.0 <= record["clip_score"] <= 1.0 and 0.0 <= record["clap_score"] <= 1.0
        assert set(record["cycle_check"]) == {"mae", "correlation"}
        assert record["image_prompt"] == "castle"  # the rest of the record is kept
    assert main(["score", str(tmp_path / "empty")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_scorer_files_are_chosen_from_the_real_repo_layouts():
    from imgsound_core.models.download import select_scorer_files

    clip_repo = [".gitattributes", "README.md", "config.json", "flax_model.msgpack", "merges.txt", "model.safetensors"]
    clip_repo += ["preprocessor_config.json", "pytorch_model.bin", "special_tokens_map.json", "tf_model.h5"]
    clip_repo += ["tokenizer.json", "tokenizer_config.json", "vocab.json"]
    assert select_scorer_files(clip_repo) == [
        "config.json",
        "merges.txt",
        "model.safetensors",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    clap_repo = ["config.json", "preprocessor_config.json", "pytorch_model.bin", "tokenizer.json", "vocab.json"]
    assert "pytorch_model.bin" in select_scorer_files(clap_repo)  # no safetensors: the pickle, loaded safely


def test_scorer_hub_ids_resolve_to_downloaded_folders(tmp_path, tiny_models, monkeypatch):
    """A spec keeps `openai/clip-vit-base-patch16`; on an offline cluster IMGSOUND_MODELS_DIR points at the download."""
    import shutil

    from imgsound_core.models.download import write_source_record
    from imgsound_core.scoring import CLIP_MODEL_ID, resolve_scorer

    root = tmp_path / "models"
    shutil.copytree(tiny_models / "clip", root / "clip")
    write_source_record(root / "clip", CLIP_MODEL_ID, "abc123")
    monkeypatch.setenv("IMGSOUND_MODELS_DIR", str(root))
    assert resolve_scorer(CLIP_MODEL_ID) == str(root / "clip")
    assert resolve_scorer(str(tiny_models / "clap")) == str(tiny_models / "clap")  # a folder stays itself
    scorer = ClipScorer(CLIP_MODEL_ID)
    direct = ClipScorer(str(tiny_models / "clip"))
    picture = torch.rand(64, 256, generator=torch.Generator().manual_seed(0))
    assert scorer.score([picture], ["castle"]) == direct.score([picture], ["castle"])


def test_scorer_download_refuses_to_run_offline(tmp_path, monkeypatch):
    from imgsound_core.models.download import download_scorer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set"):
        download_scorer("openai/clip-vit-base-patch16", tmp_path / "clip")
    assert not (tmp_path / "clip").exists()


def test_score_never_goes_to_the_network_for_a_missing_scorer(tiny_models, tmp_path):
    """With the hub reachable in principle (HF_HUB_OFFLINE unset, the endpoint a closed loopback port) and no cached
    or downloaded scorer, `imgsound score` stops at once with one sentence: no download, no retries."""
    import os
    import subprocess
    import sys

    from imgsound_core.cli import main

    out = tmp_path / "out"
    flags = ["--image-model", str(tiny_models / "image"), "--audio-model", str(tiny_models / "audio")]
    flags += ["--image-prompt", "a", "--audio-prompt", "b", "--steps", "1", "--image-start-step", "0"]
    assert main(["generate", *flags, "--height", "64", "--width", "64", "--out", str(out)]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "IMGSOUND_MODELS_DIR")}
    env.update(HF_HUB_CACHE=str(tmp_path / "empty-cache"), HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "imgsound_core.cli", "score", str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgsound: error: The CLIP scorer 'openai/clip-vit-base-patch16'")
    assert "imgsound download DIR --scorers" in lines[0] and "Retrying" not in done.stderr
