"""The step scheduler: which samples take a DDIM step together, and the bookkeeping after it.

Knows nothing of Ray, HTTP or models. Each sample keeps its own state (latent, step index, DDIM schedule,
prompts); `schedule()` gathers the tensors for one step into a `StepPlan`, the caller runs the UNets on the plan's
rows, and `update()` combines the estimates and advances every sample by one DDIM step. Because every knob is
per sample, samples of different requests and at different steps share one step (continuous batching: a sample
added now joins the next step). The same scheduler drives the CLI/sweep sampler and the server's driver.

Where the tensors live: with `device` set (the local sampler passes its UNet's device), every sample's latent stays
on it from `add()` to the end, and each step's tensors are made there from a few Python numbers with one queued copy
each (`imgsound_core.transfer`), so a CUDA step loop never waits for the GPU. The values that steer Python — step
indices, the modality weights that pick each UNet's rows — stay on the host. With `device` None (the server's
driver, whose UNets are remote), everything is on the CPU.

    scheduler.add(key, request, latents)               # or add(..., start_index=k): from step k (SDEdit)
    while scheduler.has_work():
        plan = scheduler.schedule()
        eps_image = run_unet(image_unet, plan.image)   # (len(plan.image.rows), C, h, w) or None
        eps_audio = run_unet(audio_unet, plan.audio)
        finished = scheduler.update(plan, eps_image, eps_audio)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from imgsound_core.composition import combine_eps, modality_weights
from imgsound_core.ddim import DdimSchedule, ddim_schedule, ddim_step
from imgsound_core.noise import noised_latent
from imgsound_core.request import SampleRequest
from imgsound_core.transfer import to_device


@dataclass
class SampleState:
    """One sample in flight. `latents` is the fp32 master copy `(C, h, w)` on the scheduler's device; `schedule` the
    shared host table its step tensors are read from; `step_index` the next step to take."""

    key: str
    request: SampleRequest
    latents: torch.Tensor
    schedule: DdimSchedule
    step_index: int = 0

    @property
    def finished(self) -> bool:
        return self.step_index >= self.schedule.num_steps


@dataclass(frozen=True)
class ModelInputs:
    """What one modality's UNet computes in a step: a guided estimate for each of `rows`.

    Attributes:
        rows: `(R,)` int64 indices into the plan's batch.
        latents: `(R, C, h, w)` float32.
        timesteps: `(R,)` int64, one per row.
        prompts, negatives: R strings each (the embedding cache keys).
        guidance_scale: `(R,)` float32.
    Every tensor is on the scheduler's device.
    """

    rows: torch.Tensor
    latents: torch.Tensor
    timesteps: torch.Tensor
    prompts: list[str]
    negatives: list[str]
    guidance_scale: torch.Tensor

    def __len__(self) -> int:
        return int(self.rows.shape[0])


@dataclass(frozen=True)
class StepPlan:
    """The plan for one step over B samples (all tensors have B rows, in `keys` order).

    `latents` and the ᾱ values are on the scheduler's device; `step_index` and the weights are host (CPU) tensors,
    since they decide in Python which rows each UNet gets (`combine_eps` moves the weights itself).
    """

    keys: list[str]
    latents: torch.Tensor  # (B, C, h, w) float32, device
    step_index: torch.Tensor  # (B,) int64, CPU
    alpha_bar_t: torch.Tensor  # (B,) float32, device
    alpha_bar_prev: torch.Tensor  # (B,) float32, device
    weight_image: torch.Tensor  # (B,) float64, CPU
    weight_audio: torch.Tensor  # (B,) float64, CPU
    image: ModelInputs
    audio: ModelInputs

    def __len__(self) -> int:
        return len(self.keys)


def _model_inputs(
    states: list[SampleState],
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    weight: torch.Tensor,
    modality: str,
    device: torch.device,
) -> ModelInputs:
    """The rows of `modality`: those whose host `weight` is nonzero.

    Args:
        latents: `(B, C, h, w)` on `device`; timesteps, weight: `(B,)` on the CPU.
    """
    rows = torch.nonzero(weight != 0, as_tuple=False).flatten()
    picked = [states[i] for i in rows.tolist()]
    device_rows = to_device(rows, device)
    every_row = len(picked) == len(states)  # the common case: no gather, the batch is the UNet's input as it is
    return ModelInputs(
        rows=device_rows,
        latents=latents if every_row else latents[device_rows],
        timesteps=to_device(timesteps[rows], device),
        prompts=[getattr(s.request, f"{modality}_prompt") for s in picked],
        negatives=[getattr(s.request, f"{modality}_negative") for s in picked],
        guidance_scale=to_device(
            torch.tensor([getattr(s.request, f"{modality}_guidance") for s in picked], dtype=torch.float32), device
        ),
    )


@dataclass
class StepScheduler:
    """FIFO admission of samples into steps of at most `max_batch_samples` samples.

    Every admitted sample advances by one step per `schedule()`/`update()` round until it finishes; waiting
    samples are admitted as running ones finish. A UNet call costs 2 rows (CFG) per active sample.

    `device` (None: the CPU) is where the latents and the step's tensors live; see the module docstring.
    """

    scheduler_config: dict
    max_batch_samples: int = 16
    device: torch.device | str | None = None
    _states: OrderedDict[str, SampleState] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if self.max_batch_samples < 1:
            raise ValueError("max_batch_samples must be at least 1")
        self.device = torch.device("cpu") if self.device is None else torch.device(self.device)

    def add(self, key: str, request: SampleRequest, latents: torch.Tensor, start_index: int = 0) -> SampleState:
        """Queue a sample; `latents` is its `(C, h, w)` latent at step index `start_index` (any device: it is copied
        to the scheduler's).

        From the start (`start_index` 0) that is the initial noise. A sample that starts mid-schedule (from a
        source, SDEdit: `request.start_index`) takes the steps `start_index … steps − 1` only, each at its absolute
        index, so its timesteps and warm-start weights are those of the full schedule.
        """
        if key in self._states:
            raise ValueError(f"a sample with key {key!r} is already scheduled")
        if isinstance(start_index, bool) or not isinstance(start_index, int) or not 0 <= start_index < request.steps:
            raise ValueError(f"start_index must be a step index below steps ({request.steps}), got {start_index!r}")
        state = SampleState(
            key=key,
            request=request,
            # A copy of its own: the caller's tensor is never written through the master latent.
            latents=to_device(latents.detach().to(torch.float32), self.device).clone(),
            schedule=ddim_schedule(self.scheduler_config, request.steps),
            step_index=start_index,
        )
        self._states[key] = state
        return state

    def add_sample(
        self, key: str, request: SampleRequest, noise: torch.Tensor, source: torch.Tensor | None = None
    ) -> SampleState:
        """Queue a sample from its seed's noise ε `(C, h, w)`, and from `source`, the clean latent z₀ of the picture
        or sound it starts from (SDEdit), when its strength is below 1.

        At strength 1 the sample starts from ε at step 0 (a `source` is ignored). Below 1 it starts at step index
        k = `request.start_index` from z_k = √ᾱ_{t_k} · z₀ + √(1 − ᾱ_{t_k}) · ε: the forward process in one jump,
        with the sample's own noise, so the same seed and source give the same sample on any path.
        """
        if request.strength == 1.0:
            return self.add(key, request, noise)
        if source is None:
            raise ValueError(f"sample {key!r} has strength {request.strength:g} but no source latent")
        if source.shape != noise.shape:
            raise ValueError(
                f"sample {key!r}: a source latent of shape {tuple(source.shape)}, not {tuple(noise.shape)}"
            )
        start = request.start_index
        alpha_bar = ddim_schedule(self.scheduler_config, request.steps).alpha_bar_t[start]
        return self.add(key, request, noised_latent(source, noise, alpha_bar), start_index=start)

    def abort(self, key: str) -> SampleState | None:
        """Drop a sample (e.g. its client went away); returns its state, or None if unknown."""
        return self._states.pop(key, None)

    def has_work(self) -> bool:
        return bool(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def schedule(self) -> StepPlan:
        """Gather the next step's batch: the first `max_batch_samples` unfinished samples in arrival order that
        share the oldest one's latent shape (the others wait for a later step)."""
        waiting = list(self._states.values())
        if not waiting:
            raise RuntimeError("schedule() called with no samples")
        # One step is one tensor: only samples of the oldest sample's latent shape join it.
        shape = waiting[0].latents.shape
        states = [s for s in waiting if s.latents.shape == shape][: self.max_batch_samples]
        device = self.device
        latents = torch.stack([s.latents for s in states])  # (B, C, h, w), on the device
        # The schedule tables are shared host tensors: gather this step's B values there, then one copy each.
        step_index = torch.tensor([s.step_index for s in states], dtype=torch.int64)
        timesteps = torch.stack([s.schedule.timesteps[s.step_index] for s in states])
        alpha_bar_t = torch.stack([s.schedule.alpha_bar_t[s.step_index] for s in states])
        alpha_bar_prev = torch.stack([s.schedule.alpha_bar_prev[s.step_index] for s in states])
        weight_image, weight_audio = modality_weights(
            step_index,
            torch.tensor([s.request.image_start_step for s in states]),
            torch.tensor([s.request.audio_start_step for s in states]),
            torch.tensor([s.request.audio_weight for s in states], dtype=torch.float64),
        )
        return StepPlan(
            keys=[s.key for s in states],
            latents=latents,
            step_index=step_index,
            alpha_bar_t=to_device(alpha_bar_t, device),
            alpha_bar_prev=to_device(alpha_bar_prev, device),
            weight_image=weight_image,
            weight_audio=weight_audio,
            image=_model_inputs(states, latents, timesteps, weight_image, "image", device),
            audio=_model_inputs(states, latents, timesteps, weight_audio, "audio", device),
        )

    def update(
        self, plan: StepPlan, eps_image: torch.Tensor | None, eps_audio: torch.Tensor | None
    ) -> list[SampleState]:
        """Combine the estimates, take one DDIM step for every sample of `plan`, return the samples now finished.

        Args:
            eps_image: `(len(plan.image), C, h, w)` guided estimates for `plan.image.rows` (None if no rows).
            eps_audio: likewise for `plan.audio.rows`.
        Samples aborted while the step ran are skipped.
        """
        full_image = _scatter(eps_image, plan.image, plan.latents)
        full_audio = _scatter(eps_audio, plan.audio, plan.latents)
        eps = combine_eps(full_image, full_audio, plan.weight_image, plan.weight_audio)
        new_latents = ddim_step(plan.latents, eps, plan.alpha_bar_t, plan.alpha_bar_prev)
        finished = []
        for row, key in enumerate(plan.keys):
            state = self._states.get(key)
            if state is None:
                continue
            state.latents = new_latents[row]
            state.step_index += 1
            if state.finished:
                finished.append(self._states.pop(key))
        return finished


def _scatter(eps: torch.Tensor | None, inputs: ModelInputs, like: torch.Tensor) -> torch.Tensor | None:
    """Place the `(R, ...)` estimates of `inputs.rows` into a zero `(B, ...)` float32 tensor on `like`'s device."""
    if len(inputs) == 0:
        return None
    if eps is None or eps.shape[0] != len(inputs):
        got = None if eps is None else tuple(eps.shape)
        raise ValueError(f"expected {len(inputs)} estimates, got {got}")
    eps = eps.to(device=like.device, dtype=like.dtype)
    if len(inputs) == like.shape[0]:  # every row, in order (rows come sorted from nonzero): nothing to place
        return eps
    full = torch.zeros_like(like)
    full[inputs.rows.to(like.device)] = eps
    return full
