"""Torch runs on one thread per model process: files are encoded on other threads without torch operators.

Why it matters: every thread that runs a parallel torch operator on the CPU gets an OpenMP team of its own, and once
libgomp manages more threads than there are cores, it stops spinning at barriers and sleeps instead, in the model
thread's team too, for the rest of the process (`imgsound_core/artifacts.py`'s `to_uint8`). A new team shows as
a new thread in `/proc/self/task`; each case runs in a fresh interpreter so the count starts clean.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")

WRITER_PROBE = """
import json, os, threading, torch
from imgsound_core.artifacts import render_artifacts
torch.set_num_threads(2)
generator = torch.Generator().manual_seed(0)
image, spectrogram = torch.rand(3, 256, 1024, generator=generator), torch.rand(256, 1024, generator=generator)
waveform = torch.rand(1024 * 160, generator=generator) * 2 - 1
(image * 2).sum()  # the main thread's team: as in a model process, before the first file
threads = lambda: len(os.listdir("/proc/self/task"))
before, seen = threads(), {}
def write():
    seen["files"] = sorted(render_artifacts(image, spectrogram, waveform, {"seed": 0}))
    seen["threads"] = threads()
writer = threading.Thread(target=write)
writer.start()
writer.join()
print(json.dumps({"before": before, "while_writing": seen["threads"], "files": seen["files"]}))
"""


def test_encoding_a_samples_files_on_a_writer_thread_starts_no_openmp_team() -> None:
    result = subprocess.run([sys.executable, "-c", WRITER_PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.splitlines()[-1])
    assert "image.png" in counts["files"] and "audio.wav" in counts["files"]
    assert counts["while_writing"] == counts["before"] + 1  # the writer itself, and no OpenMP worker of its own


def test_pictures_round_to_uint8_as_torchvision_does() -> None:
    import numpy as np
    import torch

    from imgsound_core.artifacts import to_uint8

    values = torch.tensor([-0.25, 0.0, 0.49 / 255, 0.5 / 255, 0.5, 254.49 / 255, 254.5 / 255, 1.0, 1.5])
    expected = (values.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    assert to_uint8(values).dtype == np.uint8
    assert to_uint8(values).tolist() == expected.tolist() == [0, 0, 0, 1, 128, 254, 255, 255, 255]
