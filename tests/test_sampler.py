"""The sampler on tiny real-format models: equal to the reference method, batch-invariant, reproducible."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

import imgsound_core.sampler as sampler_module
from imgsound_core.audio.vocoder import HiFiGANVocoder
from imgsound_core.decode import decode_latents
from imgsound_core.request import SampleRequest
from imgsound_core.sampler import Sampler
from imgsound_core.scheduler import StepScheduler
from imgsound_core.text import encode_prompts

SMALL = dict(height=64, width=256)  # latent 4×8×32: the same code path, 16× cheaper than 256×1024


@pytest.fixture(scope="module")
def sampler(tiny_bundles) -> Sampler:
    image, audio = tiny_bundles
    return Sampler(image, audio, HiFiGANVocoder(audio.vocoder), max_batch_samples=8)


def by_key(results):
    return {int(r.key): r for r in results}


@torch.inference_mode()
def reference_sample(image, audio, req: SampleRequest) -> torch.Tensor:
    """The paper's loop for one sample, written the way the reference code is: a CFG pair per model per step,
    `DDIMScheduler.step` from the image model's scheduler config, then the audio VAE's decode (channel mean)."""
    scheduler = DDIMScheduler.from_config(image.scheduler_config)
    scheduler.set_timesteps(req.steps)
    generator = torch.Generator("cpu").manual_seed(req.seed)
    latents = torch.randn((1, 4, req.height // 8, req.width // 8), generator=generator)

    def cfg(bundle, prompt, negative, scale, z, t):
        text = encode_prompts(bundle.tokenizer, bundle.text_encoder, [negative, prompt])
        eps = bundle.unet(torch.cat([z, z]), t, encoder_hidden_states=text).sample
        uncond, cond = eps.chunk(2)
        return uncond + scale * (cond - uncond)

    for i, t in enumerate(scheduler.timesteps):
        eps_v = (
            cfg(image, req.image_prompt, req.image_negative, req.image_guidance, latents, t)
            if i >= req.image_start_step
            else None
        )
        eps_a = (
            cfg(audio, req.audio_prompt, req.audio_negative, req.audio_guidance, latents, t)
            if i >= req.audio_start_step
            else None
        )
        if eps_v is not None and eps_a is not None:
            eps = (1 - req.audio_weight) * eps_v + req.audio_weight * eps_a
        else:
            eps = eps_v if eps_v is not None else eps_a
        latents = scheduler.step(eps, t, latents).prev_sample
    decoded = audio.vae.decode(latents / audio.vae.config.scaling_factor).sample
    return (decoded / 2 + 0.5).clamp(0, 1).mean(dim=1)[0]


def test_sampler_equals_the_reference_loop(sampler, tiny_bundles):
    image, audio = tiny_bundles
    req = SampleRequest(
        image_prompt="castle towers",
        audio_prompt="bell ringing",
        steps=6,
        image_start_step=2,
        seed=11,
        audio_weight=0.4,
        image_negative="blurry",
        **SMALL,
    )
    result = next(iter(sampler.generate([req])))
    expected = reference_sample(image, audio, req)
    assert (result.spectrogram - expected).abs().max().item() < 1e-4


def mixed_requests() -> list[SampleRequest]:
    prompts = [("castle", "bells"), ("dogs", "barking"), ("garden", "birds"), ("kittens", "meowing")]
    requests = []
    for i in range(8):
        image_prompt, audio_prompt = prompts[i % 4]
        requests.append(
            SampleRequest(
                image_prompt=image_prompt,
                audio_prompt=audio_prompt,
                steps=3 + i % 4,
                image_start_step=i % 3,
                image_guidance=5.0 + i,
                audio_guidance=10.0 - i,
                audio_weight=0.1 * i,
                seed=100 + i,
                **SMALL,
            )
        )
    return requests


def test_a_sample_in_a_mixed_batch_equals_the_sample_alone(sampler, tiny_bundles, monkeypatch):
    """8 requests (different prompts, scales, weights, step counts, seeds) share UNet calls with at most 5 in
    flight, so samples join mid-way and one batch holds several step indices; each equals itself alone."""
    step_indices: list[list[int]] = []

    class RecordingScheduler(StepScheduler):
        def schedule(self):
            plan = super().schedule()
            step_indices.append(plan.step_index.tolist())
            return plan

    monkeypatch.setattr(sampler_module, "StepScheduler", RecordingScheduler)
    requests = mixed_requests()
    sampler.max_batch_samples = 5
    try:
        together = by_key(sampler.generate(requests))
    finally:
        sampler.max_batch_samples = 8
    assert any(len(set(indices)) > 1 for indices in step_indices), "no step mixed step indices"
    assert max(len(indices) for indices in step_indices) == 5
    image, audio = tiny_bundles
    alone_sampler = Sampler(image, audio, HiFiGANVocoder(audio.vocoder), max_batch_samples=1)
    for index in (0, 3, 6):
        alone = next(iter(alone_sampler.generate([requests[index]])))
        assert (together[index].spectrogram - alone.spectrogram).abs().max().item() < 1e-4
        assert (together[index].image - alone.image).abs().max().item() < 1e-4


def test_same_seed_same_sample_different_seed_different(sampler):
    req = SampleRequest(image_prompt="castle", audio_prompt="bells", steps=3, image_start_step=1, **SMALL)
    first, second = (next(iter(sampler.generate([req]))) for _ in range(2))
    assert torch.equal(first.spectrogram, second.spectrogram)
    assert torch.equal(first.waveform, second.waveform)
    other = next(iter(sampler.generate([req.with_seed(1)])))
    assert (first.spectrogram - other.spectrogram).abs().max().item() > 1e-3


def test_outputs_come_from_the_right_decoders(sampler, tiny_bundles):
    image, audio = tiny_bundles
    req = SampleRequest(image_prompt="castle", audio_prompt="bells", steps=2, image_start_step=1, **SMALL)
    result = next(iter(sampler.generate([req])))
    latents = result.latents[None]
    torch.testing.assert_close(result.image, decode_latents(image.vae, latents)[0])
    torch.testing.assert_close(result.spectrogram, decode_latents(audio.vae, latents)[0].mean(dim=0))
    assert result.image.shape == (3, 64, 256)
    assert result.waveform.shape == (256 * 160,)
    assert set(result.timings_s) == {"denoise", "decode", "vocode"}


def test_audio_alone_never_calls_the_image_unet(tiny_bundles, monkeypatch):
    """image_start_step = steps is the paper's 'Auffusion alone' row: the image UNet must not run."""
    image, audio = tiny_bundles
    calls = {"image": 0}
    original = image.unet.forward

    def counting_forward(*args, **kwargs):
        calls["image"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(image.unet, "forward", counting_forward)
    sampler = Sampler(image, audio, HiFiGANVocoder(audio.vocoder))
    req = SampleRequest(image_prompt="castle", audio_prompt="bells", steps=3, image_start_step=3, **SMALL)
    list(sampler.generate([req]))
    assert calls["image"] == 0
    req = SampleRequest(image_prompt="castle", audio_prompt="bells", steps=3, image_start_step=1, **SMALL)
    list(sampler.generate([req]))
    assert calls["image"] == 2


def test_progress_counts_every_sample_step(sampler):
    seen: list[int] = []
    requests = [SampleRequest(image_prompt="a", audio_prompt="b", steps=s, image_start_step=0, **SMALL) for s in (2, 3)]
    list(sampler.generate(requests, progress=seen.append))
    assert sum(seen) == 5
