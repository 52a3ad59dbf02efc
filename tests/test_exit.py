"""How the commands end (imgsound_core.host.end_process): the exit code and everything printed survive, and the
objects are out of the collector's reach when the interpreter tears down.

Each command runs as its own process, with a `sitecustomize` on its path that registers an atexit probe: atexit
handlers run after `sys.exit`, so the probe sees what the collector would see during the teardown that follows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import atexit, gc, sys
atexit.register(lambda: sys.stderr.write(f"\\nFROZEN {gc.get_freeze_count()}\\n"))
"""


def run_probed(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def frozen(stderr: str) -> int:
    counts = [int(line.split()[1]) for line in stderr.splitlines() if line.startswith("FROZEN ")]
    assert len(counts) == 1, stderr[-2000:]
    return counts[0]


def test_end_process_keeps_the_code_and_the_output(tmp_path: Path) -> None:
    code = 'print("unflushed line", end=""); from imgsound_core.host import end_process; end_process(3)'
    done = run_probed([sys.executable, "-c", code], tmp_path)
    assert done.returncode == 3
    assert done.stdout == "unflushed line"  # stdio is flushed as in any exit
    assert frozen(done.stderr) > 10_000  # the objects of the process, not a handful


def test_a_process_that_does_not_call_it_is_left_as_it_is(tmp_path: Path) -> None:
    done = run_probed([sys.executable, "-c", "import sys; sys.exit(4)"], tmp_path)
    assert done.returncode == 4 and frozen(done.stderr) == 0  # the probe itself freezes nothing


BAD_GENERATE = ["generate", "--image-prompt", "a", "--audio-prompt", "b", "--out", "out", "--steps", "0"]


@pytest.mark.parametrize(
    "command, message",
    [
        (["-m", "imgsound_core.cli", *BAD_GENERATE], "imgsound: error:"),
        (["-m", "jobs.sweep", "missing.yaml", "--output", "out"], "sweep: error:"),
        (["-m", "jobs.score", "out"], "score: error:"),
        (["-m", "jobs.table1", "missing.yaml", "--output", "out"], "table1: error:"),
        (["-m", "jobs.curate", "missing", "--out", "out"], "curate: error:"),
        (["-m", "jobs.gallery", "missing", "--out", "out"], "gallery"),
    ],
    ids=["cli", "sweep", "score", "table1", "curate", "gallery"],
)
def test_commands_end_through_it(command: list[str], message: str, tmp_path: Path) -> None:
    done = run_probed([sys.executable, *command], tmp_path)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]
    assert frozen(done.stderr) > 0


def test_the_installed_command_ends_through_it(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("imgsound")
    if not script.exists():
        pytest.skip("no installed `imgsound` script beside this interpreter")
    done = run_probed([str(script), *BAD_GENERATE], tmp_path)
    assert done.returncode == 2 and "imgsound: error:" in done.stderr, done.stderr[-2000:]
    assert frozen(done.stderr) > 0
