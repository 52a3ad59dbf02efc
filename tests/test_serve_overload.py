"""A saturated deployment on a real local Ray: a call that times out is not retried, its replica drops the rest of
the work, and the service answers the next request promptly."""

from __future__ import annotations

import time

import pytest

from serve.local import http, start
from tests.prometheus import total

pytestmark = pytest.mark.slow

# Griffin-Lim at 256×512 takes seconds per sample on two cores; a decode limit of 0.25 s per 256×1024 sample makes
# an 8-sample Griffin-Lim request (4 units) time out in its Vocoder call after 1 s, long before its work would finish;
# the Vocoder works in chunks of 4 samples, so the second chunk is never started.
RESILIENCE = {"decode_timeout_s": 0.25, "max_retries": 3}
HEAVY = dict(
    image_prompt="a",
    audio_prompt="b",
    steps=1,
    image_start_step=0,
    height=256,
    width=512,
    num_samples=8,
    vocoder="griffinlim",
    outputs=["record"],
)
TINY = dict(image_prompt="a", audio_prompt="b", steps=1, image_start_step=0, height=64, width=64, outputs=["record"])


@pytest.fixture(scope="module")
def service(tiny_models, tmp_path_factory):
    cluster = start(tiny_models, tmp_path_factory.mktemp("serve-overload"), overrides={"resilience": RESILIENCE})
    yield cluster
    cluster.stop()


def test_a_timed_out_call_is_not_retried_and_its_work_is_dropped(service):
    retries_before = total(service.url, "imgsound_remote_call_retries_total")
    status, headers, body = http("POST", f"{service.url}/v1/generate", HEAVY)
    # The Vocoder's Griffin-Lim is what overruns; on a busy machine the image VAE's decode beside it may overrun
    # first, which cancels the Vocoder's call all the same.
    assert status == 503 and "did not answer within 1 s" in body["detail"], body
    assert "Vocoder" in body["detail"] or "ImageUNet" in body["detail"], body
    assert int(headers["retry-after"]) >= 1
    # The Vocoder replica stops between chunks once its call is cancelled: at least the chunk after the first
    # (4 samples) is dropped, never vocoded, and the next small request is served.
    deadline = time.monotonic() + 120
    while total(service.url, "imgsound_abandoned_samples_total", stage="vocode") < 4 and time.monotonic() < deadline:
        time.sleep(1)
    assert total(service.url, "imgsound_abandoned_samples_total", stage="vocode") in (4, 8)
    status, _, _ = http("POST", f"{service.url}/v1/generate", TINY)
    assert status == 200
    assert total(service.url, "imgsound_remote_call_retries_total") == retries_before
    assert total(service.url, "imgsound_request_failures_total", reason="unavailable") >= 1


def test_without_an_output_store_jobs_are_a_409_that_says_why(service):
    """This service has no output store: jobs, which keep their state and files there, are refused clearly."""
    status, _, body = http("POST", f"{service.url}/v1/jobs", TINY)
    assert status == 409 and "no output store" in body["detail"] and "/v1/generate" in body["detail"]
    status, _, body = http("GET", f"{service.url}/v1/jobs/{'A' * 32}")
    assert status == 404 and "no output store" in body["detail"]
    assert http("GET", f"{service.url}/")[0] == 200  # the playground page itself is there (and says so on submit)
