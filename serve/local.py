"""Start the imgsound Serve app on a real local Ray cluster (used by the tests and the serving benchmark).

`ray start --head --num-cpus 2` in a subprocess, then `serve run --non-blocking CONFIG` with a YAML derived from
serve/config.local.yaml (tiny model paths, a free port): the same commands a user runs.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int, taken: set[int] | None = None) -> list[int]:
    """`count` distinct free ports, none in `taken`: the OS may hand a just-released port out again, and one
    `ray start` given the same port for two listeners refuses to start."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = free_port()
        if port not in chosen and port not in (taken or set()):
            chosen.append(port)
    return chosen


def _lower(headers) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def http(
    method: str,
    url: str,
    body: Any = None,
    raw: bytes | None = None,
    timeout: float = 300,
    headers: dict[str, str] | None = None,
):
    """(status, lower-cased headers, parsed JSON or text) — errors are returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, headers, payload = response.status, _lower(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, payload = error.code, _lower(error.headers), error.read()
    text = payload.decode("utf-8", errors="replace")
    try:
        return status, headers, json.loads(text)
    except json.JSONDecodeError:
        return status, headers, text


WARM_UP = {
    "image_prompt": "warm",
    "audio_prompt": "up",
    "steps": 1,
    "image_start_step": 0,
    "height": 64,
    "width": 64,
    "outputs": ["record"],
}


@dataclass
class ServeCluster:
    url: str
    ray_address: str
    env: dict[str, str]
    metrics_port: int  # Ray's metrics export port of the (single) node: every process's raw series

    def stop(self) -> None:
        stop_ray(self.env)


# Ray's token authentication, settled explicitly (Ray ≥ 2.59 turns it on for local clusters when a token exists):
# every process of one cluster — `ray start`, `serve run`, `ray job submit`, drivers — gets the same token.
AUTH_TOKEN = secrets.token_hex(32)


# Every Ray this process starts is confined: its own RAY_TMPDIR (so `address="auto"` in the processes given
# `cluster_env()` finds this cluster and no other on the machine), free ports, and a marker in the environment of all
# its processes, by which `stop_ray` ends exactly them — never another test run's or a user's Ray. Short: Ray's unix
# sockets live under the folder (108 bytes at most).
RAY_SCOPE_VARIABLE = "IMGSOUND_LOCAL_RAY"
RAY_SCOPE = secrets.token_hex(8)
RAY_TMPDIR = f"/tmp/ir-{RAY_SCOPE}"
# Listeners of `ray start` that default to fixed ports: each gets a free one, unless the caller chose it.
RAY_PORT_OPTIONS = (
    "--port",
    "--ray-client-server-port",
    "--dashboard-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)


def cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RAY_TMPDIR=RAY_TMPDIR,
        **{RAY_SCOPE_VARIABLE: RAY_SCOPE},
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=AUTH_TOKEN,
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
        RAY_DEDUP_LOGS="0",
        # Ray exports replica metrics every 10 s by default; /metrics then lags by that much.
        RAY_metrics_report_interval_ms="1000",
        # As in an activated virtualenv: `python` in a Ray job's entrypoint is this environment's interpreter.
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def scoped_processes(env: dict[str, str]) -> list[int]:
    """The pids of the processes started with `env`'s Ray scope marker (a cluster's head, workers and actors), and
    their descendants: Ray's dashboard agent overwrites its own environment block when it sets its process title, so
    only its parent, a raylet, ties it to the scope."""
    needle = f"{RAY_SCOPE_VARIABLE}={env[RAY_SCOPE_VARIABLE]}".encode() + b"\0"
    marked, parents = set(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            if needle in (entry / "environ").read_bytes():
                marked.add(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # gone, or not ours to read
    found, grew = set(marked), True
    while grew:  # children of what is found, to any depth
        children = {pid for pid, parent in parents.items() if parent in found and pid != os.getpid()}
        grew = not children <= found
        found |= children
    return sorted(found)


def stop_ray(env: dict[str, str], timeout_s: float = 3) -> None:
    """End the Ray processes started with `env` (its scope marker), and only those: SIGTERM, then SIGKILL after
    `timeout_s`. Short, because the raylet and the GCS server ignore SIGTERM (measured: still up after 40 s), and a
    throwaway local cluster has nothing to shut down gracefully."""
    import signal

    # The address file of the stopped cluster must go too, as `ray stop` removes it: else a later `ray.init()` in
    # this scope (e.g. `serve run` starting its own Ray) would try to join the dead cluster instead of starting one.
    (Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").unlink(missing_ok=True)
    pids = scoped_processes(env)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (timeout_s if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline and any(process_running(pid) for pid in pids):
            _reap()
            time.sleep(0.1)
        pids = [pid for pid in pids if process_running(pid)]
        if not pids:
            return


def process_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie. Ray's daemons are not our children: once they exit, they stay in
    /proc as zombies until the machine's init reaps them, which some container inits do late or never."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, parent pid, …); the name, in parentheses,
    may itself hold spaces and parentheses."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()


def _reap() -> None:
    """Collect exited children of this process, so that they do not linger as zombies in /proc."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def start_ray_head(env: dict[str, str], *extra_args: str) -> None:
    """A fresh `ray start --head` with 2 CPUs, in `env`'s scope (after stopping what is left of it), on free ports."""
    stop_ray(env)
    Path(env["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "ray"), "start", "--head", "--disable-usage-stats", *extra_args]
    if "--num-cpus" not in extra_args:
        command += ["--num-cpus", "2"]
    taken = {int(extra_args[i + 1]) for i, arg in enumerate(extra_args[:-1]) if arg in RAY_PORT_OPTIONS}
    options = [option for option in RAY_PORT_OPTIONS if option not in extra_args]
    for option, port in zip(options, free_ports(len(options), taken)):
        command += [option, str(port)]
    subprocess.run(command, env=env, cwd=REPO, check=True, capture_output=True, timeout=180)


def session_dir(env: dict[str, str]) -> Path:
    """The running cluster's session folder (its logs), as Ray records it under the scope's RAY_TMPDIR."""
    return (Path(env["RAY_TMPDIR"]) / "ray" / "session_latest").resolve()


def serve_config(
    models: Path, port: int, overrides: dict[str, Any] | None = None, args: dict[str, Any] | None = None
) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "serve" / "config.local.yaml").read_text())
    config = copy.deepcopy(config)
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["image"]["model"] = str(models / "image")
    app["args"]["audio"]["model"] = str(models / "audio")
    for key, value in (overrides or {}).items():
        app["args"][key] = {**app["args"].get(key, {}), **value}
    app["args"].update(args or {})
    return config


def deploy(
    env: dict[str, str],
    models: Path,
    workdir: Path,
    overrides: dict[str, Any] | None = None,
    args: dict[str, Any] | None = None,
    ready_timeout_s: float = 300,
    deployments: dict[str, dict[str, Any]] | None = None,
    api_key: str | None = None,
) -> str:
    """`serve run --non-blocking` of the app on the running Ray of `env`'s scope, on a free HTTP port; returns the
    service's URL once /v1/health answers and one tiny request has been served (every model replica is up).

    `deployments` overrides Serve options per deployment name (e.g. `{"Driver": {"num_replicas": 2}}`);
    `api_key` authenticates the warm-up request when the app has keys configured.
    """
    # Chosen once Ray listens on its own ports: a port picked earlier is free only until something binds it.
    http_port = free_port()
    config_path = workdir / "serve.yaml"
    config = serve_config(models, http_port, overrides, args)
    for deployment in config["applications"][0]["deployments"]:
        deployment.update((deployments or {}).get(deployment["name"], {}))
    config_path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{http_port}"
    # Ray rewrites a loopback GCS address to the node's own address; "auto" reads the address `ray start` recorded.
    subprocess.run(
        [str(BIN / "serve"), "run", "--address", "auto", "--non-blocking", str(config_path)],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=180,
    )
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        try:
            status, _, _ = http("GET", f"{url}/v1/health", timeout=5)
            if status == 200:
                # The driver answers before the model replicas are up: one tiny request waits for them all.
                auth = {"Authorization": f"Bearer {api_key}"} if api_key else None
                status, _, body = http("POST", f"{url}/v1/generate", WARM_UP, timeout=ready_timeout_s, headers=auth)
                if status == 200:
                    return url
                # A 503 is the service saying "not yet" (e.g. replicas still loading past a short call time-out).
                if status != 503:
                    raise RuntimeError(f"warm-up request failed: {status} {body}")
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError("the Serve app did not become healthy in time")


def start(
    models: Path,
    workdir: Path,
    overrides: dict[str, Any] | None = None,
    args: dict[str, Any] | None = None,
    ready_timeout_s: float = 300,
    deployments: dict[str, dict[str, Any]] | None = None,
    api_key: str | None = None,
):
    """Start Ray and the app; wait until /v1/health answers. Returns a ServeCluster (call .stop()).

    The arguments after `workdir` are `deploy`'s.
    """
    env = cluster_env()
    metrics_port = free_port()
    start_ray_head(
        env,
        "--node-ip-address",
        "127.0.0.1",
        "--include-dashboard",
        "false",
        "--metrics-export-port",
        str(metrics_port),
    )
    try:
        url = deploy(env, models, workdir, overrides, args, ready_timeout_s, deployments, api_key)
    except BaseException:
        stop_ray(env)
        raise
    return ServeCluster(url=url, ray_address="auto", env=env, metrics_port=metrics_port)
