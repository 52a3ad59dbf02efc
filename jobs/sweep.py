"""`python -m jobs.sweep SPEC --output URI`: a resumable, exactly-once sweep over a prompt-pair grid on Ray.

    ray job submit --working-dir . -- python -m jobs.sweep jobs/specs/paper_table1.yaml --output s3://bucket/run
    python -m jobs.sweep jobs/specs/tiny.yaml --output results/tiny          # one machine, a local Ray

Before any work: the spec is validated and the store proven writable. Then the grid is expanded (stable ids),
points already in the manifest are skipped, and the rest flows in batches through a streaming pipeline on Ray Data
(jobs/pipeline.py: generate on one actor per GPU by default, encode + upload, and with `scoring:` score, all at
once) — Ray places the actors across the cluster. At the end the parts are consolidated into `URI/manifest.parquet`
with exactly one row per grid point and the scores merged into it (rows an earlier run left unscored are scored
then, jobs/score.py). Exit status: 0 done, 1 failed during the run (the
message says why; resubmitting resumes), 2 bad spec/URI/store before any work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from imgsound_core.models.errors import ModelNotAvailableError
from jobs.manifest import (
    MANIFEST_FILE,
    MANIFEST_PREFIX,
    compact_parts,
    consolidate,
    parquet_bytes,
    read_parquet_bytes,
    read_sample_ids,
)
from jobs.pipeline import DEFAULT_STALL_WATCH, StallWatch, point_payload  # noqa: F401 - point_payload re-exported for in-process runs
from jobs.spec import GridPoint, SpecError, SweepModels, SweepSpec, expand, load_spec
from jobs.store import Store, StoreError, open_store

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
# Settings (never credentials) that workers need to write where this process was told to. Ray shows an actor's
# runtime_env to anyone who can read the cluster's state (`ray list actors --detail`, the dashboard, its logs), so
# credentials must reach workers the way the platform provides them: the environment of `ray start` (a Kubernetes
# Secret the pods import, as k8s/ does), an instance or pod role (IRSA), or a credentials file on every node named by
# AWS_SHARED_CREDENTIALS_FILE / AWS_PROFILE, which are forwarded here as names only.
FORWARDED_ENV = frozenset(
    {
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_EC2_METADATA_DISABLED",
        "NO_PROXY",
        "HF_HUB_OFFLINE",
        "HF_HOME",
        "HF_HUB_CACHE",
        "IMGSOUND_MODELS_DIR",
    }
)
# Never forwarded, whatever a future edit of the list above says.
SECRET_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"})


class SweepFailed(RuntimeError):
    pass


def finished_ids(store: Store) -> set[str]:
    """Sample ids already in the manifest (its parts and a consolidated file from an earlier run)."""
    done: set[str] = set()
    keys = [k for k in store.list(MANIFEST_PREFIX) if k.endswith(".parquet")]
    if store.exists(MANIFEST_FILE):
        keys.append(MANIFEST_FILE)
    for key in keys:
        done.update(read_sample_ids(store.get_bytes(key)))
    return done


def identify_models(spec: SweepSpec, address: str | None = None) -> SweepModels:
    """The identities of the spec's models, which every sample id hashes: read on this machine when it holds the
    weights, else by one Ray task placed like a worker (a head node without GPUs usually has no models)."""
    try:
        return SweepModels.identify(spec)
    except ModelNotAvailableError:
        pass
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level="WARNING", log_to_driver=True)
    options = worker_options(_use_gpu(spec))
    task = ray.remote(num_gpus=options["num_gpus"], num_cpus=options["num_cpus"], runtime_env=options["runtime_env"])(
        _identify_models
    )
    return SweepModels.from_dict(ray.get(task.remote(spec.model_dump())))


def _identify_models(spec: dict[str, Any]) -> dict[str, Any]:
    return SweepModels.identify(SweepSpec.model_validate(spec)).to_dict()


def _use_gpu(spec: SweepSpec) -> bool:
    import ray

    return int(ray.cluster_resources().get("GPU", 0)) > 0 and spec.models.device != "cpu"


def plan(
    spec: SweepSpec, store: Store, models: SweepModels | None = None
) -> tuple[list[GridPoint], list[list[GridPoint]]]:
    """All grid points, and the batches of those not finished yet.

    A point is finished when the manifest has a row with its id, or with the id it had before model identities
    existed (`GridPoint.legacy_id`): sweeps written then resume without redoing anything.
    """
    points = expand(spec, models or identify_models(spec))
    done = finished_ids(store)
    remaining = [p for p in points if p.sample_id not in done and p.legacy_id not in done]
    batches = [remaining[i : i + spec.batch_size] for i in range(0, len(remaining), spec.batch_size)]
    return points, batches


def worker_options(use_gpu: bool) -> dict[str, Any]:
    """`ray.remote` options of a worker actor: one GPU (or CPU), restarted once, this process's storage settings.

    A restarted actor retries its batch: batches are idempotent (same ids → same files, same part). Workers see
    the storage settings this process was started with (endpoint, region, profile name, timeouts), so a sweep
    started with `AWS_PROFILE=…`/`AWS_ENDPOINT_URL=…` writes where it was told to on every node; credentials never
    travel this way (see FORWARDED_ENV).
    """
    env_vars = forwarded_env()
    return {
        "num_gpus": 1 if use_gpu else 0,
        "num_cpus": 1,
        "max_restarts": 1,
        "max_task_retries": 1,
        "runtime_env": {"env_vars": env_vars} if env_vars else None,
    }


def forwarded_env() -> dict[str, str]:
    """The storage and model-location settings of this process that workers get (never credentials)."""
    return {
        k: v
        for k, v in os.environ.items()
        if (k in FORWARDED_ENV or k.startswith("IMGSOUND_S3_")) and k not in SECRET_ENV
    }


def run_batches(
    spec: SweepSpec,
    batches,
    output_uri: str,
    endpoint_url: str | None,
    workers: int | None,
    watch: StallWatch | None = DEFAULT_STALL_WATCH,
    weight_bytes: int = 0,
) -> None:
    """Generate, write (and with `scoring:`, score) `batches` through the streaming pipeline of jobs/pipeline.py.

    Generators: `workers` (the flag), else the spec's, else one per GPU, else on a CPU cluster one per core of a node
    as its memory allows for models of `weight_bytes`, two batches each at least (`cpu_generators`; 1 when placed by
    `worker_resources`)."""
    import ray
    from tqdm import tqdm

    from jobs.pipeline import _node_cpus, _node_memory, cpu_generators, run_pipeline, sweep_dataset

    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = _use_gpu(spec)
    wanted = workers or spec.workers
    if wanted is None:
        if use_gpu:
            wanted = max(1, gpus)
        elif spec.worker_resources:
            wanted = 1
        else:
            wanted = cpu_generators(_node_cpus(), _node_memory(), weight_bytes, len(batches))
    count = min(wanted, len(batches))
    where = f"{gpus} GPU{'s' if gpus > 1 else ''}" if use_gpu else "CPUs"
    print(f"sweep {spec.name}: {count} generating actor{'s' if count > 1 else ''} on {where}", file=sys.stderr)
    dataset = sweep_dataset(spec, batches, output_uri, endpoint_url, count, use_gpu, forwarded_env())
    total = sum(len(b) for b in batches)
    with tqdm(total=total, unit="sample", desc=f"sweep {spec.name}", file=sys.stderr, mininterval=1.0) as bar:
        for _ in run_pipeline(dataset, bar.update, watch):
            pass


def finalize(store: Store, points: list[GridPoint]) -> int:
    """Consolidate the parts into manifest.parquet; check every grid point has exactly one row; then compact the
    parts (manifest and scores) into one each, once the manifest that covers them is written."""
    from jobs.score import SCORES_PREFIX, apply_scores, read_score_parts

    keys = [k for k in store.list(MANIFEST_PREFIX) if k.endswith(".parquet")]
    parts = consolidate(read_parquet_bytes(store.get_bytes(k)) for k in keys)
    tables = [parts]
    if store.exists(MANIFEST_FILE):
        tables.append(read_parquet_bytes(store.get_bytes(MANIFEST_FILE)))
    wanted = pa.array({p.sample_id for p in points} | {p.legacy_id for p in points}, pa.string())
    table = consolidate(tables)
    table = table.filter(pc.is_in(table.column("sample_id"), value_set=wanted))
    present = set(table.column("sample_id").to_pylist())
    missing = [p for p in points if p.sample_id not in present and p.legacy_id not in present]
    if missing:
        raise SweepFailed(f"{len(missing)} grid points have no manifest row; resubmit to generate them")
    score_keys, scores = read_score_parts(store)
    store.put_bytes(MANIFEST_FILE, parquet_bytes(apply_scores(table, scores)))
    # Rows of points no longer in the spec stay in the compacted part (the consolidated file drops them).
    compact_parts(store, keys, parts)
    compact_parts(store, score_keys, scores, prefix=SCORES_PREFIX)
    return table.num_rows


def _root_cause(error: BaseException) -> BaseException:
    """The exception our code raised, under Ray's wrappers (a task error's `cause`; Ray Data's UserCodeException
    raised `from` it)."""
    from_ray = type(error).__module__.startswith("ray.")
    cause = getattr(error, "cause", None) if from_ray else None
    if isinstance(cause, BaseException) and cause is not error:
        return _root_cause(cause)
    if from_ray and isinstance(error.__cause__, BaseException):
        return _root_cause(error.__cause__)
    return error


def failure_sentence(error: BaseException) -> str:
    """One sentence for a failure during the run (Ray wraps actor errors: report the cause)."""
    cause = _root_cause(error)
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if isinstance(cause, StoreError):
        return f"storage failed: {reason}; finished samples are kept, resubmit to resume"
    return f"{type(cause).__name__}: {reason}; resubmit to resume"


def execute(
    spec: SweepSpec,
    store: Store,
    output: str,
    endpoint_url: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    watch: StallWatch | None = DEFAULT_STALL_WATCH,
    planned: tuple[list[GridPoint], list[list[GridPoint]]] | None = None,
    models: SweepModels | None = None,
) -> int:
    """Generate what is left of `spec`, consolidate, then score if the spec asks; returns the manifest's rows.

    `planned`: `plan()`'s result when the caller has just made it (it reads the whole manifest from the store), with
    the `models` it was made for."""
    if planned is None:
        models = identify_models(spec, address)
        planned = plan(spec, store, models)
    points, batches = planned
    if batches:
        import ray

        if not ray.is_initialized():
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        run_batches(spec, batches, output, endpoint_url, workers, watch, models.weight_bytes if models else 0)
    rows = finalize(store, points)
    if spec.scoring is not None:
        from jobs.score import score_sweep

        score_sweep(store, spec.scoring, output, endpoint_url, workers, address)
    return rows


def disconnect_ray() -> None:
    """Leave the cluster now: Ray's own exit handler takes about a second longer to do the same."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("spec", help="sweep spec YAML (see jobs/specs/)")
    parser.add_argument("--output", default=None, help="s3://bucket/prefix, file:///dir or a folder (default: spec)")
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="generating actors (default: one per GPU; on CPUs one per core as memory allows)",
    )
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--dry-run", action="store_true", help="validate, count what is left, and stop")
    parser.add_argument(
        "--stall-after",
        type=float,
        default=StallWatch.floor_s,
        metavar="SECONDS",
        help="stop, to be resubmitted, when no batch has finished for this long and for "
        f"{StallWatch.factor:g}× the longest wait so far (default %(default)g; 0: wait forever)",
    )
    args = parser.parse_args(argv)

    try:
        spec = load_spec(args.spec)
        output = args.output or spec.output
        if not output:
            raise SpecError("no output: pass --output URI or set `output:` in the spec")
        store = open_store(output, endpoint_url=args.endpoint_url)
        store.check_writable()
        models = identify_models(spec, args.address)
        points, batches = plan(spec, store, models)
    except (SpecError, StoreError, ModelNotAvailableError) as error:
        print(f"sweep: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:  # noqa: BLE001 - identifying the models on a worker failed: one sentence
        cause = _root_cause(error)
        if isinstance(cause, ModelNotAvailableError):
            print(f"sweep: error: {cause}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"sweep: error: {failure_sentence(error)}", file=sys.stderr)
        return EXIT_FAILED
    left = sum(len(b) for b in batches)
    scoring = " then scoring" if spec.scoring is not None else ""
    print(
        f"sweep {spec.name}: {len(points)} grid points, {len(points) - left} already done, {left} to generate"
        f"{scoring} → {store.uri}",
        file=sys.stderr,
    )
    if args.dry_run:
        return 0
    started = time.perf_counter()
    try:
        watch = StallWatch(floor_s=args.stall_after)
        rows = execute(
            spec, store, output, args.endpoint_url, args.workers, args.address, watch, (points, batches), models
        )
    except Exception as error:  # noqa: BLE001 - every failure ends with one sentence and a resumable state
        print(f"sweep: error: {failure_sentence(error)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        disconnect_ray()
    print(
        f"sweep {spec.name}: done, {rows} rows in {store.uri_for(MANIFEST_FILE)} "
        f"({time.perf_counter() - started:.1f} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    from imgsound_core.host import end_process

    end_process(main())
