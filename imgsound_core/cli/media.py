"""`imgsound video`, `imgsound info` and `imgsound gallery`: ways to look at and listen to finished samples."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from imgsound_core.cli.common import CliError, Subparsers, atomic_write_bytes, named_sample_dirs, positive_int


def add_video_parser(sub: Subparsers) -> None:
    from imgsound_core.video import DEFAULT_FPS, LAYOUTS, MAX_FPS

    video = sub.add_parser(
        "video",
        help="render sample folders as MP4 videos: the picture, a playhead crossing it, and the sound",
        description="The paper's video layout: on a white frame, the image prompt above, the picture, the audio "
        "prompt below, and a vertical playhead that crosses the picture in exactly the audio's duration. H.264 + "
        "AAC in an MP4 that browsers and phones play. A SAMPLE_DIR holding sample.json is one sample; any other "
        "folder stands for every sample folder under it.",
    )
    video.add_argument("dirs", nargs="+", type=Path, metavar="SAMPLE_DIR")
    video.add_argument(
        "--out", type=Path, default=None, help="output .mp4, for a single sample only [SAMPLE_DIR/video.mp4]"
    )
    video.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="spectrogram",
        help="what the playhead crosses: spectrogram.png, image.png, or the image over the spectrogram [%(default)s]",
    )
    video.add_argument(
        "--captions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="print the image prompt above and the audio prompt below [on]",
    )
    video.add_argument(
        "--fps",
        type=positive_int,
        default=DEFAULT_FPS,
        help=f"frames per second, at most {MAX_FPS} (the paper uses 60) [%(default)s]",
    )
    video.add_argument("--overwrite", action="store_true", help="replace video files that already exist")


def cmd_video(args: argparse.Namespace) -> None:
    from imgsound_core.video import MAX_FPS, VideoError, render_sample_dir_video, required_files

    if args.fps > MAX_FPS:
        raise CliError(f"--fps must be at most {MAX_FPS}, got {args.fps}")
    folders = named_sample_dirs(args.dirs)
    if args.out is not None:
        if len(folders) != 1:
            raise CliError(
                f"--out names one video but {len(folders)} sample folders were given; omit --out to write "
                "video.mp4 into each"
            )
        if args.out.suffix.lower() != ".mp4":
            raise CliError(f"{args.out} must end in .mp4")
        targets = [args.out]
    else:
        targets = [folder / "video.mp4" for folder in folders]
    # Every input is checked before the first video is encoded, so a bad folder stops the run up front.
    for folder in folders:
        for name in required_files(args.layout):
            if not (folder / name).is_file():
                raise CliError(f"the sample folder {folder} has no {name}")
    existing = [target for target in targets if target.exists()]
    if existing and not args.overwrite:
        raise CliError(f"{existing[0]} already exists; pass --overwrite to replace it")
    for folder, target in zip(folders, targets, strict=True):
        t0 = time.perf_counter()
        try:
            data = render_sample_dir_video(folder, layout=args.layout, captions=args.captions, fps=args.fps)
        except VideoError as error:
            raise CliError(str(error)) from None
        atomic_write_bytes(target, data)
        print(f"wrote {target} (took {time.perf_counter() - t0:.1f} s)", file=sys.stderr)


def add_info_parser(sub: Subparsers) -> None:
    info = sub.add_parser(
        "info",
        help="show the provenance stored inside generated PNG and WAV files",
        description="Prints the text chunks of a PNG or the RIFF INFO fields of a WAV, and the imgsound "
        "provenance (prompts, seed, steps, guidance, models, mel settings, sample id) they carry.",
    )
    info.add_argument("files", nargs="+", type=Path, metavar="FILE")
    info.add_argument("--json", action="store_true", help="print a JSON list, one object per file")


def cmd_info(args: argparse.Namespace) -> None:
    import json

    from imgsound_core.provenance import ProvenanceError, describe_metadata, read_file_metadata

    try:
        entries = [read_file_metadata(path) for path in args.files]
    except ProvenanceError as error:
        raise CliError(str(error)) from None
    if args.json:
        print(json.dumps(entries, indent=2, ensure_ascii=False))
        return
    print("\n\n".join(describe_metadata(entry) for entry in entries))


def add_gallery_parser(sub: Subparsers) -> None:
    gallery = sub.add_parser(
        "gallery",
        help="write a static web page to look at, listen to, sort and pick samples",
        description="SOURCE is an `imgsound generate` output folder (for a sweep or a server's output store: "
        "`python -m jobs.gallery SOURCE --out DIR`, the same page). Writes DIR/index.html, "
        "which opens from disk or any static host: thumbnails and copies of every picture, spectrogram and sound, "
        "grouped by prompt pair, sorted and filtered by CLIP/CLAP score, with favourites exported as a JSON list "
        "of sample ids.",
    )
    gallery.add_argument("source", metavar="SOURCE", help="an `imgsound generate` output folder")
    gallery.add_argument("--out", required=True, type=Path, metavar="DIR", help="the site's folder")
    gallery.add_argument("--overwrite", action="store_true", help="replace DIR if an earlier gallery is there")
    gallery.add_argument("--page-size", type=positive_int, default=50, metavar="N", help="cards per page [%(default)s]")


def cmd_gallery(args: argparse.Namespace) -> None:
    from imgsound_core.gallery import GalleryError, check_target, collect_samples, default_title, write_gallery

    try:
        check_target(args.out, args.overwrite)  # before reading a large source, not after
        samples = collect_samples(args.source)
        built = write_gallery(samples, args.out, default_title(args.source), args.page_size, args.overwrite)
    except GalleryError as error:
        raise CliError(str(error)) from None
    print(built.summary)
