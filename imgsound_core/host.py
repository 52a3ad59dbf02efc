"""Process-wide settings for a process that runs the models: torch's CPU threads and the C allocator.

Every process that denoises, decodes, vocodes or encodes samples — the CLI, a sweep's actors, the service's
replicas — calls `prepare_model_process(torch_threads)` once, before its first model call.

Why the allocator. On the CPU each UNet, VAE and vocoder call allocates activations of megabytes and frees them
within milliseconds. glibc's malloc gives such memory back to the kernel eagerly: a chunk above the mmap
threshold is `munmap`ed on free, and free space at the top of the heap above the trim threshold is released with
`sbrk`. The next call takes it again, and every page taken again is a page fault that the kernel fills with
zeros. A fresh process pays this at every step (later the dynamic mmap threshold adapts, partly). Keeping a
pad of `top_pad` bytes at the top of the heap (`M_TOP_PAD`, which both grows the heap in large pieces and keeps
that much when trimming) takes the churn away. Measured on two cores with the tiny models, 16 samples × 30 steps
in a fresh process: 18.2–19.7 s by default, 14.3–15.5 s with a 512 MiB pad; decode + vocode alone 3.5–4.4 s →
2.1–2.4 s; peak RSS grows by 40–100 MiB.

`IMGSOUND_MALLOC_TOP_PAD` sets the pad in bytes; 0 leaves glibc as it is. A user's own glibc tuning
(`MALLOC_TOP_PAD_`, read at process start) wins. (Setting that to glibc's default value is not the default:
any such variable also freezes glibc's adaptive mmap threshold, and the same CLI run took 43–46 s instead of
28.5 s.) Other C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import os

DEFAULT_TOP_PAD = 512 << 20
M_TOP_PAD = -2  # glibc's <malloc.h>


def _is_glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # no such name on this platform
        return False


def keep_freed_memory(top_pad: int | None = None) -> bool:
    """Ask glibc's malloc to keep `top_pad` bytes of freed heap (default: `IMGSOUND_MALLOC_TOP_PAD`, else
    512 MiB) instead of returning them to the kernel.

    Returns whether the setting was applied: False for a pad of 0, on another C library, or when the
    environment's `MALLOC_TOP_PAD_` already chose a value."""
    if top_pad is None:
        top_pad = int(os.environ.get("IMGSOUND_MALLOC_TOP_PAD", DEFAULT_TOP_PAD))
    if top_pad <= 0 or os.environ.get("MALLOC_TOP_PAD_") is not None or not _is_glibc():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_TOP_PAD, top_pad))


def prepare_model_process(torch_threads: int | None = None) -> None:
    """Settings for a process about to run models: `torch_threads` CPU threads for torch (None: torch's
    default, one per core) and the allocator's pad (see the module's docstring)."""
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    keep_freed_memory()
