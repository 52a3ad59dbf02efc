"""A finished, scored sweep's bookkeeping written synthetically (no models run), for tests and bench_manifest."""

from __future__ import annotations

import pyarrow as pa

from imgsound_core.identity import ModelIdentity
from jobs.manifest import COLUMNS, batch_part_key, parquet_bytes, table_from_rows
from jobs.score import SCORE_SCHEMA, SCORES_PREFIX
from jobs.spec import SweepModels, SweepSpec

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
