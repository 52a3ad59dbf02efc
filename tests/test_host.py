"""The model processes' settings (imgsound_core.host): glibc keeps freed heap memory unless told otherwise.

Each case runs in a fresh interpreter, as the setting is process-wide: it mallocs 100 MiB in 64 KiB pieces (below
glibc's mmap threshold, so on the heap), touches and frees them, and reads back how much free memory the heap
kept at its top (`mallinfo2().keepcost`)."""

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
applied = None
if sys.argv[1] == "prepare":
    prepare_model_process(torch_threads=1)
    applied = keep_freed_memory()  # a second call applies it again
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(64 << 10) for _ in range(1600)]
for block in blocks:
    ctypes.memset(block, 1, 64 << 10)
for block in reversed(blocks):
    libc.free(block)
threads = None
if sys.argv[1] == "prepare":
    import torch
    threads = torch.get_num_threads()
print(json.dumps({"applied": applied, "kept_mib": libc.mallinfo2().keepcost >> 20, "threads": threads}))
"""


def probe(mode: str, **env: str) -> dict:
    mine = ("MALLOC_TOP_PAD_", "IMGSOUND_MALLOC_TOP_PAD")
    environment = {k: v for k, v in os.environ.items() if k not in mine} | env
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_a_model_process_keeps_freed_heap_memory_instead_of_returning_it() -> None:
    untouched = probe("nothing")
    prepared = probe("prepare")
    assert untouched["kept_mib"] < 16  # glibc's default: trimmed back to the kernel
    assert prepared["applied"] is True
    assert prepared["kept_mib"] >= 99  # all 100 MiB stay with the heap (up to the 512 MiB pad)
    assert prepared["threads"] == 1


@pytest.mark.parametrize("setting", [{"IMGSOUND_MALLOC_TOP_PAD": "0"}, {"MALLOC_TOP_PAD_": "131072"}])
def test_a_pad_of_zero_or_the_users_own_glibc_setting_leaves_the_allocator_alone(setting: dict[str, str]) -> None:
    kept = probe("prepare", **setting)
    assert kept["applied"] is False
    assert kept["kept_mib"] < 16


def test_the_pad_is_configurable() -> None:
    kept = probe("prepare", IMGSOUND_MALLOC_TOP_PAD=str(40 << 20))
    assert kept["applied"] is True
    assert 39 <= kept["kept_mib"] < 99  # 40 MiB kept of the 100 freed
