"""Serving throughput against the in-process batched core, same models, same requests.

Starts a local Ray cluster with the Serve app (serve/config.local.yaml on tiny models: Driver, Gatekeeper,
ImageUNet, AudioUNet, Vocoder, Renderer), sends `--requests` single-sample requests at each concurrency level, and
runs the same requests through `Sampler` in this process with the same batch size — denoise, decode and vocode
alone ("core"), and the same plus the files the service returns ("core + files": the same PNG/NPY/WAV encoding);
prints samples/s for each and the serving overhead fraction (serve seconds − in-process seconds) / in-process
seconds against both.

    python bench/bench_serve.py --concurrency 1 4 16 --steps 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgsound_core.artifacts import render_artifacts  # noqa: E402
from imgsound_core.audio.vocoder import HiFiGANVocoder  # noqa: E402
from imgsound_core.models.bundle import load_bundle  # noqa: E402
from imgsound_core.models.tiny import write_tiny_models  # noqa: E402
from imgsound_core.request import SampleRequest  # noqa: E402
from imgsound_core.sampler import Sampler  # noqa: E402
from serve.local import http, start  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp())
    models = workdir / "models"
    write_tiny_models(models)
    bodies = [
        dict(
            image_prompt=f"picture {i}",
            audio_prompt=f"sound {i}",
            steps=args.steps,
            image_start_step=1,
            seed=i,
            height=args.height,
            width=args.width,
        )
        for i in range(args.requests)
    ]
    requests = [SampleRequest(**body) for body in bodies]
    bodies = [{**body, "outputs": ["image", "spectrogram_npy", "audio"]} for body in bodies]
    image = load_bundle(models / "image", "image", parts={"unet", "vae", "text"})
    audio = load_bundle(models / "audio", "audio")
    results = []
    cluster = start(models, workdir)
    try:
        for concurrency in args.concurrency:
            sampler = Sampler(
                image,
                audio,
                HiFiGANVocoder(audio.vocoder),
                max_batch_samples=concurrency,
                decode_batch_size=concurrency,
            )
            list(sampler.generate(requests[:1]))  # warm-up
            t0 = time.perf_counter()
            results_in_process = list(sampler.generate(requests))
            core_s = time.perf_counter() - t0
            for result in results_in_process:
                render_artifacts(result.image, result.spectrogram, result.waveform, {"sample_id": "x"})
            files_s = time.perf_counter() - t0

            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                t0 = time.perf_counter()
                statuses = list(pool.map(lambda b: http("POST", f"{cluster.url}/v1/generate", b)[0], bodies))
                serve_s = time.perf_counter() - t0
            if set(statuses) != {200}:
                raise RuntimeError(f"some requests failed: {statuses}")
            entry = {
                "concurrency": concurrency,
                "requests": args.requests,
                "steps": args.steps,
                "size": f"{args.height}x{args.width}",
                "core_samples_per_s": args.requests / core_s,
                "core_with_files_samples_per_s": args.requests / files_s,
                "serve_samples_per_s": args.requests / serve_s,
                "overhead_fraction": (serve_s - core_s) / core_s,
                "overhead_vs_core_with_files": (serve_s - files_s) / files_s,
            }
            results.append(entry)
            print(json.dumps(entry), flush=True)
    finally:
        cluster.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
