"""A sweep run in this process, without Ray: the worker is a plain class, the store a folder."""

from __future__ import annotations

from pathlib import Path

from jobs.spec import GridPoint, SweepSpec
from jobs.store import LocalStore
from jobs.sweep import finalize, plan, point_payload
from jobs.worker import SweepWorker


def run_sweep_in_process(spec: SweepSpec, root: Path) -> tuple[LocalStore, list[GridPoint]]:
    """Generate every grid point of `spec` into the folder `root` and consolidate its manifest."""
    store = LocalStore(root)
    points, batches = plan(spec, store)
    worker = SweepWorker(spec.model_dump(), str(root))
    for batch in batches:
        worker.run([point_payload(p) for p in batch])
    finalize(store, points)
    return store, points
