"""Tests for imgsound_core.audio: mel front end, picture mapping, HiFi-GAN format, Griffin-Lim, vocoder API."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from imgsound_core.audio import (
    AUFFUSION_HIFIGAN_CONFIG,
    HOP_LENGTH,
    LOG_MEL_MAX,
    LOG_MEL_MIN,
    N_FFT,
    N_MELS,
    SAMPLE_RATE_HZ,
    WIN_LENGTH,
    Generator,
    GriffinLimVocoder,
    HiFiGANConfig,
    HiFiGANVocoder,
    Vocoder,
    crop_waveform,
    denormalize_spectrogram,
    fold_weight_norm,
    griffin_lim,
    load_hifigan,
    log_mel_spectrogram,
    mel_filterbank,
    normalize_log_mel,
    save_hifigan,
    spectrogram_image_to_gray,
    spectrogram_to_waveform,
    tiny_hifigan_config,
    waveform_to_spectrogram_image,
)
from imgsound_core.audio.mel import STFT_PAD, mel_filterbank_numpy


def _tone(freq_hz: float, seconds: float, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * SAMPLE_RATE_HZ), dtype=torch.float64) / SAMPLE_RATE_HZ
    return (amplitude * torch.sin(2 * math.pi * freq_hz * t)).float()


def _test_signal(seconds: float, seed: int = 0) -> torch.Tensor:
    """A linear chirp 300 Hz → 3 kHz plus two steady tones and a little noise: energy in many mel bands."""
    t = torch.arange(int(seconds * SAMPLE_RATE_HZ), dtype=torch.float64) / SAMPLE_RATE_HZ
    f0, f1 = 300.0, 3000.0
    chirp = torch.sin(2 * math.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2))
    tones = 0.5 * torch.sin(2 * math.pi * 523.25 * t) + 0.3 * torch.sin(2 * math.pi * 5000.0 * t)
    noise = 0.01 * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (0.4 * (chirp + tones) + noise).float()


def _random_log_mel(batch: int, width: int, seed: int = 0) -> torch.Tensor:
    """Spectrogram-like input in the natural-log range the vocoder sees."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, N_MELS, width, generator=generator) * (LOG_MEL_MAX - LOG_MEL_MIN) * 0.6 + LOG_MEL_MIN


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """These tensors are tiny; on a shared two-core machine torch's thread team costs more than it saves (a tiny
    HiFi-GAN call measured 6 ms on one thread and 380 ms on two while another process held a core)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_generator() -> Generator:
    """Tiny random HiFi-GAN; its output (std ≈ 0.015) is large enough for 1e-5 comparisons to mean something."""
    torch.manual_seed(1234)
    generator = Generator(tiny_hifigan_config()).eval()
    with torch.inference_mode():
        assert generator(_random_log_mel(1, 16)).std() > 5e-3
    return generator


# --------------------------------------------------------------------------------------------- mel front end


def test_mel_shape_one_second() -> None:
    waveform = _test_signal(1.0)
    assert log_mel_spectrogram(waveform).shape == (N_MELS, 100)
    batched = log_mel_spectrogram(torch.stack([waveform, 0.5 * waveform]))
    assert batched.shape == (2, N_MELS, 100)
    image = waveform_to_spectrogram_image(waveform)
    assert image.shape == (3, N_MELS, 100)
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_mel_matches_hand_computation() -> None:
    waveform = _test_signal(1.0, seed=3)
    log_mel = log_mel_spectrogram(waveform).numpy()

    samples = waveform.numpy().astype(np.float64)
    padded = np.pad(samples, (STFT_PAD, STFT_PAD), mode="reflect")
    # torch.stft centres a win_length window inside each n_fft frame; torch.hann_window is the periodic Hann.
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN_LENGTH) / WIN_LENGTH)
    window = np.zeros(N_FFT)
    offset = (N_FFT - WIN_LENGTH) // 2
    window[offset : offset + WIN_LENGTH] = hann
    filterbank = mel_filterbank_numpy().astype(np.float64)
    for frame in (0, 37, 99):
        segment = padded[frame * HOP_LENGTH : frame * HOP_LENGTH + N_FFT]
        spectrum = np.fft.rfft(segment * window)
        magnitude = np.sqrt(spectrum.real**2 + spectrum.imag**2 + 1e-9)
        expected = np.log(np.maximum(filterbank @ magnitude, 1e-5))
        np.testing.assert_allclose(log_mel[:, frame], expected, atol=1e-4, rtol=0)


def test_mel_filterbank_is_cached() -> None:
    assert mel_filterbank_numpy() is mel_filterbank_numpy()
    before = mel_filterbank_numpy.cache_info().hits
    mel_filterbank_numpy()
    assert mel_filterbank_numpy.cache_info().hits == before + 1

    assert mel_filterbank() is mel_filterbank("cpu") is mel_filterbank(torch.device("cpu"), torch.float32)
    assert mel_filterbank().shape == (N_MELS, N_FFT // 2 + 1)
    assert mel_filterbank(dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError):
        mel_filterbank_numpy()[0, 0] = 1.0  # the cached array is read-only


# --------------------------------------------------------------------------------------------- picture mapping


def test_normalize_denormalize_round_trip() -> None:
    generator = torch.Generator().manual_seed(0)
    log_mel = torch.rand(2, N_MELS, 40, generator=generator) * (LOG_MEL_MAX - LOG_MEL_MIN) + LOG_MEL_MIN
    image = normalize_log_mel(log_mel)
    assert image.shape == (2, 3, N_MELS, 40)
    assert 0.0 <= image.min() and image.max() <= 1.0
    torch.testing.assert_close(denormalize_spectrogram(image), log_mel, atol=1e-5, rtol=0)
    torch.testing.assert_close(denormalize_spectrogram(image[0]), log_mel[0], atol=1e-5, rtol=0)
    gray = spectrogram_image_to_gray(image)
    assert gray.shape == (2, N_MELS, 40)
    torch.testing.assert_close(denormalize_spectrogram(gray[0]), log_mel[0], atol=1e-5, rtol=0)

    # Out-of-range values are clamped, not rejected.
    extreme = torch.tensor([[LOG_MEL_MIN - 5.0, LOG_MEL_MAX + 5.0]])
    assert normalize_log_mel(extreme)[:, 0].tolist() == [[0.0, 1.0]] * 3


def test_image_orientation_high_frequency_on_top() -> None:
    top_rows, bottom_rows = slice(0, N_MELS // 4), slice(3 * N_MELS // 4, N_MELS)
    high = spectrogram_image_to_gray(waveform_to_spectrogram_image(_tone(7000.0, 0.5))).mean(dim=-1)
    low = spectrogram_image_to_gray(waveform_to_spectrogram_image(_tone(200.0, 0.5))).mean(dim=-1)
    assert int(high.argmax()) < N_MELS // 4
    assert int(low.argmax()) >= 3 * N_MELS // 4
    # The whole quarter is brighter too, not only the peak row.
    assert high[top_rows].mean() > 2 * high[bottom_rows].mean()
    assert low[bottom_rows].mean() > 2 * low[top_rows].mean()


# --------------------------------------------------------------------------------------------- HiFi-GAN


def test_generator_parameter_names_follow_hifigan_layout() -> None:
    keys = set(Generator(AUFFUSION_HIFIGAN_CONFIG).state_dict())
    for key in ("conv_pre.weight", "ups.3.weight", "resblocks.11.convs1.2.weight", "resblocks.0.convs2.0.bias"):
        assert key in keys
    assert "conv_post.weight" in keys
    # 4 stages × 3 ResBlock1 × 3 dilations × 2 convs × (weight, bias) + conv_pre/ups/conv_post (weight, bias)
    assert len(keys) == 4 * 3 * 3 * 2 * 2 + (1 + 4 + 1) * 2

    config_2 = HiFiGANConfig.from_json_dict({**tiny_hifigan_config().to_json_dict(), "resblock": "2"})
    assert "resblocks.0.convs.1.weight" in Generator(config_2).state_dict()


def test_output_length_is_frames_times_hop(tiny_generator: Generator) -> None:
    with torch.inference_mode():
        assert tiny_generator(_random_log_mel(2, 37)).shape == (2, 1, 37 * HOP_LENGTH)
    # The odd (kernel - rate) branch also gives exactly W · hop samples.
    odd = HiFiGANConfig.from_json_dict(
        {**tiny_hifigan_config().to_json_dict(), "upsample_rates": [5, 4, 4, 2], "upsample_kernel_sizes": [10, 7, 9, 5]}
    )
    with torch.inference_mode():
        assert Generator(odd)(_random_log_mel(1, 11)).shape == (1, 1, 11 * HOP_LENGTH)


def test_generator_is_batch_invariant(tiny_generator: Generator) -> None:
    log_mel = _random_log_mel(3, 24, seed=5)
    with torch.inference_mode():
        together = tiny_generator(log_mel)
        for index in range(3):
            alone = tiny_generator(log_mel[index : index + 1])
            assert (together[index] - alone[0]).abs().max() < 1e-5


def test_fold_weight_norm_matches_torch_weight_norm() -> None:
    torch.manual_seed(0)
    for module in (torch.nn.Conv1d(4, 6, 3), torch.nn.ConvTranspose1d(6, 3, 8, stride=4)):
        v = torch.randn_like(module.weight)
        g = torch.rand(module.weight.shape[0], 1, 1) + 0.5
        folded = fold_weight_norm({"layer.weight_g": g, "layer.weight_v": v, "layer.bias": module.bias})
        assert set(folded) == {"layer.weight", "layer.bias"}
        torch.testing.assert_close(folded["layer.weight"], torch._weight_norm(v, g, 0))


def test_fold_weight_norm_reads_a_state_dict_from_torch_weight_norm(tiny_generator: Generator) -> None:
    """A state dict taken from a model that really carries torch's weight norm (as in training) loads exactly."""
    weight_normed = copy.deepcopy(tiny_generator)
    for module in weight_normed.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            torch.nn.utils.weight_norm(module)
    state = weight_normed.state_dict()
    assert "ups.2.weight_g" in state and "ups.2.weight" not in state

    plain = Generator(tiny_hifigan_config())
    plain.load_state_dict(fold_weight_norm(state), strict=True)
    log_mel = _random_log_mel(1, 20, seed=11)
    with torch.inference_mode():
        assert (plain(log_mel) - weight_normed(log_mel)).abs().max() < 1e-6


def test_save_load_round_trip_in_auffusion_format(tmp_path, tiny_generator: Generator) -> None:
    config = tiny_hifigan_config()
    save_hifigan(tiny_generator, config, tmp_path / "vocoder")

    checkpoint = torch.load(tmp_path / "vocoder" / "vocoder.pt", map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"generator"}
    stored = checkpoint["generator"]
    assert "conv_pre.weight_g" in stored and "conv_pre.weight_v" in stored and "conv_pre.weight" not in stored
    assert stored["ups.0.weight_g"].shape == (32, 1, 1)
    assert "resblocks.0.convs2.1.weight_v" in stored and "conv_post.bias" in stored
    assert not any(key.endswith(".weight") for key in stored)
    assert json.loads((tmp_path / "vocoder" / "config.json").read_text())["upsample_rates"] == [5, 4, 4, 2]
    assert sorted(p.name for p in (tmp_path / "vocoder").iterdir()) == ["config.json", "vocoder.pt"]

    loaded = load_hifigan(tmp_path / "vocoder")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.config == config
    log_mel = _random_log_mel(2, 30, seed=7)
    with torch.inference_mode():
        before, after = tiny_generator(log_mel), loaded(log_mel)
    assert before.std() > 5e-3
    assert (before - after).abs().max() < 1e-5


def test_corrupted_checkpoint_is_rejected(tmp_path, tiny_generator: Generator) -> None:
    vocoder_dir = tmp_path / "vocoder"
    save_hifigan(tiny_generator, tiny_hifigan_config(), vocoder_dir)
    checkpoint_path = vocoder_dir / "vocoder.pt"
    state = torch.load(checkpoint_path, weights_only=True)["generator"]

    missing = {k: v for k, v in state.items() if k != "conv_post.bias"}
    torch.save({"generator": missing}, checkpoint_path)
    with pytest.raises(ValueError, match=r"missing keys conv_post\.bias"):
        load_hifigan(vocoder_dir)

    wrong_shape = dict(state, **{"conv_pre.bias": torch.zeros(5)})
    torch.save({"generator": wrong_shape}, checkpoint_path)
    with pytest.raises(ValueError, match=r"shape mismatches conv_pre\.bias"):
        load_hifigan(vocoder_dir)

    half_pair = {k: v for k, v in state.items() if k != "ups.1.weight_v"}
    torch.save({"generator": half_pair}, checkpoint_path)
    with pytest.raises(ValueError, match=r"missing keys ups\.1\.weight.*unexpected keys ups\.1\.weight_g"):
        load_hifigan(vocoder_dir)

    torch.save({"discriminator": state}, checkpoint_path)
    with pytest.raises(ValueError, match="'generator'"):
        load_hifigan(vocoder_dir)

    checkpoint_path.unlink()
    with pytest.raises(FileNotFoundError, match="vocoder.pt"):
        load_hifigan(vocoder_dir)


def test_config_checks_hop_size() -> None:
    data = AUFFUSION_HIFIGAN_CONFIG.to_json_dict()
    data.update(num_freq=2049, segment_size=5120, learning_rate=0.0002)  # training keys are ignored
    assert HiFiGANConfig.from_json_dict(data) == AUFFUSION_HIFIGAN_CONFIG
    with pytest.raises(ValueError, match="hop_size 256"):
        HiFiGANConfig.from_json_dict({**data, "hop_size": 256})
    assert math.prod(tiny_hifigan_config().upsample_rates) == tiny_hifigan_config().hop_size == HOP_LENGTH


# --------------------------------------------------------------------------------------------- Griffin-Lim


def test_griffin_lim_cycle_consistency() -> None:
    log_mel = log_mel_spectrogram(_test_signal(1.0))
    audio = griffin_lim(log_mel)
    assert audio.dtype == np.float32 and audio.shape == (log_mel.shape[1] * HOP_LENGTH,)
    assert np.abs(audio).max() <= 1.0

    resynthesised = log_mel_spectrogram(torch.from_numpy(audio))
    correlation = np.corrcoef(log_mel.flatten().numpy(), resynthesised.flatten().numpy())[0, 1]
    assert correlation > 0.9


def test_griffin_lim_is_deterministic() -> None:
    log_mel = log_mel_spectrogram(_test_signal(0.2)).numpy()
    np.testing.assert_array_equal(griffin_lim(log_mel, n_iter=4), griffin_lim(log_mel, n_iter=4))


# --------------------------------------------------------------------------------------------- vocoder API


@pytest.mark.parametrize("kind", ["hifigan", "griffinlim"])
def test_vocoder_interface_shapes(kind: str, tiny_generator: Generator) -> None:
    vocoder: Vocoder = HiFiGANVocoder(tiny_generator) if kind == "hifigan" else GriffinLimVocoder(n_iter=4)
    assert isinstance(vocoder, Vocoder) and vocoder.name == kind
    assert vocoder.sample_rate_hz == SAMPLE_RATE_HZ

    waveform = vocoder(_random_log_mel(2, 20))
    assert waveform.shape == (2, 20 * HOP_LENGTH)
    assert waveform.dtype == torch.float32 and waveform.device.type == "cpu"

    image = normalize_log_mel(_random_log_mel(2, 16))
    assert spectrogram_to_waveform(image, vocoder).shape == (2, 16 * HOP_LENGTH)
    assert spectrogram_to_waveform(image[:, 0], vocoder).shape == (2, 16 * HOP_LENGTH)
    with pytest.raises(ValueError):
        vocoder(_random_log_mel(2, 20)[:, :100])


def test_hifigan_vocoder_matches_generator(tiny_generator: Generator) -> None:
    log_mel = _random_log_mel(2, 10, seed=9)
    image = normalize_log_mel(log_mel)
    with torch.inference_mode():
        expected = tiny_generator(denormalize_spectrogram(image)).squeeze(1)
    torch.testing.assert_close(spectrogram_to_waveform(image, HiFiGANVocoder(tiny_generator)), expected)


def test_crop_arithmetic() -> None:
    waveform = torch.zeros(2, 163840)
    assert crop_waveform(waveform, 32, 1024).shape == (2, 158720)
    assert crop_waveform(np.zeros(163840), 32, 1024).shape == (158720,)
    assert crop_waveform(waveform, 0, 1024).shape == (2, 163840)
    with pytest.raises(ValueError):
        crop_waveform(waveform, 1024, 1024)


def test_the_package_exports_every_name_of_its_submodules_and_no_other() -> None:
    import importlib

    import imgsound_core.audio as audio
    from imgsound_core.audio import layout, mel, vocoder

    for name in audio.__all__:
        source = importlib.import_module(f"imgsound_core.audio.{audio._SOURCES[name]}")
        assert getattr(audio, name) is getattr(source, name), name
    assert mel.HOP_LENGTH is layout.HOP_LENGTH and vocoder.crop_waveform is layout.crop_waveform
    assert set(audio.__all__) <= set(dir(audio))
    with pytest.raises(AttributeError, match="no attribute 'HOP'"):
        audio.HOP  # noqa: B018


def test_the_layout_and_the_files_it_shapes_need_no_torch() -> None:
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import imgsound_core.artifacts, imgsound_core.provenance\n"
        "from imgsound_core.audio import HOP_LENGTH, crop_waveform\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'torch'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]"
