"""`imgsound generate`: the paper's method, both diffusion models denoising one latent, into sample folders."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from imgsound_core.cli.common import (
    CliError,
    Subparsers,
    add_compile_arg,
    add_model_args,
    add_resume_arg,
    add_sample_args,
    load_audio_bundle,
    load_vocoder,
    positive_int,
    remove_stale_samples,
    sample_targets,
    samples_to_make,
    warn_truncated_prompts,
)


def add_generate_parser(sub: Subparsers) -> None:
    from imgsound_core.request import SampleRequest

    defaults = SampleRequest(image_prompt="-", audio_prompt="-")
    gen = sub.add_parser(
        "generate",
        help="generate samples (picture, spectrogram, audio) from an image prompt and an audio prompt",
        description="Multimodal denoising: both diffusion models denoise one latent together. Writes "
        "OUT/sample_000/, OUT/sample_001/, … each with image.png, spectrogram.png, spectrogram.npy, audio.wav "
        "and sample.json.",
    )
    add_sample_args(
        gen,
        width_help="pixels (100 columns = 1 s); multiple of 8 [%(default)s]",
        vocoder_help="spectrogram → audio [%(default)s]",
        crop_help="drop the last 32 columns (0.32 s) of pictures and audio, as the paper does",
    )
    gen.add_argument("--steps", type=int, default=defaults.steps, help="DDIM steps [%(default)s]")
    gen.add_argument(
        "--image-guidance", type=float, default=defaults.image_guidance, help="image CFG scale [%(default)s]"
    )
    gen.add_argument(
        "--audio-guidance", type=float, default=defaults.audio_guidance, help="audio CFG scale [%(default)s]"
    )
    gen.add_argument(
        "--image-start-step",
        type=int,
        default=None,
        help="first step at which the image model contributes (warm start) [10%% of --steps, rounded: 10 at 100 "
        "steps, 2 at 20; 0 when --audio-start-step is set]",
    )
    gen.add_argument(
        "--audio-start-step",
        type=int,
        default=defaults.audio_start_step,
        help="first step at which the audio model contributes [%(default)s]",
    )
    gen.add_argument(
        "--audio-weight",
        type=float,
        default=defaults.audio_weight,
        help="weight w of the audio estimate when both are active: (1-w)·ε_image + w·ε_audio [%(default)s]",
    )
    gen.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="samples denoised together in one UNet call per model [%(default)s]",
    )
    gen.add_argument(
        "--video",
        action="store_true",
        help="also write video.mp4 in each sample folder: the spectrogram with a playhead, the sound and the prompts "
        "(`imgsound video` offers other layouts)",
    )
    add_init_args(gen)
    add_resume_arg(gen)
    add_model_args(gen)
    add_compile_arg(gen)


def add_init_args(parser: argparse.ArgumentParser) -> None:
    """--init-image, --init-audio and --strength: start from a picture and/or a sound (SDEdit)."""
    from imgsound_core.request import DEFAULT_INIT_STRENGTH

    parser.add_argument(
        "--init-image",
        type=Path,
        default=None,
        metavar="PICTURE",
        help="start from this picture (PNG, JPEG, WebP, GIF, BMP, TIFF): made grayscale, resized to exactly "
        "--height × --width (LANCZOS), encoded by the image model's VAE, noised to the first step that --strength "
        "leaves, then denoised by both models",
    )
    parser.add_argument(
        "--init-audio",
        type=Path,
        default=None,
        metavar="SOUND",
        help="start from this sound (WAV, FLAC, OGG, MP3): mono, 16 kHz, cut or padded with silence to --width/100 "
        "seconds, turned into Auffusion's log-mel picture and encoded by the audio model's VAE. With --init-image "
        "too, the two latents are mixed as the estimates are: (1 - --audio-weight)·picture + --audio-weight·sound",
    )
    parser.add_argument(
        "--strength",
        type=float,
        default=None,
        help="share of the schedule re-run from the source, 0 < s <= 1: the sample starts at step "
        "steps - round(s·steps) (at least one step is run); 1 is pure noise and ignores the source "
        f"[{DEFAULT_INIT_STRENGTH:g} with a source, else 1]",
    )


def read_init_sources(args: argparse.Namespace) -> dict[str, tuple[Path, bytes]]:
    """The source files named by --init-image / --init-audio: `{"image"|"audio": (path, bytes)}`, read (and their
    size checked) before anything else; a missing or oversized file is a `CliError`."""
    from imgsound_core.init_source import InitSourceError, read_source_file

    found = {}
    for kind, path in (("image", args.init_image), ("audio", args.init_audio)):
        if path is None:
            continue
        try:
            found[kind] = (path, read_source_file(path, f"--init-{kind} {path}"))
        except InitSourceError as error:
            raise CliError(str(error)) from None
    return found


def init_strength(args: argparse.Namespace, has_source: bool) -> float:
    """--strength as given, or its default: `DEFAULT_INIT_STRENGTH` with a source, 1 without."""
    from imgsound_core.request import DEFAULT_INIT_STRENGTH

    strength = args.strength
    if strength is None:
        return DEFAULT_INIT_STRENGTH if has_source else 1.0
    if not 0.0 < strength <= 1.0:  # NaN fails too
        raise CliError(f"--strength must be more than 0 and at most 1, got {strength:g}")
    if strength < 1.0 and not has_source:
        raise CliError(
            f"--strength {strength:g} re-runs part of the schedule from a source: give --init-image or --init-audio"
        )
    return strength


def cmd_generate(args: argparse.Namespace) -> None:
    # Everything the user typed is checked before torch and the models are imported, let alone loaded (a source
    # sound's mel picture is the exception: it needs torch, but only once the file has been read and decoded).
    from imgsound_core.init_source import InitSourceError, load_init_audio, load_init_image, source_sha256
    from imgsound_core.request import SampleRequest, check_crop

    files = read_init_sources(args)
    strength = init_strength(args, bool(files))
    request = SampleRequest(
        image_prompt=args.image_prompt,
        audio_prompt=args.audio_prompt,
        image_negative=args.image_negative,
        audio_negative=args.audio_negative,
        steps=args.steps,
        image_guidance=args.image_guidance,
        audio_guidance=args.audio_guidance,
        image_start_step=args.image_start_step,
        audio_start_step=args.audio_start_step,
        audio_weight=args.audio_weight,
        seed=args.seed,
        height=args.height,
        width=args.width,
        init_image_sha256=source_sha256(files["image"][1]) if "image" in files else None,
        init_audio_sha256=source_sha256(files["audio"][1]) if "audio" in files else None,
        strength=strength,
    )
    requests = request.expand(args.num_samples)
    check_crop(args.crop, request.width)
    targets = sample_targets(args.out, len(requests), args.overwrite, args.resume)
    sources = {}
    try:
        if "image" in files:
            path, data = files["image"]
            sources["image"] = load_init_image(data, request.height, request.width, name=f"--init-image {path}")
        if "audio" in files:
            path, data = files["audio"]
            sources["audio"] = load_init_audio(data, request.width, request.height, name=f"--init-audio {path}")
    except InitSourceError as error:
        raise CliError(str(error)) from None

    from tqdm import tqdm

    from imgsound_core.artifacts import render_artifacts, write_sample_dir
    from imgsound_core.background import InOrderWorker
    from imgsound_core.identity import SampleContext, model_identity, sample_record
    from imgsound_core.models.bundle import load_bundle, parse_device, parse_dtype
    from imgsound_core.sampler import Sampler
    from imgsound_core.video import VideoError

    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype)
    todo = samples_to_make(args, targets, requests, "denoise")
    if not todo:
        return
    # Said once everything has been checked, so that a refusal stays one line.
    for source in sources.values():
        if source.note:
            print(f"imgsound: {source.note}", file=sys.stderr)
    if sources and request.strength == 1.0:
        flags = " and ".join(f"--init-{kind}" for kind in sources)
        print(
            f"imgsound: warning: --strength 1 starts from pure noise, so {flags} is ignored: the samples and their "
            "ids are those of plain generation",
            file=sys.stderr,
        )

    t0 = time.perf_counter()
    image = load_bundle(args.image_model, "image", parts={"unet", "vae", "text"}, device=device, dtype=dtype)
    audio = load_audio_bundle(args.audio_model, args.vocoder, device, dtype)
    vocoder = load_vocoder(args.vocoder, audio_bundle=audio)
    load_s = time.perf_counter() - t0
    sampler = Sampler(image, audio, vocoder, max_batch_samples=args.batch_size, compile=args.compile)
    context = SampleContext(model_identity(image), model_identity(audio), args.dtype, args.vocoder, args.crop)
    truncated = warn_truncated_prompts(request, image.tokenizer, audio.tokenizer)
    init = None
    if request.strength < 1.0:
        # One clean latent for every sample of the request; each sample noises it with its own seed's ε.
        clean = sampler.source_latent(
            image=sources["image"].pixels() if "image" in sources else None,
            audio=sources["audio"].pixels() if "audio" in sources else None,
            audio_weight=request.audio_weight,
        )
        init = [clean] * len(todo)

    total = sum(requests[i].steps_to_run for i in todo)
    finishing = "decoding, vocoding, writing" + (", video" if args.video else "")

    def write(index: int, result) -> int:
        """Encode and write one sample (on the writer thread, while the next samples denoise)."""
        record = sample_record(
            result.request,
            context,
            sample_index=index,
            device=str(device),
            timings_s={**result.timings_s, "model_load": load_s},
            prompt_tokens_dropped=truncated,
        )
        try:
            artifacts = render_artifacts(
                result.image, result.spectrogram, result.waveform, record, crop=args.crop, video=args.video
            )
        except VideoError as error:
            raise CliError(f"the video of sample {index} failed: {error}") from None
        write_sample_dir(targets[index], artifacts, overwrite=args.overwrite or args.resume)
        return index

    with (
        tqdm(total=total, unit="step", desc="denoising", disable=None, file=sys.stderr, position=0) as bar,
        tqdm(total=len(todo), unit="sample", desc=finishing, disable=None, file=sys.stderr, position=1) as done,
        # Files are encoded and written on one thread, in order, while the accelerator goes on denoising; at most
        # a decode batch and two more samples wait there, so memory stays bounded.
        InOrderWorker(max_pending=sampler.decode_batch_size + 2) as writer,
    ):

        def wrote(index: int) -> None:
            bar.write(f"wrote {targets[index]}", file=sys.stderr)
            done.update(1)

        for result in sampler.generate([requests[i] for i in todo], progress=bar.update, init=init):
            writer.submit(write, todo[int(result.key)], result, then=wrote)  # keys: positions in the list generated
    if args.overwrite:
        remove_stale_samples(args.out, len(requests))
