"""Consolidation compacts a finished sweep's per-batch parts into one, keeping exactly one row per grid point."""

from __future__ import annotations

import pytest

from jobs.manifest import MANIFEST_FILE, MANIFEST_PREFIX, read_parquet_bytes
from jobs.score import SCORES_PREFIX, read_scores
from jobs.spec import expand
from jobs.store import LocalStore
from jobs.sweep import finalize, finished_ids, plan
from tests.synthetic import MODELS, spec_of, write_bookkeeping


def parquet_keys(store: LocalStore, prefix: str) -> list[str]:
    return [k for k in store.list(prefix) if k.endswith(".parquet")]


@pytest.fixture
def finished(tmp_path):
    """A finished, scored 200-sample sweep's bookkeeping: 25 manifest parts and 25 score parts."""
    store = LocalStore(tmp_path / "sweep")
    spec = spec_of(200, 8)
    points = expand(spec, MODELS)
    assert write_bookkeeping(store, points, 8) == 25
    return store, spec, points


def test_finalize_compacts_the_parts_and_a_resubmit_reads_three_files(finished):
    store, spec, points = finished
    assert finalize(store, points) == 200
    assert len(parquet_keys(store, MANIFEST_PREFIX)) == 1 and len(parquet_keys(store, SCORES_PREFIX)) == 1
    manifest = read_parquet_bytes(store.get_bytes(MANIFEST_FILE))
    assert sorted(manifest.column("sample_id").to_pylist()) == sorted(p.sample_id for p in points)
    assert manifest.column("clip_score").null_count == 0
    assert read_scores(store).num_rows == 200
    _, batches = plan(spec, store, MODELS)
    assert batches == []  # nothing to do, from one part, one score part and manifest.parquet
    before = {k: store.get_bytes(k) for k in store.list()}
    assert finalize(store, points) == 200
    assert {k: store.get_bytes(k) for k in store.list()} == before  # compacted once: a second finalize changes nothing


def test_a_crash_between_the_merged_part_and_the_deletes_leaves_exactly_one_row_per_point(finished, monkeypatch):
    store, spec, points = finished
    monkeypatch.setattr(LocalStore, "delete_many", lambda self, keys: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        finalize(store, points)
    assert len(parquet_keys(store, MANIFEST_PREFIX)) == 26  # the merged part beside every part it replaces
    monkeypatch.undo()
    _, batches = plan(spec, store, MODELS)
    assert batches == [] and len(finished_ids(store)) == 200
    assert finalize(store, points) == 200  # duplicates dropped, compaction finished
    assert len(parquet_keys(store, MANIFEST_PREFIX)) == 1
    manifest = read_parquet_bytes(store.get_bytes(MANIFEST_FILE))
    assert manifest.num_rows == 200 and len(set(manifest.column("sample_id").to_pylist())) == 200


def test_rows_of_points_no_longer_in_the_spec_stay_in_the_compacted_part(finished):
    store, spec, points = finished
    kept = points[:100]  # a spec narrowed after the run: the manifest has its rows only
    assert finalize(store, kept) == 100
    assert read_parquet_bytes(store.get_bytes(MANIFEST_FILE)).num_rows == 100
    (part,) = parquet_keys(store, MANIFEST_PREFIX)
    assert read_parquet_bytes(store.get_bytes(part)).num_rows == 200  # nothing of the run was thrown away
    assert finalize(store, points) == 200  # widened again: every row is still there
