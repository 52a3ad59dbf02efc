"""Multimodal composition of noise estimates (the paper's Sec. 3.2, Eq. 3 and 4).

Pure functions of tensors: every per-sample knob is a `(B,)` tensor, so one call serves a batch whose samples
come from different requests and sit at different steps. No models, no RNG, no globals.
"""

from __future__ import annotations

import torch

from imgsound_core.transfer import to_device


def append_dims(values: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """View a `(B,)` tensor as `(B, 1, ..., 1)` with `target_ndim` dims, so it broadcasts over a latent batch."""
    missing = target_ndim - values.ndim
    if missing < 0:
        raise ValueError(f"cannot broadcast a {values.ndim}-d tensor to {target_ndim} dims")
    return values.reshape(values.shape + (1,) * missing)


def guided_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: ε = ε(z, ∅) + s · (ε(z, y) − ε(z, ∅)).

    Args:
        eps_uncond: `(B, C, h, w)` noise estimate for the negative prompt.
        eps_cond: `(B, C, h, w)` noise estimate for the prompt.
        guidance_scale: `(B,)` scale s per sample.
    Returns:
        `(B, C, h, w)` guided estimate, in the dtype of the estimates.
    """
    scale = append_dims(guidance_scale.to(eps_cond.dtype), eps_cond.ndim)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def modality_weights(
    step_index: torch.Tensor,
    image_start_step: torch.Tensor,
    audio_start_step: torch.Tensor,
    audio_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weights of the image and audio estimates at a step (warm start included).

    A model contributes iff `step_index >= its start step`. Both active: (1 − w, w); one active: that one gets 1;
    none active: a ValueError (the request validation makes this unreachable). The warm start is thus a table
    of weights, e.g. with image_start_step 10: steps 0–9 → (0, 1), steps ≥ 10 → (0.5, 0.5).

    Args:
        step_index: `(B,)` integer index k of the step each sample is about to take (0 = first, noisiest).
        image_start_step, audio_start_step: `(B,)` integer start steps.
        audio_weight: `(B,)` float w.
    Returns:
        `(weight_image, weight_audio)`, each `(B,)` float64 (exact for 0, 1 and the user's w; cast at use).
    """
    image_active = step_index >= image_start_step
    audio_active = step_index >= audio_start_step
    if bool((~image_active & ~audio_active).any()):
        raise ValueError("at some step neither the image nor the audio model is active; one start step must be 0")
    w = audio_weight.to(torch.float64)
    both = image_active & audio_active
    weight_audio = torch.where(both, w, audio_active.to(torch.float64))
    weight_image = torch.where(both, 1.0 - w, image_active.to(torch.float64))
    return weight_image, weight_audio


def combine_eps(
    eps_image: torch.Tensor | None,
    eps_audio: torch.Tensor | None,
    weight_image: torch.Tensor,
    weight_audio: torch.Tensor,
) -> torch.Tensor:
    """The combined estimate ε = w_image · ε_image + w_audio · ε_audio (Eq. 4).

    A row whose weight is exactly 0 takes nothing from that modality (its estimate for the row may be anything,
    even absent); a row whose weight is exactly 1 takes that estimate unchanged, bit for bit, as the reference
    code does when only one model is active.

    Args:
        eps_image, eps_audio: `(B, C, h, w)` guided estimates, or None when no row uses that modality.
        weight_image, weight_audio: `(B,)` weights from `modality_weights`. Which terms to add is decided on the
            weights' own device, so CPU weights (as the step scheduler keeps them) cost the estimates' device no
            synchronisation; they are then copied to it.
    Returns:
        `(B, C, h, w)`, on the estimates' device.
    """
    reference = eps_image if eps_image is not None else eps_audio
    if reference is None:
        raise ValueError("combine_eps needs at least one estimate")
    combined = torch.zeros_like(reference)
    for eps, weight in ((eps_image, weight_image), (eps_audio, weight_audio)):
        if not bool((weight != 0).any()):
            continue
        if eps is None:
            raise ValueError("a row has a nonzero weight for a modality whose estimate is missing")
        weight = to_device(weight, eps.device)
        used = weight != 0
        only = weight == 1
        w = append_dims(weight.to(eps.dtype), eps.ndim)
        term = torch.where(append_dims(only, eps.ndim), eps, w * eps)
        combined = torch.where(append_dims(used, eps.ndim), combined + term, combined)
    return combined
