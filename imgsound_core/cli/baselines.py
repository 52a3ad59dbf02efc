"""`imgsound imprint` and `imgsound sds`: the paper's two baselines, written in the same sample-folder layout as
`imgsound generate` so that scoring, videos and the gallery treat all three alike."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from imgsound_core.cli.common import (
    CliError,
    Subparsers,
    add_compile_arg,
    add_model_args,
    add_resume_arg,
    add_sample_args,
    atomic_write_bytes,
    check_out_folder,
    load_audio_bundle,
    load_vocoder,
    positive_int,
    remove_stale_samples,
    sample_folder,
    sample_targets,
    samples_to_make,
    warn_truncated_prompts,
)

# --- imprint --------------------------------------------------------------------------------------------------------


def add_imprint_parser(sub: Subparsers) -> None:
    imprint = sub.add_parser(
        "imprint",
        help="the imprint baseline: a picture and a spectrogram generated apart, the picture imprinted on it",
        description="The paper's imprint baseline: the image model alone makes a picture (--image-steps), the audio "
        "model alone a spectrogram (--audio-steps); the spectrogram is attenuated by the inverted grayscale picture, "
        "s·(1 − ρ·(1 − g)), and vocoded. Same output layout as generate, plus spectrogram_original.png.",
    )
    add_sample_args(imprint)
    imprint.add_argument("--image-steps", type=int, default=50, help="DDIM steps of the picture [%(default)s]")
    imprint.add_argument("--audio-steps", type=int, default=100, help="DDIM steps of the spectrogram [%(default)s]")
    imprint.add_argument("--image-guidance", type=float, default=7.5, help="image CFG scale [%(default)s]")
    imprint.add_argument("--audio-guidance", type=float, default=7.5, help="audio CFG scale [%(default)s]")
    imprint.add_argument("--ratio", type=float, default=0.5, help="ρ: the largest attenuation, in [0, 1] [%(default)s]")
    imprint.add_argument(
        "--no-invert", action="store_true", help="imprint the picture itself, not its inverse (bright attenuates)"
    )
    imprint.add_argument("--batch-size", type=positive_int, default=16, help="samples per UNet call [%(default)s]")
    add_resume_arg(imprint)
    add_model_args(imprint)
    add_compile_arg(imprint)


def cmd_imprint(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from imgsound_core.artifacts import render_artifacts, write_sample_dir
    from imgsound_core.identity import SampleContext, model_identity, sample_record
    from imgsound_core.imprint import ImprintRequest, ImprintSampler
    from imgsound_core.models.bundle import load_bundle, parse_device, parse_dtype
    from imgsound_core.request import RequestError, check_crop

    try:
        request = ImprintRequest(
            image_prompt=args.image_prompt,
            audio_prompt=args.audio_prompt,
            image_negative=args.image_negative,
            audio_negative=args.audio_negative,
            image_steps=args.image_steps,
            audio_steps=args.audio_steps,
            image_guidance=args.image_guidance,
            audio_guidance=args.audio_guidance,
            ratio=args.ratio,
            invert=not args.no_invert,
            seed=args.seed,
            height=args.height,
            width=args.width,
        )
        requests = request.expand(args.num_samples)
        check_crop(args.crop, request.width)
    except RequestError as error:
        raise CliError(str(error)) from None
    targets = sample_targets(args.out, len(requests), args.overwrite, args.resume)
    device, dtype = parse_device(args.device), parse_dtype(args.dtype)
    todo = samples_to_make(args, targets, requests, "imprint")
    if not todo:
        return
    image = load_bundle(args.image_model, "image", parts={"unet", "vae", "text"}, device=device, dtype=dtype)
    audio = load_audio_bundle(args.audio_model, args.vocoder, device, dtype)
    sampler = ImprintSampler(
        image, audio, load_vocoder(args.vocoder, audio_bundle=audio), args.batch_size, compile=args.compile
    )
    context = SampleContext(
        model_identity(image), model_identity(audio), args.dtype, args.vocoder, args.crop, method="imprint"
    )
    truncated = warn_truncated_prompts(request, image.tokenizer, audio.tokenizer)
    total = sum(requests[i].image_steps + requests[i].audio_steps for i in todo)
    with tqdm(total=total, unit="step", desc="imprint", disable=None, file=sys.stderr) as bar:
        for result in sampler.generate([requests[i] for i in todo], progress=bar.update):
            index = todo[int(result.key)]  # keys are positions in the list generated
            record = sample_record(
                result.request,
                context,
                sample_index=index,
                device=str(device),
                timings_s=result.timings_s,
                prompt_tokens_dropped=truncated,
            )
            artifacts = render_artifacts(
                result.image,
                result.spectrogram,
                result.waveform,
                record,
                crop=args.crop,
                extra_pictures={"spectrogram_original.png": result.original_spectrogram},
            )
            write_sample_dir(targets[index], artifacts, overwrite=args.overwrite or args.resume)
            bar.write(f"wrote {targets[index]}", file=sys.stderr)
    if args.overwrite:
        remove_stale_samples(args.out, len(requests))


# --- sds ------------------------------------------------------------------------------------------------------------


def add_sds_parser(sub: Subparsers) -> None:
    sds = sub.add_parser(
        "sds",
        help="the SDS baseline: one implicit picture optimised by IF (image) and Auffusion (audio) score distillation",
        description="The paper's SDS baseline: a Fourier-feature MLP picture optimised with AdamW by an image SDS "
        "loss (DeepFloyd IF stage I on random crops, guidance 80) and an audio SDS loss (Auffusion, guidance 10); "
        "audio alone for the first --image-start-step iterations. Writes OUT/sample_000/… like generate, with "
        "snapshots/ along the way and checkpoint.pt: run the same command again to resume an interrupted run.",
    )
    add_sample_args(
        sds,
        prior="prior",
        num_samples_help="samples, one after another [%(default)s]",
        overwrite_help="start finished samples in OUT again from scratch",
    )
    sds.add_argument("--iterations", type=int, default=40_000, help="optimisation steps [%(default)s]")
    sds.add_argument(
        "--image-start-step", type=int, default=5_000, help="iteration at which the image loss joins [%(default)s]"
    )
    sds.add_argument("--image-guidance", type=float, default=80.0, help="IF CFG scale [%(default)s]")
    sds.add_argument("--audio-guidance", type=float, default=10.0, help="Auffusion CFG scale [%(default)s]")
    sds.add_argument("--image-weight", type=float, default=0.4, help="weight of the image loss [%(default)s]")
    sds.add_argument("--audio-weight", type=float, default=1.0, help="weight of the audio loss [%(default)s]")
    sds.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate [%(default)s]")
    sds.add_argument("--channels", type=int, choices=(1, 3), default=1, help="picture channels [%(default)s]")
    sds.add_argument("--crops", type=positive_int, default=8, help="random crops per image-loss step [%(default)s]")
    sds.add_argument("--crop-size", type=positive_int, default=256, help="crop side in pixels [%(default)s]")
    sds.add_argument("--hidden", type=positive_int, default=256, help="MLP width [%(default)s]")
    sds.add_argument("--features", type=positive_int, default=128, help="Fourier features [%(default)s]")
    sds.add_argument(
        "--snapshot-every", type=int, default=10_000, help="write snapshots/step_N/ every N iterations; 0: never"
    )
    sds.add_argument("--checkpoint-every", type=positive_int, default=500, help="save checkpoint.pt every N iterations")
    add_model_args(sds, image=False)
    sds.add_argument(
        "--stage-1-model",
        default=os.environ.get("IMGSOUND_IF_STAGE_1_MODEL", "DeepFloyd/IF-I-M-v1.0"),
        help="folder or hub id of DeepFloyd IF stage I, the image prior (env IMGSOUND_IF_STAGE_1_MODEL) [%(default)s]",
    )


def cmd_sds(args: argparse.Namespace) -> None:
    from imgsound_core.identity import SampleContext, model_identity
    from imgsound_core.models.bundle import parse_device, parse_dtype
    from imgsound_core.models.deepfloyd import load_if_stage
    from imgsound_core.request import RequestError, check_crop
    from imgsound_core.sds import SDSRun, SDSSettings

    try:
        settings = [
            SDSSettings(
                image_prompt=args.image_prompt,
                audio_prompt=args.audio_prompt,
                image_negative=args.image_negative,
                audio_negative=args.audio_negative,
                iterations=args.iterations,
                image_start_step=args.image_start_step,
                image_guidance=args.image_guidance,
                audio_guidance=args.audio_guidance,
                image_weight=args.image_weight,
                audio_weight=args.audio_weight,
                learning_rate=args.lr,
                crops=args.crops,
                crop_size=args.crop_size,
                channels=args.channels,
                height=args.height,
                width=args.width,
                hidden=args.hidden,
                features=args.features,
                seed=args.seed + index,
            )
            for index in range(args.num_samples)
        ]
        check_crop(args.crop, args.width)
    except RequestError as error:
        raise CliError(str(error)) from None
    if args.snapshot_every < 0:
        raise CliError("--snapshot-every must be 0 (never) or a positive number of iterations")
    # Finished sample folders are skipped, not refused: an SDS run is resumed by running the same command again.
    check_out_folder(args.out)
    device, dtype = parse_device(args.device), parse_dtype(args.dtype)
    if_stage = load_if_stage(args.stage_1_model, 1, device=device, dtype=dtype)
    audio = load_audio_bundle(args.audio_model, args.vocoder, device, dtype)
    vocoder = load_vocoder(args.vocoder, audio_bundle=audio)
    context = SampleContext(
        model_identity(if_stage), model_identity(audio), args.dtype, args.vocoder, args.crop, method="sds"
    )

    for index, sample in enumerate(settings):
        _run_sds_sample(args, index, sample, SDSRun(sample, if_stage, audio, device=device), vocoder, context)


def _sds_artifacts(run, vocoder, record: dict[str, Any], crop: bool) -> dict[str, bytes]:
    """The run's current picture as a sample folder's files; its channel mean is the spectrogram that plays."""
    from imgsound_core.artifacts import render_artifacts

    return render_artifacts(*run.sample(vocoder), record, crop=crop)


def _run_sds_sample(args: argparse.Namespace, index: int, sample, run, vocoder, context) -> None:
    """One SDS sample in OUT/sample_<index>/: resumed from its checkpoint when one is there."""
    import shutil

    from tqdm import tqdm

    from imgsound_core.artifacts import write_sample_dir
    from imgsound_core.identity import sample_record

    folder = sample_folder(args.out, index)
    checkpoint = folder / "checkpoint.pt"
    if (folder / "sample.json").exists():
        if not args.overwrite:
            print(f"{folder} is finished; skipped (pass --overwrite to run it again)", file=sys.stderr)
            return
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if checkpoint.exists():
        try:
            run.load_checkpoint(checkpoint)
        except (ValueError, RuntimeError, KeyError, OSError) as error:
            raise CliError(
                f"{checkpoint} cannot resume this run ({str(error).splitlines()[0]}); use the same flags, "
                "another --out, or delete the folder"
            ) from None
        print(f"{folder}: resuming at iteration {run.step_index}", file=sys.stderr)
    record = sample_record(sample, context, sample_index=index, device=str(run.device))
    started = time.perf_counter()
    bar = tqdm(
        total=sample.iterations, initial=run.step_index, unit="it", desc=f"sds {index}", disable=None, file=sys.stderr
    )

    def after_step(step: int, losses: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
        if args.snapshot_every and step % args.snapshot_every == 0 and step < sample.iterations:
            snapshot = _sds_artifacts(run, vocoder, {**record, "iteration": step}, args.crop)
            write_sample_dir(folder / "snapshots" / f"step_{step:06d}", snapshot, overwrite=True)
        if step % args.checkpoint_every == 0 or step == sample.iterations:
            run.save_checkpoint(checkpoint)

    with bar:
        run.run(callback=after_step)
    record = sample_record(
        sample,
        context,
        sample_index=index,
        device=str(run.device),
        timings_s={"optimise": time.perf_counter() - started},
    )
    artifacts = _sds_artifacts(run, vocoder, {**record, "iteration": run.step_index}, args.crop)
    for name in [n for n in artifacts if n != "sample.json"] + ["sample.json"]:  # sample.json: finished
        atomic_write_bytes(folder / name, artifacts[name])
    print(f"wrote {folder}", file=sys.stderr)
