"""`python -m jobs.curate MANIFEST --out URI`: re-rank a scored sweep and curate its best samples into a dataset.

    python -m jobs.curate s3://bucket/run --out s3://bucket/run-curated --top-k-per-pair 4 --min-clap 0.2
    python -m jobs.curate results/tiny/manifest.parquet --out curated/tiny --rank-by rank-mean --include favs.json

MANIFEST is a sweep's output folder (local, file:///… or s3://bucket/prefix) or its manifest.parquet; the artifacts
are read from the sweep's own samples/<sample_id>/ under MANIFEST's folder only (where the manifest's *_uri columns
say, or by file name when the sweep was copied elsewhere), and must be the PNG / WAV files they claim to be.

Selection, in this order: the candidates are the manifest's rows (only the `--include` ids, when given) that have
every score the ranking and the filters need; `--min-clip` / `--min-clap` drop those below (a score equal to the
minimum stays); within each prompt pair (pair_index) the rest are ordered by the `--rank-by` key — `clip`, `clap`,
`sum` (clip + clap; higher is better) or `rank-mean` (the mean of the sample's rank by CLIP and by CLAP among its
pair's candidates, 1 = best, ties sharing their average rank; lower is better). Equal keys are ordered by
sample_index, then sample_id, so exactly K per pair are kept and the same inputs always give the same dataset.

Output under `--out`, loadable with `datasets.load_dataset("parquet", data_files=…)` or `load_dataset(OUT)`:

    data/train-00000-of-0000N.parquet   the kept samples (image, spectrogram, audio + metadata), ≤ --shard-rows each
    pairs.parquet                       per prompt pair: generated/kept counts, CLIP/CLAP statistics
    README.md                           the dataset card, written last: its presence means the dataset is complete

The shards are written with pyarrow alone; the Hugging Face feature types (Image, Audio) travel in the schema's
`huggingface` metadata, so this job does not need the `datasets` library. Exit status: 0 done, 1 storage failed
while writing (rerun with --overwrite), 2 bad input — nothing is written then.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shlex
import statistics
import sys
from collections import defaultdict
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.manifest import MANIFEST_FILE, MANIFEST_PREFIX, SAMPLE_ID_PATTERN, SCHEMA, read_parquet_bytes
from jobs.store import S3Store, Store, StoreError, open_store

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
PROG = "python -m jobs.curate"

RANKINGS = ("clip", "clap", "sum", "rank-mean")
DEFAULT_RANKING = "sum"
HIGHER_IS_BETTER = {"clip": True, "clap": True, "sum": True, "rank-mean": False}
SCORE_LABELS = {"clip_score": "CLIP", "clap_score": "CLAP"}
# Sums that are equal in exact arithmetic can differ in the last bit (0.1 + 0.7 ≠ 0.5 + 0.3 as floats); rounding
# far below any score's precision makes them the tie the rule above promises.
SUM_DECIMALS = 12

DEFAULT_SHARD_ROWS = 500  # ~1 MB per 10-s sample: shards of a few hundred MB, as the Hub's viewer likes them
ROW_GROUP_ROWS = 100  # the Hub's choice for image datasets: a viewer page reads one small row group
DATA_PREFIX = "data/"
PAIRS_FILE = "pairs.parquet"
CARD_FILE = "README.md"
# imgsound writes every audio.wav at the core's 16 kHz (imgsound_core.audio.mel.SAMPLE_RATE_HZ, which imports
# torch; a test checks the two agree).
AUDIO_SAMPLE_RATE_HZ = 16000
READ_THREADS = 8  # artifacts are small objects: S3 latency, not bandwidth, bounds a serial reader
PROGRESS_MIN_SAMPLES = 20
SUMMARY_MAX_PAIRS = 40

# Output column ← the manifest column naming the file; each cell is {"bytes": the file, "path": a file name}.
MEDIA_COLUMNS = {"image": "image_uri", "spectrogram": "spectrogram_uri", "audio": "audio_uri"}
IMAGE_COLUMNS = ("image", "spectrogram")
AUDIO_COLUMNS = ("audio",)
# Manifest columns copied into the dataset, in the dataset's order (after the media and the ranks).
COPIED_COLUMNS = (
    "image_prompt",
    "audio_prompt",
    "clip_score",
    "clap_score",
    "cycle_correlation",
    "cycle_mae",
    "seed",
    "image_negative",
    "audio_negative",
    "steps",
    "image_guidance",
    "audio_guidance",
    "image_start_step",
    "audio_start_step",
    "audio_weight",
    "height",
    "width",
    "vocoder",
    "crop",
    "dtype",
    "image_model",
    "audio_model",
    "image_model_revision",
    "audio_model_revision",
    "sweep",
)
RANK_FIELDS = (pa.field("rank_in_pair", pa.int32()), pa.field("rank_value", pa.float64()))
SELECTED_SCHEMA = pa.schema(list(SCHEMA) + list(RANK_FIELDS))

_FILE_STRUCT = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
_HF_DTYPES = {
    pa.string(): "string",
    pa.bool_(): "bool",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.float64(): "float64",
}


class CurateError(ValueError):
    """Bad input (arguments, manifest, include list, selection); the message is one sentence."""


def hf_features(schema: pa.Schema) -> dict[str, Any]:
    """The Hugging Face `Features` of `schema`, as `Features.to_dict()` writes them (Image, Audio, Value)."""
    features: dict[str, Any] = {}
    for field in schema:
        if field.name in IMAGE_COLUMNS:
            features[field.name] = {"_type": "Image"}
        elif field.name in AUDIO_COLUMNS:
            features[field.name] = {"sampling_rate": AUDIO_SAMPLE_RATE_HZ, "_type": "Audio"}
        else:
            features[field.name] = {"dtype": _HF_DTYPES[field.type], "_type": "Value"}
    return features


def _dataset_schema() -> pa.Schema:
    fields = [pa.field(name, _FILE_STRUCT) for name in MEDIA_COLUMNS]
    fields += [SCHEMA.field(name) for name in ("sample_id", "pair_index", "sample_index")]
    fields += list(RANK_FIELDS)
    fields += [SCHEMA.field(name) for name in COPIED_COLUMNS]
    schema = pa.schema(fields)
    # `datasets` reads the feature types from this key, so image/audio columns decode without a loading script.
    metadata = {b"huggingface": json.dumps({"info": {"features": hf_features(schema)}}).encode()}
    return schema.with_metadata(metadata)


DATASET_SCHEMA = _dataset_schema()

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("pair_index", pa.int32()),
        pa.field("image_prompt", pa.string()),
        pa.field("audio_prompt", pa.string()),
        pa.field("generated", pa.int64()),
        pa.field("kept", pa.int64()),
        *(
            pa.field(f"{score}_{stat}", pa.float64())
            for score in ("clip", "clap")
            for stat in ("mean", "std", "min", "max")
        ),
        pa.field("kept_clip_mean", pa.float64()),
        pa.field("kept_clap_mean", pa.float64()),
    ]
)


# --- selection -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The kept rows (SELECTED_SCHEMA, ordered by pair_index then rank_in_pair) and what was left out on the way."""

    rows: pa.Table
    candidates: int  # manifest rows considered: all, or the --include ids
    unscored: int  # candidates without a score the ranking or a filter needs
    below_minimum: int  # scored candidates dropped by --min-clip / --min-clap
    beyond_top_k: int  # passing candidates ranked below K in their pair


def needed_scores(rank_by: str, min_clip: float | None = None, min_clap: float | None = None) -> tuple[str, ...]:
    """The manifest score columns a ranking and the filters read."""
    needed = {
        "clip": {"clip_score"},
        "clap": {"clap_score"},
        "sum": {"clip_score", "clap_score"},
        "rank-mean": {"clip_score", "clap_score"},
    }[rank_by]
    if min_clip is not None:
        needed.add("clip_score")
    if min_clap is not None:
        needed.add("clap_score")
    return tuple(c for c in SCORE_LABELS if c in needed)


def average_ranks(values: Sequence[float]) -> list[float]:
    """Rank 1 for the largest value; equal values share the mean of the ranks they span (scipy's 'average')."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def rank_values(rows: Sequence[dict[str, Any]], rank_by: str) -> list[float]:
    """Each row's rank key among `rows` (one pair's candidates); HIGHER_IS_BETTER says which end is best."""
    if rank_by == "clip":
        return [float(r["clip_score"]) for r in rows]
    if rank_by == "clap":
        return [float(r["clap_score"]) for r in rows]
    if rank_by == "sum":
        return [round(float(r["clip_score"]) + float(r["clap_score"]), SUM_DECIMALS) for r in rows]
    if rank_by == "rank-mean":
        by_clip = average_ranks([float(r["clip_score"]) for r in rows])
        by_clap = average_ranks([float(r["clap_score"]) for r in rows])
        return [(a + b) / 2 for a, b in zip(by_clip, by_clap, strict=True)]
    raise ValueError(f"unknown ranking {rank_by!r} (one of {', '.join(RANKINGS)})")


def rank_pair(rows: Sequence[dict[str, Any]], rank_by: str) -> list[dict[str, Any]]:
    """One pair's candidates, best first, each with rank_in_pair (1, 2, … — unique) and rank_value.

    The tie rule: equal rank values are ordered by sample_index, then sample_id (a row without a sample_index
    comes after those with one).
    """
    values = rank_values(rows, rank_by)
    sign = -1.0 if HIGHER_IS_BETTER[rank_by] else 1.0
    order = sorted(
        range(len(rows)),
        key=lambda i: (
            sign * values[i],
            rows[i]["sample_index"] is None,
            rows[i]["sample_index"] or 0,
            rows[i]["sample_id"],
        ),
    )
    return [{**rows[i], "rank_in_pair": position + 1, "rank_value": values[i]} for position, i in enumerate(order)]


def _score(value: float | None) -> float | None:
    """A score, or None for a missing one (null, or NaN from a scorer that failed)."""
    return None if value is None or math.isnan(value) else float(value)


def _pair_sort_key(pair: int | None) -> tuple[bool, int]:
    return (pair is None, pair or 0)


def select(
    table: pa.Table,
    rank_by: str = DEFAULT_RANKING,
    min_clip: float | None = None,
    min_clap: float | None = None,
    top_k_per_pair: int | None = None,
    include: Collection[str] | None = None,
) -> Selection:
    """The rows of the manifest `table` that curation keeps (see the module docstring for the rules).

    Raises CurateError when the manifest has no score at all of a kind the ranking or a filter needs, or when
    `include` names a sample id the manifest lacks. An empty result is not an error here.
    """
    if rank_by not in RANKINGS:
        raise CurateError(f"--rank-by {rank_by!r} is unknown: use one of {', '.join(RANKINGS)}.")
    needed = needed_scores(rank_by, min_clip, min_clap)
    rows = [{**r, **{c: _score(r[c]) for c in SCORE_LABELS}} for r in table.to_pylist()]
    for column in needed:
        if rows and all(r[column] is None for r in rows):
            raise CurateError(
                f"The manifest has no {SCORE_LABELS[column]} scores; run the sweep with scoring enabled "
                "(`scoring:` in the spec) first."
            )
    if include is not None:
        known = {r["sample_id"] for r in rows}
        wanted = list(dict.fromkeys(include))
        unknown = [sample_id for sample_id in wanted if sample_id not in known]
        if unknown:
            raise CurateError(
                f"{len(unknown)} of the {len(wanted)} sample ids to include are not in the manifest "
                f"(first: {', '.join(unknown[:3])}): export the favourites from this sweep, or fix the list."
            )
        wanted_set = set(wanted)
        rows = [r for r in rows if r["sample_id"] in wanted_set]
    candidates = len(rows)
    scored = [r for r in rows if all(r[c] is not None for c in needed)]
    passing = [
        r
        for r in scored
        if (min_clip is None or r["clip_score"] >= min_clip) and (min_clap is None or r["clap_score"] >= min_clap)
    ]
    by_pair: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    for row in passing:
        by_pair[row["pair_index"]].append(row)
    kept: list[dict[str, Any]] = []
    for pair in sorted(by_pair, key=_pair_sort_key):
        kept.extend(rank_pair(by_pair[pair], rank_by)[:top_k_per_pair])
    return Selection(
        rows=pa.Table.from_pylist(kept, schema=SELECTED_SCHEMA),
        candidates=candidates,
        unscored=candidates - len(scored),
        below_minimum=len(scored) - len(passing),
        beyond_top_k=len(passing) - len(kept),
    )


def _describe(prefix: str, values: Sequence[float]) -> dict[str, float | None]:
    """mean, sample std (n − 1, as pandas; null below 2 values), min, max; nulls when there are no values."""
    return {
        f"{prefix}_mean": statistics.fmean(values) if values else None,
        f"{prefix}_std": statistics.stdev(values) if len(values) >= 2 else None,
        f"{prefix}_min": min(values) if values else None,
        f"{prefix}_max": max(values) if values else None,
    }


def pair_statistics(manifest: pa.Table, kept: pa.Table) -> pa.Table:
    """PAIRS_SCHEMA, one row per prompt pair of the manifest: statistics over everything generated, and the kept."""
    generated: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    for row in manifest.select(
        ["pair_index", "sample_index", "image_prompt", "audio_prompt", *SCORE_LABELS]
    ).to_pylist():
        generated[row["pair_index"]].append(row)
    kept_by_pair: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    for row in kept.select(["pair_index", *SCORE_LABELS]).to_pylist():
        kept_by_pair[row["pair_index"]].append(row)

    def scores(rows: list[dict[str, Any]], column: str) -> list[float]:
        return [v for v in (_score(r[column]) for r in rows) if v is not None]

    out = []
    for pair in sorted(generated, key=_pair_sort_key):
        members = sorted(generated[pair], key=lambda r: _pair_sort_key(r["sample_index"]))
        chosen = kept_by_pair.get(pair, [])
        kept_clip, kept_clap = scores(chosen, "clip_score"), scores(chosen, "clap_score")
        out.append(
            {
                "pair_index": pair,
                "image_prompt": members[0]["image_prompt"],
                "audio_prompt": members[0]["audio_prompt"],
                "generated": len(members),
                "kept": len(chosen),
                **_describe("clip", scores(members, "clip_score")),
                **_describe("clap", scores(members, "clap_score")),
                "kept_clip_mean": statistics.fmean(kept_clip) if kept_clip else None,
                "kept_clap_mean": statistics.fmean(kept_clap) if kept_clap else None,
            }
        )
    return pa.Table.from_pylist(out, schema=PAIRS_SCHEMA)


def read_include(path: str) -> list[str]:
    """Sample ids from a JSON file: a list of ids, or {"sample_ids": [...]} (a gallery's favourites export)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise CurateError(f"Cannot read the --include file {path} ({err.strerror or type(err).__name__}).") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CurateError(f"The --include file {path} is not JSON ({err}).") from None
    if isinstance(data, dict) and "sample_ids" in data:
        data = data["sample_ids"]
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        raise CurateError(f'The --include file {path} must hold a JSON list of sample ids or {{"sample_ids": [...]}}.')
    if not data:
        raise CurateError(f"The --include file {path} names no sample ids.")
    return data


# --- reading the sweep ---------------------------------------------------------------------------------------


def manifest_location(location: str, endpoint_url: str | None = None) -> tuple[Store, str]:
    """The sweep's root store and the manifest's key in it, from a folder/URI or the manifest file's path/URI."""
    if "://" not in location:  # a local path: what is there decides, else the name
        path = Path(location)
        if path.is_file() or (not path.is_dir() and path.suffix == ".parquet"):
            return open_store(str(path.parent), endpoint_url=endpoint_url), path.name
        return open_store(location, endpoint_url=endpoint_url), MANIFEST_FILE
    parent, _, name = location.rstrip("/").rpartition("/")
    if name.endswith(".parquet") and not parent.endswith(":/"):  # "s3://name.parquet" names a bucket
        # file:///manifest.parquet lies in the file system's root folder, file:///.
        return open_store(parent + "/" if parent.endswith("//") else parent, endpoint_url=endpoint_url), name
    return open_store(location, endpoint_url=endpoint_url), MANIFEST_FILE


def read_manifest(root: Store, key: str) -> pa.Table:
    """The manifest at `key`; CurateError naming the URI (and an unfinished sweep) when it is missing or unreadable."""
    uri = root.uri_for(key)
    try:
        data = root.get_bytes(key)
    except FileNotFoundError:
        if key == MANIFEST_FILE and root.list(MANIFEST_PREFIX):
            raise CurateError(
                f"{root.uri} holds manifest parts but no {MANIFEST_FILE}: the sweep has not finished; rerun "
                "`python -m jobs.sweep SPEC --output URI` to complete and consolidate it."
            ) from None
        raise CurateError(
            f"There is no manifest at {uri}: give a sweep's output folder or its {MANIFEST_FILE}."
        ) from None
    try:
        table = read_parquet_bytes(data)
    except (pa.ArrowException, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CurateError(f"{uri} is not a readable sweep manifest ({reason}).") from None
    if table.num_rows == 0:
        raise CurateError(f"The manifest {uri} has no rows.")
    return table


# What each media column's file must start with: curation publishes bytes, so it checks what they are.
FORMAT_SIGNATURES = {
    "image_uri": ("a PNG", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n")),
    "spectrogram_uri": ("a PNG", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n")),
    "audio_uri": ("a WAV", lambda head: head[:4] == b"RIFF" and head[8:12] == b"WAVE"),
}


class ArtifactLocator:
    """Maps the manifest's artifact URIs to (store, key) pairs inside the sweep, checked to be what they claim.

    Curation reads only the sweep's own artifacts, `samples/<sample_id>/…` under the manifest's folder: a manifest
    is data, and a row naming `file:///home/me/.ssh/id_rsa` must not publish that file as an "image". A URI under
    the root is read through the root store if it lies in its sample's folder; any other URI — a sweep copied or
    downloaded since, whose URIs name the original place — is looked for at samples/<sample_id>/<file name> under
    the root, and nowhere else. Every file's first bytes must be the format its column claims (PNG, WAV).
    """

    def __init__(self, root: Store, endpoint_url: str | None = None) -> None:
        self.root = _connect(root)
        self.endpoint_url = endpoint_url
        self._root_prefix = root.uri_for("x")[:-1]  # "s3://bucket/prefix/" or "file:///abs/dir/"

    def locate(self, uri: str | None, sample_id: str, column: str) -> tuple[Store, str]:
        """Where the file is, checked to exist and to be its format; CurateError otherwise."""
        if not uri:
            raise CurateError(f"Sample {sample_id} has no {column} in the manifest.")
        if not isinstance(sample_id, str) or not SAMPLE_ID_PATTERN.fullmatch(sample_id):
            raise CurateError(f"The manifest names a sample {str(sample_id)[:40]!r} that is not a sample id.")
        decode = unquote if uri.startswith("file:") else str  # file URIs percent-encode their paths
        folder = f"samples/{sample_id}/"
        if uri.startswith(self._root_prefix):
            key = decode(uri[len(self._root_prefix) :])
        else:
            key = folder + decode(uri.rpartition("/")[2])
        if not key.startswith(folder) or "/" in key[len(folder) :] or key.endswith("/"):
            raise CurateError(
                f"The {column} of sample {sample_id} ({uri}) is not in the sweep's {self._root_prefix}{folder}: "
                "curation reads only the sweep's own artifacts."
            )
        found = False
        with contextlib.suppress(ValueError):  # not a valid key: no such object either
            found = self.root.exists(key)
        # A StoreError (access denied, no connection) propagates: its sentence says more than "missing".
        if not found:
            where = uri if uri.startswith(self._root_prefix) else f"{self.root.uri_for(key)} (the manifest says {uri})"
            raise CurateError(f"The {column} of sample {sample_id} is missing: there is no {where}.")
        what, looks_right = FORMAT_SIGNATURES[column]
        if not looks_right(self.root.get_head(key, 12)):
            raise CurateError(f"The {column} of sample {sample_id}, {self.root.uri_for(key)}, is not {what}.")
        return self.root, key


def locate_artifacts(rows: list[dict[str, Any]], locator: ArtifactLocator) -> list[dict[str, tuple[Store, str]]]:
    """Every kept row's media files, checked to exist before anything is written (rows in parallel)."""

    def locate_row(row: dict[str, Any]) -> dict[str, tuple[Store, str]]:
        return {
            column: locator.locate(row[uri_column], row["sample_id"], uri_column)
            for column, uri_column in MEDIA_COLUMNS.items()
        }

    with _progress(len(rows), "checking artifacts") as bar, ThreadPoolExecutor(READ_THREADS) as pool:
        return _parallel_map(pool, locate_row, rows, bar)


def _progress(total: int, description: str) -> Any:
    """A progress bar on stderr, shown on a terminal when there are many samples."""
    from tqdm import tqdm

    disable = None if total >= PROGRESS_MIN_SAMPLES else True  # None: shown on a terminal only
    return tqdm(total=total, unit="sample", desc=description, file=sys.stderr, disable=disable)


def _parallel_map(pool: ThreadPoolExecutor, function: Any, items: Sequence[Any], bar: Any) -> list[Any]:
    """`[function(item) for item in items]` on the pool's threads; the first failure cancels what has not started."""
    futures = [pool.submit(function, item) for item in items]
    try:
        results = []
        for future in futures:
            results.append(future.result())
            bar.update(1)
        return results
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _connect(store: Store) -> Store:
    """Build an S3 store's client now: threads then share one (clients are thread-safe, their lazy creation not)."""
    if isinstance(store, S3Store):
        _ = store.resolved_endpoint
    return store


# --- writing the dataset -------------------------------------------------------------------------------------


def shard_keys(rows: int, shard_rows: int) -> list[str]:
    """`data/train-00000-of-0000N.parquet` names (the Hub's convention) for `rows` rows, ≤ `shard_rows` each."""
    count = max(1, math.ceil(rows / shard_rows))
    return [f"{DATA_PREFIX}train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]


def dataset_rows(rows: Sequence[dict[str, Any]], media: Sequence[dict[str, dict[str, Any]]]) -> pa.Table:
    """DATASET_SCHEMA rows: each selected manifest row with its media cells ({"bytes", "path"})."""
    names = [n for n in DATASET_SCHEMA.names if n not in MEDIA_COLUMNS]
    records = [{**files, **{n: row[n] for n in names}} for row, files in zip(rows, media, strict=True)]
    return pa.Table.from_pylist(records, schema=DATASET_SCHEMA)


def parquet_bytes(table: pa.Table, row_group_rows: int | None = None) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=row_group_rows)
    return buffer.getvalue()


def existing_dataset_keys(out: Store) -> list[str]:
    """The keys of a curated dataset (complete or not) already at `out`."""
    keys = list(out.list(DATA_PREFIX))
    keys += [k for k in (PAIRS_FILE, CARD_FILE) if out.exists(k)]
    return keys


def write_dataset(
    out: Store,
    rows: list[dict[str, Any]],
    located: list[dict[str, tuple[Store, str]]],
    pairs: pa.Table,
    card: str,
    shard_rows: int,
    previous: Collection[str] = (),
) -> list[str]:
    """Write the shards, then pairs.parquet, then the card; return the shard keys.

    `previous` are the keys of a dataset being replaced: its card goes first (from then on the folder does not
    claim to be complete), its shards that the new ones do not overwrite go once the new ones are written.
    """
    if CARD_FILE in previous:
        out.delete(CARD_FILE)

    def read_media(item: tuple[dict[str, Any], dict[str, tuple[Store, str]]]) -> dict[str, dict[str, Any]]:
        row, files = item
        return {
            column: {"bytes": store.get_bytes(key), "path": f"{row['sample_id']}-{key.rpartition('/')[2]}"}
            for column, (store, key) in files.items()
        }

    keys = shard_keys(len(rows), shard_rows)
    items = list(zip(rows, located, strict=True))
    # Shard by shard, so that memory holds one shard's files, not the whole dataset's.
    with _progress(len(rows), "reading artifacts") as bar, ThreadPoolExecutor(READ_THREADS) as pool:
        for index, key in enumerate(keys):
            chunk = items[index * shard_rows : (index + 1) * shard_rows]
            media = _parallel_map(pool, read_media, chunk, bar)
            out.put_bytes(key, parquet_bytes(dataset_rows([row for row, _ in chunk], media), ROW_GROUP_ROWS))
    for key in sorted(set(previous) - set(keys) - {CARD_FILE, PAIRS_FILE}):
        out.delete(key)
    out.put_bytes(PAIRS_FILE, parquet_bytes(pairs))
    out.put_bytes(CARD_FILE, card.encode("utf-8"))
    return keys


def _yaml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML flow scalar


def dataset_card(
    *,
    manifest_uri: str,
    command: str,
    selection: Selection,
    pairs: pa.Table,
    parameters: dict[str, Any],
    shards: int,
) -> str:
    """README.md: YAML front matter that `load_dataset(folder)` reads, then what the dataset is and how it was made."""
    kept = selection.rows
    generated = int(sum(pairs.column("generated").to_pylist()))
    sweeps = sorted({s for s in kept.column("sweep").to_pylist() if s})
    image_models = sorted({m for m in kept.column("image_model").to_pylist() if m})
    audio_models = sorted({m for m in kept.column("audio_model").to_pylist() if m})
    auffusion = any("auffusion" in m.lower() for m in audio_models)
    name = f"imgsound {', '.join(sweeps)}" if sweeps else "imgsound samples"
    pairs_kept = sum(1 for k in pairs.column("kept").to_pylist() if k)
    settings = "\n".join(f"| `{option}` | {value} |" for option, value in parameters.items())
    best = "higher" if HIGHER_IS_BETTER[parameters["--rank-by"]] else "lower"
    return f"""---
pretty_name: {_yaml_string(name)}
license: {"cc-by-nc-sa-4.0" if auffusion else "other"}
tags:
- imgsound
- images-that-sound
- spectrogram
- audio
- image
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*.parquet
  default: true
- config_name: pairs
  data_files:
  - split: train
    path: {PAIRS_FILE}
---

# {name}

Spectrograms that look like a picture and sound like audio when played ("images that sound": multimodal
denoising with an image and an audio diffusion model), curated from the imgsound sweep whose manifest is
`{manifest_uri}`: {kept.num_rows} samples from {pairs_kept} of its {pairs.num_rows} prompt pairs, in
{_plural(shards, "Parquet shard")}.

## Selection

```sh
{command}
```

| option | value |
|---|---|
{settings}

| samples | count |
|---|---|
| generated (in the manifest) | {generated} |
| candidates | {selection.candidates} |
| without a score the selection needs | {selection.unscored} |
| below a minimum | {selection.below_minimum} |
| ranked below the top K of their pair | {selection.beyond_top_k} |
| **kept** | **{kept.num_rows}** |

Scores are the sweep's CLIP score (spectrogram vs image prompt) and CLAP score (audio vs audio prompt), in [0, 1].
Within a pair, samples are ordered by `rank_value` ({best} is better), equal values by `sample_index`, then
`sample_id`; `rank_in_pair` is the position in that order (1 = best).

## Columns

- `image` (Image): the image model's picture; `spectrogram` (Image): the spectrogram, grayscale, row 0 = 8 kHz;
  `audio` (Audio): the spectrogram played, 16 kHz mono WAV
- `sample_id`, `pair_index`, `sample_index`, `rank_in_pair`, `rank_value`, `image_prompt`, `audio_prompt`
- `clip_score`, `clap_score`, `cycle_correlation`, `cycle_mae` (null where the sweep did not compute them)
- the sampling parameters (`seed`, negatives, `steps`, guidance scales, start steps, `audio_weight`, `height`,
  `width`, `vocoder`, `crop`, `dtype`), the model ids and revisions, and the `sweep` name

`{PAIRS_FILE}` (config `pairs`) has one row per prompt pair: samples generated and kept, mean/std/min/max of the
CLIP and CLAP scores over all generated samples, and their means over the kept ones.

```python
from datasets import load_dataset
samples = load_dataset("path/to/this/folder", split="train")
pairs = load_dataset("path/to/this/folder", "pairs", split="train")
```

## Licence

The samples keep the licences of the models that made them. Samples made with **Auffusion** (the default audio
model) are under **CC BY-NC-SA 4.0: non-commercial use only**, share-alike; **Stable Diffusion 1.5** (the default
image model) is under the **CreativeML OpenRAIL-M** licence and its use restrictions. Models used here: image
{_code_list(image_models)}; audio {_code_list(audio_models)}.
"""


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _code_list(names: Sequence[str]) -> str:
    return ", ".join(f"`{name}`" for name in names) or "unknown"


# --- the command line ----------------------------------------------------------------------------------------


def _unit_score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"scores are in [0, 1], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """Argument errors end like every other bad input: one sentence on stderr and exit status 2."""

    def error(self, message: str) -> Any:
        print(f"curate: error: {message} (see {PROG} --help).", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("manifest", metavar="MANIFEST", help="a sweep's output folder (s3://…, file:///…, a path) or its .parquet")
    add("--out", required=True, metavar="URI", help="the dataset's folder: s3://bucket/prefix, file:///dir or a path")
    add("--min-clip", type=_unit_score, metavar="X", help="drop samples whose CLIP score is below X (0–1)")
    add("--min-clap", type=_unit_score, metavar="Y", help="drop samples whose CLAP score is below Y (0–1)")
    add("--top-k-per-pair", type=_positive_int, metavar="K", help="keep the best K per prompt pair (default: all)")
    add("--rank-by", choices=RANKINGS, default=DEFAULT_RANKING, help="the ranking key (default: sum)")
    add("--include", metavar="FILE", help='JSON: [sample ids] or {"sample_ids": [...]}; only these are candidates')
    add("--overwrite", action="store_true", help="replace a curated dataset already at --out")
    add("--endpoint-url", metavar="URL", help="S3 endpoint (default: AWS_ENDPOINT_URL, else AWS)")
    add("--shard-rows", type=_positive_int, default=DEFAULT_SHARD_ROWS, metavar="N", help="rows per shard (500)")
    return parser


def _empty_selection_message(selection: Selection, args: argparse.Namespace) -> str:
    if selection.candidates == selection.unscored:
        return "No candidate sample has the scores the ranking needs, so nothing is selected; score them first."
    limits = " and ".join(
        f"--{name} {value:g}"
        for name, value in (("min-clip", args.min_clip), ("min-clap", args.min_clap))
        if value is not None
    )
    return f"No sample passes {limits}, so nothing is selected: lower the minimum."


def _format_score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def print_summary(pairs: pa.Table, out_uri: str, selection: Selection, shards: int) -> None:
    """The per-pair table and a final line, on stdout."""
    rows = pairs.to_pylist()
    print(f"{'pair':>5}  {'kept/gen':<9}  {'CLIP':>6}  {'CLAP':>6}  image / audio prompt (scores: means over the kept)")
    for row in rows[:SUMMARY_MAX_PAIRS]:
        prompts = f"{row['image_prompt']} / {row['audio_prompt']}"
        counts = f"{row['kept']}/{row['generated']}"
        clip, clap = _format_score(row["kept_clip_mean"]), _format_score(row["kept_clap_mean"])
        print(f"{row['pair_index']:>5}  {counts:<9}  {clip:>6}  {clap:>6}  {prompts[:80]}")
    if len(rows) > SUMMARY_MAX_PAIRS:
        print(f"  … {len(rows) - SUMMARY_MAX_PAIRS} more pairs in {PAIRS_FILE}")
    generated = sum(r["generated"] for r in rows)
    kept_pairs = sum(1 for r in rows if r["kept"])
    print(
        f"curated {selection.rows.num_rows} of {generated} samples from {kept_pairs} of {len(rows)} pairs "
        f"in {_plural(shards, 'shard')} → {out_uri}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or an argument error (2, already reported): main returns, not exits
        return int(exit_.code or 0)
    try:
        root, manifest_key = manifest_location(args.manifest, args.endpoint_url)
        manifest = read_manifest(root, manifest_key)
        include = read_include(args.include) if args.include else None
        selection = select(
            manifest,
            rank_by=args.rank_by,
            min_clip=args.min_clip,
            min_clap=args.min_clap,
            top_k_per_pair=args.top_k_per_pair,
            include=include,
        )
        if selection.rows.num_rows == 0:
            raise CurateError(_empty_selection_message(selection, args))
        out = open_store(args.out, endpoint_url=args.endpoint_url)
        if out.uri == root.uri or out.exists(MANIFEST_FILE):
            raise CurateError(f"--out {out.uri} is a sweep's folder: give the curated dataset a folder of its own.")
        previous = existing_dataset_keys(out)
        if previous and not args.overwrite:
            raise CurateError(
                f"{out.uri} already holds a curated dataset ({previous[0]}, …): pass --overwrite to replace it, "
                "or choose another --out."
            )
        rows = selection.rows.to_pylist()
        located = locate_artifacts(rows, ArtifactLocator(root, args.endpoint_url))
        out.check_writable()
    except (CurateError, StoreError) as error:
        print(f"curate: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    pairs = pair_statistics(manifest, selection.rows)
    parameters = {
        "--rank-by": args.rank_by,
        "--top-k-per-pair": args.top_k_per_pair if args.top_k_per_pair is not None else "all",
        "--min-clip": "none" if args.min_clip is None else f"{args.min_clip:g}",
        "--min-clap": "none" if args.min_clap is None else f"{args.min_clap:g}",
        "--include": f"{len(set(include))} sample ids from {Path(args.include).name}" if include else "all samples",
    }
    shards = len(shard_keys(len(rows), args.shard_rows))
    card = dataset_card(
        manifest_uri=root.uri_for(manifest_key),
        command=f"{PROG} {shlex.join(argv)}",
        selection=selection,
        pairs=pairs,
        parameters=parameters,
        shards=shards,
    )
    try:
        write_dataset(out, rows, located, pairs, card, args.shard_rows, previous)
    except (StoreError, OSError) as error:
        reason = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
        print(
            f"curate: error: storage failed: {reason}; {out.uri} holds no complete dataset ({CARD_FILE} is written "
            "last): rerun with --overwrite",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print_summary(pairs, out.uri, selection, shards)
    return 0


if __name__ == "__main__":
    from imgsound_core.host import end_process

    end_process(main())
