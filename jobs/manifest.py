"""The manifest: one Parquet row per finished sample — its schema in one place, parts and consolidation.

Workers write `manifest/part-<batch id>.parquet` after the batch's artifacts exist (a row never names a missing
file); the batch id is a hash of its sample ids, so a retried batch overwrites its own part instead of adding
duplicates. `consolidate` merges the parts into `manifest.parquet`, one row per sample id, and `compact_parts`
then replaces the many per-batch parts by one, so a resubmitted finished sweep reads two files, not thousands.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from jobs.store import Store

MANIFEST_PREFIX = "manifest/"
# What a sample id may look like wherever it becomes part of a store key (`samples/<sample_id>/…`): the core's ids
# are 16 hex digits; anything that could climb out of a folder (`../`) is refused.
SAMPLE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
MANIFEST_FILE = "manifest.parquet"

SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("sweep", pa.string()),
        pa.field("method", pa.string()),  # denoise (the paper's method), imprint or sds
        pa.field("settings_json", pa.string()),  # the method's full request (its own fields), as JSON
        pa.field("pair_index", pa.int32()),
        pa.field("sample_index", pa.int32()),
        pa.field("image_prompt", pa.string()),
        pa.field("audio_prompt", pa.string()),
        pa.field("image_negative", pa.string()),
        pa.field("audio_negative", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("steps", pa.int32()),
        pa.field("image_guidance", pa.float64()),
        pa.field("audio_guidance", pa.float64()),
        pa.field("image_start_step", pa.int32()),
        pa.field("audio_start_step", pa.int32()),
        pa.field("audio_weight", pa.float64()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("vocoder", pa.string()),
        pa.field("crop", pa.bool_()),
        pa.field("image_model", pa.string()),
        pa.field("audio_model", pa.string()),
        pa.field("image_model_revision", pa.string()),  # the hub commit when loaded from the hub cache, else null
        pa.field("audio_model_revision", pa.string()),
        pa.field("dtype", pa.string()),
        pa.field("device", pa.string()),
        pa.field("image_uri", pa.string()),
        pa.field("spectrogram_uri", pa.string()),
        pa.field("spectrogram_npy_uri", pa.string()),
        pa.field("audio_uri", pa.string()),
        pa.field("record_uri", pa.string()),
        pa.field("video_uri", pa.string()),  # null unless the spec asks for videos
        pa.field("denoise_s", pa.float64()),
        pa.field("decode_s", pa.float64()),
        pa.field("vocode_s", pa.float64()),
        pa.field("status", pa.string()),
        pa.field("worker", pa.string()),
        pa.field("created_utc", pa.string()),
        # Filled by the sweep's scoring stage (jobs/score.py); null until then.
        pa.field("clip_score", pa.float64()),
        pa.field("clap_score", pa.float64()),
        pa.field("cycle_mae", pa.float64()),  # the vocoder cycle check: audio → mel front end vs the spectrogram
        pa.field("cycle_correlation", pa.float64()),
    ]
)
COLUMNS = tuple(SCHEMA.names)


def batch_part_key(sample_ids: Iterable[str], prefix: str = MANIFEST_PREFIX) -> str:
    """The part file of a batch: a hash of its sorted sample ids (the same batch → the same file)."""
    digest = hashlib.sha256("\n".join(sorted(sample_ids)).encode()).hexdigest()[:20]
    return f"{prefix}part-{digest}.parquet"


def table_from_rows(rows: Sequence[dict[str, Any]]) -> pa.Table:
    missing = [c for c in COLUMNS if any(c not in row for row in rows)]
    if missing:
        raise ValueError(f"manifest rows lack columns: {', '.join(missing[:5])}")
    return pa.Table.from_pylist([{c: row[c] for c in COLUMNS} for row in rows], schema=SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def conform(table: pa.Table) -> pa.Table:
    """`table` in SCHEMA's column order and types; nullable columns it lacks (written before they existed) → null."""
    for field in SCHEMA:
        if field.name not in table.column_names:
            if not field.nullable:
                raise ValueError(f"manifest table lacks the column {field.name}")
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(list(COLUMNS)).cast(SCHEMA)


def read_parquet_bytes(data: bytes) -> pa.Table:
    return conform(pq.read_table(io.BytesIO(data)))


def read_sample_ids(data: bytes) -> list[str]:
    """The sample ids of a manifest part or file (its one column that planning needs)."""
    return pq.read_table(io.BytesIO(data), columns=["sample_id"]).column("sample_id").to_pylist()


def first_per_key(table: pa.Table, key: str) -> pa.Table:
    """The rows of `table` whose `key` value appears for the first time (in row order)."""
    if table.num_rows == 0:
        return table
    position = pa.array(range(table.num_rows), pa.int64())
    indexed = pa.table({key: table.column(key), "position": position})
    first = indexed.group_by(key, use_threads=False).aggregate([("position", "min")]).column("position_min")
    return table.take(pc.take(first, pc.sort_indices(first)))  # the first rows, in their original order


def consolidate(tables: Iterable[pa.Table]) -> pa.Table:
    """One row per sample id (the first seen), sorted by (pair_index, sample_index, sample_id)."""
    tables = [conform(t) for t in tables]
    merged = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    unique = first_per_key(merged, "sample_id")
    return unique.sort_by([("pair_index", "ascending"), ("sample_index", "ascending"), ("sample_id", "ascending")])


def compact_parts(store: Store, keys: Sequence[str], table: pa.Table, prefix: str = MANIFEST_PREFIX) -> str | None:
    """Replace the parts `keys` — whose rows, one per sample id, are `table` — by one part; returns its key.

    The merged part is named like a batch's, by the hash of all its sample ids. Exactly once holds at every moment:
    it holds every row of the parts it replaces and is written before any of them is deleted, so a crash in
    between leaves some rows twice, which every reader drops (the first row per sample id). Nothing to do for
    fewer than two parts.
    """
    if len(keys) < 2:
        return None
    merged = batch_part_key(table.column("sample_id").to_pylist(), prefix)
    store.put_bytes(merged, parquet_bytes(table))
    store.delete_many([key for key in keys if key != merged])
    return merged
