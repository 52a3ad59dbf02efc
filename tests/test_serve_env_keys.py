"""`IMGSOUND_API_KEYS_FILE=keys make serve`: `serve run` of the local config with the variable set is protected."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import yaml

from serve.auth import hash_key
from serve.local import BIN, REPO, cluster_env, free_port, http, serve_config, stop_ray

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

KEY = "a-key-from-the-environment-0123456789"


def test_serve_run_with_the_variable_set_requires_the_key(tiny_models, tmp_path):
    env = cluster_env()
    stop_ray(env)  # `serve run` starts its own Ray here, as `make serve` does
    env.update(IMGSOUND_API_KEYS_FILE=str(tmp_path / "keys"), RAY_AUTH_MODE="disabled")
    env.pop("RAY_AUTH_TOKEN", None)
    (tmp_path / "keys").write_text(hash_key(KEY) + "\n")
    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(serve_config(tiny_models, port)))
    server = subprocess.Popen(
        [str(BIN / "serve"), "run", str(config)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    body = {"image_prompt": "a", "audio_prompt": "b", "steps": 1, "image_start_step": 0, "height": 64, "width": 64}
    try:
        deadline = time.monotonic() + 240
        status = None
        while time.monotonic() < deadline:
            try:
                status, _, _ = http("POST", f"{url}/v1/generate", {**body, "outputs": ["record"]}, timeout=10)
            except OSError:
                status = None
            if status in (401, 200):
                break
            time.sleep(2)
        assert status == 401, status
        authorised = {"Authorization": f"Bearer {KEY}"}
        status, _, answer = http("POST", f"{url}/v1/generate", {**body, "outputs": ["record"]}, headers=authorised)
        assert status == 200, answer
        assert http("GET", f"{url}/v1/health")[0] == 200
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        stop_ray(env)
