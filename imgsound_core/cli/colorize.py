"""`imgsound colorize`: colour pictures for finished samples with DeepFloyd IF, keeping each image.png's grayscale."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from imgsound_core.cli.common import (
    CliError,
    Subparsers,
    add_device_args,
    add_if_model_args,
    atomic_write_bytes,
    named_sample_dirs,
    positive_int,
    update_record,
)

MAX_COLORIZE_PROMPT_CHARS = 500  # the server's prompt limit; IF reads 77 T5 tokens at most anyway


def add_colorize_parser(sub: Subparsers) -> None:
    colorize = sub.add_parser(
        "colorize",
        help="colorize samples' pictures with DeepFloyd IF: color.png keeps image.png's grayscale",
        description="Factorized diffusion: IF (stage I at a quarter size, then stage II at full size) makes up only "
        "the colour; at every step the sample's luminance is replaced by the noised luminance of image.png, so the "
        "channel mean of color.png equals image.png's. Writes color.png next to image.png and records the "
        "parameters in sample.json. A SAMPLE_DIR holding sample.json is one sample; any other folder stands for "
        "every sample folder under it.",
    )
    colorize.add_argument("dirs", nargs="+", type=Path, metavar="SAMPLE_DIR")
    colorize.add_argument("--prompt", required=True, help='e.g. "a colorful photo of a castle with bell towers"')
    colorize.add_argument("--negative-prompt", default="", help="text of the unconditional branch ['']")
    colorize.add_argument("--steps", type=positive_int, default=30, help="DDPM steps of each stage [%(default)s]")
    colorize.add_argument(
        "--start-step",
        type=int,
        default=7,
        help="stage I starts at this step from the picture's grey (0: from pure noise) [%(default)s]",
    )
    colorize.add_argument("--guidance", type=float, default=10.0, help="CFG scale of both stages [%(default)s]")
    colorize.add_argument(
        "--noise-level", type=int, default=50, help="noise level of stage II's upscaled input [%(default)s]"
    )
    colorize.add_argument("--seed", type=int, default=0, help="seed of every sample's colorization [%(default)s]")
    colorize.add_argument(
        "--batch-size", type=positive_int, default=4, help="pictures colorized together [%(default)s]"
    )
    colorize.add_argument("--overwrite", action="store_true", help="replace color.png where it exists")
    colorize.add_argument(
        "--video",
        action="store_true",
        help="also write video_color.mp4: the colour picture over the spectrogram, one playhead across both",
    )
    add_if_model_args(colorize)
    add_device_args(colorize)


def _read_colorize_input(folder: Path):
    """A sample folder's record and its image.png as `(3, H, W)` float32 in [0, 1]."""
    import json

    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    picture_path = folder / "image.png"
    if not picture_path.is_file():
        raise CliError(f"the sample folder {folder} has no image.png to colorize")
    try:
        record = json.loads((folder / "sample.json").read_text())
        with Image.open(picture_path) as picture:
            pixels = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError, UnidentifiedImageError) as error:
        raise CliError(f"{folder} is not a readable sample folder ({str(error).splitlines()[0][:200]})") from None
    return record, torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def cmd_colorize(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from imgsound_core.artifacts import png_bytes
    from imgsound_core.colorize import ColorizeSettings, check_picture_size, colorize
    from imgsound_core.identity import utc_now
    from imgsound_core.models.bundle import parse_device, parse_dtype
    from imgsound_core.models.deepfloyd import load_if_stage

    prompt = args.prompt.strip()
    if not prompt:
        raise CliError('--prompt is empty; describe the colours, e.g. --prompt "a colorful photo of kittens"')
    if len(prompt) > MAX_COLORIZE_PROMPT_CHARS:
        raise CliError(f"--prompt is {len(prompt)} characters long; at most {MAX_COLORIZE_PROMPT_CHARS} are allowed")
    try:
        settings = ColorizeSettings(
            steps=args.steps,
            guidance_scale=args.guidance,
            start_step=args.start_step,
            noise_level=args.noise_level,
            negative_prompt=args.negative_prompt,
        )
    except ValueError as error:
        raise CliError(str(error)) from None
    folders = named_sample_dirs(args.dirs)
    inputs = {folder: _read_colorize_input(folder) for folder in folders}
    if args.video:
        for folder in folders:
            for name in ("spectrogram.png", "audio.wav"):
                if not (folder / name).is_file():
                    raise CliError(f"the sample folder {folder} has no {name} for --video")
    existing = [folder / "color.png" for folder in folders if (folder / "color.png").exists()]
    if existing and not args.overwrite:
        raise CliError(f"{existing[0]} already exists; pass --overwrite to replace it")
    device, dtype = parse_device(args.device), parse_dtype(args.dtype)

    t0 = time.perf_counter()
    stage_1 = load_if_stage(args.stage_1_model, 1, device=device, dtype=dtype)
    stage_2 = load_if_stage(args.stage_2_model, 2, device=device, dtype=dtype)
    load_s = time.perf_counter() - t0
    for folder, (_, picture) in inputs.items():  # every picture is checked before the first is colorized
        try:
            check_picture_size(stage_1, stage_2, *picture.shape[1:])
        except ValueError as error:
            raise CliError(f"{folder / 'image.png'}: {error}") from None

    # Pictures of one size are colorized together, `--batch-size` at a time.
    by_size: dict[tuple[int, ...], list[Path]] = {}
    for folder, (_, picture) in inputs.items():
        by_size.setdefault(tuple(picture.shape), []).append(folder)
    batches = [
        group[i : i + args.batch_size] for group in by_size.values() for i in range(0, len(group), args.batch_size)
    ]
    context = {
        "prompt": prompt,
        **settings.to_dict(),
        "seed": args.seed,
        "stage_1_model": stage_1.describe(),
        "stage_2_model": stage_2.describe(),
        "device": str(device),
        "dtype": args.dtype,
        "output": "color.png",
    }
    steps_per_picture = 2 * settings.steps - settings.start_step
    with tqdm(
        total=len(folders) * steps_per_picture, unit="step", desc="colorizing", disable=None, file=sys.stderr
    ) as bar:
        for batch in batches:
            t1 = time.perf_counter()
            pictures = torch.stack([inputs[folder][1] for folder in batch])
            colored = colorize(
                stage_1, stage_2, pictures, [prompt] * len(batch), [args.seed] * len(batch), settings, bar.update
            )
            seconds = (time.perf_counter() - t1) / len(batch)
            for folder, picture in zip(batch, colored, strict=True):
                atomic_write_bytes(folder / "color.png", png_bytes(picture))
                if args.video:  # the paper's colour layout: two rows, picture over spectrogram
                    from imgsound_core.video import render_video

                    sample = inputs[folder][0]
                    video = render_video(
                        picture,
                        (folder / "spectrogram.png").read_bytes(),
                        (folder / "audio.wav").read_bytes(),
                        sample.get("image_prompt"),
                        sample.get("audio_prompt"),
                        layout="both",
                    )
                    atomic_write_bytes(folder / "video_color.mp4", video)
                record = {
                    **context,
                    "timings_s": {"colorize": seconds, "model_load": load_s},
                    "created_utc": utc_now(),
                }
                update_record(folder, inputs[folder][0], {"colorization": record})
                bar.write(f"wrote {folder / 'color.png'}", file=sys.stderr)
