"""CUDA checks of the core on tiny models; prints max differences and exits non-zero on a failure.

    python bench/gpu_check.py      # needs a CUDA GPU

1. The same samples on CPU fp32 and on CUDA fp32, fp16 and bf16 (the whole loop on the device).
2. HiFi-GAN on the GPU (fp32, fp16) against the CPU float32 vocoder, on the same spectrograms: max |Δ| of the
   waveforms and their correlation.
3. Compiled UNets (`Sampler(compile=True)`, warmed up) against eager ones on CUDA: max |Δ| of the samples, and
   how many graphs dynamo compiled after the warm-up (should be 0: the batch buckets cover every step).
4. The two UNet calls of a step on two CUDA streams (`overlap_unets=True`) against one stream.

Tolerances: CUDA fp32 convolutions use TF32 by default (cuDNN), so fp32 is compared at 5e-3, not at CPU
round-off; fp16 at 5e-2, bf16 at 1e-1. Compiled-vs-eager and overlap-vs-not use the same per-dtype tolerances.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgsound_core.audio.vocoder import HiFiGANVocoder, spectrogram_to_waveform  # noqa: E402
from imgsound_core.models.bundle import load_bundle  # noqa: E402
from imgsound_core.models.tiny import write_tiny_models  # noqa: E402
from imgsound_core.request import SampleRequest  # noqa: E402
from imgsound_core.sampler import Sampler, SampleResult  # noqa: E402

TOLERANCE = {torch.float32: 5e-3, torch.float16: 5e-2, torch.bfloat16: 1e-1}
# Waveform correlation with the CPU float32 vocoder below which the GPU vocoder fails.
MIN_VOCODER_CORRELATION = {torch.float32: 0.999, torch.float16: 0.99}
# The compile check's largest batch: buckets 1, 2, 4 samples (the requests below never batch more).
COMPILE_MAX_SAMPLES = 4


def requests() -> list[SampleRequest]:
    """Four samples: three of one request (batched together) and one with other steps, seed and warm start."""
    base = SampleRequest(image_prompt="a castle", audio_prompt="bells", steps=10, image_start_step=3)
    return base.expand(3) + [
        SampleRequest(image_prompt="dogs", audio_prompt="barking", steps=7, seed=5, image_start_step=2)
    ]


def make_sampler(root: Path, device: str, dtype: torch.dtype, **options) -> Sampler:
    """A Sampler on freshly loaded bundles (compiling puts CUDA weights in channels-last format, in place)."""
    image = load_bundle(root / "image", "image", device=device, dtype=dtype)
    audio = load_bundle(root / "audio", "audio", device=device, dtype=dtype)
    return Sampler(image, audio, HiFiGANVocoder.from_bundle(audio), **options)


def generate(sampler: Sampler, batch: list[SampleRequest]) -> list[SampleResult]:
    return sorted(sampler.generate(batch), key=lambda r: int(r.key))


def max_difference(first: list[SampleResult], second: list[SampleResult]) -> tuple[float, float]:
    """(max |Δspectrogram|, max |Δimage|) over paired samples."""
    spec = max((a.spectrogram - b.spectrogram).abs().max().item() for a, b in zip(first, second))
    image = max((a.image - b.image).abs().max().item() for a, b in zip(first, second))
    return spec, image


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two flattened tensors (float64)."""
    stacked = torch.stack([a.flatten().double(), b.flatten().double()])
    return float(torch.corrcoef(stacked)[0, 1])


def check_devices(root: Path, cpu: list[SampleResult], device: str) -> int:
    """Section 1: failures of CUDA fp32 / fp16 / bf16 against the CPU fp32 samples."""
    failures = 0
    for dtype, tolerance in TOLERANCE.items():
        cuda = generate(make_sampler(root, device, dtype, compile=False), requests())
        spec, img = max_difference(cpu, cuda)
        finite = all(bool(torch.isfinite(r.waveform).all()) for r in cuda)
        ok = spec < tolerance and img < tolerance and finite
        failures += not ok
        print(
            f"{device} {dtype}: max |Δspectrogram| {spec:.2e}, max |Δimage| {img:.2e}, finite audio {finite} "
            f"-> {'ok' if ok else 'FAIL'} (tolerance {tolerance})",
            flush=True,
        )
    return failures


def check_vocoder(root: Path, spectrograms: torch.Tensor, device: str) -> int:
    """Section 2: HiFi-GAN on `device` (fp32, fp16) against the CPU float32 HiFi-GAN on `spectrograms` `(B, H, W)`."""
    cpu_vocoder = HiFiGANVocoder.from_bundle(load_bundle(root / "audio", "audio", parts={"vocoder"}))
    reference = spectrogram_to_waveform(spectrograms, cpu_vocoder)  # (B, W·160) float32
    failures = 0
    for dtype, minimum in MIN_VOCODER_CORRELATION.items():
        bundle = load_bundle(root / "audio", "audio", parts={"vocoder"}, device=device, dtype=dtype)
        vocoder = HiFiGANVocoder.from_bundle(bundle)
        waveforms = spectrogram_to_waveform(spectrograms.to(device), vocoder)
        delta = (waveforms - reference).abs().max().item()
        worst = min(correlation(a, b) for a, b in zip(waveforms, reference))
        finite = bool(torch.isfinite(waveforms).all())
        ok = finite and worst >= minimum
        failures += not ok
        print(
            f"vocoder {device} {dtype} vs cpu float32: max |Δwaveform| {delta:.2e} (peak {reference.abs().max():.2e}), "
            f"min correlation {worst:.6f}, finite {finite} -> {'ok' if ok else 'FAIL'} (correlation ≥ {minimum})",
            flush=True,
        )
    return failures


def check_compiled(root: Path, device: str, dtype: torch.dtype) -> int:
    """Section 3: compiled UNets (warmed up) against eager ones; no graph may be compiled after the warm-up."""
    from torch._dynamo.utils import counters

    eager = generate(make_sampler(root, device, dtype, compile=False), requests())
    compiled_sampler = make_sampler(root, device, dtype, compile=True, max_batch_samples=COMPILE_MAX_SAMPLES)
    compiled_sampler.warm_up(requests()[0].height, requests()[0].width)
    graphs_before = counters["stats"]["unique_graphs"]
    compiled = generate(compiled_sampler, requests())
    recompiled = counters["stats"]["unique_graphs"] - graphs_before
    spec, img = max_difference(eager, compiled)
    tolerance = TOLERANCE[dtype]
    ok = spec < tolerance and img < tolerance and recompiled == 0
    print(
        f"compiled vs eager {device} {dtype}: max |Δspectrogram| {spec:.2e}, max |Δimage| {img:.2e}, graphs compiled "
        f"after warm-up {recompiled} -> {'ok' if ok else 'FAIL'} (tolerance {tolerance}, 0 graphs)",
        flush=True,
    )
    return int(not ok)


def check_overlap(root: Path, device: str, dtype: torch.dtype) -> int:
    """Section 4: the two UNets of a step on two CUDA streams against one stream."""
    serial = generate(make_sampler(root, device, dtype, compile=False), requests())
    overlapped_sampler = make_sampler(root, device, dtype, compile=False, overlap_unets=True)
    overlapped = generate(overlapped_sampler, requests())
    spec, img = max_difference(serial, overlapped)
    tolerance = TOLERANCE[dtype]
    ok = spec < tolerance and img < tolerance and overlapped_sampler.overlap_unets
    print(
        f"overlapped vs serial UNets {device} {dtype}: max |Δspectrogram| {spec:.2e}, max |Δimage| {img:.2e}, "
        f"streams used {overlapped_sampler.overlap_unets} -> {'ok' if ok else 'FAIL'} (tolerance {tolerance})",
        flush=True,
    )
    return int(not ok)


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp())
    write_tiny_models(root)
    cpu = generate(make_sampler(root, "cpu", torch.float32), requests())
    failures = check_devices(root, cpu, "cuda")
    failures += check_vocoder(root, torch.stack([r.spectrogram for r in cpu]), "cuda")
    failures += check_compiled(root, "cuda", torch.float16)
    failures += check_overlap(root, "cuda", torch.float16)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
