"""bench/bench_e2e.py in its smallest form: every selected path runs, agrees on sample ids and reports its ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.heavy
def test_bench_e2e_runs_at_ci_size_and_accounts_for_every_path(tmp_path):
    results = tmp_path / "e2e.json"
    small = ["--steps", "2", "--samples-generate", "4", "--samples-sweep", "8", "--batch-size", "4"]
    done = subprocess.run(
        [sys.executable, "bench/bench_e2e.py", *small, "--paths", "bare", "parts", "cli", "sweep", "--json", results],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(results.read_text())
    assert document["info"]["sample_ids_agree"] is True
    assert document["info"]["seeds_compared"] == 8
    # The run's Ray head exports metrics as production clusters do, not every second as the local demo head does.
    assert document["info"]["ray_metrics_report_interval_ms"] == "Ray's default (10000)"
    by_path = {entry["path"]: entry for entry in document["results"]}
    assert set(by_path) == {"bare", "parts", "cli", "sweep"}
    assert by_path["bare"]["ratio_to_bare"] == 1.0 and by_path["parts"]["ratio_to_parts"] == 1.0
    for path, samples in (("cli", 4), ("sweep", 8)):
        entry = by_path[path]
        assert entry["samples"] == samples
        assert entry["ratio_to_parts"] > 0 and entry["ratio_to_bare"] > 0
        # The path's own clocks: some of its time in the parts, the start-up (imports, model load) outside them.
        assert 0 < entry["in_run_parts_s"] < entry["seconds"]
        assert entry["outside_parts_s"] > 0
        assert entry["parts_share_in_run"] == pytest.approx(entry["in_run_parts_s"] / entry["seconds"])
    # parts was measured again after each product path, and each has its ratio to the two measurements around it.
    rates = document["info"]["parts_rates"]
    assert [r["after"] for r in rates] == [None, "cli", "sweep"]
    assert rates[0]["samples_per_s"] == pytest.approx(by_path["parts"]["samples_per_s"])
    for path, (before, after) in (("cli", rates[0:2]), ("sweep", rates[1:3])):
        entry = by_path[path]
        assert entry["parts_before_samples_per_s"] == before["samples_per_s"]
        assert entry["parts_after_samples_per_s"] == after["samples_per_s"]
        mean = (before["samples_per_s"] + after["samples_per_s"]) / 2
        assert entry["ratio_to_bracketing_parts"] == pytest.approx(entry["samples_per_s"] / mean)
    # The printed table names every path with its share of the run.
    assert "parts' share of the run" in done.stdout and "× parts measured around it" in done.stdout
    assert "imgsound generate (whole command)" in done.stdout
