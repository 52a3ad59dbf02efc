"""The service drill on a multi-node Ray cluster on this machine (cluster/local_multinode.py): the imgsound Serve app
with its two UNet deployments spread over two worker nodes, one of which is lost while clients are being served.

What it shows: no request hangs and none fails other than with a 503 that says when to come back (Retry-After),
and the service heals itself — the lost node's UNet replicas are rescheduled onto a spare worker node that joined
beforehand (a hot spare, as an autoscaler's idle node), with no operator action — after which requests succeed
again, on two healthy replicas of each UNet deployment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster.local_multinode import ACCELERATOR, LocalCluster
from serve.local import REPO, deploy, http
from tests.prometheus import total

pytestmark = [pytest.mark.slow, pytest.mark.drill]

APP = "imgsound"
UNETS = ("ImageUNet", "AudioUNet")
# Ray's own resource on the head node. Every deployment but the UNets asks for a sliver of it, so that Serve places
# it on the head and nowhere else: `num_cpus: 0` alone would let Serve's spread scheduling put a Driver or the
# Gatekeeper on a worker node, and losing that node would then take the service's ingress or its admission count
# down with the UNets. The drill is about losing accelerator nodes, so only the UNets may live there (as on a real
# cluster, where the head has no GPU); the Driver on the head survives the loss and turns it into retries and 503s.
ON_HEAD = {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}
HEAD_DEPLOYMENTS = ("Vocoder", "Renderer", "Gallery", "Gatekeeper", "Driver")
# Each UNet replica takes one accelerator unit and at most one replica of a deployment runs on a node, so the two
# replicas of each UNet sit on two different worker nodes (each with 2 units: one per UNet deployment), and a lost
# node takes one replica of each. Serve checks replica health every second here (every 10 s by default), so that it
# notices the loss within seconds; Ray's own detection of the lost node (the GCS's health checks) is left at its
# defaults.
UNET_OPTIONS = {
    "num_replicas": 2,
    "max_replicas_per_node": 1,
    "ray_actor_options": {"num_cpus": 0, "resources": {ACCELERATOR: 1}},
    "health_check_period_s": 1,
    "health_check_timeout_s": 5,
}
# Short enough that a call stuck on a lost replica ends in seconds, long enough that no call on a live replica of
# this busy 2-core machine comes near it. Production keeps serve/config.py's defaults (120 s per unit of work).
RESILIENCE = {"call_timeout_s": 10.0, "decode_timeout_s": 20.0, "max_retries": 3, "retry_backoff_s": 0.5}
REQUEST = dict(
    image_prompt="a lighthouse at dusk",
    audio_prompt="waves on a beach",
    steps=6,
    image_start_step=1,
    height=256,
    width=1024,
    num_samples=1,
    outputs=["record"],
)
CLIENTS = 4
# A client that waits this long for an answer counts the request as hung. The service's own bound is far below it:
# an ordinary request's time (seconds on two busy cores) plus a few seconds of retries and at most one call time-out
# (RESILIENCE); the margin is for the machine, not for the service.
CLIENT_TIMEOUT_S = 120.0
WARM_SUCCESSES = 8  # 200s before the fault: the load is steady when the node goes
RECOVERED_SUCCESSES = 8  # consecutive 200s, all sent after the UNets are back at 2 healthy replicas
# From the kill to that: Ray notices the lost node, Serve starts 2 replicas and they load their models. About a
# minute on two busy cores; the bound is for a service that never heals, not for a slow machine.
RECOVERY_BOUND_S = 240.0
KILLED_NODE = 1


@dataclass(frozen=True)
class Outcome:
    """One request of a client: when it was sent and answered (monotonic clock), and how."""

    client: int
    sent: float
    answered: float
    status: int | None  # None: no HTTP answer (the client's time-out, or the connection failed)
    retry_after: str | None
    detail: str

    @property
    def latency(self) -> float:
        """Seconds from sending the request to its answer (or to the client giving up)."""
        return self.answered - self.sent


class Load:
    """`clients` threads, each sending REQUEST in a loop (a new seed each time) until `stop()`; every answer is
    recorded as an `Outcome`."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _client(self, client: int) -> None:
        seed = client * 1_000_000
        while not self._stopping.is_set():
            seed += 1
            sent = time.monotonic()
            try:
                status, headers, body = http(
                    "POST", f"{self.url}/v1/generate", {**REQUEST, "seed": seed}, timeout=CLIENT_TIMEOUT_S
                )
                retry_after = headers.get("retry-after")
                detail = "" if status == 200 else str(body.get("detail", body) if isinstance(body, dict) else body)
            except OSError as error:  # the client's time-out (TimeoutError) or a broken connection
                status, retry_after, detail = None, None, repr(error)
            with self._lock:
                self.outcomes.append(Outcome(client, sent, time.monotonic(), status, retry_after, detail[:300]))

    def snapshot(self) -> list[Outcome]:
        """The outcomes so far, in the order they were answered."""
        with self._lock:
            return list(self.outcomes)

    def stop(self) -> None:
        """Let every client finish its request in flight, then end (bounded by the clients' own time-out)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=CLIENT_TIMEOUT_S + 10)

    def still_waiting(self) -> int:
        """Clients that did not end after `stop()`: each is stuck on a request that `outcomes` does not hold."""
        return sum(thread.is_alive() for thread in self._threads)


STATUS_MARKER = "serve-status: "
WATCH_SCRIPT = """
import json, time, ray
from ray import serve
ray.init(address="auto", namespace="serve", logging_level="ERROR")
while True:
    app = serve.status().applications[{app!r}]
    print({marker!r} + json.dumps({{
        name: {{"status": str(getattr(d.status, "value", d.status)),
                "replicas": {{str(getattr(k, "value", k)): n for k, n in d.replica_states.items()}}}}
        for name, d in app.deployments.items()
    }}), flush=True)
    time.sleep(0.5)
"""
Status = dict[str, dict[str, Any]]  # {deployment: {"status": "HEALTHY", "replicas": {"RUNNING": 2}}}


class ServeStatusWatch:
    """Serve's own view of the deployments, as its controller reports it (`serve.status()`), every half second
    from one driver in the cluster's scope, timestamped on this process's monotonic clock. One long-lived driver:
    a fresh one per look would cost seconds of CPU each, taken from the replicas that are loading."""

    def __init__(self, cluster: LocalCluster, log: Path) -> None:
        self.log = log
        self.seen: list[tuple[float, Status]] = []
        self._lock = threading.Lock()
        self._log_file = log.open("w")
        self._process = subprocess.Popen(
            [sys.executable, "-c", WATCH_SCRIPT.format(app=APP, marker=STATUS_MARKER)],
            env=cluster.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:  # Ray prints there too (e.g. that a node died): only marked lines count
            if line.startswith(STATUS_MARKER):
                status = json.loads(line.removeprefix(STATUS_MARKER))
                with self._lock:
                    self.seen.append((time.monotonic(), status))

    def wait_for(self, condition: Callable[[Status], bool], after: float, timeout_s: float) -> float:
        """When a status reported after `after` first met `condition`; waits up to `timeout_s` for one."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                met = [at for at, status in self.seen if at > after and condition(status)]
            if met:
                return met[0]
            assert self._process.poll() is None, f"the status driver ended: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"not so within {timeout_s:.0f} s; last: {self.seen[-1:]}"
            time.sleep(0.2)

    def close(self) -> None:
        self._process.kill()
        self._process.wait()
        self._log_file.close()


def unets_healthy(status: Status) -> bool:
    """Both UNet deployments HEALTHY with exactly 2 replicas, both RUNNING."""
    return all(status[name]["status"] == "HEALTHY" and status[name]["replicas"] == {"RUNNING": 2} for name in UNETS)


def replica_nodes(cluster: LocalCluster, deployment: str, nodes: range) -> list[int]:
    """The nodes whose processes include a replica of `deployment` (a Ray worker titled
    `ray::ServeReplica:<app>:<deployment>`), one entry per replica process: read from /proc, so it is the OS's
    word on where each replica runs, whatever Ray believes."""
    title = f"ray::ServeReplica:{APP}:{deployment}"
    found = []
    for node in nodes:
        for command in cluster.node_processes(node).values():
            if command.split(" ")[0].split(".")[0] == title:  # `title.method` while it runs a call
                found.append(node)
    return sorted(found)


@dataclass
class Service:
    """The drill's service: its cluster, its HTTP address and Serve's view of its deployments."""

    cluster: LocalCluster
    url: str
    watch: ServeStatusWatch


@pytest.fixture(scope="module")
def service(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Head (1 CPU) + 2 worker nodes (1 CPU and 2 accelerator units each), and the app on it: the UNets on the
    worker nodes, everything else on the head."""
    workdir = tmp_path_factory.mktemp("serve-drill")
    cluster = LocalCluster(workers=2, worker_accelerators=2).start()
    try:
        deployments = {name: UNET_OPTIONS for name in UNETS} | {
            name: {"ray_actor_options": ON_HEAD} for name in HEAD_DEPLOYMENTS
        }
        url = deploy(cluster.env, tiny_models, workdir, overrides={"resilience": RESILIENCE}, deployments=deployments)
        watch = ServeStatusWatch(cluster, workdir / "status-driver.log")
        try:
            yield Service(cluster, url, watch)
        finally:
            watch.close()
    finally:
        cluster.stop(grace_s=5)  # nothing of this cluster is kept: no need to wait for a graceful exit


def test_a_worker_node_lost_under_load_costs_only_503s_and_the_service_heals(service: Service) -> None:
    """Worker node 1 (one replica of each UNet) is SIGKILLed while 4 clients keep requests in flight; a spare
    worker node joined just before. Every request is answered, 200 or 503 + Retry-After, none hangs; Serve notices,
    restarts the two lost replicas on the spare, and requests succeed again."""
    cluster, watch = service.cluster, service.watch
    workers = range(1, cluster.workers + 1)
    for name in UNETS:
        assert replica_nodes(cluster, name, workers) == [1, 2], f"{name}'s replicas are not one on each worker node"
    for name in HEAD_DEPLOYMENTS:
        assert replica_nodes(cluster, name, range(0, cluster.workers + 1)) == [0], f"{name} is not on the head alone"
    watch.wait_for(unets_healthy, after=0, timeout_s=60)

    spare = cluster.add_worker()  # a hot spare: idle (Serve does not move running replicas), ready to take over
    every_node = range(0, spare + 1)
    with Load(service.url, CLIENTS) as load:
        deadline = time.monotonic() + 120
        while sum(o.status == 200 for o in load.snapshot()) < WARM_SUCCESSES:
            assert time.monotonic() < deadline, f"no steady load: {Counter(o.status for o in load.snapshot())}"
            time.sleep(0.2)
        killed_at = time.monotonic()
        cluster.kill_node(KILLED_NODE)

        # Serve notices the loss, then both UNets are back at 2 healthy replicas — on the surviving worker node
        # and the spare, as the OS's processes show — then RECOVERED_SUCCESSES consecutive 200s among requests
        # sent after that. Every wait is bounded by the same deadline.
        deadline = killed_at + RECOVERY_BOUND_S
        noticed_at = watch.wait_for(lambda status: not unets_healthy(status), killed_at, deadline - time.monotonic())
        while not all(replica_nodes(cluster, name, every_node) == [2, spare] for name in UNETS):
            assert time.monotonic() < deadline, {name: replica_nodes(cluster, name, every_node) for name in UNETS}
            time.sleep(0.5)
        placed_at = time.monotonic()
        healed_at = watch.wait_for(unets_healthy, noticed_at, deadline - time.monotonic())
        while True:
            after = [o for o in load.snapshot() if o.sent > healed_at]
            if len(after) >= RECOVERED_SUCCESSES and all(o.status == 200 for o in after[-RECOVERED_SUCCESSES:]):
                recovered_at = after[-1].answered
                break
            assert time.monotonic() < deadline, f"no recovery; since healed: {Counter(o.status for o in after)}"
            time.sleep(0.5)
    assert not load.still_waiting(), "a client is stuck past its own time-out"
    outcomes = load.snapshot()

    hung = [o for o in outcomes if o.status is None]
    assert not hung, f"{len(hung)} request(s) got no answer within {CLIENT_TIMEOUT_S:.0f} s: {hung[:3]}"
    unexpected = [o for o in outcomes if o.status not in (200, 503)]
    assert not unexpected, f"answers other than 200 and 503: {unexpected[:3]}"
    without_retry_after = [o for o in outcomes if o.status == 503 and not (o.retry_after or "").isdigit()]
    assert not without_retry_after, f"503s without a Retry-After: {without_retry_after[:3]}"
    slowest = max(outcomes, key=lambda o: o.latency)
    # The node went while requests were being served, not between them.
    in_flight = [o for o in outcomes if o.sent < killed_at < o.answered]
    assert in_flight, "no request was in flight when the node was lost"
    assert all(replica_nodes(cluster, name, every_node) == [2, spare] for name in UNETS)

    retries = total(service.url, "imgsound_remote_call_retries_total")
    counts = Counter(o.status for o in outcomes)
    before_kill = sorted(o.latency for o in outcomes if o.answered < killed_at)
    print(  # the drill's numbers (pytest -s), as the README reports them
        f"\nservice drill: {len(outcomes)} requests from {CLIENTS} clients: {counts[200]} × 200, {counts[503]} × 503; "
        f"{len(in_flight)} in flight at the kill, answered in "
        f"{', '.join(f'{o.latency:.1f} s ({o.status})' for o in in_flight)}; {retries:.0f} remote calls retried by "
        f"the Driver; after the kill: Serve noticed at {noticed_at - killed_at:.1f} s, replicas on nodes 2 and "
        f"{spare} at {placed_at - killed_at:.1f} s, healthy at {healed_at - killed_at:.1f} s, "
        f"{RECOVERED_SUCCESSES} consecutive 200s by {recovered_at - killed_at:.1f} s; latency: median "
        f"{before_kill[len(before_kill) // 2]:.1f} s before the kill, max {slowest.latency:.1f} s "
        f"(a {slowest.status}); "
        f"503 details: {Counter(o.detail for o in outcomes if o.status == 503).most_common(3)}"
    )
