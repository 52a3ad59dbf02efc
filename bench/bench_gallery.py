"""How quickly the gallery opens on a large sweep: build a 2 000-sample gallery and time its first page in Chromium.

A sweep folder of N samples (manifest.parquet + samples/<id>/…, real-size 256×1024 pictures and 10.24 s of
audio; a few distinct artifact sets shared through hard links, so that setting up is quick) →
`jobs.gallery.collect_sweep_samples` + `build_gallery` (timed: thumbnails and copies for every sample) → headless
Chromium opens file://…/index.html, each run in a fresh context. Measured from navigation start: the first page's
cards in the document (the page's own `firstRenderMs`), the thumbnails in view decoded, the load event; and a
re-sort of all N by CLIP + CLAP. The same page on a gallery of one page (its first `--page-size` samples) is the
baseline: what the browser costs anyway.

    python bench/bench_gallery.py                        # 2 000 samples, 50 cards a page, 5 runs
    python bench/bench_gallery.py --samples 10000 --json bench/results/gallery.json

Prints one JSON line (medians over the runs); `--json PATH` also writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgsound_core.artifacts import render_artifacts  # noqa: E402
from imgsound_core.gallery import build_gallery  # noqa: E402
from jobs.gallery import collect_sweep_samples  # noqa: E402
from jobs.manifest import COLUMNS, MANIFEST_FILE, parquet_bytes, table_from_rows  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PROTOTYPES = 4
SAMPLES_PER_PAIR = 10
HEIGHT, WIDTH = 256, 1024

# After the first page is in the document: wait until every thumbnail in view is decoded (or failed).
VISIBLE_THUMBS_DECODED = """async () => {
  const inView = [...document.querySelectorAll('.card img')].filter(
    img => img.getBoundingClientRect().top < innerHeight);
  await Promise.all(inView.map(img => img.decode().catch(() => null)));
  return {ms: performance.now(), count: inView.length};
}"""
RESORT = """() => {
  const sort = document.getElementById('sort');
  const t0 = performance.now();
  sort.value = 'sum';
  sort.dispatchEvent(new Event('change'));
  return performance.now() - t0;
}"""


def prototype_artifacts(seed: int) -> dict[str, bytes]:
    """One real-size sample: smooth random canvas (picture and spectrogram), noise audio."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, 8, 32), generator=generator)
    canvas = torch.nn.functional.interpolate(coarse, size=(HEIGHT, WIDTH), mode="bicubic").clamp(0, 1)[0, 0]
    tint = torch.rand(3, 1, 1, generator=generator) * 0.5 + 0.5
    waveform = 0.1 * torch.randn(WIDTH * 160, generator=generator)
    return render_artifacts(canvas[None] * tint, canvas, waveform, {"image_prompt": "-", "audio_prompt": "-"})


def write_sweep(root: Path, samples: int) -> None:
    """ROOT/manifest.parquet with `samples` rows and ROOT/samples/<id>/ hard-linked to a few prototypes."""
    prototypes = root / "prototypes"
    for index in range(PROTOTYPES):
        folder = prototypes / str(index)
        folder.mkdir(parents=True)
        for name, data in prototype_artifacts(index).items():
            (folder / name).write_bytes(data)
    scores = random.Random(0)
    rows = []
    for index in range(samples):
        sample_id = f"{index:016x}"
        folder = root / "samples" / sample_id
        folder.mkdir(parents=True)
        for name in ("image.png", "spectrogram.png", "audio.wav", "sample.json"):
            os.link(prototypes / str(index % PROTOTYPES) / name, folder / name)
        pair, within = divmod(index, SAMPLES_PER_PAIR)
        row = dict.fromkeys(COLUMNS)
        row |= {
            "sample_id": sample_id,
            "sweep": "bench",
            "pair_index": pair,
            "sample_index": within,
            "image_prompt": f"a painting of thing {pair}, grayscale",
            "audio_prompt": f"sound number {pair}",
            "seed": within,
            "height": HEIGHT,
            "width": WIDTH,
            "status": "ok",
            "clip_score": round(scores.uniform(0.1, 0.4), 4),
            "clap_score": round(scores.uniform(0.0, 0.5), 4),
        }
        rows.append(row)
    (root / MANIFEST_FILE).write_bytes(parquet_bytes(table_from_rows(rows)))


def folder_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def measure_page(index: Path, runs: int, page_size: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    timings: dict[str, list[float]] = {"first_cards_ms": [], "thumbs_in_view_ms": [], "load_event_ms": []}
    timings["resort_ms"] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for _ in range(runs):
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                page = context.new_page()
                page.goto(index.as_uri(), wait_until="load")
                page.wait_for_function("() => window.imgsoundGallery")
                cards = page.locator(".card").count()
                if cards != page_size:
                    raise RuntimeError(f"the first page shows {cards} cards, expected {page_size}")
                timings["first_cards_ms"].append(page.evaluate("window.imgsoundGallery.firstRenderMs"))
                thumbs = page.evaluate(VISIBLE_THUMBS_DECODED)
                timings["thumbs_in_view_ms"].append(thumbs["ms"])
                timings["load_event_ms"].append(
                    page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
                )
                timings["resort_ms"].append(page.evaluate(RESORT))
                context.close()
        finally:
            browser.close()
    return {name: round(statistics.median(values), 1) for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-gallery-") as temp:
        root, out = Path(temp) / "sweep", Path(temp) / "site"
        t0 = time.perf_counter()
        write_sweep(root, args.samples)
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        samples = collect_sweep_samples(root)
        collect_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_gallery(samples, out, page_size=args.page_size)
        build_s = time.perf_counter() - t0
        page = measure_page(out / "index.html", args.runs, args.page_size)
        build_gallery(samples[: args.page_size], Path(temp) / "one-page", page_size=args.page_size)
        baseline = measure_page(Path(temp) / "one-page" / "index.html", args.runs, args.page_size)
        version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        result = {
            "bench": "gallery",
            "samples": args.samples,
            "page_size": args.page_size,
            "runs": args.runs,
            "setup_s": round(setup_s, 2),
            "collect_s": round(collect_s, 3),
            "build_s": round(build_s, 2),
            "site_mb": round(folder_bytes(out) / 1e6, 1),
            "thumbnails_mb": round(sum(p.stat().st_size for p in out.rglob("*.thumb.*")) / 1e6, 2),
            "data_script_kb": round((out / "data" / "samples.js").stat().st_size / 1e3, 1),
            **page,
            **{f"one_page_{name}": value for name, value in baseline.items() if name != "resort_ms"},
            "chromium": version,
            "cpus": os.cpu_count(),
        }
    print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
