"""The step scheduler on CPU with hand-made noise estimates (no models)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from imgsound_core.models.tiny import SD15_SCHEDULER_CONFIG
from imgsound_core.request import SampleRequest
from imgsound_core.scheduler import ModelInputs, StepScheduler

SHAPE = (4, 2, 3)


def fake_eps(modality: str, inputs: ModelInputs) -> torch.Tensor:
    """A deterministic stand-in for a guided UNet estimate that depends on latents, timestep and guidance."""
    t = inputs.timesteps.float().reshape(-1, 1, 1, 1) / 1000
    g = inputs.guidance_scale.reshape(-1, 1, 1, 1)
    sign = 1.0 if modality == "image" else -1.0
    return sign * 0.1 * inputs.latents + t + 0.01 * g


def request(**overrides) -> SampleRequest:
    base = dict(image_prompt="castle", audio_prompt="bells", steps=6, image_start_step=2, height=16, width=24)
    return SampleRequest(**{**base, **overrides})


def reference(req: SampleRequest, latents: torch.Tensor) -> torch.Tensor:
    """The paper's loop for one sample, with diffusers' DDIMScheduler.step as the update."""
    oracle = DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    oracle.set_timesteps(req.steps)
    z = latents[None].clone()

    def inputs(modality: str, z: torch.Tensor, t: torch.Tensor) -> ModelInputs:
        return ModelInputs(
            rows=torch.tensor([0]),
            latents=z,
            timesteps=t.reshape(1),
            prompts=[""],
            negatives=[""],
            guidance_scale=torch.tensor([getattr(req, f"{modality}_guidance")]),
        )

    for k, t in enumerate(oracle.timesteps):
        eps_v = fake_eps("image", inputs("image", z, t)) if k >= req.image_start_step else None
        eps_a = fake_eps("audio", inputs("audio", z, t)) if k >= req.audio_start_step else None
        if eps_v is not None and eps_a is not None:
            eps = (1 - req.audio_weight) * eps_v + req.audio_weight * eps_a
        else:
            eps = eps_v if eps_v is not None else eps_a
        z = oracle.step(eps, t, z).prev_sample
    return z[0]


def run(scheduler: StepScheduler, log: list | None = None) -> dict[str, torch.Tensor]:
    done = {}
    while scheduler.has_work():
        plan = scheduler.schedule()
        if log is not None:
            log.append(plan)
        eps_image = fake_eps("image", plan.image) if len(plan.image) else None
        eps_audio = fake_eps("audio", plan.audio) if len(plan.audio) else None
        for state in scheduler.update(plan, eps_image, eps_audio):
            done[state.key] = state.latents
    return done


def test_mixed_batch_equals_the_reference_loop_per_sample():
    requests = {
        "a": request(),
        "b": request(steps=4, image_start_step=0, audio_weight=0.2, image_guidance=3.0),
        "c": request(steps=9, image_start_step=9, audio_guidance=7.5),  # audio alone
        "d": request(steps=5, image_start_step=0, audio_start_step=5),  # image alone
        "e": request(steps=6, image_start_step=0, audio_start_step=3, audio_weight=1.0),
    }
    noise = {key: torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)) for i, key in enumerate(requests)}
    scheduler = StepScheduler(SD15_SCHEDULER_CONFIG, max_batch_samples=3)
    for key, req in requests.items():
        scheduler.add(key, req, noise[key])
    done = run(scheduler)
    assert set(done) == set(requests)
    for key, req in requests.items():
        torch.testing.assert_close(done[key], reference(req, noise[key]), rtol=0, atol=1e-6)


def test_continuous_batching_admits_new_samples_into_running_steps():
    scheduler = StepScheduler(SD15_SCHEDULER_CONFIG, max_batch_samples=2)
    scheduler.add("short", request(steps=2, image_start_step=0), torch.zeros(SHAPE))
    scheduler.add("long", request(steps=6), torch.zeros(SHAPE))
    scheduler.add("late", request(steps=3, image_start_step=0), torch.zeros(SHAPE))
    log: list = []
    run(scheduler, log)
    assert [p.keys for p in log[:2]] == [["short", "long"]] * 2
    assert log[2].keys == ["long", "late"]  # joined as soon as a slot freed
    assert log[2].step_index.tolist() == [2, 0]  # one UNet batch, two different steps
    assert max(len(p) for p in log) == 2


def test_warm_start_rows_skip_the_image_model():
    scheduler = StepScheduler(SD15_SCHEDULER_CONFIG)
    scheduler.add("warm", request(image_start_step=2), torch.zeros(SHAPE))
    scheduler.add("cold", request(image_start_step=0), torch.zeros(SHAPE))
    plan = scheduler.schedule()
    assert plan.image.rows.tolist() == [1]
    assert plan.audio.rows.tolist() == [0, 1]
    assert plan.weight_image.tolist() == [0.0, 0.5]


def test_abort_and_validation():
    scheduler = StepScheduler(SD15_SCHEDULER_CONFIG)
    scheduler.add("x", request(), torch.zeros(SHAPE))
    with pytest.raises(ValueError, match="already scheduled"):
        scheduler.add("x", request(), torch.zeros(SHAPE))
    plan = scheduler.schedule()
    with pytest.raises(ValueError, match="expected 1 estimates"):
        scheduler.update(plan, None, torch.zeros(2, *SHAPE))
    assert scheduler.abort("x") is not None
    assert scheduler.update(plan, None, torch.zeros(1, *SHAPE)) == []  # aborted mid-step: skipped
    assert not scheduler.has_work()
    with pytest.raises(RuntimeError):
        scheduler.schedule()
    with pytest.raises(ValueError):
        StepScheduler(SD15_SCHEDULER_CONFIG, max_batch_samples=0)


def test_samples_of_different_sizes_never_share_a_step():
    scheduler = StepScheduler(SD15_SCHEDULER_CONFIG, max_batch_samples=4)
    scheduler.add("small", request(steps=2, image_start_step=0), torch.zeros(SHAPE))
    scheduler.add("large", request(steps=2, image_start_step=0, height=32, width=32), torch.zeros(4, 4, 4))
    scheduler.add("small2", request(steps=2, image_start_step=0), torch.zeros(SHAPE))
    log: list = []
    done = run(scheduler, log)
    assert set(done) == {"small", "large", "small2"}
    assert [p.keys for p in log] == [["small", "small2"]] * 2 + [["large"]] * 2


def test_on_a_device_the_latents_and_the_step_tensors_stay_there():
    """With `device`, latents and every tensor of a step's arithmetic live there from `add` to the end; the values
    Python decides with (step indices, weights) stay on the host. "meta" stands in for an accelerator."""
    scheduler = StepScheduler(SD15_SCHEDULER_CONFIG, max_batch_samples=3, device="meta")
    requests = [request(steps=3, image_start_step=1), request(steps=4, image_start_step=0), request(steps=2)]
    for index, req in enumerate(requests):
        state = scheduler.add(str(index), req, torch.randn(SHAPE))
        assert state.latents.device.type == "meta" and state.latents.dtype == torch.float32
    finished = []
    while scheduler.has_work():
        plan = scheduler.schedule()
        on_device = [plan.latents, plan.alpha_bar_t, plan.alpha_bar_prev]
        for inputs in (plan.image, plan.audio):
            on_device += [inputs.rows, inputs.latents, inputs.timesteps, inputs.guidance_scale]
        assert all(t.device.type == "meta" for t in on_device)
        assert all(t.device.type == "cpu" for t in (plan.step_index, plan.weight_image, plan.weight_audio))
        eps = [torch.empty_like(i.latents) if len(i) else None for i in (plan.image, plan.audio)]
        finished += scheduler.update(plan, *eps)
    assert sorted(s.key for s in finished) == ["0", "1", "2"]
    assert all(s.latents.device.type == "meta" for s in finished)


def test_the_default_device_is_the_cpu():
    scheduler = StepScheduler(SD15_SCHEDULER_CONFIG)
    assert scheduler.device == torch.device("cpu")
    noise = torch.randn(SHAPE)
    state = scheduler.add("a", request(), noise)
    assert state.latents.device.type == "cpu" and torch.equal(state.latents, noise)
    state.latents += 1  # the master copy is the scheduler's own
    assert not torch.equal(state.latents, noise)
