"""End-to-end throughput of every product path, on one machine, in one run, for the same requests.

Every path makes samples of one prompt pair ("a painting of castle towers, grayscale" / "bell ringing") with seeds
0, 1, 2, … and the same steps, size, image start step (the CLI's default for those steps, passed explicitly
everywhere), guidance, audio weight, dtype, device, vocoder (HiFi-GAN), no crop and the same batch size, so seed i
is the same sample on every path; the run checks that every path gives seed i the same `sample_id`
(`sample_ids_agree`). Each path's samples/s is printed as a ratio to two in-process references, measured first, in
this process, from the same model folders:

  × bare   = path samples/s ÷ bare samples/s: the share of the sampler's denoising throughput that a user of the
           path gets.
  × parts  = path samples/s ÷ parts samples/s: what everything around the in-process work costs — process start,
           imports, model load, files, videos, Ray, HTTP. Above 1 is possible where a path overlaps stages that the
           in-process loop runs one after the other (the service's UNets, vocoder and renderer are separate
           processes; the CLI writes files on a thread while it denoises).
  × parts measured around it
           = (`--bracket`, the default) path samples/s ÷ the mean of the `parts` rates measured just before and just
           after the path (`parts` is measured again after each product path): a drift of a shared machine's speed
           over the run, linear in time, cancels out of it, which it does not from × parts; the rates of `parts`
           over the run are in `info.parts_rates`.
  share    = (CLI and sweeps) the share of the path's own time spent in the parts, by its samples' own clocks
           (`time_in_parts`): measured within the run, so free of a shared machine's drift between runs, which the
           ratios to the references measured minutes earlier are not; `outside_parts_s` is the rest.

The paths (`--paths`, default all but sweep-scoring-video):

bare     `Sampler.denoise` alone: the DDIM loop of both UNets, nothing decoded. The ceiling.
parts    `Sampler.generate`: the same denoising plus both VAE decodes and the vocoder, "the in-process sum of the
         parts". No files, no process start, no model load.
         Both run `--samples-reference` requests (default `--samples-generate`) with the product's sampler defaults
         (compiled UNets where the sampler compiles by default, i.e. on CUDA, warmed up first), after a warm-up on
         the batch's shape; torch is synchronised before the clock stops. Keep the count a multiple of
         `--batch-size`: the per-sample rate then does not depend on it.
cli      `imgsound generate` writing sample folders (image.png, spectrogram.png/.npy, audio.wav, sample.json): the
         real console script in a subprocess, `--samples-generate` samples, `--batch-size` per UNet batch, product
         defaults otherwise. "seconds" is the whole command: process start, imports, model load (and compilation
         where the CLI compiles), denoising, decoding, vocoding, encoding and writing, exit — what a user waits for;
         that is the headline. Before the first CLI path one untimed run (one batch, 1 step, full size, reported as
         `cli_warm_up_s`) leaves the file cache, Python's bytecode, the model fingerprints and any compiled kernels
         as a user's second run finds them. The "steady" row is the rate once the first batch is out,
         (N − k) / (t_N − t_k), t_j being the time the j-th sample.json appeared and k the batch size rounded up
         to whole decode groups of 4: it leaves out start-up, model load and the first batch (approximately: the
         CLI writes on a thread, a sample or so behind). `model_load_s` is the CLI's own, from sample.json.
cli-video  the same with `--video` (an MP4 per sample, encoded with ffmpeg on the CPU).
sweep    `python -m jobs.sweep SPEC --output DIR` to a local store folder, `--samples-sweep` samples (one pair,
         samples_per_pair N, batch_size `--batch-size`), on a Ray head this run starts beforehand, so the clock
         starts with the cluster up. "seconds" runs from submission (process start) to the command's exit:
         imports, model identification, planning, the pipeline's actors starting and loading models, generation
         and upload, consolidation into manifest.parquet and, with scoring, the scores. "steady" as for the CLI,
         from the store's sample.json files. On a CPU cluster a generating actor denoises with its node's cores
         (shared by the node's generators; jobs/pipeline.py) unless `--worker-threads` sets IMGSOUND_WORKER_THREADS;
         `--sweep-workers N` gives the spec `workers: N` (N generating actors; its default is one per GPU, else one per
         core as memory allows).
         With N > 1 both generators finish their last batches together, so the "steady" rate says little there.
sweep-scoring, sweep-video, sweep-scoring-video
         the same with `scoring:` (CLIP and CLAP scores and the cycle check; the tiny scorers `imgsound
         tiny-models` writes, or with `--arch sd15` CLIP ViT-B/16 and CLAP HTSAT-unfused architectures with random
         weights) and/or `video: true`. The run checks every sample has its scores / its video.
serve    the Ray Serve app (serve/config.local.yaml's deployments; UNet batches of `--batch-size` samples; with a
         GPU, the UNets and the Vocoder share it 0.4/0.4/0.2 as in serve/config.yaml) on the same Ray head, over
         HTTP: `--requests` single-sample requests from 1, 4 and 16 clients (`--concurrency`), each client sending
         its next request when its last is answered, with the default outputs returned inline (image and
         spectrogram PNG, spectrogram NPY, WAV, sample.json: what the CLI writes). "seconds" is first request sent
         → last answer received, after a warm-up; the app's start is not included (`serve_start_s`).
serve-poisson
         open-loop arrivals: `--requests` requests at exponential intervals (seeded by `--seed`) at λ =
         `--poisson-load` (0.7) × the best closed-loop serve throughput just measured (or `--poisson-rate`). Its
         samples/s is bounded by λ: read its latencies. A request refused with 503 (too many samples in flight)
         is sent again after Retry-After; the wait counts in its latency, and the retries are reported.

Service latencies: p50/p95 of request sent → answer received, and of the time to first step. The service reports
`timings_s` = {admit, first_step, denoise, decode, render} per response; `first_step` — from the request's arrival
in the Driver (after its body was read and validated) to its first DDIM step's completion, admission included — is
the time to first step used here. A service that does not report it gets the client-side estimate latency −
(admit + denoise + decode + render): the time outside the Driver's spans (HTTP in and out, body read, the answer's
JSON), which misses a wait behind other requests inside the UNet batches. That outside time is reported either way
(`outside_driver_p50_s`).

    python bench/bench_e2e.py --steps 10 --json bench/results/cpu-tiny-e2e.json     # CI size: tiny models, CPU
    python bench/bench_e2e.py --steps 2 --samples-generate 4 --samples-sweep 8 --requests 4 --batch-size 4
    python bench/bench_e2e.py --arch sd15 --device cuda --dtype fp16 --steps 100 --json bench/results/h100-sd15-e2e.json

`--arch tiny` writes the tiny models to a temporary folder (`imgsound_core.models.tiny.write_tiny_models`).
`--arch sd15` writes the real architectures with random weights into one, in the layout `load_bundle` reads, so
the CLI, the sweep and the service load them as they load real weights: per model SD-1.5's UNet, VAE and CLIP ViT-L
text encoder (bench_sampler's `sd15_bundle`, built on `--device`, saved in `--dtype`), the audio model also
Auffusion's full-size HiFi-GAN; `--models DIR` writes them there once and reuses them. Model fingerprints are cached
in the run's folder, not in the user's cache.

The Ray head is the run's own: its own RAY_TMPDIR (so `address="auto"` finds it and no other cluster of the machine)
and free ports; at the end — on error or interruption too — exactly the processes it started are ended, by pid;
other Ray clusters of the machine are left alone (and a `ray stop` elsewhere ends this run's, which is reported).
Run it on a quiet machine: every path competes for the same cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402

from imgsound_core.host import USER_SETTINGS, keep_freed_memory  # noqa: E402
from imgsound_core.models.bundle import DTYPES, load_bundle, parse_device  # noqa: E402
from imgsound_core.request import SampleRequest  # noqa: E402
from imgsound_core.sampler import Sampler  # noqa: E402
from serve.local import (  # noqa: E402
    RAY_SCOPE_VARIABLE,
    WARM_UP,
    cluster_env,
    free_port,
    http,
    scoped_processes,
    serve_config,
    start_ray_head,
    stop_ray,
)

IMAGE_PROMPT = "a painting of castle towers, grayscale"
AUDIO_PROMPT = "bell ringing"
BIN = Path(sys.executable).parent
PATHS = (
    "bare",
    "parts",
    "cli",
    "cli-video",
    "sweep",
    "sweep-scoring",
    "sweep-video",
    "sweep-scoring-video",
    "serve",
    "serve-poisson",
)
DEFAULT_PATHS = tuple(p for p in PATHS if p != "sweep-scoring-video")
COMMAND_TIMEOUT_S = 4 * 3600
DECODE_BATCH = 4  # Sampler's default decode_batch_size: finished samples are decoded and written in groups of 4


# ---- machine, results ------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, without the host's name."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "arch": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    for module in ("diffusers", "transformers", "ray"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


@dataclasses.dataclass
class Result:
    """One measurement: `samples` made by `path` in `seconds`, and whatever else that path reports."""

    path: str
    label: str
    samples: int
    seconds: float
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.nan


class Report:
    """Collects results, prints one JSON line each, rewrites `--json` after each, prints the tables at the end.

    With `--bracket`, `parts` is measured again after each product path, and each of its results gets the ratio
    to the mean of the two `parts` rates around it (`parts_measured`): a drift of the machine's speed during the
    run, linear in time, then cancels out of that ratio.
    """

    def __init__(self, args: argparse.Namespace, machine: dict[str, Any]) -> None:
        self.json_path: Path | None = args.json
        self.header = {
            "bench": "e2e",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        }
        self.results: list[Result] = []
        self.info: dict[str, Any] = {}
        self.reference: dict[str, float] = {}
        self.parts_rates: list[dict[str, Any]] = []  # every measurement of `parts`: {"after", "samples_per_s"}
        self.unbracketed: list[Result] = []  # product paths run since the last measurement of `parts`

    def ratios(self, samples_per_s: float) -> dict[str, float | None]:
        return {
            f"ratio_to_{name}": samples_per_s / self.reference[name] if name in self.reference else None
            for name in ("bare", "parts")
        }

    def entry(self, result: Result) -> dict[str, Any]:
        return {
            "path": result.path,
            "label": result.label,
            "samples": result.samples,
            "seconds": result.seconds,
            "samples_per_s": result.samples_per_s,
            **self.ratios(result.samples_per_s),
            **result.extra,
        }

    def add(self, result: Result) -> None:
        self.results.append(result)
        if result.path == "parts":
            self.parts_measured(result.samples_per_s, after=None)
        elif result.path != "bare":
            self.unbracketed.append(result)
        print(json.dumps(self.entry(result)), flush=True)
        self.write()

    def parts_measured(self, samples_per_s: float, after: str | None) -> None:
        """A measurement of `parts`: it closes the bracket of every product path since the one before."""
        if self.parts_rates:
            before = self.parts_rates[-1]["samples_per_s"]
            mean = (before + samples_per_s) / 2
            for result in self.unbracketed:
                steady = result.extra.get("steady_samples_per_s")
                result.extra.update(
                    {
                        "parts_before_samples_per_s": before,
                        "parts_after_samples_per_s": samples_per_s,
                        "ratio_to_bracketing_parts": result.samples_per_s / mean,
                        "steady_ratio_to_bracketing_parts": steady / mean if steady is not None else None,
                    }
                )
        self.unbracketed = []
        self.parts_rates.append({"after": after, "samples_per_s": samples_per_s})
        if after is not None:
            self.note(parts_rates=self.parts_rates)

    def note(self, **info: Any) -> None:
        self.info.update(info)
        print(json.dumps({"info": info}), flush=True)
        self.write()

    def write(self) -> None:
        if self.json_path is None:
            return
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        document = {**self.header, "info": self.info, "results": [self.entry(r) for r in self.results]}
        self.json_path.write_text(json.dumps(document, indent=2) + "\n")

    def table(self) -> str:
        def number(value: float | None, digits: int = 3) -> str:
            return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

        lines = [
            "| path | samples | seconds | samples/s | × bare sampler | × parts (denoise+decode+vocode) | "
            "× parts measured around it | parts' share of the run (own clocks) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for result in self.results:
            rate = result.samples_per_s
            ratios = self.ratios(rate)
            lines.append(
                f"| {result.label} | {result.samples} | {number(result.seconds, 1)} | {number(rate)} | "
                f"{number(ratios['ratio_to_bare'], 2)} | {number(ratios['ratio_to_parts'], 2)} | "
                f"{number(result.extra.get('ratio_to_bracketing_parts'), 2)} | "
                f"{number(result.extra.get('parts_share_in_run'), 2)} |"
            )
            steady = result.extra.get("steady_samples_per_s")
            if steady is not None:
                ratios = self.ratios(steady)
                lines.append(
                    f"| {result.label}, steady (after the first batch) | {result.extra['steady_samples']} | "
                    f"{number(result.extra['steady_seconds'], 1)} | {number(steady)} | "
                    f"{number(ratios['ratio_to_bare'], 2)} | {number(ratios['ratio_to_parts'], 2)} | "
                    f"{number(result.extra.get('steady_ratio_to_bracketing_parts'), 2)} | – |"
                )
        if len(self.parts_rates) > 1:
            rates = [r["samples_per_s"] for r in self.parts_rates]
            lines += ["", f"parts measured {len(rates)} times: {min(rates):.3f}–{max(rates):.3f} samples/s"]
        served = [r for r in self.results if "latency_p50_s" in r.extra]
        if served:
            lines += [
                "",
                "| service | requests | latency p50 s | latency p95 s | first step p50 s | first step p95 s | "
                "first step from | 503 retries |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in served:
                x = r.extra
                lines.append(
                    f"| {r.label} | {r.samples} | {number(x['latency_p50_s'], 2)} | {number(x['latency_p95_s'], 2)} | "
                    f"{number(x['first_step_p50_s'], 3)} | {number(x['first_step_p95_s'], 3)} | "
                    f"{x['first_step_source']} | {x['retries_503']} |"
                )
        return "\n".join(lines)


# ---- requests --------------------------------------------------------------------------------------------------
def base_request(args: argparse.Namespace, seed: int = 0) -> SampleRequest:
    """Sample 0 of every path; the image start step is the CLI's default for these steps, passed to all."""
    return SampleRequest(
        image_prompt=IMAGE_PROMPT,
        audio_prompt=AUDIO_PROMPT,
        steps=args.steps,
        height=args.height,
        width=args.width,
        seed=seed,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1])."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def steady_rate(mtimes: Iterable[float], batch: int) -> dict[str, Any]:
    """Samples/s once the first batch is out: (N − k) / (t_N − t_k) over the sorted times the samples' files appeared.

    Samples of one batch finish denoising together and are then decoded `DECODE_BATCH` at a time (the core's
    default, which the CLI and the sweep workers use), so the k-th file, k = the batch size rounded up to a whole
    number of decode groups, closes the first batch: t_k → t_N holds exactly the later samples' full work.
    """
    times = sorted(mtimes)
    first = math.ceil(batch / DECODE_BATCH) * DECODE_BATCH
    if len(times) <= first or times[-1] <= times[first - 1]:
        return {"steady_samples_per_s": None}
    span = times[-1] - times[first - 1]
    return {
        "steady_samples": len(times) - first,
        "steady_seconds": span,
        "steady_samples_per_s": (len(times) - first) / span,
    }


def time_in_parts(records: Iterable[dict[str, Any]], batch: int, seconds: float) -> dict[str, Any]:
    """The time a path spent in the parts by its own clocks (each sample's `timings_s`), in the same run as its
    whole: per batch of seeds batch·k … batch·(k+1)−1, denoised together, their shared in-flight denoising time, plus
    every sample's share of decode and vocode. `parts_share_in_run` = that time ÷ the whole is free of the drift
    between runs that a shared machine adds to the ratio to the in-process reference; the rest (`outside_parts_s`)
    is start-up, model load and whatever files and hand-offs did not overlap the parts (work done alongside them,
    e.g. files written on a thread, slows them down and so counts as parts here)."""
    denoise: dict[int, float] = {}
    decode_vocode = 0.0
    for record in records:
        timings = record.get("timings_s") or {}
        key = int(record["seed"]) // batch
        denoise[key] = max(denoise.get(key, 0.0), float(timings.get("denoise", 0.0)))
        decode_vocode += float(timings.get("decode", 0.0)) + float(timings.get("vocode", 0.0))
    in_parts = sum(denoise.values()) + decode_vocode
    return {
        "in_run_parts_s": in_parts,
        "outside_parts_s": seconds - in_parts,
        "parts_share_in_run": in_parts / seconds if seconds > 0 else None,
    }


def sample_ids(records: Iterable[dict[str, Any]]) -> dict[int, str]:
    return {int(r["seed"]): str(r["sample_id"]) for r in records}


# ---- models on disk --------------------------------------------------------------------------------------------
def write_models(root: Path, arch: str, device: torch.device, dtype: torch.dtype) -> None:
    """`root/image`, `root/audio`, `root/clip`, `root/clap` unless already there (`--models` reuses a folder)."""
    if all((root / name).is_dir() for name in ("image", "audio", "clip", "clap")):
        return
    if arch == "tiny":
        from imgsound_core.models.tiny import write_tiny_models

        write_tiny_models(root)
    else:
        write_sd15_models(root, device, dtype)


def write_sd15_models(root: Path, device: torch.device, dtype: torch.dtype) -> None:
    """The real SD-1.5 architectures with random weights, as two model folders `load_bundle` reads.

    Image and audio model: SD-1.5's UNet, VAE and CLIP ViT-L text encoder (`bench_sampler.sd15_bundle`, built on
    `device`, saved in `dtype` as safetensors), the byte-level CLIP tokenizer, SD-1.5's scheduler config; the audio
    model also Auffusion's full-size HiFi-GAN (random weights, its published config). The scorers: CLIP ViT-B/16
    and CLAP HTSAT-unfused architectures with random weights, in the tiny scorers' processor formats.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_sampler import sd15_bundle

    from imgsound_core.audio.hifigan import AUFFUSION_HIFIGAN_CONFIG, Generator, save_hifigan
    from imgsound_core.models.tiny import SD15_SCHEDULER_CONFIG, _write_model_index, build_seeded, write_clip_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    for role, seed in (("image", 0), ("audio", 10)):
        staging = Path(tempfile.mkdtemp(prefix=f".{role}-", dir=root))
        bundle = sd15_bundle(role, device, dtype, seed=seed)
        write_clip_tokenizer(staging / "tokenizer")
        for name, module in (("unet", bundle.unet), ("vae", bundle.vae), ("text_encoder", bundle.text_encoder)):
            module.save_pretrained(staging / name, safe_serialization=True)
        del bundle, module
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        (staging / "scheduler").mkdir()
        (staging / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG, indent=2))
        if role == "audio":
            vocoder = build_seeded(lambda: Generator(AUFFUSION_HIFIGAN_CONFIG), seed + 3)
            save_hifigan(vocoder, AUFFUSION_HIFIGAN_CONFIG, staging / "vocoder")
        _write_model_index(staging)
        staging.chmod(0o755)
        shutil.rmtree(root / role, ignore_errors=True)
        os.replace(staging, root / role)
    write_full_size_scorers(root)


def write_full_size_scorers(root: Path) -> None:
    """CLIP ViT-B/16 and CLAP HTSAT-unfused (transformers' defaults are that model's shapes) with random weights."""
    from transformers import ClapConfig, ClapModel, CLIPConfig, CLIPModel

    from imgsound_core.models.tiny import build_seeded, write_tiny_clap, write_tiny_clip

    write_tiny_clip(root / "clip", seed=20)  # tokenizer and image processor files, then the full-size model over it
    vocab_size = len(json.loads((root / "clip" / "vocab.json").read_text()))
    clip = CLIPConfig(
        text_config={"bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1, "pad_token_id": vocab_size - 1},
        vision_config={"patch_size": 16, "image_size": 224},
        projection_dim=512,
    )
    build_seeded(lambda: CLIPModel(clip), 20).save_pretrained(root / "clip", safe_serialization=True)
    write_tiny_clap(root / "clap", seed=30)
    clap = ClapConfig(
        text_config={"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}, audio_config={}, projection_dim=512
    )
    build_seeded(lambda: ClapModel(clap), 30).save_pretrained(root / "clap", safe_serialization=True)


# ---- (a), (b): in process --------------------------------------------------------------------------------------
def measure_in_process(
    args: argparse.Namespace, models: Path, report: Report, after: str | None = None
) -> dict[int, str]:
    """The bare sampler and the sum of its parts, on the same loaded models; freed afterwards. `after` names the
    product path just run: then `parts` alone is measured again, to bracket that path (`--bracket`)."""
    from imgsound_core.audio.vocoder import HiFiGANVocoder
    from imgsound_core.identity import SampleContext, model_identity
    from imgsound_core.identity import sample_id as make_sample_id

    device, dtype = parse_device(args.device), DTYPES[args.dtype]
    image = load_bundle(models / "image", "image", parts={"unet", "vae", "text"}, device=device, dtype=dtype)
    audio = load_bundle(models / "audio", "audio", device=device, dtype=dtype)
    sampler = Sampler(image, audio, HiFiGANVocoder.from_bundle(audio), max_batch_samples=args.batch_size)
    count = args.samples_reference or args.samples_generate
    requests = base_request(args).expand(count)
    # Warm-up: compiled UNets' batch buckets (when the sampler compiles, its default on CUDA), then the batch's
    # shape through decode and vocoder (2 steps): kernels, allocator, the prompts' embeddings.
    t0 = time.perf_counter()
    warm_up = getattr(sampler, "warm_up", None)
    if callable(warm_up):
        warm_up(args.height, args.width)
    warm = base_request(args, 10_000).expand(min(args.batch_size, count))
    list(sampler.generate([dataclasses.replace(r, steps=2, image_start_step=1) for r in warm]))
    sync(device)
    if after is None:
        report.note(
            in_process_warm_up_s=time.perf_counter() - t0, in_process_compiled=getattr(sampler, "compiled", False)
        )
    context = SampleContext(model_identity(image), model_identity(audio), args.dtype, "hifigan", False)
    ids = {r.seed: make_sample_id(r, context) for r in requests}

    labels = {"bare": "bare sampler (Sampler.denoise)", "parts": "parts (Sampler.generate: denoise + decode + vocode)"}
    for path, label in labels.items():
        if path not in args.paths or (after is not None and path != "parts"):
            continue
        stages = {"decode": 0.0, "vocode": 0.0}
        sync(device)
        t0 = time.perf_counter()
        if path == "bare":
            for _ in sampler.denoise(requests):
                pass
        else:
            for result in sampler.generate(requests):
                for stage in stages:
                    stages[stage] += result.timings_s.get(stage, 0.0)
        sync(device)
        measured = Result(path, label, count, time.perf_counter() - t0)
        if after is not None:
            report.parts_measured(measured.samples_per_s, after=after)
            continue
        if path == "parts":
            measured.extra = {f"{stage}_s_total": value for stage, value in stages.items()}
        report.reference[path] = measured.samples_per_s
        report.add(measured)
    del sampler, image, audio
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return ids


# ---- (c): imgsound generate ------------------------------------------------------------------------------------
def imgsound_command() -> list[str]:
    script = BIN / "imgsound"
    return [str(script)] if script.exists() else [sys.executable, "-m", "imgsound_core.cli"]


def run_cli(
    args: argparse.Namespace, models: Path, workdir: Path, env: dict[str, str], video: bool, report: Report
) -> dict[int, str]:
    def generate(out: Path, count: int, steps: int, height: int, width: int, start: int, more: list[str]) -> float:
        options = {
            "--image-prompt": IMAGE_PROMPT,
            "--audio-prompt": AUDIO_PROMPT,
            "--num-samples": count,
            "--seed": 0,
            "--steps": steps,
            "--image-start-step": start,
            "--height": height,
            "--width": width,
            "--batch-size": args.batch_size,
            "--device": args.device,
            "--dtype": args.dtype,
            "--image-model": models / "image",
            "--audio-model": models / "audio",
            "--out": out,
        }
        command = [*imgsound_command(), "generate", *(str(x) for item in options.items() for x in item), *more]
        t0 = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"imgsound generate failed ({done.returncode}): {done.stderr[-2000:]}")
        return seconds

    name = "cli-video" if video else "cli"
    if "cli_warm_up_s" not in report.info:
        # One untimed run first, at the real size, one batch, 1 step: the file cache, Python's bytecode, the model
        # fingerprints and (where the CLI compiles) the compiled batch bucket are then as a user's second run finds
        # them. Its duration (a first run's start-up) is reported.
        batch = min(args.batch_size, args.samples_generate)
        seconds = generate(workdir / "cli-warm-up", batch, 1, args.height, args.width, 0, [])
        report.note(cli_warm_up_s=seconds, cli_warm_up="1 step, one batch, no video: start-up, load, first compile")
    request = base_request(args)
    out = workdir / name
    count = args.samples_generate
    seconds = generate(
        out, count, args.steps, args.height, args.width, request.image_start_step, ["--video"] if video else []
    )
    files = sorted(out.glob("sample_*/sample.json"))
    if len(files) != count or (video and len(list(out.glob("sample_*/video.mp4"))) != count):
        raise RuntimeError(f"imgsound generate wrote {len(files)} of {count} samples")
    records = [json.loads(f.read_text()) for f in files]
    label = "imgsound generate --video (whole command)" if video else "imgsound generate (whole command)"
    result = Result(name, label, count, seconds)
    result.extra = {
        "includes": "process start, imports, model load, denoise, decode, vocode, files"
        + (", video" if video else "")
        + ", exit",
        "model_load_s": records[0].get("timings_s", {}).get("model_load"),
        **steady_rate((f.stat().st_mtime for f in files), args.batch_size),
        **time_in_parts(records, args.batch_size, seconds),
    }
    report.add(result)
    return sample_ids(records)


# ---- a Ray head of this run's own ------------------------------------------------------------------------------
METRICS_INTERVAL_VARIABLE = "RAY_metrics_report_interval_ms"


class RayHead:
    """`ray start --head` confined to this run (serve.local's scope: its own RAY_TMPDIR, free ports, a marker in the
    environment of every process), so `stop()` ends exactly its processes — never another Ray of the machine."""

    def __init__(self) -> None:
        scope = secrets.token_hex(8)
        self.env = {**cluster_env(), RAY_SCOPE_VARIABLE: scope, "RAY_TMPDIR": f"/tmp/rb-{scope}"}
        if METRICS_INTERVAL_VARIABLE not in os.environ:
            # Ray's own metrics export (every 10 s), as the clusters of cluster/ and k8s/ and a sweep's local Ray run
            # it. serve.local's head exports every second so that a demo's /metrics follows closely; on two cores
            # that took the dashboard agent 1.5 s of CPU a minute instead of 0.5 s, beside the timed work.
            del self.env[METRICS_INTERVAL_VARIABLE]
        self.started = False

    def start(self, num_cpus: int) -> float:
        """Start the head; returns the seconds it took."""
        t0 = time.perf_counter()
        self.started = True
        start_ray_head(
            self.env, "--num-cpus", str(num_cpus), "--node-ip-address", "127.0.0.1", "--include-dashboard", "false"
        )
        return time.perf_counter() - t0

    def check_alive(self) -> None:
        """Raise if the head's GCS is gone (processes of ours that merely carry the marker do not count)."""
        if not self.started:
            return
        for pid in scoped_processes(self.env):
            try:
                if b"gcs_server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return
            except OSError:
                continue
        raise RuntimeError("this run's Ray head is gone (did a `ray stop --force` elsewhere on this machine end it?)")

    def run(self, command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        """Run a command against the cluster; if the cluster dies meanwhile, end the command (it would wait forever
        for it) and raise."""
        pipe = subprocess.PIPE
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=pipe, stderr=pipe, text=True)
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        try:
            while True:
                try:
                    stdout, stderr = process.communicate(timeout=2)
                    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        raise
                    self.check_alive()
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()

    def stop(self) -> None:
        if self.started:
            stop_ray(self.env)
            self.started = False
        shutil.rmtree(self.env["RAY_TMPDIR"], ignore_errors=True)


# ---- (d): sweeps -----------------------------------------------------------------------------------------------
def run_sweep(
    args: argparse.Namespace,
    models: Path,
    workdir: Path,
    head: RayHead,
    scoring: bool,
    video: bool,
    report: Report,
) -> dict[int, str]:
    head.check_alive()
    name = "sweep" + ("-scoring" if scoring else "") + ("-video" if video else "")
    request = base_request(args)
    cpu = parse_device(args.device).type == "cpu"
    spec: dict[str, Any] = {
        "name": f"bench-{name}",
        "pairs": [{"image": IMAGE_PROMPT, "audio": AUDIO_PROMPT}],
        "samples_per_pair": args.samples_sweep,
        "seed": 0,
        "params": {
            "steps": args.steps,
            "image_start_step": request.image_start_step,
            "height": args.height,
            "width": args.width,
        },
        "models": {
            "image": str(models / "image"),
            "audio": str(models / "audio"),
            "dtype": args.dtype,
            "device": "cpu" if cpu else "auto",
        },
        "vocoder": "hifigan",
        "crop": False,
        "video": video,
        "batch_size": args.batch_size,
    }
    if args.sweep_writers:
        spec["writers"] = args.sweep_writers
    if args.sweep_workers:
        spec["workers"] = args.sweep_workers
    if scoring:
        scorers = {"clip": str(models / "clip"), "clap": str(models / "clap")}
        spec["scoring"] = {**scorers, "device": "cpu" if cpu else "auto"}
    spec_path = workdir / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = workdir / name
    env = {**head.env, "RAY_ADDRESS": "auto"}
    if args.worker_threads:
        env["IMGSOUND_WORKER_THREADS"] = str(args.worker_threads)
    command = [sys.executable, "-m", "jobs.sweep", str(spec_path), "--output", str(out)]
    t0 = time.perf_counter()
    done = head.run(command, env)
    seconds = time.perf_counter() - t0
    end_wall = time.time()
    if done.returncode != 0:
        head.check_alive()
        raise RuntimeError(f"the sweep {name} failed ({done.returncode}): {done.stderr[-2000:]}")
    files = list(out.rglob("sample.json"))
    if len(files) != args.samples_sweep:
        raise RuntimeError(f"the sweep {name} wrote {len(files)} of {args.samples_sweep} samples")
    if video and len(list(out.rglob("video.mp4"))) != args.samples_sweep:
        raise RuntimeError(f"the sweep {name} wrote fewer videos than samples")
    if scoring:
        import pyarrow.parquet as pq

        scores = pq.read_table(out / "manifest.parquet", columns=["clip_score", "clap_score"])
        if any(scores.column(c).null_count for c in ("clip_score", "clap_score")):
            raise RuntimeError(f"the sweep {name} left samples unscored")
    records = [json.loads(f.read_text()) for f in files]
    mtimes = [f.stat().st_mtime for f in files]
    reported = re.search(r"done, \d+ rows in .*\(([\d.]+) s\)", done.stderr)
    actors = re.search(r"(\d+) generating actors? on", done.stderr)  # what the sweep chose (`--sweep-workers` or not)
    label = "sweep" + (" + scoring" if scoring else "") + (" + video" if video else "")
    result = Result(name, f"{label} (submission → done, Ray up)", args.samples_sweep, seconds)
    result.extra = {
        "includes": "process start, imports, model identification, planning, the pipeline's actors starting and "
        "loading models, generation, files, consolidation"
        + (", scoring" if scoring else "")
        + (", video" if video else ""),
        "ray_cluster_already_up": True,
        "worker_threads": args.worker_threads or "the node's cores (jobs/pipeline.py's default on CPU)",
        "generating_actors": int(actors.group(1)) if actors else args.sweep_workers,
        "after_last_sample_s": end_wall - max(mtimes),
        "sweep_reported_s": float(reported.group(1)) if reported else None,
        **steady_rate(mtimes, args.batch_size),
        **time_in_parts(records, args.batch_size, seconds),
    }
    report.add(result)
    return sample_ids(records)


# ---- (e): the service ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Reply:
    latency_s: float
    done_at: float
    timings_s: dict[str, float]
    sample_id: str
    seed: int
    retries: int


class Service:
    """The Serve app on the run's Ray head, and a client."""

    def __init__(self, args: argparse.Namespace, models: Path, workdir: Path, head: RayHead) -> None:
        self.args = args
        port = free_port()
        device = parse_device(args.device)
        placement: dict[str, Any] = {"dtype": args.dtype}
        if device.type == "cuda":
            placement.update(device="cuda", torch_threads=None)  # Ray sets CUDA_VISIBLE_DEVICES per replica
        config = serve_config(models, port, overrides={"image": placement, "audio": placement})
        gpu_share = {"ImageUNet": 0.4, "AudioUNet": 0.4, "Vocoder": 0.2}
        for deployment in config["applications"][0]["deployments"]:
            name = deployment["name"]
            if name in ("ImageUNet", "AudioUNet"):
                deployment.setdefault("user_config", {})["max_batch_size"] = args.batch_size
                deployment["max_ongoing_requests"] = max(deployment.get("max_ongoing_requests", 0), args.batch_size)
            if device.type == "cuda" and name in gpu_share:
                options = deployment.get("ray_actor_options", {})
                deployment["ray_actor_options"] = {**options, "num_gpus": gpu_share[name]}
        path = workdir / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{port}"
        self.head = head
        t0 = time.perf_counter()
        done = head.run([str(BIN / "serve"), "run", "--address", "auto", "--non-blocking", str(path)], head.env)
        if done.returncode != 0:
            raise RuntimeError(f"`serve run` failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
        self.wait_ready()
        self.start_s = time.perf_counter() - t0

    def wait_ready(self, timeout_s: float = 900) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.head.check_alive()
            try:
                status, _, _ = http("GET", f"{self.url}/v1/health", timeout=5)
            except OSError:
                status = None
            if status == 200:
                status, _, body = http("POST", f"{self.url}/v1/generate", WARM_UP, timeout=timeout_s)
                if status != 200:
                    raise RuntimeError(f"the service's warm-up request failed: {status} {str(body)[:500]}")
                return
            time.sleep(2)
        raise RuntimeError("the Serve app did not become healthy in time")

    def body(self, seed: int, steps: int | None = None) -> dict[str, Any]:
        request = base_request(self.args, seed)
        return {
            "image_prompt": IMAGE_PROMPT,
            "audio_prompt": AUDIO_PROMPT,
            "steps": steps or request.steps,
            "image_start_step": 1 if steps else request.image_start_step,
            "seed": seed,
            "height": request.height,
            "width": request.width,
            "num_samples": 1,
        }

    def send(self, body: dict[str, Any], sent_at: float | None = None) -> Reply:
        sent = time.perf_counter() if sent_at is None else sent_at
        retries = 0
        while True:
            status, headers, payload = http("POST", f"{self.url}/v1/generate", body, timeout=3600)
            if status == 200:
                break
            if status == 503 and retries < 100:
                retries += 1
                time.sleep(float(headers.get("retry-after", 1)))
                continue
            raise RuntimeError(f"the service answered {status}: {str(payload)[:500]}")
        done = time.perf_counter()
        sample = payload["samples"][0]
        timings = dict(payload.get("timings_s", {}))
        return Reply(done - sent, done, timings, sample["sample_id"], sample["seed"], retries)

    def warm_up(self, clients: int) -> None:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(self.send, [self.body(20_000 + i, steps=2) for i in range(clients)]))

    def closed_loop(self, clients: int, count: int) -> tuple[list[Reply], float]:
        bodies = [self.body(i) for i in range(count)]
        with ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()
            replies = list(pool.map(self.send, bodies))
        return replies, max(r.done_at for r in replies) - start

    def poisson(self, rate: float, count: int, seed: int) -> tuple[list[Reply], float]:
        rng = random.Random(seed)
        offsets, t = [], 0.0
        for _ in range(count):
            offsets.append(t)
            t += rng.expovariate(rate)
        with ThreadPoolExecutor(count) as pool:
            start = time.perf_counter()
            futures = []
            for i, offset in enumerate(offsets):
                delay = start + offset - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(self.send, self.body(i), start + offset))
            replies = [f.result() for f in futures]
        return replies, max(r.done_at for r in replies) - start


SERVER_SPANS = ("admit", "denoise", "decode", "render")  # consecutive spans of the Driver's work on a request


def latency_summary(replies: list[Reply]) -> dict[str, Any]:
    """Latency percentiles, time to first step (the service's own `first_step` when it reports one, else the
    client-side estimate), and the time spent outside the Driver's reported spans (HTTP in and out, proxy, body read
    and validation, the answer's JSON)."""
    latencies = [r.latency_s for r in replies]
    outside = [max(0.0, r.latency_s - sum(r.timings_s.get(k, 0.0) for k in SERVER_SPANS)) for r in replies]
    server_side = all("first_step" in r.timings_s for r in replies)
    first = [r.timings_s["first_step"] for r in replies] if server_side else outside
    return {
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p95_s": percentile(latencies, 0.95),
        "first_step_p50_s": percentile(first, 0.5),
        "first_step_p95_s": percentile(first, 0.95),
        "first_step_source": "server: timings_s.first_step"
        if server_side
        else "client: latency − (admit + denoise + decode + render)",
        "outside_driver_p50_s": percentile(outside, 0.5),
        "denoise_p50_s": percentile([r.timings_s.get("denoise", math.nan) for r in replies], 0.5),
        "retries_503": sum(r.retries for r in replies),
    }


def run_service(args: argparse.Namespace, models: Path, workdir: Path, head: RayHead, report: Report) -> dict[int, str]:
    service = Service(args, models, workdir, head)
    report.note(serve_start_s=service.start_s)
    service.warm_up(max(args.concurrency))
    ids: dict[int, str] = {}
    best = 0.0
    if "serve" in args.paths:
        for clients in args.concurrency:
            replies, seconds = service.closed_loop(clients, args.requests)
            clients_label = f"{clients} concurrent client" + ("s" if clients > 1 else "")
            result = Result("serve", f"serve, {clients_label}", args.requests, seconds)
            result.extra = {"clients": clients, "includes": "HTTP, all deployments, inline files; app already up"}
            result.extra.update(latency_summary(replies))
            report.add(result)
            best = max(best, result.samples_per_s)
            ids.update({r.seed: r.sample_id for r in replies})
    if "serve-poisson" in args.paths:
        rate = args.poisson_rate
        if rate is None:
            base = best or report.reference.get("parts") or report.reference.get("bare")
            if not base:
                raise SystemExit("serve-poisson needs --poisson-rate, or serve/parts measured in the same run")
            rate = args.poisson_load * base
        replies, seconds = service.poisson(rate, args.requests, args.seed)
        result = Result("serve-poisson", f"serve, Poisson arrivals λ = {rate:.3g}/s", args.requests, seconds)
        result.extra = {
            "rate_per_s": rate,
            "load": rate / best if best else None,
            "includes": "HTTP, all deployments, inline files; app already up; samples/s is bounded by λ",
        }
        result.extra.update(latency_summary(replies))
        report.add(result)
        ids.update({r.seed: r.sample_id for r in replies})
    return ids


# ---- main ------------------------------------------------------------------------------------------------------
def check_ids(found: dict[str, dict[int, str]]) -> dict[str, Any]:
    """Every path that made seed i made the same sample (the same sample_id); the first disagreement in full."""
    by_seed: dict[int, dict[str, str]] = {}
    for path, ids in found.items():
        for seed, sample_id in ids.items():
            by_seed.setdefault(seed, {})[path] = sample_id
    differing = sorted(seed for seed, ids in by_seed.items() if len(set(ids.values())) > 1)
    return {
        "sample_ids_agree": not differing,
        "seeds_compared": len(by_seed),
        "seeds_differing": differing[:10],
        "first_difference": by_seed[differing[0]] if differing else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--models", type=Path, default=None, help="model folder to write once and reuse")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16, help="samples per UNet batch, on every path")
    parser.add_argument("--samples-generate", type=int, default=32, help="samples of the imgsound generate paths")
    parser.add_argument("--samples-sweep", type=int, default=64, help="samples of each sweep")
    parser.add_argument(
        "--samples-reference", type=int, default=None, help="samples of bare/parts [--samples-generate]"
    )
    parser.add_argument("--requests", type=int, default=32, help="single-sample requests per service level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--poisson-load", type=float, default=0.7, help="λ as a fraction of the serve throughput")
    parser.add_argument("--poisson-rate", type=float, default=None, help="λ in requests/s (overrides the load)")
    parser.add_argument("--seed", type=int, default=0, help="the Poisson arrivals' seed")
    parser.add_argument("--worker-threads", type=int, default=None, help="torch threads of the sweep's workers")
    parser.add_argument("--sweep-writers", type=int, default=None, help="the sweep spec's `writers` (its default)")
    parser.add_argument("--sweep-workers", type=int, default=None, help="the sweep spec's `workers` (its default)")
    parser.add_argument(
        "--paths", nargs="+", choices=PATHS, default=list(DEFAULT_PATHS), help="[all but sweep-scoring-video]"
    )
    parser.add_argument(
        "--bracket",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure parts again after each product path and report its ratio to the two around it",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (bench/results/…)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (outputs, specs, configs)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "samples_generate", "samples_sweep", "requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.height % 8 or args.width % 8:
        parser.error("--height and --width must be multiples of 8")
    try:
        parse_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    return args


def interrupt(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from imgsound_core.cli import quiet_libraries

    quiet_libraries()
    # The product processes keep freed memory (imgsound_core.host); the in-process reference does the same.
    # `IMGSOUND_MALLOC_TOP_PAD=0` in the environment keeps glibc's default in every process of the run.
    allocator = {
        "keep_freed_memory": keep_freed_memory(),
        **{k: os.environ[k] for k in ("IMGSOUND_MALLOC_TOP_PAD", *USER_SETTINGS) if k in os.environ},
    }
    signal.signal(signal.SIGTERM, interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="imgsound-e2e-"))
    models = args.models or workdir / "models"
    # Model fingerprints are cached here, not in the user's cache; every process of the run shares it.
    os.environ["IMGSOUND_CACHE_DIR"] = str(workdir / "cache")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    child_env = dict(os.environ)
    report = Report(args, machine_info() | {"allocator": allocator})
    head = RayHead()
    found: dict[str, dict[int, str]] = {}
    try:
        t0 = time.perf_counter()
        write_models(models, args.arch, parse_device(args.device), DTYPES[args.dtype])
        report.note(models_ready_s=time.perf_counter() - t0, arch=args.arch)
        sweeps = [p for p in PATHS if p.startswith("sweep") and p in args.paths]
        serving = {"serve", "serve-poisson"} & set(args.paths)
        if sweeps or serving:
            # Up before the references too: every measurement of the run shares the idle cluster's background.
            report.note(
                ray_head_start_s=head.start(os.cpu_count() or 2),
                ray_head="up before any timing starts",
                ray_metrics_report_interval_ms=head.env.get(METRICS_INTERVAL_VARIABLE, "Ray's default (10000)"),
            )
        if {"bare", "parts"} & set(args.paths):
            found["in-process"] = measure_in_process(args, models, report)
        bracket = args.bracket and "parts" in args.paths

        def measure_parts_after(path: str) -> None:
            if bracket:
                measure_in_process(args, models, report, after=path)

        for video in (False, True):
            path = "cli-video" if video else "cli"
            if path in args.paths:
                found[path] = run_cli(args, models, workdir, child_env, video, report)
                measure_parts_after(path)
        for path in sweeps:
            found[path] = run_sweep(args, models, workdir, head, "scoring" in path, "video" in path, report)
            measure_parts_after(path)
        if serving:
            found["serve"] = run_service(args, models, workdir, head, report)
            measure_parts_after("serve")
        report.note(**check_ids(found))
    finally:
        head.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"working folder kept: {workdir}", file=sys.stderr)
        if report.results:
            print()
            print(
                f"{args.arch}, {args.device}, {args.dtype}, {args.steps} steps, {args.height}×{args.width}, "
                f"batch {args.batch_size}; sweeps and the service timed with the Ray cluster already up"
            )
            print(report.table(), flush=True)


if __name__ == "__main__":
    main()
