"""serve/jobs.py without Ray: the state model, ids, the stale rule, cancellation across replicas (two runners on one
store), queueing, event streams, the webhook's signature, its SSRF policy and its delivery (to a local receiver)."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.store import LocalStore
from serve.admission import Decision, Refused
from serve.config import Jobs
from serve.jobs import (
    JOB_ID_RE,
    SIGNATURE_HEADER,
    STALE_HEARTBEATS,
    STALE_REASON,
    JobNotFound,
    JobQueueFull,
    JobRunner,
    JobState,
    WebhookRefused,
    WebhookSecret,
    address_allowed,
    cancel_key,
    check_webhook_url,
    deliver_webhook,
    new_job_id,
    signature,
    sse_event,
    state_key,
    utc_iso,
    valid_job_id,
    verify_signature,
)

SECRET = b"a-webhook-secret-for-the-tests-0123"
FAST = Jobs(
    heartbeat_s=0.2,
    progress_interval_s=0.05,
    cancel_poll_s=0.05,
    events_poll_s=0.02,
    admission_poll_s=0.02,
    events_keepalive_s=0.5,
    webhook_allow_private=True,
    webhook_backoff_s=0.0,
    webhook_timeout_s=5.0,
)


# ---- ids, the state model, the stale rule -------------------------------------------------------------------------


def test_job_ids_are_random_and_only_their_shape_is_accepted() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(JOB_ID_RE.fullmatch(i) for i in ids)
    assert all(valid_job_id(i) for i in ids)
    for bad in ("", "x" * 31, "x" * 33, "../../etc/passwd0000000000000000", "a/" * 16, "é" * 32, "x" * 31 + "."):
        assert not valid_job_id(bad), bad
    assert state_key("A" * 32) == f"_jobs/{'A' * 32}.json" and cancel_key("A" * 32) == f"_jobs/{'A' * 32}.cancel"


def job(status: str = "running", heartbeat: float = 1000.0, **changes) -> JobState:
    return JobState(job_id=new_job_id(), status=status, created=utc_iso(heartbeat), heartbeat=heartbeat, **changes)


def test_the_public_view_leaves_the_bookkeeping_out() -> None:
    state = job(owner="0123456789ab", ticket="t" * 32, replica="r1", webhook_url="https://example.com/hook")
    public = state.public()
    assert set(public) == {"job_id", "status", "progress", "created", "finished", "samples", "warnings", "error"}
    assert public["progress"] == {"steps_done": 0, "steps_total": 0}
    assert JobState.from_bytes(state.to_bytes()) == state
    assert state.created.endswith("Z")


def test_the_stale_rule() -> None:
    heartbeat_s = 2.0
    limit = STALE_HEARTBEATS * heartbeat_s
    for status in ("queued", "running"):
        assert not job(status, heartbeat=100.0).is_stale(100.0 + limit, heartbeat_s)
        assert job(status, heartbeat=100.0).is_stale(100.0 + limit + 0.1, heartbeat_s)
    for status in ("succeeded", "failed", "cancelled"):
        assert not job(status, heartbeat=0.0).is_stale(1e9, heartbeat_s)
    ended = job(ticket="abc").ended("failed", 2000.0, STALE_REASON)
    assert ended.status == "failed" and ended.error == STALE_REASON and ended.ticket is None and ended.finished


def test_a_job_body_is_a_generate_body_and_a_webhook() -> None:
    from serve.api import GenerateBody, JobBody
    from serve.config import Limits

    fields = {"image_prompt": "castle", "audio_prompt": "bells", "steps": 7, "seed": 3, "num_samples": 2}
    body = JobBody.model_validate({**fields, "webhook_url": "https://example.com/hook"})
    assert body.to_requests(Limits()) == GenerateBody.model_validate(fields).to_requests(Limits())
    assert body.generation().inline is False and "webhook_url" not in body.generation().model_dump()
    with pytest.raises(ValueError):
        JobBody.model_validate({**fields, "webhook": "https://example.com/hook"})


def test_sse_events_are_one_json_line() -> None:
    chunk = sse_event("progress", {"text": "two\nlines"})
    assert chunk == b'event: progress\ndata: {"text":"two\\nlines"}\n\n'


# ---- webhook signatures and the SSRF policy -----------------------------------------------------------------------


def test_signatures(tmp_path: Path) -> None:
    body = b'{"job_id":"x","status":"succeeded"}'
    header = signature(SECRET, body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify_signature(SECRET, body, header)
    assert not verify_signature(SECRET, body + b" ", header)
    assert not verify_signature(b"another-secret-0123456789", body, header)
    assert not verify_signature(SECRET, body, None)
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    secret = WebhookSecret.from_file(tmp_path / "secret")
    assert secret.sign(body) == header and SECRET.decode() not in repr(secret)
    (tmp_path / "short").write_text("short-one\n")
    with pytest.raises(ValueError) as error:
        WebhookSecret.from_file(tmp_path / "short")
    assert "short-one" not in str(error.value) and "at least 16" in str(error.value)


def resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    "address, public",
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
    ],
)
def test_addresses(address: str, public: bool) -> None:
    assert address_allowed(address, allow_private=False) is public
    multicast_or_unspecified = address in ("0.0.0.0", "224.0.0.1")
    assert address_allowed(address, allow_private=True) is (not multicast_or_unspecified)


def test_webhook_urls() -> None:
    table = {
        "hooks.example.com": ["93.184.216.34"],
        "internal.example.com": ["10.0.0.5"],
        "both.example.com": ["93.184.216.34", "127.0.0.1"],
        "localhost": ["127.0.0.1", "::1"],
    }
    check = resolver(table)
    target = check_webhook_url("https://hooks.example.com/a/b?x=1", False, check)
    assert (target.scheme, target.host, target.port, target.path) == ("https", "hooks.example.com", 443, "/a/b?x=1")
    assert check_webhook_url("http://hooks.example.com", False, check).path == "/"
    refused = {
        "ftp://hooks.example.com/x": "http:// or https://",
        "file:///etc/passwd": "http:// or https://",
        "javascript:alert(1)": "http:// or https://",
        "https://user:pw@hooks.example.com/": "credentials",
        "https://hooks.example.com/" + "a" * 2100: "longer than 2048",
        "https://hooks.example.com/a b": "spaces",
        "https:///nohost": "no host",
        "https://hooks.example.com:99999/": "not a valid URL",
        "https://internal.example.com/": "non-public",
        "https://both.example.com/": "non-public",
        "http://localhost:8000/": "non-public",
        "http://127.0.0.1/": "non-public",
        "http://[::1]/": "non-public",
        "https://nowhere.example.com/": "does not resolve",
    }
    table["127.0.0.1"] = ["127.0.0.1"]
    table["::1"] = ["::1"]
    for url, words in refused.items():
        with pytest.raises(WebhookRefused, match=words.replace("(", r"\(")):
            check_webhook_url(url, False, check)
    # Allowed by configuration (the tests' receivers listen on loopback).
    assert check_webhook_url("http://127.0.0.1:9/hook", True, check).addresses == ("127.0.0.1",)


class Receiver:
    """An HTTP server on loopback that records every POST and answers the statuses it is given, in turn."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the handler API's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def test_delivery_retries_then_stops(receiver: Receiver) -> None:
    body = b'{"job_id":"x"}'
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(SECRET, body)}
    options = dict(allow_private=True, timeout_s=5, attempts=4, backoff_s=0.0)
    receiver.statuses = [500, 503]
    assert asyncio.run(deliver_webhook(receiver.url, body, headers, **options))
    assert len(receiver.posts) == 3 and all(b == body for _, b in receiver.posts)
    assert verify_signature(SECRET, receiver.posts[-1][1], receiver.posts[-1][0]["x-imgsound-signature"])
    receiver.posts.clear()
    receiver.statuses = [410]  # the receiver refuses this body: no point in sending it again
    assert not asyncio.run(deliver_webhook(receiver.url, body, headers, **options))
    assert len(receiver.posts) == 1
    receiver.posts.clear()
    receiver.statuses = [500] * 10
    assert not asyncio.run(deliver_webhook(receiver.url, body, headers, **options))
    assert len(receiver.posts) == 4  # bounded
    # Not allowed to call loopback: nothing is sent at all.
    receiver.posts.clear()
    assert not asyncio.run(deliver_webhook(receiver.url, body, headers, **{**options, "allow_private": False}))
    assert receiver.posts == []


def test_an_unreachable_webhook_gives_up_in_bounded_time() -> None:
    started = time.monotonic()
    closed = "http://127.0.0.1:9/hook"  # the discard port: nothing listens
    ok = asyncio.run(deliver_webhook(closed, b"{}", {}, allow_private=True, timeout_s=1, attempts=3, backoff_s=0.05))
    assert not ok and time.monotonic() - started < 10


# ---- the runner: two "replicas" on one store ----------------------------------------------------------------------


class Gatekeeper:
    """A fake Gatekeeper: `capacity` samples at once; records releases."""

    def __init__(self, capacity: int = 8, rate_limited: bool = False) -> None:
        self.capacity = capacity
        self.rate_limited = rate_limited
        self.tickets: dict[str, int] = {}
        self.released: list[str] = []

    async def admit(self, owner: str | None, samples: int) -> Decision:
        if self.rate_limited:
            return Decision(False, reason="rate_limited", retry_after_s=3, message="rate used up")
        if samples > self.capacity:
            return Decision(False, reason="too_large", message="too large")
        if sum(self.tickets.values()) + samples > self.capacity:
            return Decision(False, reason="queue_full", retry_after_s=5, message="full")
        ticket = new_job_id()
        self.tickets[ticket] = samples
        return Decision(True, ticket=ticket)

    async def release(self, ticket: str) -> None:
        self.released.append(ticket)
        self.tickets.pop(ticket, None)


def stepping(steps: int, step_s: float = 0.01, record: list | None = None):
    """A fake generation: `steps` steps of `step_s`, calling the hook like the Driver's step loop."""

    async def work(ticket: str, hook) -> tuple[list[dict], list[str]]:
        hook(0, steps)
        for done in range(1, steps + 1):
            await asyncio.sleep(step_s)
            if record is not None:
                record.append(done)
            hook(done, steps)
        return [{"sample_id": "0123456789abcdef", "index": 0, "uris": {"audio": "file:///x/audio.wav"}}], []

    return work


def runner(store, gatekeeper: Gatekeeper, name: str, settings: Jobs = FAST, **options) -> JobRunner:
    return JobRunner(store, settings, replica=name, admit=gatekeeper.admit, release=gatekeeper.release, **options)


async def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def until_status(reader: JobRunner, job_id: str, owner, statuses, timeout_s: float = 10.0) -> JobState:
    deadline = time.monotonic() + timeout_s
    while True:
        state = await reader.state(job_id, owner)
        if state.status in statuses:
            return state
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.01)


def test_a_job_runs_to_the_end_and_any_replica_reports_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, gate = LocalStore(tmp_path), Gatekeeper()
        a, b = runner(store, gate, "a"), runner(store, gate, "b")
        state = await a.submit(owner="key1", samples=1, webhook_url=None, work=stepping(10))
        stored = JobState.from_bytes(store.get_bytes(state_key(state.job_id)))
        assert stored.status in ("queued", "running") and stored.replica == "a" and stored.owner == "key1"
        seen = []
        while True:
            other = await b.state(state.job_id, "key1")
            seen.append(other.progress.steps_done)
            if other.terminal:
                break
            await asyncio.sleep(0.01)
        assert other.status == "succeeded" and other.progress.steps_done == other.progress.steps_total == 10
        assert other.samples[0]["sample_id"] == "0123456789abcdef" and other.finished
        assert seen == sorted(seen) and len(set(seen)) >= 3  # progress reached the store on the way
        assert gate.tickets == {} and len(gate.released) == 1
        with pytest.raises(JobNotFound):
            await b.state(state.job_id, "another-key")  # another key's job does not exist for it
        with pytest.raises(JobNotFound):
            await b.state(new_job_id(), "key1")

    asyncio.run(scenario())


class Untouchable:
    """A store that fails the test on any access."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the store was touched ({name})")


def test_ids_of_the_wrong_shape_never_reach_the_store() -> None:
    async def scenario() -> None:
        reader = runner(Untouchable(), Gatekeeper(), "a")
        for bad in ("../../secret", "x" * 33, "", "_jobs/x", "a" * 31 + "/"):
            with pytest.raises(JobNotFound):
                await reader.state(bad, None)
            with pytest.raises(JobNotFound):
                await reader.cancel(bad, None)

    asyncio.run(scenario())


@pytest.mark.parametrize("where", ["same replica", "other replica"])
def test_cancel_stops_at_a_step_boundary_and_frees_the_slots(tmp_path: Path, where: str) -> None:
    async def scenario() -> None:
        store, gate = LocalStore(tmp_path), Gatekeeper(capacity=4)
        a, b = runner(store, gate, "a"), runner(store, gate, "b")
        steps: list[int] = []
        state = await a.submit(owner=None, samples=4, webhook_url=None, work=stepping(1000, 0.005, steps))
        await wait_for(lambda: len(steps) >= 5)
        assert (await gate.admit(None, 1)).reason == "queue_full"  # the job holds every slot
        canceller = a if where == "same replica" else b
        answer, asked = await canceller.cancel(state.job_id, None)
        at_cancel = len(steps)
        assert asked and answer.status == "running"
        final = await until_status(b, state.job_id, None, {"cancelled"})
        assert final.progress.steps_done < 1000 and final.finished and final.samples == []
        # Within a few steps: at once on its own replica; within a marker poll (0.05 s, 10 steps) from another.
        assert len(steps) - at_cancel <= (2 if where == "same replica" else 40), (at_cancel, len(steps))
        assert gate.tickets == {}  # released before the job read `cancelled`
        assert (await gate.admit(None, 4)).admitted
        again, asked = await b.cancel(state.job_id, None)  # a job that ended: nothing to do
        assert not asked and again.status == "cancelled"

    asyncio.run(scenario())


def test_a_stale_job_is_reported_failed_and_its_ticket_freed(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, gate = LocalStore(tmp_path), Gatekeeper()
        clock = [1000.0]
        reader = runner(store, gate, "b", clock=lambda: clock[0])
        ticket = (await gate.admit("k", 2)).ticket
        dead = JobState(
            job_id=new_job_id(), status="running", created=utc_iso(990), heartbeat=999.0, owner="k", ticket=ticket
        )
        store.put_bytes(state_key(dead.job_id), dead.to_bytes())
        assert (await reader.state(dead.job_id, "k")).status == "running"  # 1 s old: alive
        clock[0] = 999.0 + STALE_HEARTBEATS * FAST.heartbeat_s + 0.01
        failed = await reader.state(dead.job_id, "k")
        assert failed.status == "failed" and failed.error == STALE_REASON
        stored = JobState.from_bytes(store.get_bytes(state_key(dead.job_id)))
        assert stored.status == "failed" and stored.error == STALE_REASON and stored.ticket is None
        assert store.exists(cancel_key(dead.job_id))  # a replica that was only paused stops when it wakes
        assert gate.released == [ticket]  # with the verdict, not after it: a resubmission finds the slots free

    asyncio.run(scenario())


def test_a_paused_replica_does_not_overwrite_a_stale_verdict(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, gate = LocalStore(tmp_path), Gatekeeper()
        a = runner(store, gate, "a")
        steps: list[int] = []
        state = await a.submit(owner=None, samples=1, webhook_url=None, work=stepping(1000, 0.005, steps))
        await wait_for(lambda: len(steps) >= 3)
        verdict = JobState.from_bytes(store.get_bytes(state_key(state.job_id))).ended("failed", time.time(), "x")
        store.put_bytes(cancel_key(state.job_id), b"cancel\n")
        store.put_bytes(state_key(state.job_id), verdict.to_bytes())
        await wait_for(lambda: state.job_id not in a.local)
        assert JobState.from_bytes(store.get_bytes(state_key(state.job_id))).error == "x"
        assert gate.tickets == {}

    asyncio.run(scenario())


def test_heartbeats_continue_during_a_long_step(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, gate = LocalStore(tmp_path), Gatekeeper()
        a = runner(store, gate, "a")

        async def slow(ticket: str, hook) -> tuple[list, list]:
            hook(0, 1)
            await asyncio.sleep(STALE_HEARTBEATS * FAST.heartbeat_s * 2)  # one step longer than the stale limit
            hook(1, 1)
            return [], []

        state = await a.submit(owner=None, samples=1, webhook_url=None, work=slow)
        other = runner(store, gate, "b")
        while state.job_id in a.local:
            assert (await other.state(state.job_id, None)).status in ("queued", "running", "succeeded")
            await asyncio.sleep(0.05)
        assert (await other.state(state.job_id, None)).status == "succeeded"

    asyncio.run(scenario())


def test_a_full_service_queues_jobs_and_a_full_queue_refuses(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, gate = LocalStore(tmp_path), Gatekeeper(capacity=2)
        a = runner(store, gate, "a", settings=FAST.model_copy(update={"max_queued": 1}))
        first = await a.submit(owner=None, samples=2, webhook_url=None, work=stepping(30, 0.005))
        second = await a.submit(owner=None, samples=2, webhook_url=None, work=stepping(5, 0.005))
        assert (await a.state(second.job_id, None)).status == "queued"
        with pytest.raises(JobQueueFull):
            await a.submit(owner=None, samples=1, webhook_url=None, work=stepping(1))
        assert len(list(tmp_path.glob("_jobs/*.json"))) == 2  # the refused one left nothing behind
        for job_id in (first.job_id, second.job_id):
            assert (await until_status(a, job_id, None, {"succeeded"})).progress.steps_done > 0
        # A queued job that is cancelled leaves the queue at once.
        third = await a.submit(owner=None, samples=2, webhook_url=None, work=stepping(200, 0.005))
        fourth = await a.submit(owner=None, samples=2, webhook_url=None, work=stepping(5))
        await a.cancel(fourth.job_id, None)
        assert (await until_status(a, fourth.job_id, None, {"cancelled"}, 2)).progress.steps_done == 0
        await a.cancel(third.job_id, None)
        await until_status(a, third.job_id, None, {"cancelled"})
        assert a.queue == [] and gate.tickets == {}

    asyncio.run(scenario())


def test_refusals_are_those_of_generate(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LocalStore(tmp_path)
        with pytest.raises(Refused) as error:
            await runner(store, Gatekeeper(rate_limited=True), "a").submit(
                owner="k", samples=1, webhook_url=None, work=stepping(1)
            )
        assert error.value.decision.reason == "rate_limited"
        with pytest.raises(Refused) as error:
            await runner(store, Gatekeeper(capacity=2), "a").submit(
                owner="k", samples=3, webhook_url=None, work=stepping(1)
            )
        assert error.value.decision.reason == "too_large"
        assert not (tmp_path / "_jobs").exists()

    asyncio.run(scenario())


def test_a_failing_job_reports_the_reason_and_hides_internal_errors(tmp_path: Path) -> None:
    class Known(Exception):
        pass

    async def scenario() -> None:
        store, gate = LocalStore(tmp_path), Gatekeeper()
        a = runner(store, gate, "a", user_errors=(Known,))

        async def known(ticket, hook):
            raise Known("the Vocoder deployment did not answer within 120 s")

        async def bug(ticket, hook):
            raise KeyError("/secret/local/path")

        one = await a.submit(owner=None, samples=1, webhook_url=None, work=known)
        two = await a.submit(owner=None, samples=1, webhook_url=None, work=bug)
        assert (await until_status(a, one.job_id, None, {"failed"})).error.startswith("the Vocoder")
        failed = await until_status(a, two.job_id, None, {"failed"})
        assert "secret" not in failed.error and gate.tickets == {}

    asyncio.run(scenario())


async def collect(stream) -> list[tuple[str, dict]]:
    events = []
    async for chunk in stream:
        text = chunk.decode()
        if text.startswith("event:"):
            name, data = text.split("\n")[:2]
            events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


@pytest.mark.parametrize("where", ["same replica", "other replica"])
def test_event_streams(tmp_path: Path, where: str) -> None:
    async def scenario() -> None:
        store, gate = LocalStore(tmp_path), Gatekeeper()
        a, b = runner(store, gate, "a"), runner(store, gate, "b")
        state = await a.submit(owner=None, samples=1, webhook_url=None, work=stepping(20, 0.02))
        reader = a if where == "same replica" else b
        events = await asyncio.wait_for(collect(reader.events(await reader.state(state.job_id, None))), 20)
        names = [name for name, _ in events]
        assert names[-1] == "end" and set(names[:-1]) == {"progress"} and len(names) >= 4
        done = [data["progress"]["steps_done"] for name, data in events if name == "progress"]
        assert done == sorted(done) and len(set(done)) >= 3
        assert events[-1][1]["status"] == "succeeded" and events[-1][1]["samples"]

    asyncio.run(scenario())


def test_a_quiet_stream_sends_keep_alives(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, gate = LocalStore(tmp_path), Gatekeeper()
        a = runner(store, gate, "a", settings=FAST.model_copy(update={"events_keepalive_s": 0.1}))

        async def quiet(ticket, hook):
            hook(0, 1)
            await asyncio.sleep(0.5)
            hook(1, 1)
            return [], []

        state = await a.submit(owner=None, samples=1, webhook_url=None, work=quiet)
        chunks = [chunk async for chunk in a.events(state)]
        assert chunks.count(b": keep-alive\n\n") >= 2 and chunks[-1].startswith(b"event: end")

    asyncio.run(scenario())


def test_a_stream_ends_at_its_time_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, gate = LocalStore(tmp_path), Gatekeeper()
        a = runner(store, gate, "a", settings=FAST.model_copy(update={"events_max_s": 0.2}))
        state = await a.submit(owner=None, samples=1, webhook_url=None, work=stepping(1000, 0.01))
        started = time.monotonic()
        chunks = [chunk async for chunk in a.events(state)]
        assert time.monotonic() - started < 2 and b"time limit" in chunks[-1]
        await a.cancel(state.job_id, None)
        await until_status(a, state.job_id, None, {"cancelled"})

    asyncio.run(scenario())


def test_one_signed_webhook_per_job(tmp_path: Path, receiver: Receiver) -> None:
    async def scenario() -> None:
        store, gate = LocalStore(tmp_path), Gatekeeper()
        a = runner(store, gate, "a", webhook_secret=WebhookSecret(SECRET))
        await a.check_webhook(receiver.url)
        state = await a.submit(owner=None, samples=1, webhook_url=receiver.url, work=stepping(3))
        await until_status(a, state.job_id, None, {"succeeded"})
        await wait_for(lambda: len(receiver.posts) == 1)
        await asyncio.sleep(0.2)
        assert len(receiver.posts) == 1
        headers, body = receiver.posts[0]
        assert verify_signature(SECRET, body, headers["x-imgsound-signature"])
        sent = json.loads(body)
        assert sent == (await a.state(state.job_id, None)).public() and sent["status"] == "succeeded"
        assert "ticket" not in sent and "owner" not in sent and SECRET.decode() not in body.decode()
        # No secret configured: a webhook URL is refused, before any work.
        with pytest.raises(WebhookRefused, match="no webhook secret"):
            await runner(store, gate, "b").check_webhook(receiver.url)
        strict = runner(store, gate, "c", settings=FAST.model_copy(update={"webhook_allow_private": False}))
        strict.webhook_secret = WebhookSecret(SECRET)
        with pytest.raises(WebhookRefused, match="non-public"):
            await strict.check_webhook(receiver.url)

    asyncio.run(scenario())


class SlowStore:
    """A store whose writes take a while (as S3's do), to catch a heartbeat landing after the final state."""

    def __init__(self, store, delay_s: float) -> None:
        self.store = store
        self.delay_s = delay_s

    def put_bytes(self, key: str, data: bytes) -> str:
        time.sleep(self.delay_s)
        return self.store.put_bytes(key, data)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def test_the_final_state_is_the_last_write_even_with_slow_writes(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, gate = LocalStore(tmp_path), Gatekeeper()
        busy = FAST.model_copy(update={"heartbeat_s": 0.02, "progress_interval_s": 0.01, "cancel_poll_s": 0.02})
        a = runner(SlowStore(store, 0.05), gate, "a", settings=busy)
        for _ in range(5):
            job_id = (await a.submit(owner=None, samples=1, webhook_url=None, work=stepping(8, 0.01))).job_id
            await wait_for(lambda job_id=job_id: job_id not in a.local)
            await asyncio.sleep(0.2)  # any write still in flight has landed by now
            assert JobState.from_bytes(store.get_bytes(state_key(job_id))).status == "succeeded"

    asyncio.run(scenario())
