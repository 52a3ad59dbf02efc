"""Small host tensors onto the accelerator without making the host wait for it.

`tensor.to("cuda")` from ordinary (pageable) host memory is a blocking copy: torch synchronises the stream, so the
host waits until every kernel queued before it has run, and the GPU then idles while Python builds the next step.
A copy from pinned memory with `non_blocking=True` is queued like a kernel instead; torch's pinned-memory pool keeps
the source alive until the copy has run. The step loop's per-step tensors (timesteps, ᾱ, weights, row indices: a
few dozen numbers) go through here.
"""

from __future__ import annotations

import torch


def to_device(values: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """`values` on `device` (None: left where it is), queued on the current stream when `device` is CUDA.

    Args:
        values: any tensor; normally a small CPU tensor built from Python numbers.
        device: the target device.
    Returns:
        The same tensor when it is already there, else a copy on `device` (same shape and dtype).
    """
    if device is None:
        return values
    device = torch.device(device)
    if values.device == device:
        return values
    if device.type == "cuda" and values.device.type == "cpu":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)
