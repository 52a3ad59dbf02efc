"""How quickly the command line answers before any work: `--help` and a refused argument.

Runs each command `--runs` times as a fresh process (what a user waits for) and reports the median.

    python bench/bench_cli_startup.py --json bench/results/cpu-cli-startup.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "imgsound --help": ["--help"],
    "imgsound generate --help": ["generate", "--help"],
    "imgsound generate --steps 0 (refused)": [
        "generate",
        "--image-prompt",
        "a",
        "--audio-prompt",
        "b",
        "--steps",
        "0",
        "--out",
        "/tmp/never",
    ],
    "imgsound generate --crop --width 32 (refused)": [
        "generate",
        "--image-prompt",
        "a",
        "--audio-prompt",
        "b",
        "--crop",
        "--width",
        "32",
        "--out",
        "/tmp/never",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    executable = Path(sys.executable).with_name("imgsound")
    results = {"machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"}
    for name, argv in COMMANDS.items():
        seconds = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run([str(executable), *argv], capture_output=True, check=False)
            seconds.append(time.perf_counter() - started)
        results[name] = {"median_s": statistics.median(seconds), "min_s": min(seconds), "runs": args.runs}
        print(f"{name}: median {statistics.median(seconds):.2f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
