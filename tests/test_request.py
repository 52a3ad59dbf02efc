"""SampleRequest validation, seeds and ids."""

from __future__ import annotations

import math

import pytest

from imgsound_core.request import RequestError, SampleRequest


def make(**overrides) -> SampleRequest:
    return SampleRequest(**{"image_prompt": "castle", "audio_prompt": "bells", **overrides})


def test_defaults_are_the_papers():
    r = make()
    assert (r.steps, r.image_guidance, r.audio_guidance) == (100, 10.0, 10.0)
    assert (r.image_start_step, r.audio_start_step, r.audio_weight) == (10, 0, 0.5)
    assert (r.height, r.width, r.seed) == (256, 1024, 0)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"image_prompt": ""}, "image_prompt"),
        ({"audio_prompt": "   "}, "audio_prompt"),
        ({"image_prompt": "x" * 1001}, "image_prompt"),
        ({"steps": 0}, "steps"),
        ({"steps": 1001}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"image_guidance": math.nan}, "image_guidance"),
        ({"audio_guidance": -1.0}, "audio_guidance"),
        ({"audio_guidance": math.inf}, "audio_guidance"),
        ({"audio_weight": 1.5}, "audio_weight"),
        ({"image_start_step": 101}, "image_start_step"),
        ({"image_start_step": 3, "audio_start_step": 2}, "start_step"),
        ({"height": 100}, "height"),
        ({"width": 0}, "width"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(RequestError, match=field):
        make(**overrides)


def test_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(RequestError, match="guidence"):
        SampleRequest.from_dict({"image_prompt": "a", "audio_prompt": "b", "guidence": 3})
    with pytest.raises(RequestError, match="audio_prompt is required"):
        SampleRequest.from_dict({"image_prompt": "a"})
    assert SampleRequest.from_dict(make(seed=3).to_dict()) == make(seed=3)


def test_expand_gives_consecutive_seeds():
    assert [r.seed for r in make(seed=1234).expand(3)] == [1234, 1235, 1236]
    with pytest.raises(RequestError):
        make().expand(0)


def test_the_warm_start_is_ten_percent_of_the_steps_unless_given():
    def start(**fields) -> int:
        return SampleRequest(image_prompt="a", audio_prompt="b", **fields).image_start_step

    assert start() == 10  # the paper's step 10 of 100, and the ids of 100-step requests are unchanged
    assert [start(steps=s) for s in (20, 5, 1, 15, 25, 200)] == [2, 0, 0, 2, 2, 20]
    assert start(steps=20, image_start_step=7) == 7  # an explicit step index is kept
    assert start(steps=20, audio_start_step=20) == 0  # "Stable Diffusion alone": the image model starts at once
    explicit = SampleRequest(image_prompt="a", audio_prompt="b", steps=20, image_start_step=2)
    assert SampleRequest(image_prompt="a", audio_prompt="b", steps=20) == explicit


def test_the_most_steps_allowed_make_a_valid_schedule():
    """Every step count a request accepts gives timesteps inside the training schedule (SD's steps_offset: 1 makes
    1000 DDIM steps ask for timestep 1000)."""
    from imgsound_core.ddim import ddim_schedule
    from imgsound_core.models.tiny import SD15_SCHEDULER_CONFIG
    from imgsound_core.request import MAX_STEPS, RequestError, SampleRequest

    schedule = ddim_schedule(
        SD15_SCHEDULER_CONFIG, SampleRequest(image_prompt="a", audio_prompt="b", steps=MAX_STEPS).steps
    )
    assert int(schedule.timesteps.max()) < SD15_SCHEDULER_CONFIG["num_train_timesteps"]
    with pytest.raises(RequestError, match="steps"):
        SampleRequest(image_prompt="a", audio_prompt="b", steps=MAX_STEPS + 1)
