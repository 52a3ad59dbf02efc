"""Deterministic DDIM (η = 0) with a per-sample timestep.

diffusers' `DDIMScheduler.step` advances a whole batch by one shared scalar timestep; a server that mixes
requests at different steps in one UNet call needs ᾱ per sample. Here the timestep schedule and the ᾱ table are
built once from diffusers' own `DDIMScheduler` (so spacing, offset and `set_alpha_to_one` are exactly diffusers'),
and the update is a pure function of `(B,)` tensors. `DDIMScheduler.step` is the test oracle.

Symbols (DDIM paper, Eq. 12 with σ = 0):
    x̂₀     = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t
    x_prev = √ᾱ_prev · x̂₀ + √(1 − ᾱ_prev) · ε
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from imgsound_core.composition import append_dims


class SchedulerConfigError(ValueError):
    """The scheduler config asks for something this DDIM does not implement."""


@dataclass(frozen=True)
class DdimSchedule:
    """The timesteps and ᾱ values of one step count, built once.

    Attributes:
        timesteps: `(N,)` int64, descending (e.g. 991, 981, …, 1 for N = 100 with SD-1.5's config).
        alpha_bar_t: `(N,)` float32 ᾱ at each timestep.
        alpha_bar_prev: `(N,)` float32 ᾱ at the previous timestep (the final ᾱ for the last step).
    """

    timesteps: torch.Tensor
    alpha_bar_t: torch.Tensor
    alpha_bar_prev: torch.Tensor

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])


def _check_supported(config: dict) -> None:
    prediction = config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise SchedulerConfigError(f"prediction_type {prediction!r} is not supported; only 'epsilon' is")
    if config.get("thresholding") or config.get("clip_sample"):
        raise SchedulerConfigError("thresholding and clip_sample are not supported by the per-sample DDIM step")


@lru_cache(maxsize=64)
def _schedule_cached(config_items: tuple, num_steps: int) -> DdimSchedule:
    from diffusers import DDIMScheduler

    config = dict(config_items)
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(num_steps)
    timesteps = scheduler.timesteps.to(torch.int64)
    step_ratio = scheduler.config.num_train_timesteps // num_steps
    prev = timesteps - step_ratio
    alphas = scheduler.alphas_cumprod
    alpha_bar_t = alphas[timesteps]
    final = scheduler.final_alpha_cumprod.to(alphas.dtype)
    alpha_bar_prev = torch.where(prev >= 0, alphas[prev.clamp(min=0)], final)
    return DdimSchedule(timesteps=timesteps, alpha_bar_t=alpha_bar_t, alpha_bar_prev=alpha_bar_prev)


def _freeze(value):
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def ddim_schedule(scheduler_config: dict, num_steps: int) -> DdimSchedule:
    """Timesteps and ᾱ for `num_steps` DDIM steps under `scheduler_config` (a diffusers scheduler config dict).

    PNDM configs (SD-1.5 ships one) are read as DDIM configs; keys DDIM does not know are ignored, as in the
    reference code.
    """
    if num_steps < 1:
        raise ValueError("num_steps must be at least 1")
    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    _check_supported(config)
    items = tuple(sorted((k, _freeze(v)) for k, v in config.items()))
    return _schedule_cached(items, num_steps)


def ddim_step(
    latents: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM step for a batch whose samples may be at different timesteps.

    Args:
        latents: `(B, C, h, w)` x_t.
        eps: `(B, C, h, w)` noise estimate ε(x_t, t).
        alpha_bar_t, alpha_bar_prev: `(B,)` ᾱ at t and at the previous timestep, per sample.
    Returns:
        `(B, C, h, w)` x_prev, in the dtype of `latents`.
    """
    a_t = append_dims(alpha_bar_t.to(latents.device), latents.ndim)
    a_prev = append_dims(alpha_bar_prev.to(latents.device), latents.ndim)
    # The same operations, in the same order, as DDIMScheduler.step with eta = 0 (bit-compatible on uniform
    # batches).
    pred_original = (latents - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    direction = (1 - a_prev) ** 0.5 * eps
    return (a_prev**0.5 * pred_original + direction).to(latents.dtype)
