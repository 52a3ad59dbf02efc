"""Drills on a multi-node Ray cluster on this machine (cluster/local_multinode.py): a head and two worker nodes,
each worker offering `{"accelerator": 1}` as a GPU would, and a sweep whose generating actors ask for it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cluster.local_multinode import LocalCluster
from jobs.manifest import MANIFEST_FILE, MANIFEST_PREFIX, read_parquet_bytes
from jobs.spec import SweepModels, expand, load_spec
from jobs.store import open_store
from serve.local import process_running
from tests.s3_proxy import S3Proxy

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.drill]


@pytest.fixture(scope="module")
def cluster(s3):
    """Head (1 CPU) + 2 worker nodes (1 CPU and {accelerator: 1} each). Storage credentials are in the nodes'
    environment, the way a platform gives them to its machines."""
    local = LocalCluster(workers=2, extra_env=s3.env()).start()
    yield local
    local.stop()


def write_spec(path: Path, models: Path, **overrides) -> Path:
    spec = yaml.safe_load((REPO / "jobs" / "specs" / "tiny.yaml").read_text())
    spec["models"].update(image=str(models / "image"), audio=str(models / "audio"))
    spec.pop("output", None)
    spec.update(workers=2, worker_resources={"accelerator": 1}, **overrides)
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep_env(cluster: LocalCluster, **extra: str) -> dict[str, str]:
    return {**cluster.env, "RAY_ADDRESS": "auto", "IMGSOUND_WORKER_THREADS": "1", **extra}


def sweep_command(spec: Path, output: str) -> list[str]:
    return [sys.executable, "-m", "jobs.sweep", str(spec), "--output", output]


def assert_exactly_once(output: str, spec: Path, env: dict[str, str]):
    """One manifest row per grid point, and a sample folder for exactly the rows (no orphans)."""
    store = open_store(output, endpoint_url=env.get("AWS_ENDPOINT_URL"))
    frame = read_parquet_bytes(store.get_bytes(MANIFEST_FILE)).to_pandas()
    loaded = load_spec(spec)
    expected = {p.sample_id for p in expand(loaded, SweepModels.identify(loaded))}
    assert len(frame) == len(expected) and set(frame.sample_id) == expected
    folders = {key.split("/")[1] for key in store.list("samples/")}
    assert folders == expected, "sample folders without a manifest row"
    return frame


def test_a_sweep_spreads_its_generating_actors_over_the_worker_nodes(cluster, tiny_models, tmp_path):
    # Batches slow enough that the actor ready first cannot take them all before the other has loaded its models.
    spec = write_spec(
        tmp_path / "spec.yaml",
        tiny_models,
        batch_size=1,
        samples_per_pair=3,
        params={"steps": 4, "image_start_step": 1, "height": 256, "width": 1024},
    )
    output = str(tmp_path / "out")
    done = subprocess.run(sweep_command(spec, output), env=sweep_env(cluster), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = assert_exactly_once(output, spec, {})
    nodes = {worker.split(":")[0] for worker in frame.worker}
    assert len(nodes) == 2, f"the generating actors ran on {nodes}, not on both worker nodes"


def test_storage_faults_are_retried_and_the_sweep_completes_exactly_once(
    cluster, s3, tiny_models, tmp_path, monkeypatch
):
    """One S3 request in five answered 503 SlowDown, 500 or a reset connection (a fault-injecting proxy in front
    of the S3 server): every fault is retried, visibly, and the manifest is exact."""
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="faults")
    spec = write_spec(tmp_path / "spec.yaml", tiny_models, batch_size=2)
    with S3Proxy(s3.endpoint_url, fault_rate=0.2, seed=7) as proxy:
        env = sweep_env(cluster, AWS_ENDPOINT_URL=proxy.endpoint_url, IMGSOUND_S3_MAX_ATTEMPTS="10")
        done = subprocess.run(
            sweep_command(spec, "s3://faults/run"), env=env, cwd=REPO, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert sum(proxy.faults.values()) >= 10 and set(proxy.faults) == {"slowdown", "internal", "reset"}
        assert "retrying" in done.stderr  # the workers' and the driver's retries are in the sweep's log
    for name, value in s3.env().items():  # checked directly against the S3 server, with its credentials
        monkeypatch.setenv(name, value)
    assert_exactly_once("s3://faults/run", spec, s3.env())


def test_a_worker_node_lost_mid_sweep_loses_nothing(cluster, tiny_models, tmp_path):
    """The raylet of a worker node is killed once the sweep has written its first part: the sweep finishes on the
    surviving node (its actor's batch retried) or fails saying to resubmit; either way the result is exact."""
    spec = write_spec(
        tmp_path / "spec.yaml",
        tiny_models,
        batch_size=1,
        samples_per_pair=3,
        params={"steps": 8, "image_start_step": 1, "height": 256, "width": 1024},
    )
    output = tmp_path / "out"
    env = sweep_env(cluster)
    process = subprocess.Popen(
        sweep_command(spec, str(output)), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not list((output / MANIFEST_PREFIX).glob("part-*.parquet")):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no manifest part appeared"
        time.sleep(0.5)
    killed = cluster.kill_node(1)
    assert killed and not any(process_running(pid) for pid in killed)
    try:
        _, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        raise AssertionError("the sweep hung after losing a node") from None
    if process.returncode != 0:
        assert "resubmit" in stderr, stderr[-3000:]
        again = subprocess.run(sweep_command(spec, str(output)), env=env, cwd=REPO, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr[-3000:]
    assert_exactly_once(str(output), spec, env)
