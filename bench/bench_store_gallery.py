"""The service's gallery over a large output store: how long a refresh and the data script take.

Writes N sample folders (`<id>/sample.json`, the only file a listing reads) into a local store, then times the
first refresh (every record read), a refresh with nothing new, one with one new sample, the data script's first
build and a cached answer. The HTTP service answers `/gallery/data/samples.js` from that cache (ETag: 304 for a
browser that has it), on Gallery replicas of its own.

    python bench/bench_store_gallery.py --samples 20000 --json bench/results/cpu-store-gallery-20000.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.store import LocalStore  # noqa: E402
from serve.gallery import StoreGallery  # noqa: E402


def record(index: int) -> bytes:
    sample_id = f"{index:016x}"
    fields = {"sample_id": sample_id, "image_prompt": f"picture {index % 97}", "audio_prompt": f"sound {index % 89}"}
    return json.dumps({**fields, "seed": index, "steps": 100}).encode()


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    store = LocalStore(Path(tempfile.mkdtemp()) / "served")
    for index in range(args.samples):
        store.put_bytes(f"{index:016x}/sample.json", record(index))
    gallery = StoreGallery(store, refresh_s=3600)
    first_refresh, _ = timed(gallery.refresh)
    first_build, (script, _) = timed(gallery.data)
    cached, _ = timed(gallery.data)
    unchanged_refresh, _ = timed(gallery.refresh)
    store.put_bytes(f"{args.samples:016x}/sample.json", record(args.samples))
    one_new_refresh, _ = timed(gallery.refresh)
    rebuild, _ = timed(gallery.data)
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, local disk",
        "samples": args.samples,
        "first_refresh_s": first_refresh,
        "refresh_nothing_new_s": unchanged_refresh,
        "refresh_one_new_s": one_new_refresh,
        "data_script_first_build_s": first_build,
        "data_script_cached_s": cached,
        "data_script_rebuild_after_one_new_s": rebuild,
        "data_script_bytes": len(script),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
