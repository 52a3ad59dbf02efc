"""The model processes' settings (imgsound_core.host): glibc keeps freed heap memory unless told otherwise.

Each case runs in a fresh interpreter, as the settings are process-wide, and reads glibc's own accounting
(`mallinfo2`): whether a 4 MiB block (an activation's size) came from mmap or the heap, and how much free memory
the heap kept at its top after 100 MiB, malloc'ed in 64 KiB pieces, were touched and freed (all of it, and the
pad it grows by)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not (hasattr(os, "confstr") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")),
    reason="the allocator setting is glibc's",
)

PROBE = """
import ctypes, json, sys
from imgsound_core.host import prepare_model_process, keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "prepare" else None
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
mmapped = libc.mallinfo2().hblkhd
big = libc.malloc(4 << 20)
mmapped_mib = (libc.mallinfo2().hblkhd - mmapped) >> 20
libc.free(big)
blocks = [libc.malloc(64 << 10) for _ in range(1600)]
for block in blocks:
    ctypes.memset(block, 1, 64 << 10)
for block in reversed(blocks):
    libc.free(block)
kept_mib = libc.mallinfo2().keepcost >> 20
threads = None
if sys.argv[1] == "prepare":
    import torch
    prepare_model_process(torch_threads=1)  # sets the threads, applies the allocator's settings again
    threads = torch.get_num_threads()
print(json.dumps({"applied": applied, "mmapped_mib": mmapped_mib, "kept_mib": kept_mib, "threads": threads}))
"""


def probe(mode: str, **env: str) -> dict:
    mine = ("MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "IMGSOUND_MALLOC_TOP_PAD")
    environment = {k: v for k, v in os.environ.items() if k not in mine} | env
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_a_model_process_keeps_freed_heap_memory_instead_of_returning_it() -> None:
    untouched = probe("nothing")
    prepared = probe("prepare")
    # glibc's defaults: a 4 MiB block from mmap, freed memory trimmed back to the kernel
    assert untouched["mmapped_mib"] == 4 and untouched["kept_mib"] < 16
    assert prepared["applied"] is True
    assert prepared["mmapped_mib"] == 0  # from the heap
    assert prepared["kept_mib"] >= 512  # the 100 MiB freed and the 512 MiB pad stay with the heap
    assert prepared["threads"] == 1


@pytest.mark.parametrize(
    "setting", [{"IMGSOUND_MALLOC_TOP_PAD": "0"}, {"MALLOC_TOP_PAD_": "131072"}, {"MALLOC_MMAP_THRESHOLD_": "131072"}]
)
def test_a_pad_of_zero_or_the_users_own_glibc_setting_leaves_the_allocator_alone(setting: dict[str, str]) -> None:
    kept = probe("prepare", **setting)
    assert kept["applied"] is False
    assert kept["mmapped_mib"] == 4 and kept["kept_mib"] < 16


def test_the_pad_is_configurable() -> None:
    kept = probe("prepare", IMGSOUND_MALLOC_TOP_PAD=str(40 << 20))
    assert kept["applied"] is True
    assert kept["mmapped_mib"] == 0
    assert 99 <= kept["kept_mib"] < 512
