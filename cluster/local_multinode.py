"""A multi-node Ray cluster on one machine: a head and N worker nodes on loopback, for drills and tests.

    python cluster/local_multinode.py start --workers 2 --state /tmp/mn.json   # prints the RAY_ADDRESS to use
    python cluster/local_multinode.py stop --state /tmp/mn.json                 # ends exactly what it started
    cluster/local_multinode.sh start|stop                                       # the same, from a shell

Each node is a real `ray start` (the head with `--head`, each worker with `--address` of the head's GCS), with its
own resources: the head offers CPUs only, every worker node offers `{"accelerator": 1}` besides its CPUs — a
stand-in for a GPU, so that actors asking for it (`resources: {accelerator: 1}` in a sweep spec or a Serve
deployment's `ray_actor_options`) are placed the way GPUs place them on a real cluster: one per worker node
(`worker_accelerators` gives each worker node more units, as a machine with several GPUs). Every process of the
cluster carries a scope marker in its environment, and each node a marker of its own, so `stop` ends exactly this
cluster and `kill_node(i)` exactly one node's processes (its raylet first, as a lost machine would), never another
Ray on the machine; `add_worker()` joins one more worker node, as an autoscaler or an operator adds a machine.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve.local import (  # noqa: E402
    BIN,
    RAY_PORT_OPTIONS,
    RAY_SCOPE_VARIABLE,
    REPO,
    cluster_env,
    free_ports,
    process_running,
    scoped_processes,
    stop_ray,
)

NODE_VARIABLE = "IMGSOUND_LOCAL_RAY_NODE"
# Listeners only the head has (a worker node's `ray start` takes none of them).
HEAD_PORT_OPTIONS = ("--port", "--ray-client-server-port", "--dashboard-port")
ACCELERATOR = "accelerator"


@dataclass
class LocalCluster:
    """A head plus `workers` worker nodes, confined to one scope (RAY_TMPDIR and marker in `env`).

    Nodes are numbered: the head 0, the worker nodes 1…`workers` in the order they joined (`add_worker` appends).
    """

    workers: int = 2
    worker_cpus: int = 1
    worker_accelerators: int = 1  # units of ACCELERATOR per worker node: GPUs per machine
    head_cpus: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. storage credentials, as a platform gives nodes
    env: dict[str, str] = field(default_factory=dict)
    gcs_address: str = ""

    def __post_init__(self) -> None:
        if not self.env:
            scope = secrets.token_hex(8)
            self.env = {**cluster_env(), RAY_SCOPE_VARIABLE: scope, "RAY_TMPDIR": f"/tmp/mn-{scope}"}
        self.env.update(self.extra_env)

    def _start_node(self, index: int, *args: str) -> None:
        env = {**self.env, NODE_VARIABLE: str(index)}
        command = [str(BIN / "ray"), "start", "--disable-usage-stats", "--node-ip-address", "127.0.0.1", *args]
        # Nodes of one machine share the session folder (Ray numbers their sockets); each needs ports of its own.
        options = [o for o in RAY_PORT_OPTIONS if o not in args and o not in HEAD_PORT_OPTIONS]
        taken = {int(args[i + 1]) for i, arg in enumerate(args[:-1]) if arg in RAY_PORT_OPTIONS}
        for option, port in zip(options, free_ports(len(options), taken)):
            command += [option, str(port)]
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"`ray start` of node {index} failed: {(done.stdout + done.stderr)[-2000:]}")

    def start(self) -> LocalCluster:
        """Start the head (node 0), then the worker nodes (1…N); wait until all are registered."""
        Path(self.env["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
        port, dashboard_port, client_port = free_ports(3)
        try:
            self._start_node(
                0,
                "--head",
                "--port",
                str(port),
                "--num-cpus",
                str(self.head_cpus),
                "--include-dashboard",
                "false",
                "--dashboard-port",  # the dashboard process starts even so, on 8265 unless told otherwise
                str(dashboard_port),
                "--ray-client-server-port",
                str(client_port),
            )
            self.gcs_address = f"127.0.0.1:{port}"
            for index in range(1, self.workers + 1):
                self._start_worker(index)
            self.wait_for_nodes(self.workers + 1)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_worker(self, index: int) -> None:
        """`ray start` of worker node `index`, joined to the head, with its CPUs and accelerator units."""
        resources = json.dumps({ACCELERATOR: self.worker_accelerators})
        self._start_node(
            index, "--address", self.gcs_address, "--num-cpus", str(self.worker_cpus), "--resources", resources
        )

    def add_worker(self) -> int:
        """Join one more worker node (the next index, with the same resources as the others) to the running
        cluster, as a replacement machine joins a real one; return its index once the GCS counts it alive."""
        alive = self.alive_nodes()
        index = self.workers + 1
        self._start_worker(index)
        self.workers = index
        self.wait_for_nodes(alive + 1)
        return index

    def alive_nodes(self) -> int:
        """How many nodes the GCS counts alive (asked from a short-lived driver in this cluster's scope)."""
        script = (
            "import ray; ray.init(address='auto', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else 0

    def wait_for_nodes(self, count: int, timeout_s: float = 120) -> None:
        """Return once the GCS counts exactly `count` nodes alive (a lost node counts once it is declared dead)."""
        deadline = time.monotonic() + timeout_s
        while self.alive_nodes() != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach {count} alive nodes in {timeout_s:.0f} s")
            time.sleep(1)

    def node_processes(self, index: int) -> dict[int, str]:
        """`{pid: command line}` of node `index`'s processes (its raylet, agents, workers and actors)."""
        needle = f"{NODE_VARIABLE}={index}".encode() + b"\0"
        found = {}
        for pid in scoped_processes(self.env):
            try:
                if needle in Path(f"/proc/{pid}/environ").read_bytes():
                    found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
        return found

    def kill_node(self, index: int) -> list[int]:
        """SIGKILL node `index`: its raylet first (the node is lost), then everything else it ran. Returns pids."""
        processes = self.node_processes(index)
        raylets = [pid for pid, command in processes.items() if "/raylet" in command.split(" ")[0]]
        if not raylets:
            raise RuntimeError(f"node {index} has no raylet")
        for pid in raylets + [p for p in processes if p not in raylets]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # SIGKILL is delivered asynchronously: return only once the raylets are gone (or zombies), so that a caller
        # acts on a lost node rather than on one still exiting.
        deadline = time.monotonic() + 30
        while any(process_running(pid) for pid in raylets):
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {index}'s raylet survived SIGKILL for 30 s")
            time.sleep(0.05)
        return raylets

    def stop(self, grace_s: float = 3) -> None:
        """End every process of this cluster's scope (all nodes, and what they ran): SIGTERM, and SIGKILL for what is
        left after `grace_s` (Ray's GCS and raylets ignore SIGTERM); then remove its RAY_TMPDIR (logs, sockets)."""
        stop_ray(self.env, timeout_s=grace_s)
        shutil.rmtree(self.env["RAY_TMPDIR"], ignore_errors=True)

    def to_state(self) -> dict[str, object]:
        """What `stop` in another process needs, and the token a driver needs (the state file is private)."""
        names = (RAY_SCOPE_VARIABLE, "RAY_TMPDIR", "RAY_AUTH_TOKEN")
        return {"workers": self.workers, "env": {k: self.env[k] for k in names}}

    @classmethod
    def from_state(cls, state: dict) -> LocalCluster:
        return cls(workers=int(state["workers"]), env={**cluster_env(), **state["env"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--workers", type=int, default=2, help="worker nodes (each offering --worker-accelerators)")
    parser.add_argument("--worker-cpus", type=int, default=1)
    parser.add_argument("--worker-accelerators", type=int, default=1, help=f"units of {ACCELERATOR!r} per worker node")
    parser.add_argument("--state", type=Path, default=Path("/tmp/imgsound-multinode.json"), help="what stop reads")
    args = parser.parse_args(argv)
    if args.action == "start":
        if args.state.exists():
            print(f"a cluster is recorded in {args.state}: stop it first", file=sys.stderr)
            return 2
        cluster = LocalCluster(
            workers=args.workers, worker_cpus=args.worker_cpus, worker_accelerators=args.worker_accelerators
        ).start()
        descriptor = os.open(args.state, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the token
        with os.fdopen(descriptor, "w") as out:
            json.dump(cluster.to_state(), out)
        print(
            f"started: head + {args.workers} worker nodes, each with {{{ACCELERATOR!r}: {args.worker_accelerators}}}. "
            "To use it:\n"
            f"  export RAY_TMPDIR={cluster.env['RAY_TMPDIR']} RAY_ADDRESS=auto RAY_AUTH_MODE=token\n"
            f'  export RAY_AUTH_TOKEN=$(python -c \'import json; print(json.load(open("{args.state}"))'
            f'["env"]["RAY_AUTH_TOKEN"])\')'
        )
        return 0
    if not args.state.exists():
        print(f"nothing recorded in {args.state}", file=sys.stderr)
        return 2
    LocalCluster.from_state(json.loads(args.state.read_text())).stop()
    args.state.unlink()
    print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
