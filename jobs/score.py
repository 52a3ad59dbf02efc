"""The scoring stage of a sweep: CLIP, CLAP and the vocoder cycle check for every manifest row, exactly once.

    python -m jobs.score s3://bucket/run                      # score a finished sweep's rows that lack scores
    python -m jobs.sweep SPEC --output URI                    # with `scoring: {}` in the spec: the same, at the end

Scores are written as parts, `scores/part-<hash of the batch's sample ids>.parquet` (sample id + score columns),
after they are computed; a retried batch rewrites its own part. Rows that a part already covers are never scored
again, and `apply_scores` fills the manifest's score columns from the parts, so re-running after a kill or an
outage finishes the work without scoring anything twice. Scorers read each sample's `spectrogram.png` and
`audio.wav`, as the paper's evaluator reads `spec.png` and `audio.wav`: in a sweep, the bytes its pipeline has just
written (jobs/pipeline.py); here, for rows left unscored, from the store.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.manifest import MANIFEST_FILE, batch_part_key, conform, first_per_key, parquet_bytes, read_parquet_bytes
from jobs.spec import Scoring
from jobs.store import Store, StoreError, open_store

SCORES_PREFIX = "scores/"
# What a scorer reads of a sample: the paper's evaluator reads `spec.png` and `audio.wav`.
SCORED_FILES = ("spectrogram.png", "audio.wav")
SCORE_COLUMNS = ("clip_score", "clap_score", "cycle_mae", "cycle_correlation")
SCORE_SCHEMA = pa.schema(
    [pa.field("sample_id", pa.string(), nullable=False)]
    + [pa.field(name, pa.float64()) for name in SCORE_COLUMNS]
    + [pa.field("clip_model", pa.string()), pa.field("clap_model", pa.string())]
)
EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


class ScoreWorker:
    """Holds the CLIP and CLAP models; `run(rows)` scores one batch of samples and stores its part."""

    def __init__(
        self,
        scoring: dict[str, Any],
        output_uri: str,
        endpoint_url: str | None = None,
        torch_threads: int | None = None,
    ) -> None:
        from imgsound_core.cli import quiet_libraries
        from imgsound_core.host import prepare_model_process
        from imgsound_core.scoring import SampleScorer
        from jobs.worker import resolve_device

        prepare_model_process(torch_threads)
        quiet_libraries()
        self.scoring = Scoring.model_validate(scoring)
        self.store = open_store(output_uri, endpoint_url=endpoint_url)
        device = resolve_device(self.scoring.device)
        self.scorer = SampleScorer(self.scoring.clip, self.scoring.clap, device=device)

    def run(self, rows: list[dict[str, str]]) -> dict[str, Any]:
        """Score `rows` (dicts of sample_id, image_prompt, audio_prompt), reading each sample's files from the
        store; returns `{"part", "sample_ids"}`."""
        files = [
            {name: self.store.get_bytes(f"samples/{row['sample_id']}/{name}") for name in SCORED_FILES} for row in rows
        ]
        return self.score_files(rows, files)

    def score_files(self, rows: Sequence[dict[str, str]], files: Sequence[dict[str, bytes]]) -> dict[str, Any]:
        """Score `rows` from their files' bytes (`SCORED_FILES` of each sample, as stored) and store the part.

        The sweep's pipeline hands over the bytes it has just written, so nothing is read back; the scores are the
        ones `run` gives, since both decode the same bytes.
        """
        from imgsound_core.scoring import decode_spectrogram_png, decode_wav

        spectrograms, waveforms, rates = [], [], []
        for sample in files:
            spectrograms.append(decode_spectrogram_png(sample["spectrogram.png"]))
            waveform, rate = decode_wav(sample["audio.wav"])
            waveforms.append(waveform)
            rates.append(rate)
        scores: list[dict[str, Any]] = [{} for _ in rows]
        for rate in sorted(set(rates)):  # one call per sample rate (a sweep has one: 16 kHz)
            index = [i for i, r in enumerate(rates) if r == rate]
            computed = self.scorer.score(
                [spectrograms[i] for i in index],
                [waveforms[i] for i in index],
                rate,
                [rows[i]["image_prompt"] for i in index],
                [rows[i]["audio_prompt"] for i in index],
                cycle=self.scoring.cycle,
            )
            for i, values in zip(index, computed):
                scores[i] = values
        table = pa.Table.from_pylist(
            [
                {
                    "sample_id": row["sample_id"],
                    **values,
                    "clip_model": self.scoring.clip,
                    "clap_model": self.scoring.clap,
                }
                for row, values in zip(rows, scores)
            ],
            schema=SCORE_SCHEMA,
        )
        part = batch_part_key((r["sample_id"] for r in rows), prefix=SCORES_PREFIX)
        self.store.put_bytes(part, parquet_bytes(table))
        return {"part": part, "sample_ids": [r["sample_id"] for r in rows]}


def read_scores(store: Store) -> pa.Table:
    """Every score part, one row per sample id (the first part in key order wins; parts never disagree on ids)."""
    return read_score_parts(store)[1]


def read_score_parts(store: Store) -> tuple[list[str], pa.Table]:
    """The score parts' keys, and their rows as `read_scores` gives them."""
    keys = [k for k in store.list(SCORES_PREFIX) if k.endswith(".parquet")]
    tables = [pq.read_table(pa.BufferReader(store.get_bytes(k))).cast(SCORE_SCHEMA) for k in keys]
    merged = pa.concat_tables(tables) if tables else SCORE_SCHEMA.empty_table()
    return keys, first_per_key(merged, "sample_id")


def apply_scores(manifest: pa.Table, scores: pa.Table) -> pa.Table:
    """The manifest with its score columns filled from `scores` where a row has none yet (row order kept)."""
    manifest = conform(manifest)
    if scores.num_rows == 0 or manifest.num_rows == 0:
        return manifest
    left = pa.table({"sample_id": manifest.column("sample_id"), "position": pa.array(range(manifest.num_rows))})
    right = scores.select(["sample_id", *SCORE_COLUMNS]).rename_columns(
        ["sample_id", *(f"new_{name}" for name in SCORE_COLUMNS)]
    )
    joined = left.join(right, "sample_id", join_type="left outer", use_threads=False).sort_by("position")
    for name in SCORE_COLUMNS:
        index = manifest.schema.get_field_index(name)
        filled = pc.coalesce(manifest.column(name), joined.column(f"new_{name}"))
        manifest = manifest.set_column(index, manifest.schema.field(name), filled)
    return manifest


def unscored_rows(manifest: pa.Table, scores: pa.Table) -> list[dict[str, str]]:
    """Rows with no CLIP score in the manifest and no score part: what is left to score, in manifest order."""
    done = set(scores.column("sample_id").to_pylist())
    return [
        {"sample_id": r["sample_id"], "image_prompt": r["image_prompt"], "audio_prompt": r["audio_prompt"]}
        for r in manifest.select(["sample_id", "image_prompt", "audio_prompt", "clip_score"]).to_pylist()
        if r["clip_score"] is None and r["sample_id"] not in done
    ]


def run_scoring(
    scoring: Scoring, rows: Sequence[dict[str, str]], output_uri: str, endpoint_url: str | None, workers: int | None
) -> None:
    """Score `rows` on the running Ray cluster with a pool of ScoreWorker actors (progress on stderr)."""
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    from jobs.sweep import worker_options

    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = gpus > 0 and scoring.device != "cpu"
    batches = [list(rows[i : i + scoring.batch_size]) for i in range(0, len(rows), scoring.batch_size)]
    count = min(workers or max(1, gpus if use_gpu else 1), len(batches))
    remote = ray.remote(**worker_options(use_gpu))(ScoreWorker)
    threads = int(os.environ.get("IMGSOUND_WORKER_THREADS", "0")) or None
    actors = [remote.remote(scoring.model_dump(), output_uri, endpoint_url, threads) for _ in range(count)]
    pool = ActorPool(actors)
    with tqdm(total=len(rows), unit="sample", desc="scoring", file=sys.stderr, mininterval=1.0) as bar:
        for result in pool.map_unordered(lambda actor, batch: actor.run.remote(batch), batches):
            bar.update(len(result["sample_ids"]))
    for actor in actors:
        ray.kill(actor)


def score_sweep(
    store: Store,
    scoring: Scoring,
    output_uri: str,
    endpoint_url: str | None = None,
    workers: int | None = None,
    address: str | None = None,
) -> int:
    """Score what `store`'s manifest.parquet lacks and write the scores into it; returns the rows scored now."""
    manifest = read_parquet_bytes(store.get_bytes(MANIFEST_FILE))
    rows = unscored_rows(manifest, read_scores(store))
    if rows:
        import ray

        if not ray.is_initialized():
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        run_scoring(scoring, rows, output_uri, endpoint_url, workers)
    store.put_bytes(MANIFEST_FILE, parquet_bytes(apply_scores(manifest, read_scores(store))))
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Scoring()
    parser.add_argument("output", help="a finished sweep's output: s3://bucket/prefix, file:///dir or a folder")
    parser.add_argument("--clip-model", default=defaults.clip, help=f"CLIP id or folder (default {defaults.clip})")
    parser.add_argument("--clap-model", default=defaults.clap, help=f"CLAP id or folder (default {defaults.clap})")
    parser.add_argument("--no-cycle", action="store_true", help="skip the vocoder cycle check")
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda or auto (default)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="samples per scoring call")
    parser.add_argument("--workers", type=int, default=None, help="scoring actors (default: one per GPU, else 1)")
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    args = parser.parse_args(argv)
    try:
        scoring = Scoring(
            clip=args.clip_model,
            clap=args.clap_model,
            cycle=not args.no_cycle,
            device=args.device,
            batch_size=args.batch_size,
        )
    except ValueError as error:
        print(f"score: error: {str(error).splitlines()[-1].strip()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        store = open_store(args.output, endpoint_url=args.endpoint_url)
        if not store.exists(MANIFEST_FILE):
            print(
                f"score: error: {store.uri_for(MANIFEST_FILE)} does not exist; run the sweep to the end first",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        store.check_writable()
    except StoreError as error:
        print(f"score: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        scored = score_sweep(store, scoring, args.output, args.endpoint_url, args.workers, args.address)
    except Exception as error:  # noqa: BLE001 - one sentence; scores already written are kept
        from jobs.sweep import failure_sentence

        print(f"score: error: {failure_sentence(error)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"score: {scored} samples scored; scores in {store.uri_for(MANIFEST_FILE)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from imgsound_core.host import end_process

    end_process(main())
