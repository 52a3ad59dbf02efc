"""The paper's Table 1 in one command: generate, score and tabulate every method beside the paper's numbers.

    make paper-table1                                                   # the full grid: 10 × 10 pairs × 10 samples
    python -m jobs.table1 jobs/specs/paper_table1.yaml --output s3://bucket/table1
    python -m jobs.table1 SPEC --output results/t1 --pairs 4 --samples-per-pair 2 --steps 20   # a reduced grid

Each method is a sweep of the same grid under `OUTPUT/<method>/` (resumable and exactly-once like any sweep),
scored with the paper's evaluators (CLIP on the spectrogram, CLAP on the audio; the spec's `scoring:` or the
defaults). The rows:

    Stable Diffusion alone (V)   the image model alone: audio_start_step = steps (the audio model never joins)
    Auffusion alone (A)          the audio model alone: image_start_step = steps
    Imprint (A&V)                the imprint baseline: steps / 2 image steps, `steps` audio steps, ρ 0.5
    SDS (A&V)                    the SDS baseline: --sds-iterations (40 000), 4 samples per pair, as the paper
    Ours (A&V)                   multimodal denoising with the spec's settings

Scores are reported as the paper does: mean × 100 ± the 95 % margin 1.96 · std / √n × 100. The table is printed
and written to `OUTPUT/table1.md` and `OUTPUT/table1.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobs.manifest import MANIFEST_FILE, read_parquet_bytes
from jobs.spec import Scoring, SpecError, SweepSpec, load_spec
from jobs.store import Store, StoreError, open_store

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


@dataclass(frozen=True)
class Method:
    """One row of Table 1: how its sweep differs from the spec, and what the paper reports (CLIP, CLAP; ×100).

    `sweep(data, params)` turns the spec's fields (`data`, a dict) into this row's: `params` holds the spec's
    steps, start steps, guidance and size with the defaults filled in.
    """

    name: str  # also the output sub-folder
    label: str
    modality: str
    paper_clip: tuple[float, float]
    paper_clap: tuple[float, float]
    sweep: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def _image_alone(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return {**data, "params": {**data["params"], "image_start_step": 0, "audio_start_step": params["steps"]}}


def _audio_alone(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return {**data, "params": {**data["params"], "image_start_step": params["steps"], "audio_start_step": 0}}


def _ours(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return data


def _imprint(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The reference imprint: 50 image / 100 audio steps at the paper's 100 (half and all of the spec's steps)."""
    imprint = {
        "image_steps": max(1, round(params["steps"] / 2)),
        "audio_steps": params["steps"],
        "height": params["height"],
        "width": params["width"],
    }
    return {**data, "method": "imprint", "params": imprint}


def _sds(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The paper's SDS: 40 000 iterations (image loss from 5 000), 4 samples per pair "due to its slower speed"."""
    iterations = params["sds_iterations"]
    sds = {
        "iterations": iterations,
        "image_start_step": iterations // 8,
        "height": params["height"],
        "width": params["width"],
        "crop_size": min(256, params["height"], params["width"]),
    }
    samples = min(4, data["samples_per_pair"])
    return {**data, "method": "sds", "params": sds, "samples_per_pair": samples, "batch_size": 1}


# Paper Table 1 (mean ± 95 % CI, ×100), in the paper's order.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("image-alone", "Stable Diffusion alone", "V", (34.5, 0.1), (2.2, 0.2), _image_alone),
        Method("audio-alone", "Auffusion alone", "A", (22.5, 0.1), (48.3, 0.6), _audio_alone),
        Method("imprint", "Imprint", "A&V", (27.2, 0.2), (32.3, 1.0), _imprint),
        Method("sds", "SDS", "A&V", (25.4, 0.2), (23.4, 1.4), _sds),
        Method("ours", "Ours (multimodal denoising)", "A&V", (28.2, 0.1), (33.5, 0.9), _ours),
    )
}
SDS_ITERATIONS = 40_000


def reduce_spec(spec: SweepSpec, pairs: int | None, samples_per_pair: int | None, steps: int | None) -> SweepSpec:
    """The first `pairs` prompt pairs (grid order), `samples_per_pair` samples, `steps` DDIM steps.

    Fewer steps keep the warm start's fraction: image_start_step scales with the step count.
    """
    data = spec.model_dump()
    if pairs is not None:
        chosen = spec.prompt_pairs()[:pairs]
        data.update(image_prompts=None, audio_prompts=None, pairs=[{"image": i, "audio": a} for i, a in chosen])
    if samples_per_pair is not None:
        data["samples_per_pair"] = samples_per_pair
    if steps is not None:
        params = dict(data["params"])
        old_steps = params.get("steps", 100)
        for name in ("image_start_step", "audio_start_step"):
            if name in params:
                params[name] = round(params[name] * steps / old_steps)
        params["steps"] = steps
        data["params"] = params
    return SweepSpec.model_validate(data)


def method_spec(spec: SweepSpec, method: Method, sds_iterations: int = SDS_ITERATIONS) -> SweepSpec:
    """The sweep of one row: the spec's grid and models, the method's settings, always scored."""
    from imgsound_core.request import SampleRequest

    if spec.method != "denoise":
        raise SpecError(f"Table 1 starts from a spec of the paper's method (method: denoise), not {spec.method}")
    defaults = SampleRequest(image_prompt="-", audio_prompt="-").to_dict()
    params = {name: spec.params.get(name, defaults[name]) for name in ("steps", "height", "width")}
    data = spec.model_dump()
    data["name"] = f"{spec.name}-{method.name}"
    data["scoring"] = (spec.scoring or Scoring()).model_dump()
    data["output"] = None
    return SweepSpec.model_validate(method.sweep(data, {**params, "sds_iterations": sds_iterations}))


def mean_margin(values: list[float]) -> tuple[float, float]:
    """(mean × 100, 1.96 · std / √n × 100): the paper's evaluator's report (population std)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return 100 * mean, 100 * 1.96 * std / math.sqrt(n)


def summarise(store: Store, method: Method) -> dict[str, Any]:
    table = read_parquet_bytes(store.get_bytes(f"{method.name}/{MANIFEST_FILE}"))
    clip = [v for v in table.column("clip_score").to_pylist() if v is not None]
    clap = [v for v in table.column("clap_score").to_pylist() if v is not None]
    if not clip or not clap or len(clip) != table.num_rows or len(clap) != table.num_rows:
        raise RuntimeError(f"the {method.name} manifest has rows without scores; run again to finish scoring")
    return {
        "method": method.name,
        "label": method.label,
        "modality": method.modality,
        "n": table.num_rows,
        "clip": mean_margin(clip),
        "clap": mean_margin(clap),
        "paper_clip": method.paper_clip,
        "paper_clap": method.paper_clap,
    }


def format_table(rows: list[dict[str, Any]], title: str) -> str:
    """Markdown, the paper's shape: one row per method, ours beside the paper's."""

    def cell(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.1f} ± {pair[1]:.1f}"

    lines = [
        f"Table 1 — {title}",
        "",
        "| method | modality | CLIP | CLAP | n | paper CLIP | paper CLAP |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['modality']} | {cell(row['clip'])} | {cell(row['clap'])} | {row['n']} "
            f"| {cell(row['paper_clip'])} | {cell(row['paper_clap'])} |"
        )
    lines += ["", "CLIP and CLAP × 100, mean ± 95 % margin (1.96 · std / √n)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.table1", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("spec", nargs="?", default="jobs/specs/paper_table1.yaml", help="the grid (a sweep spec)")
    parser.add_argument("--output", required=True, help="s3://bucket/prefix, file:///dir or a folder")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"rows, comma-separated ({', '.join(METHODS)})")
    parser.add_argument("--pairs", type=int, default=None, help="only the first N prompt pairs (a reduced grid)")
    parser.add_argument("--samples-per-pair", type=int, default=None, help="samples per pair (default: the spec's)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the spec's)")
    parser.add_argument(
        "--sds-iterations", type=int, default=SDS_ITERATIONS, help="SDS optimisation steps [%(default)s]"
    )
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    parser.add_argument("--workers", type=int, default=None, help="worker actors (default: one per GPU, else 1)")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    args = parser.parse_args(argv)

    try:
        names = [n.strip() for n in args.methods.split(",") if n.strip()]
        unknown = [n for n in names if n not in METHODS]
        if unknown or not names:
            raise SpecError(f"unknown method {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
        for flag in ("pairs", "samples_per_pair", "steps", "sds_iterations"):
            if getattr(args, flag) is not None and getattr(args, flag) < 1:
                raise SpecError(f"--{flag.replace('_', '-')} must be at least 1")
        spec = reduce_spec(load_spec(args.spec), args.pairs, args.samples_per_pair, args.steps)
        methods = [METHODS[n] for n in names]
        specs = [method_spec(spec, m, args.sds_iterations) for m in methods]
        store = open_store(args.output, endpoint_url=args.endpoint_url)
        store.check_writable()
    except (SpecError, StoreError) as error:
        print(f"table1: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as error:  # a reduced spec that no longer validates (e.g. too few steps)
        print(f"table1: error: {str(error).splitlines()[-1].strip()}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from jobs.sweep import execute, failure_sentence

    started = time.perf_counter()
    rows = []
    try:
        for method, method_sweep in zip(methods, specs):
            uri = store.uri_for(method.name)
            print(f"table1: {method.label}: sweep {method_sweep.name} → {uri}", file=sys.stderr)
            method_store = open_store(uri, endpoint_url=args.endpoint_url)
            execute(method_sweep, method_store, uri, args.endpoint_url, args.workers, args.address)
            rows.append(summarise(store, method))
    except Exception as error:  # noqa: BLE001 - one sentence; finished sweeps and scores are kept
        print(f"table1: error: {failure_sentence(error)}", file=sys.stderr)
        return EXIT_FAILED
    grid = f"{len(spec.prompt_pairs())} prompt pairs × {spec.samples_per_pair} samples, {spec.name}"
    text = format_table(rows, grid)
    store.put_bytes("table1.md", (text + "\n").encode())
    store.put_bytes("table1.json", (json.dumps({"grid": grid, "rows": rows}, indent=2) + "\n").encode())
    print(text)
    print(f"table1: done in {time.perf_counter() - started:.0f} s; {store.uri_for('table1.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from imgsound_core.host import end_process

    end_process(main())
