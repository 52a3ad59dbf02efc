"""Shared fixtures: tiny real-format models written once per test session, and quiet, single-threaded torch."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Model fingerprints are cached per user; the tests keep theirs out of the home folder.
os.environ.setdefault("IMGSOUND_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"imgsound-test-cache-{os.getpid()}"))


@pytest.fixture(scope="session", autouse=True)
def _quiet_libraries():
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """`ROOT/image` and `ROOT/audio` written by the tiny-model writer (seed 0)."""
    from imgsound_core.models.tiny import write_tiny_models

    root = tmp_path_factory.mktemp("tiny-models")
    write_tiny_models(root, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_bundles(tiny_models):
    """Loaded fp32 CPU bundles (image: unet, vae, text; audio: the same + vocoder)."""
    from imgsound_core.models.bundle import load_bundle

    image = load_bundle(tiny_models / "image", "image")
    audio = load_bundle(tiny_models / "audio", "audio")
    return image, audio


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    """`IMGSOUND_DEBUG` turns user errors into tracebacks; the tests check the user-facing behaviour."""
    monkeypatch.delenv("IMGSOUND_DEBUG", raising=False)


@pytest.fixture()
def single_thread():
    """Some numerics tests compare runs; one thread keeps timings stable on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server in a process of its own on loopback (tests/s3_server.py), one per test module."""
    from tests.s3_server import MotoServer

    server = MotoServer()
    server.start()
    yield server
    server.stop()


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: `playwright install` cannot download browsers here


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through playwright, for the pages' browser tests (the gallery, the playground)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: the browser tests need Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        yield launched
        launched.close()
