"""Two Driver replicas on a real local Ray, with API keys and a per-key rate: one service, one metrics view."""

from __future__ import annotations

import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve.auth import hash_key
from serve.local import http, start
from tests.prometheus import series

pytestmark = pytest.mark.slow

CLIENT_KEY = "key-of-a-client-00112233445566778899"
SPREAD_KEY = "key-for-the-spread-test-0123456789"
BURST_KEY = "key-for-the-burst-test-9876543210"
KEYS = (CLIENT_KEY, SPREAD_KEY, BURST_KEY)
RATE = {"samples_per_minute": 12, "burst": 6}  # per key; a request may ask for 8 samples, more than the burst
SMALL = dict(image_prompt="a", audio_prompt="b", steps=3, image_start_step=0, height=64, width=64, outputs=["record"])


@pytest.fixture(scope="module")
def service(tiny_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serve-scale")
    keys = workdir / "api-keys"
    keys.write_text(
        f"# three clients\n{hash_key(CLIENT_KEY)}\n{hash_key(SPREAD_KEY)}\n{hash_key(BURST_KEY)}  # burst\n"
    )
    cluster = start(
        tiny_models,
        workdir,
        args={"output_store": (workdir / "store").as_uri(), "auth": {"api_keys_file": str(keys), **RATE}},
        deployments={"Driver": {"num_replicas": 2}},
        api_key=CLIENT_KEY,
    )
    yield cluster
    cluster.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def generate(service, key: str | None, **body):
    return http("POST", f"{service.url}/v1/generate", body, headers=bearer(key) if key else None)


def test_keys_are_required_everywhere_but_health(service):
    status, _, body = http("GET", f"{service.url}/v1/health")
    assert status == 200 and body["status"] == "ok"
    status, headers, body = generate(service, None, **SMALL)
    assert status == 401 and "Authorization: Bearer" in body["detail"] and headers["www-authenticate"] == "Bearer"
    status, _, body = generate(service, "not-a-key", **SMALL)
    assert status == 401 and body["detail"] == "the API key is not valid"
    status, _, body = http("POST", f"{service.url}/v1/generate", SMALL, headers={"Authorization": CLIENT_KEY})
    assert status == 401  # the key without its scheme
    status, _, _ = http("GET", f"{service.url}/gallery/")
    assert status == 401
    status, _, _ = http("GET", f"{service.url}/gallery/", headers=bearer(CLIENT_KEY))
    assert status == 200
    # A bad body from an unauthenticated client is a 401 too: nothing of what it sent is parsed.
    status, _, _ = http("POST", f"{service.url}/v1/generate", raw=b"{not json", headers={})
    assert status == 401
    status, _, body = generate(service, CLIENT_KEY, **SMALL)
    assert status == 200 and len(body["samples"]) == 1
    text = str(body)
    assert CLIENT_KEY not in text and hash_key(CLIENT_KEY) not in text


def test_a_burst_over_the_rate_is_answered_429_with_retry_after(service):
    """Eight one-sample requests at once against a burst of 6: the burst is served, the rest is a 429 with the
    seconds until a token is back (one every 5 s; sent together, so a slow machine refills at most one meanwhile)."""
    with ThreadPoolExecutor(max_workers=RATE["burst"] + 2) as pool:
        answers = list(pool.map(lambda _: generate(service, BURST_KEY, **SMALL), range(RATE["burst"] + 2)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(200) >= RATE["burst"] and 429 in statuses, statuses
    assert set(statuses) == {200, 429}, statuses
    for status, headers, body in answers:
        if status == 429:
            assert 1 <= int(headers["retry-after"]) <= 60 / RATE["samples_per_minute"] + 1
            assert "12 samples per minute" in body["detail"]
    # Another key is not affected by this one's rate.
    status, _, _ = generate(service, CLIENT_KEY, **SMALL)
    assert status == 200
    # More samples than the burst can never be admitted: a 422 that says so, not a 429 to retry.
    status, headers, body = generate(service, CLIENT_KEY, **{**SMALL, "num_samples": 8, "seed": 1})
    assert status == 422 and "at most 6" in body["detail"] and "retry-after" not in headers


def test_two_driver_replicas_share_requests_and_one_metrics_view(service):
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: generate(service, SPREAD_KEY, **{**SMALL, "seed": 100 + i}), range(6)))
    assert [r[0] for r in results] == [200] * 6
    ray_export = f"http://127.0.0.1:{service.metrics_port}/metrics"
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(ray_export, timeout=10) as response:
            raw = response.read().decode()
        per_replica = {
            labels.get("replica"): value
            for labels, value in series(raw, "ray_imgsound_samples_generated_total")
            if labels.get("deployment") == "Driver"
        }
        views = [http("GET", f"{service.url}/metrics")[2] for _ in range(6)]
        totals = {series(view, "imgsound_samples_generated_total")[0][1] for view in views}
        settled = len(totals) == 1 and sum(per_replica.values()) == next(iter(totals))
        if (len(per_replica) >= 2 and settled) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(per_replica) == 2 and all(value > 0 for value in per_replica.values()), per_replica
    # Every scrape, whichever replica answers it, shows the whole service: the sum over both replicas.
    assert settled, (totals, per_replica)
    assert next(iter(totals)) >= 6
    assert not re.search(r'\breplica="', views[0]) and "WorkerId" not in views[0]  # no per-replica series
    for key in KEYS:
        assert key not in raw and hash_key(key) not in raw and hash_key(key)[:12] not in raw
