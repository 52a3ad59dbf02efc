"""The `imgsound` command line: argument parsing, progress and error reporting over the library.

Every failure the user can cause ends with exit code 2 and one sentence on stderr (`imgsound: error: …`), never a
traceback; `IMGSOUND_DEBUG=1` shows the traceback.

One module per group of commands — generate, baselines (imprint, sds), evaluate (score, cycle-check), models
(tiny-models, download, convert), spectrograms (image-to-audio, audio-to-spectrogram), media (video, info,
gallery), colorize — each with a function that adds a command's parser and its handler `cmd_…(args)`; common holds
what they share. The modules import torch, diffusers and the models inside the handlers, so `imgsound --help` starts
fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from imgsound_core.cli import baselines, colorize, evaluate, generate, media, models, spectrograms
from imgsound_core.cli.common import EXIT_USAGE, CliError, Subparsers, quiet_libraries, quiet_libraries_on_import

__all__ = ["COMMANDS", "EXIT_USAGE", "CliError", "Command", "build_parser", "main", "quiet_libraries"]


@dataclass(frozen=True)
class Command:
    """One subcommand: the function that adds its parser to the subparsers, and the one that runs it."""

    add_parser: Callable[[Subparsers], None]
    run: Callable[[argparse.Namespace], None]


# In the order `imgsound --help` lists them.
COMMANDS: dict[str, Command] = {
    "generate": Command(generate.add_generate_parser, generate.cmd_generate),
    "imprint": Command(baselines.add_imprint_parser, baselines.cmd_imprint),
    "sds": Command(baselines.add_sds_parser, baselines.cmd_sds),
    "tiny-models": Command(models.add_tiny_models_parser, models.cmd_tiny_models),
    "download": Command(models.add_download_parser, models.cmd_download),
    "convert": Command(models.add_convert_parser, models.cmd_convert),
    "image-to-audio": Command(spectrograms.add_image_to_audio_parser, spectrograms.cmd_image_to_audio),
    "audio-to-spectrogram": Command(
        spectrograms.add_audio_to_spectrogram_parser, spectrograms.cmd_audio_to_spectrogram
    ),
    "score": Command(evaluate.add_score_parser, evaluate.cmd_score),
    "cycle-check": Command(evaluate.add_cycle_check_parser, evaluate.cmd_cycle_check),
    "video": Command(media.add_video_parser, media.cmd_video),
    "info": Command(media.add_info_parser, media.cmd_info),
    "gallery": Command(media.add_gallery_parser, media.cmd_gallery),
    "colorize": Command(colorize.add_colorize_parser, colorize.cmd_colorize),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgsound",
        description="Generate images that sound: spectrograms that look like a picture and play as natural audio.",
    )
    from imgsound_core import __version__

    parser.add_argument("--version", action="version", version=f"imgsound {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def as_flags(message: str, args: argparse.Namespace) -> str:
    """A request error names the request's fields (`image_prompt`, `steps`); on the command line the user typed
    flags, so each field the command has a flag for is named as that flag (`--image-prompt`, `--steps`)."""
    import re

    flags = {name: "--" + name.replace("_", "-") for name in vars(args) if not name.startswith("_")}
    return re.sub(
        r"\b[a-z]+(?:_[a-z]+)+\b|\b(?:steps|seed|height|width|ratio|crops)\b",
        lambda m: flags.get(m.group(0), m.group(0)),
        message,
    )


def console_main() -> NoReturn:
    """The `imgsound` command: `main()` with the arguments of the process, then its exit (`host.end_process`)."""
    from imgsound_core.host import end_process

    end_process(main())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.environ.get("IMGSOUND_DEBUG") and args.command != "download":  # downloads keep their progress bars
        quiet_libraries_on_import()
    from imgsound_core.host import keep_freed_memory
    from imgsound_core.models.errors import ModelMismatchError, ModelNotAvailableError
    from imgsound_core.request import RequestError

    keep_freed_memory()

    try:
        COMMANDS[args.command].run(args)
    except RequestError as error:
        if os.environ.get("IMGSOUND_DEBUG"):
            raise
        print(f"imgsound: error: {as_flags(str(error), args)}", file=sys.stderr)
        return EXIT_USAGE
    except (CliError, ModelNotAvailableError, ModelMismatchError, FileExistsError) as error:
        if os.environ.get("IMGSOUND_DEBUG"):
            raise
        print(f"imgsound: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as error:  # bad device/dtype strings and similar argument problems
        if os.environ.get("IMGSOUND_DEBUG"):
            raise
        print(f"imgsound: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("imgsound: interrupted; finished samples are complete, unfinished ones were not written", file=sys.stderr)
        return 130
    return 0
