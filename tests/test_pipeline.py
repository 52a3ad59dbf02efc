"""The sweep pipeline (jobs/pipeline.py) on a real local Ray: its driver loop, its stall watch, its stages' niceness."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from serve.local import cluster_env

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_on_a_ray_of_its_own(tmp_path: Path, script: str, *args: str) -> dict:
    """Run `script` in a fresh process that starts a Ray of its own (not a cluster of the tests; a short RAY_TMPDIR,
    as Ray's socket paths must fit in 107 bytes); the JSON object its last line prints."""
    path = tmp_path / "script.py"
    path.write_text(script)
    with tempfile.TemporaryDirectory(prefix="rp-", dir="/tmp") as ray_tmp:
        env = {**cluster_env(), "RAY_TMPDIR": ray_tmp}
        env.pop("RAY_ADDRESS", None)
        done = subprocess.run(
            [sys.executable, str(path), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# Two batches through an actor stage made as a sweep's are (`actor_pool`); the second waits (up to GATE_S) for the
# first's progress. A loop, or an actor pool, that held a batch's output back until the next batch was out would open
# the gate only by timing out.
GATED_PIPELINE = """
import json, os, sys, time
import ray, ray.data
from jobs.pipeline import actor_pool, run_pipeline

GATE = sys.argv[1]
GATE_S = 20.0

class Batch:
    def __call__(self, rows):
        index, gate = int(rows["index"][0]), ""
        if index == 1:
            started = time.monotonic()
            while not os.path.exists(GATE) and time.monotonic() - started < GATE_S:
                time.sleep(0.05)
            gate = " (gate open)" if os.path.exists(GATE) else " (gate timed out)"
        return {"part": [f"part-{index}{gate}"], "samples": [3]}

ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
context = ray.data.DataContext.get_current()
context.enable_progress_bars = False
dataset = ray.data.from_items([{"index": 0}, {"index": 1}], override_num_blocks=2).map_batches(
    Batch, batch_size=1, compute=actor_pool(size=1), num_cpus=1
)
events = []

def progress(samples):
    events.append(samples)
    open(GATE, "w").close()

parts = list(run_pipeline(dataset, progress))
print(json.dumps({"parts": parts, "progress": events}))
"""


def test_progress_of_a_batch_arrives_before_the_next_batch_is_done(tmp_path):
    result = run_on_a_ray_of_its_own(tmp_path, GATED_PIPELINE, str(tmp_path / "first-batch-reported"))
    # The second batch found the first one's progress reported while it ran.
    assert result["parts"] == ["part-0", "part-1 (gate open)"]
    assert result["progress"] == [3, 3]


# Two batches; the second never finishes (as when its input was lost with a node and cannot be rebuilt).
STALLING_PIPELINE = """
import json, sys, time
import ray, ray.data
from jobs.pipeline import PipelineStalled, StallWatch, actor_pool, run_pipeline

class Batch:
    def __call__(self, rows):
        if int(rows["index"][0]) == 1:
            time.sleep(3600)
        return {"part": [f"part-{int(rows['index'][0])}"], "samples": [1]}

ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
ray.data.DataContext.get_current().enable_progress_bars = False
dataset = ray.data.from_items([{"index": 0}, {"index": 1}], override_num_blocks=2).map_batches(
    Batch, batch_size=1, compute=actor_pool(size=1), num_cpus=1
)
parts, error = [], None
try:
    for part in run_pipeline(dataset, lambda samples: None, StallWatch(floor_s=float(sys.argv[1]), factor=1.0)):
        parts.append(part)
        first = time.monotonic()
except PipelineStalled as stalled:
    error = str(stalled)
waited = time.monotonic() - first
ray.shutdown()
print(json.dumps({"parts": parts, "error": error, "waited_s": waited}))
"""


def test_a_pipeline_that_stops_moving_is_stopped_with_a_reason(tmp_path):
    result = run_on_a_ray_of_its_own(tmp_path, STALLING_PIPELINE, "4")
    assert result["parts"] == ["part-0"]
    assert result["error"].startswith("no batch finished for ")
    assert "finished samples are kept" in result["error"]
    # It gave up after the watch's limit (the floor, or the first batch's wait if longer), not after the hour.
    assert 4 <= result["waited_s"] < 300


def test_the_stall_limit_follows_the_longest_wait():
    from jobs.pipeline import StallWatch

    watch = StallWatch(floor_s=300, factor=5)
    assert watch.limit_s(None) is None  # before the first batch: model loads take what they take
    assert watch.limit_s(10) == 300
    assert watch.limit_s(100) == 500
    assert StallWatch(floor_s=0).limit_s(100) is None  # 0: wait forever


NICENESS = """
import json, os
import ray
from jobs.pipeline import stage_runtime_envs

@ray.remote(num_cpus=0)
class Probe:
    def niceness(self):
        return os.nice(0)

ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
generator_env, other_env = stage_runtime_envs({"IMGSOUND_PROBE": "1"})
generator = Probe.options(runtime_env=generator_env).remote()
other = Probe.options(runtime_env=other_env).remote()
print(json.dumps({"driver": os.nice(0), "generator": ray.get(generator.niceness.remote()),
                  "other": ray.get(other.niceness.remote())}))
"""


def test_the_generating_stage_runs_at_the_drivers_niceness_and_the_others_below(tmp_path):
    """Ray starts workers at niceness 15; the generator's runtime environment keeps it at the node's usual one (the
    setting is Ray's own: a Ray that stopped honouring it would fail here)."""
    found = run_on_a_ray_of_its_own(tmp_path, NICENESS)
    assert found["generator"] == found["driver"], found
    assert found["other"] > found["generator"], found


def test_stage_sizes_split_a_cpu_node_between_generators_writers_and_scorers():
    from jobs.pipeline import SCORE_CPUS, WRITE_CPUS, StageSizes

    one = StageSizes.plan(generators=1, node_cpus=2, use_gpu=False, scoring=False, score_on_gpu=False)
    assert (one.generator_threads, one.writers, one.scorers) == (2, 1, 0)
    assert one.generator_cpus == 2 - WRITE_CPUS and one.cpus() == 2
    # One generator per core, one torch thread each: every actor still fits the two CPUs, with or without a scorer.
    for scoring in (False, True):
        two = StageSizes.plan(generators=2, node_cpus=2, use_gpu=False, scoring=scoring, score_on_gpu=False)
        assert two.generator_threads == 1 and two.writers == 2 and two.scorers == int(scoring)
        assert two.cpus() == 2 and two.generator_cpus == 1 - WRITE_CPUS - int(scoring) * SCORE_CPUS / 2
    wide = StageSizes.plan(generators=2, node_cpus=16, use_gpu=False, scoring=False, score_on_gpu=False)
    assert wide.generator_threads == 8 and wide.cpus() == 16
    # IMGSOUND_WORKER_THREADS sizes the reservation too; a generator keeps a share of a CPU however many writers.
    assert StageSizes.plan(1, 16, False, False, False, threads=4).generator_cpus == 4 - WRITE_CPUS
    assert StageSizes.plan(1, 2, False, False, False, writers=8, threads=1).generator_cpus == 0.1
    # On GPUs the accelerator places the generators; CPU shares stay as they were.
    gpu = StageSizes.plan(generators=2, node_cpus=0, use_gpu=True, scoring=True, score_on_gpu=True)
    assert (gpu.generator_cpus, gpu.generator_gpus, gpu.writers, gpu.scorers) == (1.0, 0.75, 4, 2)
    assert (gpu.scorer_gpus, gpu.scorer_cpus, gpu.generator_threads) == (0.25, 0.0, None)


def test_a_cpu_sweep_runs_one_generator_per_core_that_memory_allows():
    from jobs.pipeline import GENERATOR_BASE_BYTES, WEIGHT_MEMORY_FACTOR, cpu_generators

    tiny = 4 << 20  # the tiny models' weight files are a few MB
    assert cpu_generators(node_cpus=2, node_memory=16e9, weight_bytes=tiny, batches=4) == 2
    assert cpu_generators(node_cpus=16, node_memory=64e9, weight_bytes=tiny, batches=100) == 16
    # Two batches each at least: a small sweep is not worth starting a second copy of the models for.
    assert cpu_generators(node_cpus=16, node_memory=64e9, weight_bytes=tiny, batches=7) == 3
    assert cpu_generators(node_cpus=2, node_memory=16e9, weight_bytes=tiny, batches=3) == 1
    # SD-1.5 and Auffusion (≈8.4 GB of files): one on a 24 GB machine, three on a big node.
    real = 8_400_000_000
    per_generator = GENERATOR_BASE_BYTES + WEIGHT_MEMORY_FACTOR * real
    assert cpu_generators(node_cpus=2, node_memory=16e9, weight_bytes=real, batches=100) == 1
    assert cpu_generators(node_cpus=16, node_memory=3.5 * per_generator, weight_bytes=real, batches=100) == 3
    # Unknown weights, one core or no memory figure: the single generator of before.
    assert cpu_generators(node_cpus=8, node_memory=64e9, weight_bytes=0, batches=100) == 1
    assert cpu_generators(node_cpus=1, node_memory=64e9, weight_bytes=tiny, batches=100) == 1
    assert cpu_generators(node_cpus=8, node_memory=0.0, weight_bytes=tiny, batches=100) == 1


def test_weight_bytes_count_what_the_loaders_read(tmp_path):
    from imgsound_core.identity import weight_bytes

    (tmp_path / "unet").mkdir()
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"p" * 700)
    (tmp_path / "unet" / "config.json").write_text("{}")
    (tmp_path / "text_encoder" / "model.safetensors").write_bytes(b"s" * 300)
    assert weight_bytes(tmp_path) == 1000
    # After `imgsound convert` the loaders read the safetensors copy, not the pickle beside it.
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"s" * 650)
    assert weight_bytes(tmp_path) == 950


# Every stage's actors as `StageSizes.plan` sizes them, on a Ray of 2 CPUs: each generator's batch waits (up to
# GATE_S) until every writer and scorer actor has started. Sizes that did not fit the node would leave those actors
# waiting for the generators' CPUs, and the gate would open only by timing out.
STAGES_ON_TWO_CPUS = """
import json, os, sys, time
import ray, ray.data
from jobs.pipeline import WRITE_CPUS, StageSizes, actor_pool

FOLDER, GENERATORS, SCORING = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
GATE_S = 30.0

class Stage:
    def __init__(self, name, others):
        open(os.path.join(FOLDER, f"{name}-{os.getpid()}"), "w").close()
        self.name, self.others = name, others

    def __call__(self, rows):
        seen = 0
        if self.name == "generate":
            started = time.monotonic()
            while time.monotonic() - started < GATE_S:
                seen = sum(not f.startswith("generate") for f in os.listdir(FOLDER))
                if seen >= self.others:
                    break
                time.sleep(0.1)
            rows["seen"] = [seen] * len(rows["index"])
        return rows

ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
context = ray.data.DataContext.get_current()
context.enable_progress_bars = False
sizes = StageSizes.plan(GENERATORS, 2, use_gpu=False, scoring=SCORING, score_on_gpu=False)
others = sizes.writers + sizes.scorers
dataset = ray.data.from_items([{"index": i} for i in range(2 * GENERATORS)], override_num_blocks=2 * GENERATORS)
dataset = dataset.map_batches(Stage, fn_constructor_args=("generate", others), batch_size=1,
                              compute=actor_pool(size=sizes.generators), num_cpus=sizes.generator_cpus)
dataset = dataset.map_batches(Stage, fn_constructor_args=("write", 0), batch_size=1,
                              compute=actor_pool(size=sizes.writers), num_cpus=WRITE_CPUS)
if sizes.scorers:
    dataset = dataset.map_batches(Stage, fn_constructor_args=("score", 0), batch_size=1,
                                  compute=actor_pool(size=sizes.scorers), num_cpus=sizes.scorer_cpus)
seen = [int(row["seen"]) for row in dataset.iter_rows()]
ray.shutdown()
print(json.dumps({"others": others, "seen": seen}))
"""


@pytest.mark.parametrize(("generators", "scoring"), [(1, True), (2, False), (2, True)])
def test_every_stage_starts_beside_the_generators_on_a_two_cpu_node(tmp_path, generators, scoring):
    folder = tmp_path / "started"
    folder.mkdir()
    found = run_on_a_ray_of_its_own(tmp_path, STAGES_ON_TWO_CPUS, str(folder), str(generators), str(int(scoring)))
    assert len(found["seen"]) == 2 * generators
    assert all(seen == found["others"] for seen in found["seen"]), found


def test_a_sweeps_models_carry_their_weight_size_to_the_driver(tiny_models):
    from imgsound_core.identity import weight_bytes
    from jobs.spec import SweepModels, SweepSpec

    spec = SweepSpec(
        name="sizes",
        image_prompts=["a"],
        audio_prompts=["b"],
        models={"image": str(tiny_models / "image"), "audio": str(tiny_models / "audio")},
    )
    models = SweepModels.identify(spec)
    expected = weight_bytes(tiny_models / "image") + weight_bytes(tiny_models / "audio")
    assert models.weight_bytes == expected > 0
    # What a worker identified (the Ray task of `identify_models`) reaches the driver whole.
    assert SweepModels.from_dict(json.loads(json.dumps(models.to_dict()))) == models
