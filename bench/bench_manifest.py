"""How the sweep's bookkeeping grows with its size: planning, consolidation and the scores' merge.

Writes a finished sweep's bookkeeping synthetically into a local folder or an S3 bucket (moto's S3 server on
loopback, started here) — one manifest part per batch of
`--batch-size` samples and one score part each, as the workers and the scoring stage write them (no models run) —
then times, for each size:

- plan: expanding the grid (every sample id) and reading every part to find what is left: a resubmitted, finished
  sweep's "nothing to do" decision;
- consolidate: `jobs.sweep.finalize`, which reads every part, keeps one row per grid point, merges the scores,
  writes manifest.parquet and compacts the parts;
- merge scores: `jobs.score.read_scores` + `apply_scores` alone;
- plan again once manifest.parquet exists: consolidation compacted the per-batch parts into one manifest part and
  one score part (`jobs.manifest.compact_parts`), so a resubmitted finished sweep reads three files, whatever its
  size, besides expanding its grid.

    python bench/bench_manifest.py --sizes 1000 10000 100000 --json bench/results/cpu-manifest.json
    python bench/bench_manifest.py --store s3 --sizes 1000 10000 --json bench/results/cpu-manifest-moto.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.manifest import MANIFEST_PREFIX  # noqa: E402
from jobs.score import SCORES_PREFIX, apply_scores, read_scores  # noqa: E402
from jobs.spec import expand  # noqa: E402
from jobs.store import LocalStore, open_store  # noqa: E402
from jobs.sweep import finalize, plan  # noqa: E402
from tests.synthetic import MODELS, spec_of, write_bookkeeping  # noqa: E402


def timed(action):
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def measure(size: int, batch_size: int, make_store) -> dict[str, float]:
    spec = spec_of(size, batch_size)
    store = make_store(size)
    expand_s, points = timed(lambda: expand(spec, MODELS))
    write_s, parts = timed(lambda: write_bookkeeping(store, points, batch_size))
    plan_s, (_, batches) = timed(lambda: plan(spec, store, MODELS))
    assert batches == [], "a finished sweep must have nothing left to do"
    consolidate_s, rows = timed(lambda: finalize(store, points))
    assert rows == size
    merge_s, merged = timed(lambda: apply_scores(read_scores_table(store), read_scores(store)))
    assert merged.num_rows == size
    replan_s, (_, batches) = timed(lambda: plan(spec, store, MODELS))
    assert batches == []
    return {
        "samples": size,
        "manifest_parts": parts,
        "expand_s": expand_s,
        "plan_nothing_to_do_s": plan_s,
        "consolidate_s": consolidate_s,
        "merge_scores_s": merge_s,
        "parts_after_compaction": len(store.list(MANIFEST_PREFIX)) + len(store.list(SCORES_PREFIX)),
        "plan_after_consolidation_s": replan_s,
        "write_synthetic_parts_s": write_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--store", choices=("local", "s3"), default="local")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = []
    server = None
    if args.store == "s3":
        import os

        import boto3

        from tests.s3_server import MotoServer

        server = MotoServer().start()
        os.environ.update(server.env())
        client = boto3.client("s3")

        def make_store(size: int):
            client.create_bucket(Bucket=f"bench-{size}")
            return open_store(f"s3://bench-{size}/sweep")
    else:

        def make_store(size: int):
            return LocalStore(Path(tempfile.mkdtemp()) / "sweep")

    try:
        for size in args.sizes:
            entry = {"store": args.store, **measure(size, args.batch_size, make_store)}
            results.append(entry)
            print(json.dumps(entry), flush=True)
    finally:
        if server is not None:
            server.stop()
    if args.json:
        where = "moto's S3 server on loopback" if args.store == "s3" else "local disk"
        machine = f"{platform.machine()}, 2-core container, {where}"
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")


def read_scores_table(store):
    from jobs.manifest import MANIFEST_FILE, read_parquet_bytes

    return read_parquet_bytes(store.get_bytes(MANIFEST_FILE))


if __name__ == "__main__":
    main()
