"""Colorization by factorized diffusion: an RGB picture whose grayscale is a given picture, its colours made up by
DeepFloyd IF (the paper's Sec. 3.3 and A.1; Geng, Park, Owens, "Factorized Diffusion", 2024).

Views. A view splits a picture into components that add up to it, x = Σ_k f_k(x) (`view.forward`), and its
inverse adds them up again (`view.inverse`). The colour view splits an RGB picture `(B, 3, H, W)` into

    L(x) = mean_c(x_c) broadcast to 3 channels (luminance),   C(x) = x − L(x) (colour),   x = L(x) + C(x).

Factorized diffusion estimates each component's noise with its own prompt, ε̂ = Σ_k f_k(ε̂_k); colorization uses one
prompt for both, so ε̂ is the plain guided estimate. What makes it colorize is the projection before every step: the
luminance of the sample is replaced by the forward-noised luminance of the grayscale reference y ∈ [−1, 1],

    ỹ_t = √ᾱ_t · y + √(1 − ᾱ_t) · ε′   (ε′ ~ N(0, I), fresh at every step),      x_t ← L(ỹ_t) + C(x_t),

so the model only ever makes up C. The sampler (§6 of the reference facts; defaults in `ColorizeSettings`):
  1. stage I at a quarter of the picture's size (64×256 for 256×1024, 64×248 for the cropped 256×992; IF's UNets
     are convolutional, so non-square pictures work), DDPM steps from step `start_step` of `steps` (7 of 30,
     t = 726): the sample starts as the noisy reference's luminance with no colour — the paper found that a
     stronger prior on the structure than pure noise;
  2. stage II at the picture's size, all `steps` steps from pure noise, conditioned on the stage-I result upscaled
     4× (bilinear) and noised to `noise_level` (50), with the same projection against the full-size reference;
  3. the last sample's luminance is set to y itself (the projection at t = 0), and colours that leave the RGB cube
     are desaturated towards their grey instead of clipped per channel, so the result's channel mean is y (to 8-bit
     rounding once saved).

Where this differs from the reference code, on purpose: the steps before `start_step` are not run (the reference
runs and then discards them); the start is L(ỹ_t), not the 2·L(ỹ_t) an in-place edit there produces; step 3
replaces a per-channel clamp; the two views' UNet rows (identical inputs and prompts) are computed once, which gives
the same average; and sample b draws all its noise from its own CPU generator seeded `seeds[b]` instead of the
global RNG, so a sample does not depend on its batch-mates or the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from imgsound_core.composition import append_dims
from imgsound_core.models.deepfloyd import IF_UPSCALE, IFStage, check_if_pair, encode_if_prompts, guided_noise
from imgsound_core.request import MAX_STEPS

Components = tuple[torch.Tensor, ...]
PROMPT_TEMPLATE = "a colorful photo of {}"  # the paper's form of colorization prompt


@dataclass(frozen=True)
class View:
    """A factorization of a picture into components that add up to it.

    Attributes:
        name: for messages and provenance.
        forward: `(B, C, H, W)` → the components, each `(B, C, H, W)`.
        inverse: the components → `(B, C, H, W)`; `inverse(forward(x)) == x`.
    """

    name: str
    forward: Callable[[torch.Tensor], Components]
    inverse: Callable[[Components], torch.Tensor]


def luminance(x: torch.Tensor) -> torch.Tensor:
    """L(x): the per-pixel channel mean of `(B, C, H, W)`, broadcast back to C channels."""
    return x.mean(dim=1, keepdim=True).expand_as(x)


def split_luminance_colour(x: torch.Tensor) -> Components:
    """(L(x), x − L(x)): the grey picture and the colour that sits on it (zero channel mean)."""
    grey = luminance(x)
    return grey, x - grey


def sum_components(components: Components) -> torch.Tensor:
    """Σ_k components_k — the inverse of any view whose components add up to the picture."""
    return torch.stack(components).sum(dim=0)


COLOUR_VIEW = View("luminance+colour", split_luminance_colour, sum_components)


def factorized_estimate(view: View, estimates: Sequence[torch.Tensor]) -> torch.Tensor:
    """ε̂ = Σ_k f_k(ε̂_k): component k of the noise estimate made for prompt k (Factorized Diffusion, Eq. 4).

    Args:
        estimates: one `(B, C, H, W)` estimate per component of `view`; pass the same one for each to use one prompt.
    """
    return view.inverse(tuple(view.forward(eps)[k] for k, eps in enumerate(estimates)))


def project(view: View, x: torch.Tensor, reference: torch.Tensor, index: int = 0) -> torch.Tensor:
    """x with component `index` replaced by the reference's: f_index(reference) + Σ_{k ≠ index} f_k(x)."""
    components = list(view.forward(x))
    components[index] = view.forward(reference)[index]
    return view.inverse(tuple(components))


def noised(x0: torch.Tensor, alpha_bar_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The forward process q(x_t | x_0): √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, with `alpha_bar_t` `(B,)` or a scalar."""
    alpha_bar_t = append_dims(torch.as_tensor(alpha_bar_t, dtype=x0.dtype, device=x0.device).reshape(-1), x0.ndim)
    return alpha_bar_t.sqrt() * x0 + (1 - alpha_bar_t).sqrt() * noise


def fit_gamut(x: torch.Tensor, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """Scale each pixel's colour C(x) by the largest α ∈ [0, 1] that keeps L(x) + α·C(x) inside [low, high].

    Unlike a per-channel clamp, this leaves the luminance unchanged (a pixel at the bound becomes its grey).
    """
    grey = luminance(x).clamp(low, high)
    colour = x - luminance(x)
    headroom = torch.where(colour >= 0, high - grey, grey - low)  # distance to the bound the colour points at
    alpha = (headroom / colour.abs().clamp_min(1e-12)).amin(dim=1, keepdim=True).clamp(max=1.0)
    return grey + alpha * colour


def stage_1_size(height: int, width: int) -> tuple[int, int]:
    """Stage I's picture size: a quarter of the final one (stage II upscales 4×)."""
    return height // IF_UPSCALE, width // IF_UPSCALE


@dataclass(frozen=True)
class ColorizeSettings:
    """The colorizer's knobs; defaults are the reference's (§6.4–6.6).

    Attributes:
        steps: DDPM steps of each stage (timesteps spaced "leading": 957, 924, …, 0 for 30).
        guidance_scale: classifier-free guidance of both stages.
        start_step: stage I starts at this step (the earlier ones are skipped); 0 starts from pure noise.
        noise_level: the timestep to which stage II's image-noising scheduler noises the upscaled stage-I picture.
        negative_prompt: the unconditional branch's text.
    """

    steps: int = 30
    guidance_scale: float = 10.0
    start_step: int = 7
    noise_level: int = 50
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if not 0 <= self.start_step < self.steps:
            raise ValueError(
                f"the start step must be between 0 and steps − 1 = {self.steps - 1}, got {self.start_step}"
            )
        if not (math.isfinite(self.guidance_scale) and 0 <= self.guidance_scale <= 100):
            raise ValueError(f"the guidance scale must be between 0 and 100, got {self.guidance_scale}")
        if not 0 <= self.noise_level <= 999:
            raise ValueError(f"the noise level must be between 0 and 999, got {self.noise_level}")

    def to_dict(self) -> dict:
        return asdict(self)


def _randn(generators: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """`(B, *shape)` float32 standard normals, row b from `generators[b]` (on the CPU, so any device agrees)."""
    rows = [torch.randn((1, *shape), generator=g) for g in generators]
    return torch.cat(rows).to(device)


def _new_scheduler(stage: IFStage, steps: int):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(stage.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


def _denoise(
    stage: IFStage,
    scheduler,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    embeds: tuple[torch.Tensor, torch.Tensor],
    guidance_scale: float,
    generators: Sequence[torch.Generator],
    reference: torch.Tensor | None,
    condition: torch.Tensor | None = None,
    class_labels: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The DDPM loop of one IF stage over `(B, 3, h, w)` samples, with the luminance projection when `reference`.

    Args:
        embeds: (prompt, negative) T5 embeddings, each `(B, 77, D)`.
        reference: `(B, 3, h, w)` grey reference y in [−1, 1], or None for plain IF sampling.
        condition: stage II's `(B, 3, h, w)` noised upscaled stage-I picture, concatenated to the UNet input.
    """
    prompt_embeds, negative_embeds = embeds
    for t in timesteps:
        if reference is not None:
            alpha_bar_t = scheduler.alphas_cumprod[t].to(torch.float32)
            noisy_reference = noised(reference, alpha_bar_t, _randn(generators, reference.shape[1:], x.device))
            x = project(COLOUR_VIEW, x, noisy_reference)
        model_input = x if condition is None else torch.cat([x, condition], dim=1)
        eps, variance = guided_noise(
            stage.unet, model_input, t, prompt_embeds, negative_embeds, guidance_scale, class_labels
        )
        eps = factorized_estimate(COLOUR_VIEW, [eps, eps])  # one prompt for both components
        x = scheduler.step(torch.cat([eps, variance], dim=1), t, x, generator=list(generators)).prev_sample
        if progress is not None:
            progress(1)
    return x


def sample_stage_1(
    stage: IFStage,
    embeds: tuple[torch.Tensor, torch.Tensor],
    size: tuple[int, int],
    generators: Sequence[torch.Generator],
    settings: ColorizeSettings,
    reference: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """IF stage I: `(B, 3, h, w)` float32 samples in about [−1, 1].

    With a `reference`, steps before `settings.start_step` are skipped and the sample starts colourless (the
    projection then makes it L(ỹ_t)); without one, this is IF's own text-to-image sampling from `start_step` 0.
    """
    scheduler = _new_scheduler(stage, settings.steps)
    B, device = len(generators), stage.device
    if reference is None or settings.start_step == 0:
        x = _randn(generators, (3, *size), device) * scheduler.init_noise_sigma
    else:
        x = torch.zeros((B, 3, *size), device=device)
    timesteps = scheduler.timesteps[settings.start_step if reference is not None else 0 :]
    return _denoise(
        stage, scheduler, x, timesteps, embeds, settings.guidance_scale, generators, reference, progress=progress
    )


def sample_stage_2(
    stage: IFStage,
    low_res: torch.Tensor,
    embeds: tuple[torch.Tensor, torch.Tensor],
    size: tuple[int, int],
    generators: Sequence[torch.Generator],
    settings: ColorizeSettings,
    reference: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """IF stage II: `(B, 3, H, W)` float32 samples from pure noise, conditioned on `low_res` `(B, 3, h, w)`."""
    scheduler = _new_scheduler(stage, settings.steps)
    B, device = len(generators), stage.device
    x = _randn(generators, (3, *size), device) * scheduler.init_noise_sigma
    upscaled = F.interpolate(low_res.to(device, torch.float32), size=size, mode="bilinear", align_corners=True)
    noise_level = torch.full((B,), settings.noise_level, dtype=torch.long)
    condition = stage.image_noising_scheduler.add_noise(
        upscaled, _randn(generators, upscaled.shape[1:], device), noise_level
    )
    return _denoise(
        stage,
        scheduler,
        x,
        scheduler.timesteps,
        embeds,
        settings.guidance_scale,
        generators,
        reference,
        condition=condition,
        class_labels=noise_level.to(device),
        progress=progress,
    )


def check_picture_size(stage_1: IFStage, stage_2: IFStage, height: int, width: int) -> None:
    """Both sides must split into the stages' UNet grids: multiples of 4 × stage I's factor and of stage II's."""
    multiple = math.lcm(IF_UPSCALE * stage_1.downsample_factor, stage_2.downsample_factor)
    if height % multiple or width % multiple:
        raise ValueError(
            f"a {height}×{width} picture cannot be colorized with these models: both sides must be multiples of "
            f"{multiple} (e.g. 256×1024 or the cropped 256×992)"
        )


def colorize(
    stage_1: IFStage,
    stage_2: IFStage,
    pictures: torch.Tensor,
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: ColorizeSettings = ColorizeSettings(),
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Colorize `pictures`: RGB pictures whose channel mean is each picture's channel mean.

    Args:
        pictures: `(B, C, H, W)` in [0, 1] (C = 1 or 3; only the channel mean is used).
        prompts: B texts, e.g. `PROMPT_TEMPLATE.format("kittens")`.
        seeds: B seeds; sample b's output depends only on its picture, prompt, seed and the settings.
        progress: called with 1 after every step of either stage (`2 · steps − start_step` per batch).
    Returns:
        `(B, 3, H, W)` float32 in [0, 1] on the CPU.
    """
    B, _, H, W = pictures.shape
    if len(prompts) != B or len(seeds) != B:
        raise ValueError(f"{B} pictures need {B} prompts and seeds, got {len(prompts)} and {len(seeds)}")
    check_if_pair(stage_1, stage_2)
    check_picture_size(stage_1, stage_2, H, W)
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    prompt_embeds = encode_if_prompts(stage_1, list(prompts))
    embeds = (prompt_embeds, encode_if_prompts(stage_1, [settings.negative_prompt] * B))

    # y ∈ [−1, 1]: the pictures' channel mean, as 3 equal channels (only L(y) matters, and L(y) = y)
    grey = (pictures.to(stage_1.device, torch.float32).mean(dim=1, keepdim=True) * 2 - 1).expand(B, 3, H, W)
    small = stage_1_size(H, W)
    grey_small = F.interpolate(grey, size=small, mode="bilinear", align_corners=False, antialias=False)
    low_res = sample_stage_1(stage_1, embeds, small, generators, settings, reference=grey_small, progress=progress)
    x = sample_stage_2(
        stage_2, low_res, embeds, (H, W), generators, settings, reference=grey.to(stage_2.device), progress=progress
    )
    x = fit_gamut(project(COLOUR_VIEW, x, grey.to(x.device)))
    return ((x + 1) / 2).clamp(0, 1).cpu()
