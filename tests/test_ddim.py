"""The per-sample DDIM update against diffusers' DDIMScheduler.step, sample by sample."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from imgsound_core.ddim import SchedulerConfigError, ddim_schedule, ddim_step
from imgsound_core.models.tiny import SD15_SCHEDULER_CONFIG


def _oracle(num_steps: int) -> DDIMScheduler:
    scheduler = DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    scheduler.set_timesteps(num_steps)
    return scheduler


def test_schedule_matches_the_papers_timesteps():
    schedule = ddim_schedule(SD15_SCHEDULER_CONFIG, 100)
    assert schedule.timesteps.tolist() == list(range(991, 0, -10))  # leading spacing + steps_offset 1
    # set_alpha_to_one false: the last previous ᾱ is ᾱ_0 = 1 − β_0
    assert schedule.alpha_bar_prev[-1].item() == pytest.approx(1 - 0.00085, abs=1e-7)
    assert torch.equal(schedule.alpha_bar_prev[:-1], schedule.alpha_bar_t[1:])


@pytest.mark.parametrize("num_steps", [1, 7, 20, 100])
def test_schedule_timesteps_equal_diffusers(num_steps):
    schedule = ddim_schedule(SD15_SCHEDULER_CONFIG, num_steps)
    assert schedule.timesteps.tolist() == _oracle(num_steps).timesteps.tolist()


def test_ddim_step_equals_diffusers_on_every_step():
    torch.manual_seed(0)
    num_steps = 20
    oracle = _oracle(num_steps)
    schedule = ddim_schedule(SD15_SCHEDULER_CONFIG, num_steps)
    latents = torch.randn(2, 4, 8, 16)
    for k, t in enumerate(oracle.timesteps):
        eps = torch.randn_like(latents)
        expected = oracle.step(eps, t, latents).prev_sample
        got = ddim_step(latents, eps, schedule.alpha_bar_t[k].repeat(2), schedule.alpha_bar_prev[k].repeat(2))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        latents = expected


def test_ddim_step_mixed_timesteps_equals_diffusers_sample_by_sample():
    """Rows at different steps of different step counts, advanced in one call, each equal diffusers alone."""
    torch.manual_seed(1)
    cases = [(100, 0), (100, 57), (20, 19), (7, 3), (50, 49)]
    latents = torch.randn(len(cases), 4, 8, 16)
    eps = torch.randn_like(latents)
    a_t, a_prev, expected = [], [], []
    for row, (num_steps, k) in enumerate(cases):
        schedule = ddim_schedule(SD15_SCHEDULER_CONFIG, num_steps)
        a_t.append(schedule.alpha_bar_t[k])
        a_prev.append(schedule.alpha_bar_prev[k])
        oracle = _oracle(num_steps)
        expected.append(oracle.step(eps[row : row + 1], oracle.timesteps[k], latents[row : row + 1]).prev_sample)
    got = ddim_step(latents, eps, torch.stack(a_t), torch.stack(a_prev))
    torch.testing.assert_close(got, torch.cat(expected), rtol=0, atol=1e-6)


def test_ddim_step_hand_computation():
    x = torch.tensor([2.0]).reshape(1, 1, 1, 1)
    eps = torch.tensor([0.5]).reshape(1, 1, 1, 1)
    a_t, a_prev = torch.tensor([0.25]), torch.tensor([0.64])
    # x̂0 = (2 − √0.75·0.5)/0.5; x_prev = 0.8·x̂0 + 0.6·0.5
    x0 = (2 - 0.75**0.5 * 0.5) / 0.5
    assert ddim_step(x, eps, a_t, a_prev).item() == pytest.approx(0.8 * x0 + 0.6 * 0.5, abs=1e-6)


def test_unsupported_scheduler_configs_are_refused():
    with pytest.raises(SchedulerConfigError, match="prediction_type"):
        ddim_schedule({**SD15_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}, 10)
    with pytest.raises(SchedulerConfigError, match="thresholding"):
        ddim_schedule({**SD15_SCHEDULER_CONFIG, "thresholding": True}, 10)
    with pytest.raises(ValueError):
        ddim_schedule(SD15_SCHEDULER_CONFIG, 0)
