"""Samples per second: the reference code's loop shape against the batched core, same models, same process.

(a) official loop shape — one sample at a time; at every step one UNet call per active model on the CFG pair
    (batch 2), then combine and step;
(b) batched core — `Sampler.denoise` with `--batch` samples in flight, one UNet call per model per step on all
    of them (batch 2·B).

    python bench/bench_sampler.py                       # tiny models, CPU (writes them to a temp folder)
    python bench/bench_sampler.py --arch sd15 --device cuda --dtype fp16 --steps 100   # real SD-1.5 architecture,
                                                        # random weights, built from config: no download
    ... --compile --overlap                             # also compiled UNets, and the UNets on two CUDA streams

The batched measurements run eager UNets on one stream (`Sampler(compile=False)`) unless a flag asks otherwise:
`--compile` adds the compiled sampler the CLI uses on CUDA (batch buckets, warmed up first; the warm-up time is
reported as `first_run_s`), `--overlap` repeats each measurement with the two UNet calls of a step on two CUDA
streams (`Sampler(overlap_unets=True)`; identical to the plain run off CUDA).
Prints one JSON line per measurement and a final ratio; `--json PATH` also writes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgsound_core.composition import combine_eps, modality_weights  # noqa: E402
from imgsound_core.ddim import ddim_schedule, ddim_step  # noqa: E402
from imgsound_core.decode import decode_latents  # noqa: E402
from imgsound_core.models.bundle import DTYPES, ModelBundle, load_bundle  # noqa: E402
from imgsound_core.noise import initial_latents, latent_shape  # noqa: E402
from imgsound_core.request import SampleRequest  # noqa: E402
from imgsound_core.sampler import Sampler, predict_guided_eps  # noqa: E402


def sd15_bundle(role: str, device: torch.device, dtype: torch.dtype, seed: int) -> ModelBundle:
    """The real SD-1.5 UNet / VAE / CLIP ViT-L text architecture with random weights, built from config."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from imgsound_core.models.tiny import SD15_SCHEDULER_CONFIG, build_seeded, write_clip_tokenizer

    tokenizer_dir = Path(tempfile.mkdtemp()) / "tokenizer"
    vocab_size = write_clip_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )

    def on_device(factory):
        def build():
            with torch.device(device):  # initialise on the device: random init of 860M parameters is slow on a CPU
                return factory()

        return build

    unet = build_seeded(
        on_device(lambda: UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)),
        seed,
        device,
    )  # SD-1.5's UNet config
    vae = build_seeded(
        on_device(
            lambda: AutoencoderKL(
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                latent_channels=4,
                sample_size=512,
            )
        ),
        seed + 1,
        device,
    )
    text = build_seeded(on_device(lambda: CLIPTextModel(text_config)), seed + 2, device)
    unet, vae, text = (m.to(dtype=dtype).eval().requires_grad_(False) for m in (unet, vae, text))
    return ModelBundle(
        role=role,
        source="sd15-architecture-random",
        path=Path("."),
        device=device,
        dtype=dtype,
        scheduler_config=dict(SD15_SCHEDULER_CONFIG),
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def official_loop(sampler: Sampler, request: SampleRequest) -> torch.Tensor:
    """One sample, the reference code's shape: a CFG-pair UNet call per active model per step."""
    image, audio = sampler.image, sampler.audio
    schedule = ddim_schedule(sampler.scheduler_config, request.steps)
    device = image.unet.device
    latents = initial_latents([request.seed], latent_shape(request.height, request.width))[:1].to(device)
    one = lambda v, dt=torch.float32: torch.tensor([v], dtype=dt)  # noqa: E731
    img_cond, img_neg = (sampler.image_text.get([p]) for p in (request.image_prompt, request.image_negative))
    aud_cond, aud_neg = (sampler.audio_text.get([p]) for p in (request.audio_prompt, request.audio_negative))
    for k in range(request.steps):
        t = schedule.timesteps[k : k + 1]
        w_img, w_aud = modality_weights(
            one(k, torch.int64),
            one(request.image_start_step, torch.int64),
            one(request.audio_start_step, torch.int64),
            one(request.audio_weight),
        )
        eps_img = eps_aud = None
        if w_img.item() != 0:
            eps_img = predict_guided_eps(image.unet, latents, t, img_cond, img_neg, one(request.image_guidance))
        if w_aud.item() != 0:
            eps_aud = predict_guided_eps(audio.unet, latents, t, aud_cond, aud_neg, one(request.audio_guidance))
        eps = combine_eps(eps_img, eps_aud, w_img, w_aud)
        latents = ddim_step(latents, eps, schedule.alpha_bar_t[k : k + 1], schedule.alpha_bar_prev[k : k + 1])
    return latents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--models", type=Path, default=None, help="tiny-models folder (default: write to a temp dir)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, nargs="+", default=[16], help="batched sizes to measure")
    parser.add_argument("--official-samples", type=int, default=2, help="samples timed in the official loop shape")
    parser.add_argument("--decode", action="store_true", help="also time VAE decodes (both VAEs)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time compiled UNets (imgsound_core.compile: batch buckets, channels-last on CUDA), after a warm-up",
    )
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="also time every batched run with the two UNets of a step on two CUDA streams (overlap_unets)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.arch == "tiny":
        from imgsound_core.models.tiny import write_tiny_models

        root = args.models or Path(tempfile.mkdtemp())
        if not (root / "image").is_dir():
            write_tiny_models(root)
        image = load_bundle(root / "image", "image", parts={"unet", "vae", "text"}, device=device, dtype=dtype)
        audio = load_bundle(root / "audio", "audio", parts={"unet", "vae", "text"}, device=device, dtype=dtype)
    else:
        image = sd15_bundle("image", device, dtype, seed=0)
        audio = sd15_bundle("audio", device, dtype, seed=10)

    results: list[dict] = []

    def report(entry: dict) -> None:
        entry = {"arch": args.arch, "device": str(device), "dtype": args.dtype, "steps": args.steps, **entry}
        if device.type == "cuda":
            entry["gpu"] = torch.cuda.get_device_name(device)
        results.append(entry)
        print(json.dumps(entry), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))

    base = SampleRequest(
        image_prompt="a painting of castle towers, grayscale",
        audio_prompt="bell ringing",
        steps=args.steps,
        image_start_step=min(10, args.steps),
    )
    sampler = Sampler(image, audio, vocoder=None, max_batch_samples=max(args.batch), compile=False)  # type: ignore[arg-type]

    # Warm-up: kernels, allocator, text cache.
    official_loop(sampler, base.with_seed(10_000)) if args.steps <= 20 else official_loop(
        sampler, SampleRequest(**{**base.to_dict(), "steps": 5, "image_start_step": 1})
    )
    sync(device)

    t0 = time.perf_counter()
    for i in range(args.official_samples):
        official_loop(sampler, base.with_seed(i))
    sync(device)
    official_s = (time.perf_counter() - t0) / args.official_samples
    report({"shape": "official", "batch": 1, "s_per_sample": official_s, "samples_per_s": 1 / official_s})

    def time_batched(run_sampler: Sampler, shape: str, batch: int, **extra) -> float:
        run_sampler.max_batch_samples = batch
        requests = base.expand(batch)
        t0 = time.perf_counter()
        list(run_sampler.denoise(requests))
        sync(device)
        per = (time.perf_counter() - t0) / batch
        report(
            {
                "shape": shape,
                "batch": batch,
                "s_per_sample": per,
                "samples_per_s": 1 / per,
                "speedup_vs_official": official_s / per,
                **extra,
            }
        )
        return per

    overlapped = None
    if args.overlap:
        overlapped = Sampler(image, audio, None, max(args.batch), compile=False, overlap_unets=True)  # type: ignore[arg-type]
        overlapped.image_text, overlapped.audio_text = sampler.image_text, sampler.audio_text  # warm text cache
    best = None
    for batch in args.batch:
        sampler.max_batch_samples = batch
        list(sampler.denoise(base.expand(batch)[: min(batch, 2)]))  # warm-up at this shape's neighbours
        sync(device)
        per = time_batched(sampler, "batched", batch)
        best = per if best is None else min(best, per)
        if overlapped is not None:
            time_batched(overlapped, "batched+overlap", batch, streams_used=overlapped.overlap_unets)

    if args.decode:
        latents = torch.randn(4, *latent_shape(base.height, base.width), device=device)
        for vae_name, bundle in (("image_vae", image), ("audio_vae", audio)):
            decode_latents(bundle.vae, latents[:1])
            sync(device)
            for n in (1, 4):
                t0 = time.perf_counter()
                decode_latents(bundle.vae, latents[:n], batch_size=n)
                sync(device)
                report({"shape": f"{vae_name}_decode", "batch": n, "s_per_sample": (time.perf_counter() - t0) / n})

    if args.compile:
        # Last: on CUDA, compiling puts the UNets' weights in channels-last format, in place.
        batch = max(args.batch)
        compiled = Sampler(image, audio, None, batch, compile=True)  # type: ignore[arg-type]
        compiled.image_text, compiled.audio_text = sampler.image_text, sampler.audio_text
        t0 = time.perf_counter()
        compiled.warm_up(base.height, base.width)  # every bucket up to `batch`, both UNets
        sync(device)
        compile_s = time.perf_counter() - t0
        time_batched(compiled, "batched+compile", batch, first_run_s=compile_s)
        if args.overlap:
            both = Sampler(image, audio, None, batch, compile=True, overlap_unets=True)  # type: ignore[arg-type]
            both.image_text, both.audio_text = sampler.image_text, sampler.audio_text
            both.warm_up(base.height, base.width)  # the same graphs: found in dynamo's and inductor's caches
            sync(device)
            time_batched(both, "batched+compile+overlap", batch, streams_used=both.overlap_unets)

    print(
        f"ratio batched/official: {official_s / best:.2f}x "
        f"({official_s:.3f} vs {best:.3f} s/sample, {args.steps} steps, {args.arch}, {device}, {args.dtype})"
    )


if __name__ == "__main__":
    main()
