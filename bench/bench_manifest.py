"""How the sweep's bookkeeping grows with its size: planning, consolidation and the scores' merge.

Writes a finished sweep's bookkeeping synthetically into a local folder or an S3 bucket (moto's S3 server on
loopback, started here) — one manifest part per batch of
`--batch-size` samples and one score part each, as the workers and the scoring stage write them (no models run) —
then times, for each size:

- plan: expanding the grid (every sample id) and reading every part to find what is left: a resubmitted, finished
  sweep's "nothing to do" decision;
- consolidate: `jobs.sweep.finalize`, which reads every part, keeps one row per grid point, merges the scores and
  writes manifest.parquet;
- merge scores: `jobs.score.read_scores` + `apply_scores` alone;
- plan again once manifest.parquet exists (a resubmit after consolidation still lists and reads the parts).

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

import pyarrow as pa  # noqa: E402

from imgsound_core.identity import ModelIdentity  # noqa: E402
from jobs.manifest import COLUMNS, batch_part_key, parquet_bytes, table_from_rows  # noqa: E402
from jobs.score import SCORE_SCHEMA, SCORES_PREFIX, apply_scores, read_scores  # noqa: E402
from jobs.spec import SweepModels, SweepSpec, expand  # noqa: E402
from jobs.store import LocalStore, open_store  # noqa: E402
from jobs.sweep import finalize, plan  # noqa: E402

MODELS = SweepModels(ModelIdentity.of_hub("org/image", "1" * 40), ModelIdentity.of_hub("org/audio", "2" * 40))


def spec_of(size: int, batch_size: int) -> SweepSpec:
    samples_per_pair = 10
    pairs = [{"image": f"picture {i}", "audio": f"sound {i}"} for i in range(size // samples_per_pair)]
    return SweepSpec.model_validate(
        {
            "name": f"bench-{size}",
            "pairs": pairs,
            "samples_per_pair": samples_per_pair,
            "params": {"steps": 100},
            "batch_size": batch_size,
        }
    )


def write_bookkeeping(store, points, batch_size: int) -> int:
    """One manifest part and one score part per batch, as a finished, scored sweep leaves them."""
    parts = 0
    for start in range(0, len(points), batch_size):
        batch = points[start : start + batch_size]
        rows = []
        for point in batch:
            row = {column: None for column in COLUMNS}
            row.update(point.request.to_dict())
            row.update(
                sample_id=point.sample_id,
                sweep="bench",
                method="denoise",
                pair_index=point.pair_index,
                sample_index=point.sample_index,
                status="ok",
                image_uri=f"file:///samples/{point.sample_id}/image.png",
            )
            rows.append({column: row[column] for column in COLUMNS})
        ids = [p.sample_id for p in batch]
        store.put_bytes(batch_part_key(ids), parquet_bytes(table_from_rows(rows)))
        scores = pa.Table.from_pylist(
            [{"sample_id": i, "clip_score": 0.3, "clap_score": 0.2, "clip_model": "c", "clap_model": "c"} for i in ids],
            schema=SCORE_SCHEMA,
        )
        store.put_bytes(batch_part_key(ids, prefix=SCORES_PREFIX), parquet_bytes(scores))
        parts += 1
    return parts


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
    replan_s, _ = timed(lambda: plan(spec, store, MODELS))
    return {
        "samples": size,
        "manifest_parts": parts,
        "expand_s": expand_s,
        "plan_nothing_to_do_s": plan_s,
        "consolidate_s": consolidate_s,
        "merge_scores_s": merge_s,
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
