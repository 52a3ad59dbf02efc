"""Sweeps on a real local Ray and a real S3-speaking server (moto, a separate process) with tiny models."""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile
import yaml
from PIL import Image

from jobs.manifest import COLUMNS
from jobs.spec import SpecError, SweepModels, expand, load_spec
from jobs.sweep import main as sweep_main
from serve.local import cluster_env, free_port, session_dir, start_ray_head, stop_ray
from tests.s3_proxy import S3Proxy
from tests.s3_server import MotoServer

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


# Fake credentials that must appear nowhere a cluster's user can read: the S3 server on loopback accepts any.
SECRET_ACCESS_KEY = "fake-secret-" + secrets.token_hex(12)
ACCESS_KEY_ID = "AKIAFAKE" + secrets.token_hex(6).upper()


def s3_credentials(s3: MotoServer) -> dict[str, str]:
    return {**s3.env(), "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}


@pytest.fixture(scope="module")
def ray_cluster(s3):
    """`ray start --head` with the dashboard (the Jobs API) on loopback, as the README shows. The storage
    credentials are in the environment of `ray start`, the way a platform provides them (a Kubernetes Secret the pods
    import, an instance role): workers inherit them from their node, never through a runtime_env."""
    env = {**cluster_env(), **s3_credentials(s3)}
    dashboard_port = free_port()
    start_ray_head(env, "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port))
    yield {"dashboard": f"http://127.0.0.1:{dashboard_port}", "env": env, "session": session_dir(env)}
    stop_ray(env)


def write_spec(path: Path, models: Path, **overrides) -> Path:
    spec = yaml.safe_load((REPO / "jobs" / "specs" / "tiny.yaml").read_text())
    spec["models"]["image"] = str(models / "image")
    spec["models"]["audio"] = str(models / "audio")
    spec.pop("output", None)
    spec.update(overrides)
    path.write_text(yaml.safe_dump(spec))
    return path


def bucket(s3: MotoServer, name: str):
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=name)
    return client


def sweep_env(s3: MotoServer, ray_cluster, **extra) -> dict[str, str]:
    return {**ray_cluster["env"], **s3_credentials(s3), "RAY_ADDRESS": "auto", "IMGSOUND_WORKER_THREADS": "1", **extra}


def write_slow_spec(path: Path, models: Path) -> Path:
    """Slow enough to interrupt mid-way: full-size samples, one per batch (so 8 manifest parts)."""
    return write_spec(
        path, models, batch_size=1, params={"steps": 12, "image_start_step": 1, "height": 256, "width": 1024}
    )


def start_sweep_mid_way(spec: Path, output: str, env: dict[str, str], client, name: str, prefix: str):
    """Start `python -m jobs.sweep` in the background and return once it has written its first manifest part."""
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.sweep", str(spec), "--output", output],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_first_part(process, client, name, prefix)
    return process


def wait_for_first_part(process: subprocess.Popen, client, name: str, prefix: str, timeout_s: float = 300) -> None:
    """Wait until the sweep has written a manifest part (it is mid-way); fail early if it exited."""
    deadline = time.monotonic() + timeout_s
    while not object_keys(client, name, prefix):
        if process.poll() is not None:
            _, stderr = process.communicate()
            raise AssertionError(f"the sweep exited early ({process.returncode}): {stderr[-2000:]}")
        assert time.monotonic() < deadline, "no manifest part appeared"
        time.sleep(0.5)


def run_sweep(spec: Path, output: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.sweep", str(spec), "--output", output],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def manifest(client, name: str, prefix: str) -> pd.DataFrame:
    data = client.get_object(Bucket=name, Key=f"{prefix}/manifest.parquet")["Body"].read()
    table = pq.read_table(io.BytesIO(data))
    assert tuple(table.schema.names) == COLUMNS
    return table.to_pandas()


def object_keys(client, name: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def assert_complete(client, name: str, prefix: str, spec: Path) -> pd.DataFrame:
    """Exactly one row per grid point; every artifact a row names exists and opens."""
    frame = manifest(client, name, prefix)
    loaded = load_spec(spec)
    expected = {p.sample_id for p in expand(loaded, SweepModels.identify(loaded))}
    assert len(frame) == len(expected) and set(frame.sample_id) == expected
    assert frame.sample_id.is_unique and (frame.status == "ok").all()
    keys = set(object_keys(client, name, f"{prefix}/samples/"))
    for row in frame.itertuples():
        for column in ("image_uri", "spectrogram_uri", "spectrogram_npy_uri", "audio_uri", "record_uri"):
            key = getattr(row, column).removeprefix(f"s3://{name}/")
            assert key in keys, f"{column} of {row.sample_id} points at a missing object"
    folders = {k.split("/")[2] for k in keys}
    assert folders == expected, "artifacts without a manifest row"
    return frame


def test_bad_specs_fail_before_any_work(tmp_path, tiny_models, s3, capsys):
    good = write_spec(tmp_path / "good.yaml", tiny_models)
    cases = {
        "unknown key": ({"guidance": 3}, "guidance"),
        "empty prompt list": ({"image_prompts": []}, "empty"),
        "empty prompt": ({"audio_prompts": ["bells", " "]}, "empty"),
        "unknown param": ({"params": {"stepz": 3}}, "stepz"),
        "bad param": ({"params": {"steps": 0}}, "steps"),
        "grid and pairs": ({"pairs": [{"image": "a", "audio": "b"}]}, "not both"),
        "lone surrogate": ({"audio_prompts": ["bells", "\ud800"]}, "lone surrogate"),
        "crop too narrow": (
            {"crop": True, "params": {"steps": 2, "image_start_step": 1, "height": 64, "width": 32}},
            "crop drops",
        ),
    }
    for label, (overrides, message) in cases.items():
        spec = write_spec(tmp_path / f"{label}.yaml", tiny_models, **overrides)
        with pytest.raises(SpecError, match=message):
            load_spec(spec)
        assert sweep_main([str(spec), "--output", str(tmp_path / "never")]) == 2, label
        assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    os.environ.update(s3.env())
    try:
        for output, message in (
            ("gs://bucket/x", "gs://"),
            ("s3://", "bucket"),
            ("http://x/y", "http"),
            ("s3://no-such-bucket/run", "no-such-bucket"),
        ):
            assert sweep_main([str(good), "--output", output]) == 2, output
            assert message in capsys.readouterr().err
    finally:
        for key in s3.env():
            os.environ.pop(key, None)


def test_a_resubmitted_finished_sweep_reads_its_manifest_once(tmp_path, tiny_models, capsys, monkeypatch):
    """The driver plans once (the manifest read from the store), and an all-done resubmit starts no Ray."""
    import jobs.sweep
    from jobs.spec import load_spec as load
    from tests.in_process import run_sweep_in_process

    spec = write_spec(tmp_path / "one.yaml", tiny_models, samples_per_pair=1, image_prompts=["a castle"])
    run_sweep_in_process(load(spec), tmp_path / "run")
    reads = []
    monkeypatch.setattr(
        jobs.sweep, "finished_ids", lambda store, read=jobs.sweep.finished_ids: reads.append(1) or read(store)
    )
    assert sweep_main([str(spec), "--output", str(tmp_path / "run")]) == 0
    assert "2 grid points, 2 already done, 0 to generate" in capsys.readouterr().err
    assert len(reads) == 1
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_sweep_to_s3_resumes_exactly_once_after_a_kill(tmp_path, tiny_models, s3, ray_cluster):
    client = bucket(s3, "sweeps")
    spec = write_slow_spec(tmp_path / "spec.yaml", tiny_models)
    output = "s3://sweeps/killed"
    env = sweep_env(s3, ray_cluster)
    process = start_sweep_mid_way(spec, output, env, client, "sweeps", "killed/manifest/")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    parts_before = object_keys(client, "sweeps", "killed/manifest/")
    assert 1 <= len(parts_before) < 8, "the kill did not land mid-way"
    assert "killed/manifest.parquet" not in object_keys(client, "sweeps", "killed/")

    resumed = run_sweep(spec, output, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(parts_before)} already done" in resumed.stderr
    frame = assert_complete(client, "sweeps", "killed", spec)

    # Every artifact opens with the usual tools, with the right shapes.
    row = frame.iloc[0]
    get = lambda uri: client.get_object(Bucket="sweeps", Key=uri.removeprefix("s3://sweeps/"))["Body"].read()  # noqa: E731
    assert Image.open(io.BytesIO(get(row.image_uri))).size == (1024, 256)
    assert np.load(io.BytesIO(get(row.spectrogram_npy_uri))).shape == (256, 1024)
    audio, rate = soundfile.read(io.BytesIO(get(row.audio_uri)))
    assert rate == 16000 and audio.shape == (1024 * 160,)
    assert json.loads(get(row.record_uri))["sample_id"] == row.sample_id

    again = run_sweep(spec, output, env)  # a third submission has nothing left to do
    assert again.returncode == 0 and "8 already done, 0 to generate" in again.stderr
    assert len(manifest(client, "sweeps", "killed")) == 8


def test_s3_outage_fails_clearly_and_a_resubmit_completes(tmp_path, tiny_models, s3, ray_cluster):
    client = bucket(s3, "outage")
    spec = write_slow_spec(tmp_path / "spec.yaml", tiny_models)
    output = "s3://outage/run"
    env = sweep_env(
        s3, ray_cluster, IMGSOUND_S3_READ_TIMEOUT_S="2", IMGSOUND_S3_CONNECT_TIMEOUT_S="2", IMGSOUND_S3_MAX_ATTEMPTS="2"
    )
    process = start_sweep_mid_way(spec, output, env, client, "outage", "run/manifest/")
    s3.pause()
    try:
        _, stderr = process.communicate(timeout=240)
    finally:
        s3.resume()
    assert process.returncode == 1
    assert "storage failed" in stderr and "resubmit" in stderr
    resumed = run_sweep(spec, output, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_complete(client, "outage", "run", spec)


def test_ray_job_submit_runs_a_sweep(tmp_path, tiny_models, ray_cluster):
    """`ray job submit --working-dir .` against `ray start --head`, to a local folder, readable with pandas; with no
    `workers:`, the sweep runs a generator on each of the node's two cores (the tiny models fit many times over, and
    four batches give each two)."""
    spec = write_spec(tmp_path / "spec.yaml", tiny_models, batch_size=2)
    output = tmp_path / "out"
    result = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            ray_cluster["dashboard"],
            "--working-dir",
            str(REPO),
            "--",
            "python",
            "-m",
            "jobs.sweep",
            str(spec),
            "--output",
            str(output),
        ],
        env={**ray_cluster["env"], "IMGSOUND_WORKER_THREADS": "1"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "succeeded" in result.stdout.lower()
    assert "2 generating actors on CPUs" in result.stdout
    frame = pd.read_parquet(output / "manifest.parquet")
    assert len(frame) == 8 and frame.sample_id.is_unique
    for uri in frame.image_uri:
        assert Image.open(Path(uri.removeprefix("file://"))).size == (256, 64)


@pytest.mark.heavy
def test_reduced_table1_scores_every_method_and_prints_every_row(tmp_path, tiny_models, ray_cluster):
    spec = write_spec(
        tmp_path / "t1.yaml",
        tiny_models,
        scoring={"clip": str(tiny_models / "clip"), "clap": str(tiny_models / "clap"), "device": "cpu"},
        params={"steps": 8, "image_start_step": 1, "height": 64, "width": 256},
    )
    data = yaml.safe_load(spec.read_text())
    data["models"]["image_prior"] = str(tiny_models / "if-stage-1")  # the SDS row's image prior
    spec.write_text(yaml.safe_dump(data))
    output = tmp_path / "table1"
    command = [sys.executable, "-m", "jobs.table1", str(spec), "--output", str(output), "--pairs", "2"]
    command += ["--samples-per-pair", "1", "--steps", "2", "--sds-iterations", "2"]
    env = {**ray_cluster["env"], "RAY_ADDRESS": "auto", "IMGSOUND_WORKER_THREADS": "1"}
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    from jobs.table1 import METHODS

    report = json.loads((output / "table1.json").read_text())
    assert [r["method"] for r in report["rows"]] == list(METHODS)
    for method in METHODS.values():
        line = next(line for line in done.stdout.splitlines() if line.startswith(f"| {method.label} |"))
        assert f"{method.paper_clip[0]:.1f} ± {method.paper_clip[1]:.1f}" in line
        frame = pq.read_table(output / method.name / "manifest.parquet").to_pandas()
        assert len(frame) == 2 and frame[["clip_score", "clap_score", "cycle_correlation"]].notna().all().all()
        row = next(r for r in report["rows"] if r["method"] == method.name)
        assert row["clip"][0] == pytest.approx(100 * frame.clip_score.mean())
        assert row["clap"][1] == pytest.approx(100 * 1.96 * frame.clap_score.std(ddof=0) / np.sqrt(2))
        assert f"{row['clip'][0]:.1f} ± {row['clip'][1]:.1f}" in line
    steps = {
        m: pq.read_table(output / m / "manifest.parquet").to_pandas()[["image_start_step", "audio_start_step"]]
        for m in ("image-alone", "audio-alone", "ours")
    }
    methods = {m: pq.read_table(output / m / "manifest.parquet").column("method").to_pylist() for m in METHODS}
    assert methods["imprint"] == ["imprint"] * 2 and methods["sds"] == ["sds"] * 2
    assert (steps["image-alone"].audio_start_step == 2).all() and (steps["image-alone"].image_start_step == 0).all()
    assert (steps["audio-alone"].image_start_step == 2).all() and (steps["audio-alone"].audio_start_step == 0).all()
    assert (steps["ours"].image_start_step == 0).all()  # round(1 · 2 / 8): the warm start scaled with the steps

    # Resubmitting finds everything generated and scored: no part is rewritten.
    parts = {p: p.stat().st_mtime_ns for p in output.rglob("part-*.parquet")}
    again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in output.rglob("part-*.parquet")} == parts
    assert "Ours (multimodal denoising)" in again.stdout


def test_storage_credentials_appear_nowhere_a_cluster_user_can_read(tmp_path, tiny_models, s3, ray_cluster):
    """A sweep to S3 with credentials in its environment: the secret is in none of the Ray state API (CLI and
    dashboard), the session's logs, the manifest or the sample files; the access key id is not either."""
    import urllib.request

    from serve.local import AUTH_TOKEN, BIN

    client = bucket(s3, "secrets")
    spec = write_spec(tmp_path / "spec.yaml", tiny_models, samples_per_pair=1)
    env = sweep_env(s3, ray_cluster)
    done = run_sweep(spec, "s3://secrets/run", env)
    assert done.returncode == 0, done.stderr[-2000:]
    places: dict[str, bytes] = {}
    for what in (["list", "actors", "--detail"], ["list", "jobs", "--detail"], ["list", "workers", "--detail"]):
        listed = subprocess.run([str(BIN / "ray"), *what], env=env, capture_output=True, timeout=120)
        assert listed.returncode == 0, listed.stderr[-2000:]
        places[" ".join(what)] = listed.stdout
    assert b"GenerateSamples" in places["list actors --detail"]  # the listing does show the workers' details
    for route in ("/api/v0/actors?detail=1", "/api/v0/tasks?detail=1", "/api/jobs/", "/api/v0/logs?node_id="):
        request = urllib.request.Request(
            ray_cluster["dashboard"] + route, headers={"Authorization": f"Bearer {AUTH_TOKEN}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                places[route] = response.read()
        except urllib.error.HTTPError as error:
            places[route] = error.read()
    for path in ray_cluster["session"].rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            places[str(path)] = path.read_bytes()
    for key in object_keys(client, "secrets", "run/"):
        places[f"s3://secrets/{key}"] = client.get_object(Bucket="secrets", Key=key)["Body"].read()
    assert any(k.endswith("sample.json") for k in places) and any(k.endswith("manifest.parquet") for k in places)
    leaks = [where for where, data in places.items() if SECRET_ACCESS_KEY.encode() in data]
    assert not leaks, leaks
    assert not [where for where, data in places.items() if ACCESS_KEY_ID.encode() in data]


def test_uploads_overlap_generation(tmp_path, tiny_models, s3, ray_cluster):
    """Storage made slow (every PUT 0.5 s longer, through a delaying proxy): the sweep takes clearly less than its
    generation time plus its upload time, because the pipeline writes batch n while it generates batch n+1 (and a
    batch's files go up side by side)."""
    client = bucket(s3, "overlap")
    spec = write_spec(
        tmp_path / "spec.yaml",
        tiny_models,
        batch_size=2,
        samples_per_pair=4,
        params={"steps": 8, "image_start_step": 1, "height": 256, "width": 1024},
        workers=1,  # one generator: the time saved is the writers' overlap, not generators side by side
    )
    with S3Proxy(s3.endpoint_url, delay_s=0.5, delay_methods=("PUT",)) as proxy:
        env = sweep_env(s3, ray_cluster, AWS_ENDPOINT_URL=proxy.endpoint_url)
        started = time.monotonic()
        done = run_sweep(spec, "s3://overlap/run", env)
        sweep_s = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    frame = assert_complete(client, "overlap", "run", spec).sort_values(["pair_index", "sample_index"])
    # Batches are consecutive grid points; a row's denoise_s is its batch's denoising time, decode/vocode its share.
    batch = np.arange(len(frame)) // 2
    generate_s = float(frame.groupby(batch).denoise_s.max().sum() + (frame.decode_s + frame.vocode_s).sum())
    upload_s = proxy.delayed_s  # a lower bound: the time PUTs spent waiting in the proxy alone
    assert proxy.delayed >= 16 * 5 + 8  # five files per sample and a manifest part per batch went through it
    assert sweep_s < 0.8 * (generate_s + upload_s), (sweep_s, generate_s, upload_s)
