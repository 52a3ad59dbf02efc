"""Asynchronous jobs on a real local Ray over real HTTP: two Driver replicas, API keys, an output store, a webhook
receiver on loopback. Lifecycle and queueing, the same samples as /v1/generate, server-sent events, cancellation
(its slots freed, from either replica), a signed webhook, answers from both replicas, a killed replica's jobs, and
the refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from serve.auth import hash_key
from serve.jobs import JOB_ID_RE, STALE_REASON, state_key
from serve.local import http, start

pytestmark = pytest.mark.slow

KEY = "key-of-the-jobs-tests-00112233445566"
OTHER_KEY = "another-key-of-the-jobs-tests-998877"
SECRET = "webhook-secret-of-the-jobs-tests-0123456789"
LIMITS = {"max_samples_in_flight": 8, "max_steps": 999}
JOBS = {
    # Stale after 5 s without a write. At 0.5 s (2.5 s) one suite run on a slow day saw a queued job fail, most likely
    # by that rule, while every process of the cluster shared two busy cores; the default is 2 s (10 s).
    "heartbeat_s": 1.0,
    "progress_interval_s": 0.1,
    "cancel_poll_s": 0.1,
    "events_poll_s": 0.05,
    "admission_poll_s": 0.1,
    "webhook_allow_private": True,  # the receiver listens on 127.0.0.1
    "webhook_backoff_s": 0.2,
}
SMALL = dict(image_prompt="castle towers", audio_prompt="bells", image_start_step=0, height=64, width=256)
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def service(tiny_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serve-jobs")
    (workdir / "api-keys").write_text(f"{hash_key(KEY)}\n{hash_key(OTHER_KEY)}\n")
    (workdir / "webhook-secret").write_text(SECRET + "\n")
    cluster = start(
        tiny_models,
        workdir,
        overrides={"limits": LIMITS},
        args={
            "output_store": (workdir / "store").as_uri(),
            "auth": {"api_keys_file": str(workdir / "api-keys")},
            "jobs": {**JOBS, "webhook_secret_file": str(workdir / "webhook-secret")},
        },
        deployments={"Driver": {"num_replicas": 2}},
        api_key=KEY,
    )
    cluster.store = workdir / "store"
    cluster.workdir = workdir
    yield cluster
    cluster.stop()


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(service, key: str | None = KEY, **body):
    return http("POST", f"{service.url}/v1/jobs", body, headers=auth(key) if key else None)


def status(service, job_id: str, key: str | None = KEY):
    return http("GET", f"{service.url}/v1/jobs/{job_id}", headers=auth(key) if key else None, timeout=30)


def until(service, job_id: str, done, timeout_s: float = 120, every_s: float = 0.05) -> list[dict]:
    """Poll the job's status until `done(state)`; every state seen, in order."""
    seen, deadline = [], time.monotonic() + timeout_s
    while True:
        code, _, state = status(service, job_id)
        if code == 200:
            seen.append(state)
            if done(state):
                return seen
        assert time.monotonic() < deadline, (code, state)
        time.sleep(every_s)


def stored_state(service, job_id: str) -> dict:
    return json.loads((service.store / state_key(job_id)).read_text())


def job_file(service, job_id: str, index: int, output: str, key: str = KEY):
    request = urllib.request.Request(f"{service.url}/v1/jobs/{job_id}/samples/{index}/{output}", headers=auth(key))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_job_queues_runs_and_equals_generate(service):
    # A job of 8 samples holds every slot: the job under test waits, queued, until it ends.
    code, _, blocker = submit(service, **{**SMALL, "width": 64, "steps": 40, "num_samples": 8, "outputs": ["record"]})
    assert code == 202, blocker
    until(service, blocker["job_id"], lambda s: s["status"] == "running")
    body = {**SMALL, "steps": 30, "seed": 5, "outputs": ["image", "spectrogram", "spectrogram_npy", "audio", "record"]}
    code, headers, submitted = submit(service, **body)
    assert code == 202, submitted
    job_id = submitted["job_id"]
    assert JOB_ID_RE.fullmatch(job_id) and submitted["status_url"] == f"/v1/jobs/{job_id}"
    assert headers["location"] == submitted["status_url"]
    seen = until(service, job_id, lambda s: s["status"] in TERMINAL)
    statuses = [s["status"] for s in seen]
    order = [statuses[0]] + [b for a, b in zip(statuses, statuses[1:]) if a != b]
    assert order == ["queued", "running", "succeeded"], (order, seen[-1].get("error"))
    done = [s["progress"]["steps_done"] for s in seen]
    assert done == sorted(done) and any(0 < n < 30 for n in done), done
    final = seen[-1]
    assert final["progress"] == {"steps_done": 30, "steps_total": 30}
    assert final["error"] is None and final["created"] < final["finished"]
    assert until(service, blocker["job_id"], lambda s: s["status"] in TERMINAL)[-1]["status"] == "succeeded"

    # The job's files, then /v1/generate of the same body: the same samples, byte for byte.
    (sample,) = final["samples"]
    assert sample["base64"] == {} and set(sample["uris"]) == set(body["outputs"])
    files = {}
    for output in body["outputs"]:
        code, files[output] = job_file(service, job_id, 0, output)
        assert code == 200, files[output]
    code, _, direct = http("POST", f"{service.url}/v1/generate", body, headers=auth())
    assert code == 200, direct
    (expected,) = direct["samples"]
    assert sample["sample_id"] == expected["sample_id"] and sample["seed"] == expected["seed"] == 5
    for output in ("image", "spectrogram", "spectrogram_npy", "audio"):
        assert files[output] == base64.b64decode(expected["base64"][output]), output
    volatile = {"timings_s", "created_utc"}
    records = [json.loads(files["record"]), json.loads(base64.b64decode(expected["base64"]["record"]))]
    assert [{k: v for k, v in r.items() if k not in volatile} for r in records][0] == {
        k: v for k, v in records[1].items() if k not in volatile
    }
    # Byte ranges, as the gallery serves them.
    request = urllib.request.Request(
        f"{service.url}/v1/jobs/{job_id}/samples/0/audio", headers={**auth(), "Range": "bytes=10-19"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 206 and response.read() == files["audio"][10:20]
    assert job_file(service, job_id, 1, "audio")[0] == 404
    assert job_file(service, job_id, 0, "video")[0] == 404


def read_events(service, job_id: str, key: str = KEY) -> tuple[dict[str, str], list[tuple[str, dict]], int]:
    """The whole event stream: (headers, [(event, data)], keep-alive comments)."""
    request = urllib.request.Request(f"{service.url}/v1/jobs/{job_id}/events", headers=auth(key))
    events, comments, name = [], 0, None
    with urllib.request.urlopen(request, timeout=120) as response:
        headers = {k.lower(): v for k, v in response.headers.items()}
        for raw in response:  # ends when the server ends the stream
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                comments += 1
            elif line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return headers, events, comments


def test_server_sent_events(service):
    code, _, submitted = submit(service, **SMALL, steps=40, outputs=["record"])
    assert code == 202
    headers, events, _ = read_events(service, submitted["job_id"])
    assert headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in events]
    assert names[-1] == "end" and set(names[:-1]) == {"progress"}
    progress = [data["progress"]["steps_done"] for name, data in events if name == "progress"]
    assert len([n for n in progress if 0 < n < 40]) >= 3 and progress == sorted(progress), progress
    assert events[-1][1]["status"] == "succeeded" and events[-1][1]["progress"]["steps_done"] == 40
    # A job that has ended: its stream is the one final event.
    _, again, _ = read_events(service, submitted["job_id"])
    assert [name for name, _ in again] == ["end"]


def cancel(service, job_id: str, key: str = KEY):
    return http("DELETE", f"{service.url}/v1/jobs/{job_id}", headers=auth(key))


def test_cancel_stops_the_job_and_frees_its_slots_from_either_replica(service):
    one = dict(**SMALL, steps=2, outputs=["record"])
    ways = set()
    for attempt in range(8):
        samples = 8 if attempt == 0 else 1
        code, _, submitted = submit(
            service, **{**SMALL, "width": 64, "steps": 400, "num_samples": samples, "outputs": ["record"]}
        )
        assert code == 202
        job_id = submitted["job_id"]
        until(service, job_id, lambda s: s["progress"]["steps_done"] >= 3)
        if attempt == 0:  # every slot is held: another request is refused
            code, headers, answer = http("POST", f"{service.url}/v1/generate", one, headers=auth())
            assert code == 503 and "retry-after" in headers, answer
        code, headers, answer = cancel(service, job_id)
        assert code == 202 and answer["status"] in ("queued", "running"), answer
        at_cancel = answer["progress"]["steps_done"]
        final = until(service, job_id, lambda s: s["status"] in TERMINAL)[-1]
        assert final["status"] == "cancelled" and final["samples"] == [] and final["finished"]
        # A few steps at most: the next step boundary, or the next poll of the marker (0.1 s) on another replica.
        assert final["progress"]["steps_done"] - at_cancel <= 25, (at_cancel, final["progress"])
        assert final["progress"]["steps_done"] < 400
        ways.add("same" if headers["x-imgsound-replica"] == stored_state(service, job_id)["replica"] else "other")
        if attempt == 0:  # its slots are free as soon as it reads cancelled
            code, _, answer = http("POST", f"{service.url}/v1/generate", one, headers=auth())
            assert code == 200, answer
        code, _, again = cancel(service, job_id)  # a job that has ended: nothing to do
        assert code == 200 and again["status"] == "cancelled"
        if "other" in ways:
            break
    assert "other" in ways, "every cancel reached the replica running the job"


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every POST."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the handler API's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/imgsound"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_one_signed_webhook(service):
    receiver = Receiver()
    try:
        code, _, submitted = submit(service, **SMALL, steps=4, outputs=["audio"], webhook_url=receiver.url)
        assert code == 202, submitted
        final = until(service, submitted["job_id"], lambda s: s["status"] in TERMINAL)[-1]
        deadline = time.monotonic() + 30
        while not receiver.posts and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # room for a duplicate, if one were sent
        assert len(receiver.posts) == 1
        headers, body = receiver.posts[0]
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-imgsound-signature"], expected)
        assert headers["content-type"] == "application/json" and headers["x-imgsound-job"] == submitted["job_id"]
        assert json.loads(body) == final and final["status"] == "succeeded"
    finally:
        receiver.close()
    # The secret travels as a file name only.
    assert SECRET not in (service.workdir / "serve.yaml").read_text()
    assert SECRET not in json.dumps(final) and SECRET not in body.decode()
    # Webhook URLs the server will not call are refused at submission, before any work.
    for url, words in [("ftp://127.0.0.1/x", "http:// or https://"), ("http://u:p@127.0.0.1/", "credentials")]:
        code, _, answer = submit(service, **SMALL, steps=1, webhook_url=url)
        assert code == 422 and words in answer["detail"], answer


def test_both_replicas_answer_for_a_job(service):
    code, _, submitted = submit(service, **SMALL, steps=60, outputs=["record"])
    assert code == 202
    job_id = submitted["job_id"]
    until(service, job_id, lambda s: s["status"] == "running")
    runner = stored_state(service, job_id)["replica"]

    def from_the_store(state: dict) -> bool:  # running, with its progress, as read by the replica not running it
        return state["status"] == "running" and state["progress"]["steps_total"] == 60

    answers: dict[str, list[dict]] = {}
    for _ in range(60):
        code, headers, state = status(service, job_id)
        assert code == 200
        answers.setdefault(headers["x-imgsound-replica"], []).append(state)
        if len(answers) == 2 and any(from_the_store(s) for r, a in answers.items() if r != runner for s in a):
            break
        time.sleep(0.05)
    assert len(answers) == 2 and runner in answers, answers.keys()
    (other,) = set(answers) - {runner}
    assert any(from_the_store(s) for s in answers[other]), answers[other]
    assert until(service, job_id, lambda s: s["status"] in TERMINAL)[-1]["status"] == "succeeded"


def test_refusals(service):
    code, _, submitted = submit(service, **SMALL, steps=2, outputs=["record"])
    assert code == 202
    job_id = submitted["job_id"]
    # No key, or another key: 401, and another key's job does not exist for it.
    assert submit(service, key=None, **SMALL)[0] == 401
    assert http("POST", f"{service.url}/v1/jobs", raw=b"{not json")[0] == 401
    for method, path in [("GET", ""), ("GET", "/events"), ("DELETE", ""), ("GET", "/samples/0/audio")]:
        code, headers, _ = http(method, f"{service.url}/v1/jobs/{job_id}{path}")
        assert code == 401 and headers["www-authenticate"] == "Bearer", (method, path)
        assert http(method, f"{service.url}/v1/jobs/{job_id}{path}", headers=auth(OTHER_KEY))[0] == 404
    # Unknown ids, and ids of any other shape (never looked up in the store).
    jobs_before = sorted((service.store / "_jobs").glob("*.json"))
    for bad in ["A" * 32, "..", "a" * 33, "short", "_jobs", "x" * 31 + "!", "%2E%2E"]:
        code, _, answer = status(service, bad)
        assert code == 404 and "no such job" in answer["detail"], bad
        assert cancel(service, bad)[0] == 404
    assert status(service, "..%2F..%2Fapi-keys")[0] == 404
    # Bad bodies: a 422 that names the problem, before any work.
    for body, words in [
        ({"image_prompt": "", "audio_prompt": "b"}, "image_prompt must not be empty"),
        ({**SMALL, "steps": 0}, "steps"),
        ({**SMALL, "crop": True, "width": 32}, "crop drops the last 32 columns"),
        ({**SMALL, "num_samples": 9}, "num_samples"),
        ({**SMALL, "webhook": "http://x"}, "webhook"),
        ({**SMALL, "webhook_url": 5}, "webhook_url"),
        ({**SMALL, "init_image": base64.b64encode(b"not a picture").decode()}, "init_image"),
        ({**SMALL, "strength": 0.4}, "give init_image or init_audio"),
    ]:
        code, _, answer = submit(service, **body)
        assert code == 422 and words in str(answer["detail"]), (body, answer)
    assert http("POST", f"{service.url}/v1/jobs", raw=b"{not json", headers=auth())[0] == 422
    assert sorted((service.store / "_jobs").glob("*.json")) == jobs_before  # nothing refused left a trace
    until(service, job_id, lambda s: s["status"] in TERMINAL)


def test_the_playground_is_served_with_a_content_security_policy(service):
    code, headers, page = http("GET", f"{service.url}/")
    assert code == 200 and headers["content-type"].startswith("text/html") and "playground.js" in page
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert headers["x-content-type-options"] == "nosniff"
    for name, kind in [("playground.js", "text/javascript"), ("playground.css", "text/css")]:
        code, headers, _ = http("GET", f"{service.url}/playground/{name}")
        assert code == 200 and headers["content-type"].startswith(kind)
    assert http("GET", f"{service.url}/playground/..%2Fjobs.py")[0] == 404
    assert http("GET", f"{service.url}/playground/index.htm")[0] == 404
    code, _, spec = http("GET", f"{service.url}/openapi.json")
    assert "/v1/jobs" in spec["paths"] and "webhook_url" in json.dumps(spec["paths"]["/v1/jobs"])
    assert "/" not in spec["paths"]


KILL_DRIVER = """
import sys, ray
ray.init(address="auto", namespace="serve", logging_level="ERROR")
names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
         if a["name"].startswith("SERVE_REPLICA") and "#Driver#" in a["name"] and a["name"].endswith(sys.argv[1])]
assert len(names) == 1, names
ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
print("killed", names[0])
"""


def test_a_killed_replica_fails_its_running_jobs(service):
    """Last in the module: Serve replaces the killed replica, and the job's slots come back with the verdict."""
    code, _, submitted = submit(service, **{**SMALL, "width": 64, "steps": 900, "outputs": ["record"]})
    assert code == 202
    job_id = submitted["job_id"]
    until(service, job_id, lambda s: s["progress"]["steps_done"] >= 2)
    runner = stored_state(service, job_id)["replica"]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DRIVER, runner], env=service.env, capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == 0 and "killed" in killed.stdout, killed.stderr[-2000:]
    started = time.monotonic()
    final = until(service, job_id, lambda s: s["status"] in TERMINAL, every_s=0.25)[-1]
    assert final["status"] == "failed" and final["error"] == STALE_REASON, final
    assert time.monotonic() - started < 60
    stored = stored_state(service, job_id)
    assert stored["status"] == "failed" and stored["ticket"] is None  # the verdict is kept for every reader
    # Its slot was freed with the verdict: 8 samples are admitted at once.
    code, _, answer = http(
        "POST",
        f"{service.url}/v1/generate",
        dict(**SMALL, steps=1, num_samples=8, outputs=["record"]),
        headers=auth(),
    )
    assert code == 200, answer


def test_the_store_holds_no_secret(service):
    for path in Path(service.store).rglob("*.json"):
        text = path.read_text()
        assert SECRET not in text and KEY not in text and hash_key(KEY) not in text


def test_a_job_from_a_picture_names_it_in_its_samples(service):
    """A job carries init_image and strength like /v1/generate: its record names the picture by its SHA-256."""
    picture = (Path(__file__).resolve().parents[1] / "docs" / "examples" / "castle.png").read_bytes()
    body = {
        **SMALL,
        "steps": 4,
        "strength": 0.5,
        "init_image": base64.b64encode(picture).decode(),
        "outputs": ["record"],
    }
    code, _, submitted = submit(service, **body)
    assert code == 202, submitted
    final = until(service, submitted["job_id"], lambda s: s["status"] in TERMINAL)[-1]
    assert final["status"] == "succeeded" and final["progress"]["steps_total"] == 2, final  # half of 4 steps re-run
    code, record = job_file(service, submitted["job_id"], 0, "record")
    assert code == 200
    record = json.loads(record)
    assert record["init_image_sha256"] == hashlib.sha256(picture).hexdigest() and record["strength"] == 0.5
    code, _, direct = http("POST", f"{service.url}/v1/generate", body, headers=auth())
    assert code == 200 and direct["samples"][0]["sample_id"] == final["samples"][0]["sample_id"]
