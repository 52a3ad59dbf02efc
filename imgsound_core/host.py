"""Process-wide settings for a process that runs the models: torch's CPU threads and the C allocator.

Every process that denoises, decodes, vocodes or encodes samples — the CLI, a sweep's generators, the service's
replicas — calls `prepare_model_process(torch_threads)` once, before its first model call; a sweep's writers, which
run no model and load no torch, call `keep_freed_memory()`.

Why the allocator. On the CPU each UNet, VAE and vocoder call allocates activations of megabytes and frees them
within milliseconds. glibc's malloc gives such memory back to the kernel eagerly: a chunk above the mmap
threshold (128 KiB at first, adapting upwards as such chunks are freed) is `munmap`ed on free, and free space at
the top of a heap above the trim threshold is released. The next call takes it again, and every page taken again
is a page fault that the kernel fills with zeros. So a model process asks for three things (`mallopt`):

    M_MMAP_THRESHOLD  32 MiB   (glibc's largest): activations come from the heap, not from mmap
    M_TRIM_THRESHOLD   1 GiB   a heap keeps up to this much free memory at its top
    M_TOP_PAD        512 MiB   a heap grows in large pieces (`IMGSOUND_MALLOC_TOP_PAD`)

The first matters most for threads other than the main one (a Ray Serve replica's, the CLI's file writer), whose
heaps glibc caps at 64 MiB; the pad for a fresh process. Measured on two cores with the tiny models, 16 samples ×
30 steps, four runs each (seconds):

    glibc as it is       fresh process 18.2–19.1   on a second thread 18.7–23.6
    pad only             fresh process 15.1–18.1   on a second thread 21.0–21.9
    all three            fresh process 15.4–18.9   on a second thread 17.2–21.4

and a whole `imgsound generate` of those 16 samples took 21 s with the pad alone instead of 28.5 s. Peak memory grows by
40–130 MiB.

`IMGSOUND_MALLOC_TOP_PAD=0` leaves glibc as it is. A user's own glibc tuning (`MALLOC_TOP_PAD_`,
`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, read at process start) wins: then nothing is changed. Other C
libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from typing import NoReturn

DEFAULT_TOP_PAD = 512 << 20
MMAP_THRESHOLD = 32 << 20  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30
# glibc's <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
USER_SETTINGS = ("MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _is_glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # no such name on this platform
        return False


def keep_freed_memory(top_pad: int | None = None) -> bool:
    """Ask glibc's malloc to serve activations from its heaps and keep freed memory there, with a pad of
    `top_pad` bytes (default: `IMGSOUND_MALLOC_TOP_PAD`, else 512 MiB), instead of returning it to the kernel.

    Returns whether the settings were applied: False for a pad of 0, on another C library, or when the
    environment already tunes glibc's malloc (`USER_SETTINGS`)."""
    if top_pad is None:
        top_pad = int(os.environ.get("IMGSOUND_MALLOC_TOP_PAD", DEFAULT_TOP_PAD))
    if top_pad <= 0 or any(name in os.environ for name in USER_SETTINGS) or not _is_glibc():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, max(TRIM_THRESHOLD, top_pad)),
        (M_TOP_PAD, top_pad),
    )
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


def prepare_model_process(torch_threads: int | None = None) -> None:
    """Settings for a process about to run models: `torch_threads` CPU threads for torch (None: torch's
    default, one per core) and the allocator's (see the module's docstring)."""
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    keep_freed_memory()


def end_process(code: int) -> NoReturn:
    """Exit a command's process with `code`, leaving the objects it built to the operating system.

    While CPython tears its modules down at exit it also collects garbage, a pass over every object alive. With
    torch, diffusers and transformers loaded (and for a sweep's driver, Ray and pyarrow) that pass took 1.1 s of a
    6.8 s `imgsound generate` on two cores, and 0.85 s of a sweep's. `gc.freeze()` first puts every object out of
    the collector's reach (0.2 s left); atexit handlers, the join of running threads and the flush of open files
    still happen, as in any exit. For the last line of a command only: a process that goes on would keep its
    cyclic garbage for good."""
    gc.freeze()
    sys.exit(code)
