"""The composition formulas against hand computations."""

from __future__ import annotations

import pytest
import torch

from imgsound_core.composition import append_dims, combine_eps, guided_eps, modality_weights


def test_guided_eps_matches_hand_computation_per_sample():
    eps_uncond = torch.tensor([[1.0, 2.0], [0.5, -1.0]]).reshape(2, 2, 1, 1)
    eps_cond = torch.tensor([[3.0, 2.0], [1.5, 1.0]]).reshape(2, 2, 1, 1)
    scale = torch.tensor([10.0, 0.5])
    out = guided_eps(eps_uncond, eps_cond, scale).flatten(1)
    # sample 0: 1 + 10·(3−1) = 21, 2 + 10·0 = 2; sample 1: 0.5 + 0.5·1 = 1, −1 + 0.5·2 = 0
    assert torch.equal(out, torch.tensor([[21.0, 2.0], [1.0, 0.0]]))


def test_guided_eps_scale_one_is_the_conditional_estimate():
    eps_uncond, eps_cond = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(guided_eps(eps_uncond, eps_cond, torch.ones(3)), eps_cond)


def test_modality_weights_warm_start_table():
    steps = torch.arange(0, 14)
    n = steps.shape[0]
    w_img, w_aud = modality_weights(
        steps, torch.full((n,), 10), torch.zeros(n, dtype=torch.long), torch.full((n,), 0.5)
    )
    assert w_img.tolist() == [0.0] * 10 + [0.5] * 4
    assert w_aud.tolist() == [1.0] * 10 + [0.5] * 4


def test_modality_weights_each_sample_its_own_schedule():
    step = torch.tensor([0, 5, 5, 3])
    image_start = torch.tensor([0, 10, 0, 0])
    audio_start = torch.tensor([0, 0, 7, 0])
    weight = torch.tensor([0.3, 0.3, 0.3, 0.0])
    w_img, w_aud = modality_weights(step, image_start, audio_start, weight)
    assert w_img.tolist() == pytest.approx([0.7, 0.0, 1.0, 1.0])
    assert w_aud.tolist() == pytest.approx([0.3, 1.0, 0.0, 0.0])


def test_modality_weights_rejects_a_step_with_no_model():
    with pytest.raises(ValueError, match="neither"):
        modality_weights(torch.tensor([0]), torch.tensor([1]), torch.tensor([1]), torch.tensor([0.5]))


def test_combine_eps_is_the_weighted_sum_and_exact_for_a_single_model():
    eps_image = torch.randn(3, 4, 2, 2)
    eps_audio = torch.randn(3, 4, 2, 2)
    w_img = torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)
    w_aud = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64)
    out = combine_eps(eps_image, eps_audio, w_img, w_aud)
    torch.testing.assert_close(out[0], 0.5 * eps_image[0] + 0.5 * eps_audio[0])
    assert torch.equal(out[1], eps_image[1])  # only the image model: its estimate, bit for bit
    assert torch.equal(out[2], eps_audio[2])


def test_combine_eps_ignores_rows_with_zero_weight_even_if_not_finite():
    eps_image = torch.full((2, 4, 1, 1), float("nan"))
    eps_audio = torch.randn(2, 4, 1, 1)
    out = combine_eps(eps_image, eps_audio, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    assert torch.equal(out, eps_audio)


def test_combine_eps_needs_an_estimate_for_a_used_modality():
    with pytest.raises(ValueError, match="missing"):
        combine_eps(None, torch.randn(1, 4, 1, 1), torch.ones(1), torch.ones(1))


def test_append_dims_shapes():
    assert append_dims(torch.ones(3), 4).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError):
        append_dims(torch.ones(3, 2), 1)
