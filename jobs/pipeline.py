"""A sweep's batches as one streaming pipeline on Ray Data: generate → write → score, each stage an actor pool.

    batches ──► GenerateSamples (models; 1 GPU each, or 1 CPU) ──► WriteSamples (encode + upload + manifest part)
                                                                     └──► ScoreSamples (CLIP/CLAP; `scoring:` only)

Ray Data's streaming executor runs the stages concurrently with back-pressure (bounded queues between them, an
object-store budget): the accelerator denoises batch n+1 while batch n is encoded and uploaded and batch n−1 is
scored, and a slow store slows generation down instead of filling memory. A row of the dataset is one whole sweep
batch (the generated tensors cross as one pickled value), so a batch's part is written by the stage that wrote its
samples, after them — the exactly-once rules of jobs/sweep.py hold as before: a manifest row only after its
artifacts, parts named by the content hash of their sample ids, a retried batch rewrites the same files.

Failures: an actor lost with its node is restarted elsewhere and its batch retried (Ray Data's defaults; batches are
idempotent); an exception in our own code (a storage outage, models that are not the planned ones) is not retried
and ends the sweep with its cause, and a resubmit generates only what has no manifest row.

Resources per stage (logical, what Ray schedules on):
    generate  num_gpus 1 (1 − SCORE_GPU_SHARE when scoring shares the GPU) and num_cpus 1; on a CPU cluster it
              denoises with the node's cores / generators torch threads (IMGSOUND_WORKER_THREADS overrides) and
              reserves those cores less its share of the other stages' reservations (`generator_cpus`);
    write     num_cpus 0.5 — mostly waiting on storage and ffmpeg, which has threads of its own;
    score     num_gpus SCORE_GPU_SHARE beside a generator, or num_cpus 0.5.
The generators run at niceness 0, the other stages at Ray's 15 for workers (`stage_runtime_envs`).
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from jobs.score import SCORED_FILES
from jobs.spec import GridPoint, SweepSpec

# A scorer's share of a GPU beside a generator: CLIP ViT-B/16 and CLAP are small next to two SD-1.5 UNets.
SCORE_GPU_SHARE = 0.25
WRITE_CPUS = 0.5
SCORE_CPUS = 0.5
# Ray's setting for a worker process's niceness (it applies it when the process starts; raising it needs no privilege,
# so 0 only leaves the process where it started, at its raylet's niceness).
GENERATOR_NICENESS_VARIABLE = "RAY_worker_niceness"
# A CPU generator's memory besides its weights (`cpu_generators`): Python, torch and the libraries take ≈0.6 GB.
GENERATOR_BASE_BYTES = 1 << 30
# Weights as loaded (their files' size; twice it for fp16 files run in fp32) and a batch's activations, which grow
# with the model: SD-1.5 and Auffusion (≈8.4 GB of files) make ≈26 GB a generator, so small nodes keep one.
WEIGHT_MEMORY_FACTOR = 3
WRITERS_PER_GENERATOR = 2  # on a GPU, encoding and uploads of a batch take about as long as generating it (video: more)


def point_payload(point: GridPoint) -> dict[str, Any]:
    return {
        "sample_id": point.sample_id,
        "pair_index": point.pair_index,
        "sample_index": point.sample_index,
        "request": point.request.to_dict(),
    }


def _node_cpus() -> int:
    """The CPUs of the smallest node with CPUs in the cluster (a generator may land on any of them)."""
    import ray

    counts = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return min([c for c in counts if c > 0], default=1)


def _node_memory() -> float:
    """Ray's `memory` (bytes it lets tasks and actors use) of the smallest node with CPUs; 0 when it says none."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    return min((float(r.get("memory", 0)) for r in nodes), default=0.0)


def cpu_generators(node_cpus: int, node_memory: float, weight_bytes: int, batches: int) -> int:
    """How many generators a CPU sweep runs by default: one per core of a node, as many as the node's memory holds,
    and no more than gives each two of the sweep's `batches`.

    One generator of one torch thread per core beats one generator of a thread per core on the same batches (1.00–1.03
    against 0.83–0.85× the in-process parts on two cores; README, "Sweeps on CPUs"): a thread preempted by Ray's
    or a writer's processes stalls only its own generator, not a whole team at its barrier. Each one holds a copy of
    the models, sized as `GENERATOR_BASE_BYTES` + `WEIGHT_MEMORY_FACTOR` × their weight files; weights of unknown
    size (0) keep the single generator, as does a node too small for two. A small sweep keeps fewer: each generator
    starts and loads its models at the same time on the same cores, which costs more than a batch or two of tiny
    models gain (8 batches of one sample, 12 steps: 38.5 s with two generators, 34–37 s with one). Pure, so
    testable."""
    if weight_bytes <= 0 or node_cpus <= 1:
        return 1
    per_generator = GENERATOR_BASE_BYTES + WEIGHT_MEMORY_FACTOR * weight_bytes
    return max(1, min(node_cpus, int(node_memory // per_generator), batches // 2))


def actor_pool(**sizes: int):
    """A stage's actor pool: each actor given one batch at a time, and running it on its main thread.

    One at a time: with more in flight (Ray Data's default is 4), a finished batch's output sometimes stayed with its
    actor until the actor had also finished the next batch: the writers then waited a whole generation for it, and
    the progress bar too (1 run in 6 on a local Ray; `tests/test_pipeline.py`). A batch's input is a few kilobytes,
    so the actor's wait for the next one is short.

    Main thread: by default Ray Data calls the stage on a thread of its own, beside the one that loaded the models,
    and there the same 16 samples × 30 steps of the tiny models took 26–30 s instead of 18–19 s on two cores
    (torch's CPU threads and glibc's per-thread heaps; `imgsound_core/host.py`). That thread exists to overlap
    fetching a batch's input with the work, which a few kilobytes do not need."""
    import ray.data

    return ray.data.ActorPoolStrategy(**sizes, max_tasks_in_flight_per_actor=1, enable_true_multi_threading=True)


def _threads() -> int | None:
    return int(os.environ.get("IMGSOUND_WORKER_THREADS", "0")) or None


@dataclass(frozen=True)
class StageSizes:
    """How many actors each stage has and what each reserves (Ray's logical resources); pure, so testable.

    On a CPU cluster a generator denoises with `threads` torch threads (the node's cores / generators) and reserves
    those cores less its share of what the writers and the CPU scorer reserve: they run in the gaps the generators
    leave, at niceness 15. So every stage fits the node the threads were sized for. A fixed 1 CPU per generator did
    not: two generators of one torch thread each on a 2-CPU node (`workers: 2`: a preempted thread then stalls only its
    own generator, not a team at its barrier; README, "Sweeps on CPUs") left nothing for the writers, which
    then started only once the generators had finished. A generator keeps at least 0.1 CPU, to be placed on a node
    with CPUs.
    """

    generators: int
    generator_cpus: float
    generator_gpus: float
    generator_threads: int | None  # None: torch's default (a GPU worker); else the torch threads on a CPU node
    writers: int
    scorers: int  # 0 without `scoring:`
    scorer_cpus: float
    scorer_gpus: float

    @classmethod
    def plan(
        cls,
        generators: int,
        node_cpus: int,
        use_gpu: bool,
        scoring: bool,
        score_on_gpu: bool,
        writers: int | None = None,
        threads: int | None = None,
    ) -> StageSizes:
        """`writers` as the spec says (None: 2 per generator on GPUs, 1 on CPUs); `threads` overrides the CPU
        threads (IMGSOUND_WORKER_THREADS)."""
        writers = writers or (WRITERS_PER_GENERATOR if use_gpu else 1) * generators
        scorers = (generators if score_on_gpu else 1) if scoring else 0
        if use_gpu:
            return cls(
                generators=generators,
                generator_cpus=1.0,
                generator_gpus=1 - SCORE_GPU_SHARE if score_on_gpu else 1.0,
                generator_threads=threads,
                writers=writers,
                scorers=scorers,
                scorer_cpus=0.0 if score_on_gpu else SCORE_CPUS,
                scorer_gpus=SCORE_GPU_SHARE if score_on_gpu else 0.0,
            )
        threads = threads or max(1, node_cpus // generators)
        others = writers * WRITE_CPUS + scorers * SCORE_CPUS
        return cls(
            generators=generators,
            generator_cpus=max(0.1, round(threads - others / generators, 4)),
            generator_gpus=0.0,
            generator_threads=threads,
            writers=writers,
            scorers=scorers,
            scorer_cpus=SCORE_CPUS,
            scorer_gpus=0.0,
        )

    def cpus(self) -> float:
        """Every stage's CPUs together."""
        return self.generators * self.generator_cpus + self.writers * WRITE_CPUS + self.scorers * self.scorer_cpus


class GenerateSamples:
    """Stage 1: a `SweepWorker` (both models) per actor; one dataset row in, the batch's samples out."""

    def __init__(self, spec: dict[str, Any], torch_threads: int | None = None) -> None:
        from jobs.worker import SweepWorker

        # IMGSOUND_WORKER_THREADS of the node (its `ray start` environment) wins, as it does for the scorers.
        self.worker = SweepWorker(spec, torch_threads=_threads() or torch_threads)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        generated = [pickle.dumps(self.worker.generate(json.loads(points)), protocol=5) for points in rows["points"]]
        return {"points": rows["points"], "generated": np.array(generated, dtype=object)}


class WriteSamples:
    """Stage 2: files and the manifest part of each batch; passes the scored files on when scoring follows."""

    def __init__(self, spec: dict[str, Any], output_uri: str, endpoint_url: str | None, scoring: bool) -> None:
        from imgsound_core.host import keep_freed_memory
        from jobs.writer import SampleWriter

        # No torch or model library here (jobs/writer.py): on a node's cores, a writer that imported them took
        # 2.9 s of CPU at start, while the generator loads its models on the same cores.
        keep_freed_memory()
        self.writer = SampleWriter(spec, output_uri, endpoint_url)
        self.keep = SCORED_FILES if scoring else ()

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts, counts, scored = [], [], []
        for generated in rows["generated"]:
            batch = pickle.loads(generated)
            written = self.writer.write(batch, keep=self.keep)
            parts.append(written["part"])
            counts.append(len(written["sample_ids"]))
            rows_and_files = [
                ({k: s.row[k] for k in ("sample_id", "image_prompt", "audio_prompt")}, files)
                for s, files in zip(batch.samples, written["files"])
            ]
            if self.keep:
                scored.append(pickle.dumps(rows_and_files, protocol=5))
        out = {"part": np.array(parts, dtype=object), "samples": np.array(counts, dtype=np.int64)}
        return {**out, "scored": np.array(scored, dtype=object)} if self.keep else out


class ScoreSamples:
    """Stage 3 (`scoring:`): CLIP/CLAP scores of each batch from the bytes just written; writes its scores part."""

    def __init__(self, scoring: dict[str, Any], output_uri: str, endpoint_url: str | None) -> None:
        from jobs.score import ScoreWorker

        self.worker = ScoreWorker(scoring, output_uri, endpoint_url, _threads())

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for scored in rows["scored"]:
            samples = pickle.loads(scored)
            self.worker.score_files([row for row, _ in samples], [files for _, files in samples])
        return {"part": rows["part"], "samples": rows["samples"]}


def stage_runtime_envs(env_vars: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The runtime environments of the generating stage and of the others: `env_vars` for all, and for the generator
    the usual niceness 0.

    Ray starts worker processes at niceness 15, below its own daemons, the driver and every other process of the
    node. The generator is the pipeline's critical path: at 15, each wake-up of those preempts one of its torch
    threads and stalls the others at their next barrier (on 2 CPU cores, a 16-sample batch of 100 steps took 68–72 s
    instead of 58–61 s). Writers and scorers keep 15 and fill the time it leaves. A generator that finishes early
    and goes, while outputs lost with a node still wait for the writers, is what `StallWatch` is for.
    """
    generator = {"env_vars": {**env_vars, GENERATOR_NICENESS_VARIABLE: "0"}}
    return generator, ({"env_vars": env_vars} if env_vars else None)


def sweep_dataset(
    spec: SweepSpec,
    batches: list[list[GridPoint]],
    output_uri: str,
    endpoint_url: str | None,
    generators: int,
    use_gpu: bool,
    env_vars: dict[str, str],
):
    """The pipeline as a lazy `ray.data.Dataset` of one row per written batch (`part`, `samples`)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the sweep prints its own, in samples
    context.print_on_execution_start = False
    context.raise_original_map_exception = True  # a failed sweep names its cause (e.g. StoreError), not "UDF failed"
    scoring = spec.scoring is not None
    score_on_gpu = scoring and use_gpu and spec.scoring.device != "cpu"
    # Denoising on a CPU cluster uses the node's cores (Ray would give an actor of 1 CPU one torch thread), shared
    # among the generators a node may hold.
    sizes = StageSizes.plan(
        generators, 0 if use_gpu else _node_cpus(), use_gpu, scoring, score_on_gpu, spec.writers, _threads()
    )
    generator_env, runtime_env = stage_runtime_envs(env_vars)
    items = [{"points": json.dumps([point_payload(p) for p in batch])} for batch in batches]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    dataset = dataset.map_batches(
        GenerateSamples,
        fn_constructor_args=(spec.model_dump(), sizes.generator_threads),
        resources=spec.worker_resources,
        batch_size=1,
        compute=actor_pool(size=sizes.generators),
        num_gpus=sizes.generator_gpus,
        num_cpus=sizes.generator_cpus,
        runtime_env=generator_env,
    )
    dataset = dataset.map_batches(
        WriteSamples,
        fn_constructor_args=(spec.model_dump(), output_uri, endpoint_url, scoring),
        batch_size=1,
        compute=actor_pool(size=sizes.writers),  # a fixed pool: one batch in flight leaves Ray Data nothing to scale on
        num_cpus=WRITE_CPUS,
        runtime_env=runtime_env,
    )
    if scoring:
        dataset = dataset.map_batches(
            ScoreSamples,
            fn_constructor_args=(spec.scoring.model_dump(), output_uri, endpoint_url),
            batch_size=1,
            compute=actor_pool(size=sizes.scorers),
            num_gpus=sizes.scorer_gpus,
            num_cpus=sizes.scorer_cpus,
            runtime_env=runtime_env,
        )
    return dataset  # rows of `part` and `samples` (a last projection would hold rows back until the end)


class PipelineStalled(RuntimeError):
    """No batch came out of the pipeline for longer than its `StallWatch` allows."""


@dataclass(frozen=True)
class StallWatch:
    """When a running pipeline counts as stalled: no batch out for `factor` × the longest wait for one so far (the
    first wait included: the actors' start and model load), and never less than `floor_s`. Before the first batch
    there is no limit: a model load takes what it takes.

    Why: Ray Data rebuilds a block lost with a node by re-running the task that made it, which for an actor stage
    needs that same actor; once the stage has finished, its actors are gone, and the stages that wait for the lost
    block wait forever. A sweep that stops and says so is resumed exactly by a resubmit (only what has no row is
    generated again)."""

    floor_s: float = 300.0
    factor: float = 5.0

    def limit_s(self, longest_wait_s: float | None) -> float | None:
        if longest_wait_s is None or self.floor_s <= 0:
            return None
        return max(self.floor_s, self.factor * longest_wait_s)


DEFAULT_STALL_WATCH = StallWatch()


def run_pipeline(
    dataset, progress: Callable[[int], None], watch: StallWatch | None = DEFAULT_STALL_WATCH
) -> Iterator[str]:
    """Execute `dataset` (streaming); call `progress(samples)` per finished batch and yield its part's key; raise
    `PipelineStalled` when `watch` says the pipeline has stopped moving.

    Each output block is taken as soon as it is ready: `iter_rows` prefetches one block ahead, which held every
    batch's progress back until the next batch was written (a whole batch's generation). The blocks are read on a
    thread, so that this one can stop waiting; the sweep then leaves Ray, which ends that thread's wait.
    """
    blocks: queue.Queue[tuple[str, Any]] = queue.Queue()

    def read_blocks() -> None:
        try:
            for rows in dataset.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy"):
                blocks.put(("rows", rows))
            blocks.put(("end", None))
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            blocks.put(("error", error))

    threading.Thread(target=read_blocks, name="sweep-pipeline", daemon=True).start()
    last, longest = time.monotonic(), None
    while True:
        limit = watch.limit_s(longest) if watch is not None else None
        try:
            kind, value = blocks.get(timeout=limit)
        except queue.Empty:
            raise PipelineStalled(
                f"no batch finished for {limit:.0f} s, {watch.factor:g} × the longest wait so far ({longest:.0f} s); "
                "outputs lost with a node may never be rebuilt, and finished samples are kept"
            ) from None
        if kind == "error":
            raise value
        if kind == "end":
            break
        now = time.monotonic()
        longest, last = max(longest or 0.0, now - last), now
        for part, samples in zip(value["part"], value["samples"]):
            progress(int(samples))
            yield str(part)
    sys.stderr.flush()
