"""CUDA checks of the core on tiny models: the same samples on CPU fp32, CUDA fp32 and CUDA fp16.

python bench/gpu_check.py      # needs a CUDA GPU; prints max differences and exits non-zero on a failure
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgsound_core.audio.vocoder import HiFiGANVocoder  # noqa: E402
from imgsound_core.models.bundle import load_bundle  # noqa: E402
from imgsound_core.models.tiny import write_tiny_models  # noqa: E402
from imgsound_core.request import SampleRequest  # noqa: E402
from imgsound_core.sampler import Sampler  # noqa: E402


def run(root: Path, device: str, dtype: torch.dtype, requests: list[SampleRequest]):
    image = load_bundle(root / "image", "image", device=device, dtype=dtype)
    audio = load_bundle(root / "audio", "audio", device=device, dtype=dtype)
    sampler = Sampler(image, audio, HiFiGANVocoder.from_bundle(audio))
    return sorted(sampler.generate(requests), key=lambda r: int(r.key))


def main() -> int:
    root = Path(tempfile.mkdtemp())
    write_tiny_models(root)
    base = SampleRequest(image_prompt="a castle", audio_prompt="bells", steps=10, image_start_step=3)
    requests = base.expand(3) + [
        SampleRequest(image_prompt="dogs", audio_prompt="barking", steps=7, seed=5, image_start_step=2)
    ]
    cpu = run(root, "cpu", torch.float32, requests)
    failures = 0
    # CUDA fp32 convolutions use TF32 by default (cuDNN), so fp32 is compared at 5e-3, not at CPU round-off.
    for dtype, tolerance in ((torch.float32, 5e-3), (torch.float16, 5e-2), (torch.bfloat16, 1e-1)):
        cuda = run(root, "cuda", dtype, requests)
        spec = max((a.spectrogram - b.spectrogram).abs().max().item() for a, b in zip(cpu, cuda))
        img = max((a.image - b.image).abs().max().item() for a, b in zip(cpu, cuda))
        finite = all(torch.isfinite(r.waveform).all() for r in cuda)
        ok = spec < tolerance and img < tolerance and finite
        failures += not ok
        print(
            f"cuda {dtype}: max |Δspectrogram| {spec:.2e}, max |Δimage| {img:.2e}, finite audio {finite} "
            f"-> {'ok' if ok else 'FAIL'} (tolerance {tolerance})",
            flush=True,
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
