"""`imgsound tiny-models`, `imgsound download` and `imgsound convert`: getting model weights onto disk in the layout
the loaders read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgsound_core.cli.common import CliError, Subparsers, add_if_model_args, add_model_args


def add_tiny_models_parser(sub: Subparsers) -> None:
    tiny = sub.add_parser(
        "tiny-models",
        help="write tiny random-weight models in the real on-disk formats (tests, demo)",
        description="Writes six tiny models with random weights, in exactly the on-disk formats of the real ones, "
        "so that every code path runs anywhere in seconds (their pictures and sounds are noise).",
    )
    tiny.add_argument(
        "dir",
        type=Path,
        help="writes DIR/image (SD-1.5 layout), DIR/audio (Auffusion layout, with its HiFi-GAN), DIR/clip and "
        "DIR/clap (the scorers) and DIR/if-stage-1, DIR/if-stage-2 (DeepFloyd IF, for colorize and sds)",
    )
    tiny.add_argument(
        "--seed", type=int, default=0, help="weights are a deterministic function of the seed [%(default)s]"
    )


def cmd_tiny_models(args: argparse.Namespace) -> None:
    from imgsound_core.models.tiny import write_tiny_models

    image, audio = write_tiny_models(args.dir, seed=args.seed)
    others = ", ".join(str(image.parent / name) for name in ("clip", "clap", "if-stage-1", "if-stage-2"))
    print(f"wrote {image}, {audio}, {others}", file=sys.stderr)


def add_download_parser(sub: Subparsers) -> None:
    download = sub.add_parser(
        "download",
        help="download the real weights from the Hugging Face hub (needs a network)",
        description="Downloads DIR/image and DIR/audio, then converts pickled weights to safetensors.",
    )
    download.add_argument("dir", type=Path)
    add_model_args(download, device=False)
    download.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) for both models")
    download.add_argument(
        "--deepfloyd",
        action="store_true",
        help="instead, download DeepFloyd IF stage I and II (for `colorize`; gated: accept the licence on both model "
        "pages and log in first) into DIR/if-stage-1 and DIR/if-stage-2",
    )
    add_if_model_args(download)
    download.add_argument(
        "--scorers",
        action="store_true",
        help="also download the CLIP and CLAP scorers (imgsound score, sweeps' scoring, Table 1) into DIR/clip and "
        "DIR/clap",
    )


def cmd_download(args: argparse.Namespace) -> None:
    from imgsound_core.models.deepfloyd import STAGE_FOLDERS, licence_note
    from imgsound_core.models.download import download_model, download_scorer
    from imgsound_core.scoring import CLAP_MODEL_ID, CLIP_MODEL_ID

    jobs = [("image", args.image_model), ("audio", args.audio_model)]
    if args.deepfloyd:
        print(f"note: {licence_note((args.stage_1_model, args.stage_2_model))}.", file=sys.stderr)
        jobs = [(STAGE_FOLDERS[1], args.stage_1_model), (STAGE_FOLDERS[2], args.stage_2_model)]
    for role, repo in jobs:
        target = args.dir / role
        print(f"downloading {repo} → {target}", file=sys.stderr)
        try:
            _, conversions = download_model(repo, target, revision=args.revision)
        except RuntimeError as error:
            raise CliError(str(error)) from None
        for conversion in conversions:
            if not conversion.skipped:
                print(f"converted {conversion.pickle_path} → {conversion.safetensors_path}", file=sys.stderr)
    if args.scorers:
        for name, repo in (("clip", CLIP_MODEL_ID), ("clap", CLAP_MODEL_ID)):
            print(f"downloading {repo} → {args.dir / name}", file=sys.stderr)
            try:
                download_scorer(repo, args.dir / name)
            except RuntimeError as error:
                raise CliError(str(error)) from None
        print(
            f"scorers: pass --clip-model {args.dir / 'clip'} --clap-model {args.dir / 'clap'}, or set "
            f"IMGSOUND_MODELS_DIR={args.dir} to keep using their hub ids"
        )
    if args.deepfloyd:
        print(f"done: pass --stage-1-model {args.dir / STAGE_FOLDERS[1]} --stage-2-model {args.dir / STAGE_FOLDERS[2]}")
        return
    print(f"done: pass --image-model {args.dir / 'image'} --audio-model {args.dir / 'audio'}")


def add_convert_parser(sub: Subparsers) -> None:
    convert = sub.add_parser(
        "convert",
        help="convert a model folder's pickled .bin weights to safetensors, once",
        description="Reads every pickled *.bin weights file under DIR with weights-only loading (plain tensors; "
        "anything else is refused), writes a safetensors copy beside it and checks that every tensor reads back "
        "identical. The loaders prefer the copy from then on, so the pickle is never opened again.",
    )
    convert.add_argument("dir", type=Path, help="a model folder (e.g. one `imgsound download` wrote)")


def cmd_convert(args: argparse.Namespace) -> None:
    from imgsound_core.models.convert import UnsafePickleError, convert_model_dir

    try:
        conversions = convert_model_dir(args.dir)
    except (FileNotFoundError, UnsafePickleError) as error:
        raise CliError(str(error)) from None
    if not conversions:
        print(f"no pickled weights found in {args.dir}")
    for conversion in conversions:
        state = "already converted" if conversion.skipped else f"{conversion.num_tensors} tensors"
        print(f"{conversion.pickle_path} → {conversion.safetensors_path} ({state})")
