"""`torch.compile` for the UNets: fixed batch buckets, a persistent kernel cache, and a warm-up.

A compiled graph is specialised to its input shapes (`dynamic=False`: static shapes get inductor's best kernels
and keep CUDA-graph capture possible). The step scheduler's batch changes all the time — samples join and
finish, a warm start leaves one UNet with fewer rows — so a compiled UNet called with the batch as it comes would
recompile at every new size (a slow compile each time, and past dynamo's recompile limit it silently runs
eager). `CompiledUNet` pads a call of N rows up to the smallest bucket that holds it:

    samples    1  2  4   8  16  32     (`sample_buckets(max_samples)`: powers of two, and the max itself)
    CFG rows   2  4  8  16  32  64     (a sample is 2 rows: unconditional and conditional)

with copies of its last real row, and slices the output back to the N real rows; a call beyond the largest
bucket runs in chunks of it. The padding changes a real row by float round-off at most (another batch size may
pick other kernels): the UNet treats rows independently (GroupNorm, attention and the timestep embedding are per
row). So each UNet compiles at most once per bucket and latent size, and `CompiledUNet.warm_up` does that before
the first real request.

Compiled kernels are cached on disk by inductor (its FX-graph and autotuning caches) under
`IMGSOUND_CACHE_DIR/torch-compile` unless `TORCHINDUCTOR_CACHE_DIR` is set: a later process with the same torch,
architecture, dtype, device and shapes loads them in seconds instead of compiling them again.

Policy (`resolve_compile`): on by default on CUDA, off by default on the CPU — there inductor needs a C++
compiler and a compile costs about a minute per bucket even for the tiny test UNet on two cores, far more than
it saves — and both can be overridden. Compilation never changes what a sample is (its sample id): the output
equals eager execution to float round-off.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgsound_core.identity import cache_dir

# Sample counts a UNet call is padded up to; rows are twice these (classifier-free guidance).
SAMPLE_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
CFG_ROWS = 2
COMPILE_CACHE_FOLDER = "torch-compile"
# Graphs dynamo keeps per code object before it gives up and runs eager. Both UNets share
# UNet2DConditionModel.forward, and each needs one graph per bucket and latent size: torch's default (8) is too few.
RECOMPILE_LIMIT = 64
# torch.compile modes that capture CUDA graphs, whose outputs are overwritten by the graph's next replay.
CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})

Backend = str | Callable[..., Any]


def sample_buckets(max_samples: int) -> tuple[int, ...]:
    """The buckets of a UNet called with at most `max_samples` samples at once: the powers of two below it, then
    `max_samples` itself, e.g. 16 → (1, 2, 4, 8, 16), 12 → (1, 2, 4, 8, 12), 64 → (1, 2, …, 32, 64)."""
    if max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    powers = [1 << k for k in range(max_samples.bit_length()) if 1 << k < max_samples]
    return (*powers, max_samples)


def bucket_for(size: int, buckets: Sequence[int]) -> int:
    """The smallest of the ascending `buckets` that holds `size` (≥ 1); a ValueError past the largest."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    for bucket in buckets:
        if bucket >= size:
            return bucket
    raise ValueError(f"{size} is larger than the largest bucket, {buckets[-1]}")


def pad_rows(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """`(N, ...)` → `(size, ...)`: the N rows, then copies of the last one (`tensor` itself when N == size)."""
    rows = tensor.shape[0]
    if rows == size:
        return tensor
    if rows < 1 or rows > size:
        raise ValueError(f"cannot pad {rows} rows to {size}")
    return torch.cat([tensor, tensor[-1:].expand(size - rows, *tensor.shape[1:])])


def compile_by_default(device: torch.device | str) -> bool:
    """Whether UNets on `device` are compiled when nobody says: on CUDA, yes; elsewhere, no."""
    return torch.device(device).type == "cuda"


def resolve_compile(compile: bool | None, device: torch.device | str) -> bool:
    """`compile` as asked (True/False), or for None (auto) the default of `device`."""
    return compile_by_default(device) if compile is None else bool(compile)


def cpu_compiler_available() -> bool:
    """Whether inductor can build CPU kernels here: its C++ compiler is on PATH (`CXX`, else g++; clang++ on macOS)
    and Python's C headers are installed (its kernels are Python extensions; Debian: g++ and python3-dev)."""
    compiler = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    return shutil.which(compiler) is not None and (Path(sysconfig.get_path("include")) / "Python.h").is_file()


def _torch_default_cache_dir() -> str:
    """The folder inductor uses when nobody chose one (`/tmp/torchinductor_<user>`)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # older torch: the same rule
        import getpass
        import tempfile

        return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    return default_cache_dir()


def configure_compile_cache() -> Path:
    """Point inductor's on-disk caches at `IMGSOUND_CACHE_DIR/torch-compile` unless the user chose a folder with
    `TORCHINDUCTOR_CACHE_DIR`, and let dynamo keep a graph for every bucket; returns the cache folder. Idempotent."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # torch writes its default into the variable the first time it reads it (importing dynamo does): that value is
    # no one's choice, and a folder in /tmp rarely survives a reboot.
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(_torch_default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / COMPILE_CACHE_FOLDER)
        try:
            from torch._inductor.utils import clear_caches
        except ImportError:
            pass
        else:
            clear_caches()  # paths inductor derived from the old folder
    import torch._dynamo.config as dynamo_config

    # `recompile_limit` since torch 2.6; `cache_size_limit` before.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(int(getattr(dynamo_config, name)), RECOMPILE_LIMIT))
            break
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


@dataclass
class UNetOutput:
    """What a diffusers UNet returns, as far as the sampler reads it: `sample` `(N, C, h, w)`."""

    sample: torch.Tensor


class CompiledUNet:
    """A diffusers `UNet2DConditionModel`, compiled, called like it, padded to batch buckets.

    `CompiledUNet(unet)(sample, timestep, encoder_hidden_states=…).sample` equals `unet(…).sample` to float
    round-off. It shares the UNet's weights; on CUDA the weights are put in channels-last memory format first
    (the layout cuDNN's fp16 convolutions prefer), which changes nothing but speed for eager callers of the UNet.

    Args:
        unet: the UNet (any `nn.Module` with diffusers' call signature, `.config`, `.device`, `.dtype`).
        max_samples: the most samples one call is expected to carry (`sample_buckets`); more run in chunks.
        backend: torch.compile's backend: "inductor" (the default), or e.g. "aot_eager" or a callable for tests.
        mode: torch.compile's mode: None (default), "reduce-overhead" (CUDA graphs: less launch overhead, one
            memory pool per bucket), "max-autotune" (long compiles).
        channels_last: weights in channels-last format; None: on CUDA only.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        max_samples: int = SAMPLE_BUCKETS[-1],
        *,
        backend: Backend = "inductor",
        mode: str | None = None,
        channels_last: bool | None = None,
    ) -> None:
        device = torch.device(unet.device)
        if backend == "inductor" and device.type == "cpu" and not cpu_compiler_available():
            raise ValueError(
                "compiling a UNet for the CPU needs what torch's inductor builds its kernels with, a C++ compiler (g++ "
                "or clang++ on PATH, or CXX) and Python's C headers (Debian: g++ and python3-dev); install them, or "
                "turn compilation off"
            )
        configure_compile_cache()
        if device.type == "cuda" if channels_last is None else channels_last:
            unet.to(memory_format=torch.channels_last)
        self.unet = unet
        self.mode = mode
        self.max_samples = max_samples
        self._compiled = torch.compile(unet, backend=backend, mode=mode, dynamic=False)

    @property
    def max_samples(self) -> int:
        return self._max_samples

    @max_samples.setter
    def max_samples(self, value: int) -> None:
        # Changing it (a server's batch size) changes the buckets; `warm_up` then compiles the new ones.
        self._max_samples = value
        self.row_buckets: tuple[int, ...] = tuple(CFG_ROWS * s for s in sample_buckets(value))

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def config(self) -> Any:
        return self.unet.config

    @torch.inference_mode()
    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> UNetOutput:
        """Noise estimates for N rows.

        Args:
            sample: `(N, C, h, w)` latents in the UNet's dtype, on its device.
            timestep: `(N,)` int64, or one timestep for every row.
            encoder_hidden_states: `(N, L, D)` prompt embeddings (L = 77 tokens, D = the cross-attention width).
        Returns:
            `UNetOutput` with `sample` `(N, C, h, w)`.
        """
        rows = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(rows)
        largest = self.row_buckets[-1]
        chunks = [
            self._run_bucket(
                sample[start : start + largest],
                timestep[start : start + largest],
                encoder_hidden_states[start : start + largest],
            )
            for start in range(0, rows, largest)
        ]
        return UNetOutput(chunks[0] if len(chunks) == 1 else torch.cat(chunks))

    def _run_bucket(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """One compiled call on the bucket holding these `n ≤ largest` rows; returns exactly the `n` real rows."""
        rows = sample.shape[0]
        size = bucket_for(rows, self.row_buckets)
        if self.mode in CUDA_GRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()  # every call is a new inference step
        out = self._compiled(
            pad_rows(sample, size),
            pad_rows(timestep, size),
            encoder_hidden_states=pad_rows(context, size),
            return_dict=False,
        )[0]
        out = out[:rows]
        # A CUDA graph's output lives in its memory pool and is overwritten by the next replay.
        return out.clone() if self.mode in CUDA_GRAPH_MODES else out

    def warm_up(
        self, latent_shape: tuple[int, int, int], context_tokens: int = 77, max_samples: int | None = None
    ) -> tuple[int, ...]:
        """Compile (or load from the cache) every bucket up to `max_samples` for latents of `latent_shape`.

        Runs one call per bucket on zeros, with the dtypes, devices and layouts of real calls, so the first real
        request is served by a compiled graph. Returns the sample buckets run.

        Args:
            latent_shape: `(C, h, w)`, e.g. `(4, 32, 128)` for 256×1024 pictures.
            context_tokens: the text encoder's context length L (77 for CLIP).
            max_samples: the largest batch to prepare for (default: `self.max_samples`).
        """
        buckets = sample_buckets(self.max_samples)
        # Calls beyond max_samples run in chunks of the largest bucket, so no larger bucket ever exists.
        top = bucket_for(min(max_samples or self.max_samples, self.max_samples), buckets)
        run = tuple(s for s in buckets if s <= top)
        width = int(self.config.cross_attention_dim)
        with torch.inference_mode():
            for samples in run:
                rows = CFG_ROWS * samples
                self(
                    torch.zeros((rows, *latent_shape), device=self.device, dtype=self.dtype),
                    torch.full((rows,), 999, device=self.device, dtype=torch.int64),
                    encoder_hidden_states=torch.zeros(
                        (rows, context_tokens, width), device=self.device, dtype=self.dtype
                    ),
                )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return run


def maybe_compile(
    unet: torch.nn.Module,
    compile: bool | None,
    max_samples: int,
    *,
    backend: Backend = "inductor",
    mode: str | None = None,
) -> torch.nn.Module | CompiledUNet:
    """`unet` itself, or a `CompiledUNet` of it when `resolve_compile(compile, unet.device)` says so."""
    if not resolve_compile(compile, unet.device):
        return unet
    return CompiledUNet(unet, max_samples, backend=backend, mode=mode)
