"""What the `imgsound` commands share: the usage exit code and `CliError`, argument helpers, sample folders on disk,
atomic writes and vocoder loading.

Everything heavy (torch, diffusers, PIL, the library's own models) is imported inside the functions, so that building
the parser for `imgsound --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_USAGE = 2

# argparse's subparsers object, which each command module adds its parser to; its class is private.
Subparsers = argparse._SubParsersAction


class CliError(Exception):
    """A user-facing failure: printed as one sentence, exit code 2."""


# --- arguments ------------------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """argparse type of counts and sizes: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def dtype_arg(text: str) -> str:
    """argparse type of --dtype: fp32, fp16, bf16, or torch's own names for them (float32, float16, bfloat16)."""
    from imgsound_core.identity import dtype_name  # the one spelling sample ids use

    name = dtype_name(text.lower())
    if name not in ("fp32", "fp16", "bf16"):
        raise argparse.ArgumentTypeError(f"expected fp32, fp16 or bf16 (or float32, float16, bfloat16), got {text!r}")
    return name


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype of the commands that load weights."""
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 … [%(default)s]")
    parser.add_argument(
        "--dtype",
        default="fp32",
        type=dtype_arg,
        help="weights dtype: fp32, fp16 or bf16 (float32, float16, bfloat16 also accepted) [%(default)s]",
    )


def add_model_args(
    parser: argparse.ArgumentParser, image: bool = True, audio: bool = True, device: bool = True
) -> None:
    """--image-model and/or --audio-model (defaults from the environment), then (unless `device` is false, for
    commands that only fetch files) --device and --dtype."""
    from imgsound_core.defaults import DEFAULT_AUDIO_MODEL, DEFAULT_IMAGE_MODEL

    if image:
        parser.add_argument(
            "--image-model",
            default=os.environ.get("IMGSOUND_IMAGE_MODEL", DEFAULT_IMAGE_MODEL),
            help="folder or hub id of the image model (SD-1.5 layout; env IMGSOUND_IMAGE_MODEL) [%(default)s]",
        )
    if audio:
        parser.add_argument(
            "--audio-model",
            default=os.environ.get("IMGSOUND_AUDIO_MODEL", DEFAULT_AUDIO_MODEL),
            help="folder or hub id of the audio model (Auffusion layout; env IMGSOUND_AUDIO_MODEL) [%(default)s]",
        )
    if device:
        add_device_args(parser)


def add_compile_arg(parser: argparse.ArgumentParser) -> None:
    """--compile / --no-compile of the commands that denoise with the two UNets (default: by device)."""
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the two UNets: batches are padded to buckets of 1, 2, 4, 8, … samples so that each "
        "compiles once per picture size; the first run compiles (minutes for SD-1.5, seconds once the kernels are "
        "cached in IMGSOUND_CACHE_DIR/torch-compile), then every step is faster. Same samples, same sample ids "
        "[default: on with a CUDA --device, off on the CPU, where it needs a C++ compiler and rarely pays]",
    )


def add_if_model_args(parser: argparse.ArgumentParser) -> None:
    """--stage-1-model and --stage-2-model: the two DeepFloyd IF stages (defaults from the environment)."""
    from imgsound_core.defaults import DEFAULT_IF_STAGE_1, DEFAULT_IF_STAGE_2

    parser.add_argument(
        "--stage-1-model",
        default=os.environ.get("IMGSOUND_IF_STAGE_1_MODEL", DEFAULT_IF_STAGE_1),
        help="folder or hub id of DeepFloyd IF stage I (env IMGSOUND_IF_STAGE_1_MODEL) [%(default)s]",
    )
    parser.add_argument(
        "--stage-2-model",
        default=os.environ.get("IMGSOUND_IF_STAGE_2_MODEL", DEFAULT_IF_STAGE_2),
        help="folder or hub id of DeepFloyd IF stage II (env IMGSOUND_IF_STAGE_2_MODEL) [%(default)s]",
    )


def add_sample_args(
    parser: argparse.ArgumentParser,
    *,
    prior: str = "model",
    num_samples_help: str = "samples to generate [%(default)s]",
    width_help: str = "pixels; multiple of 8 [%(default)s]",
    vocoder_help: str = "spectrogram → audio: hifigan (Auffusion's, from the audio model's vocoder/) or griffinlim (no "
    "weights) [%(default)s]",
    crop_help: str = "drop the last 32 columns, as the paper does",
    overwrite_help: str = "replace sample folders that already exist in OUT",
) -> None:
    """The flags of every command that makes samples (generate, imprint, sds): the two prompts and their negatives,
    seed, number of samples, size, vocoder, crop, --overwrite and --out.

    The defaults are `SampleRequest`'s; the keyword arguments are the help texts that differ between commands
    (`prior` names what the negative prompts steer: the image/audio "model" or "prior").
    """
    from imgsound_core.request import SampleRequest

    defaults = SampleRequest(image_prompt="-", audio_prompt="-")
    parser.add_argument("--image-prompt", required=True, help="what the spectrogram should look like")
    parser.add_argument("--audio-prompt", required=True, help="what it should sound like")
    parser.add_argument("--image-negative", default="", help=f"negative prompt of the image {prior} ['']")
    parser.add_argument("--audio-negative", default="", help=f"negative prompt of the audio {prior} ['']")
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of sample 0; sample i uses seed+i [%(default)s]"
    )
    parser.add_argument("--num-samples", type=positive_int, default=1, help=num_samples_help)
    parser.add_argument("--height", type=int, default=defaults.height, help="pixels; multiple of 8 [%(default)s]")
    parser.add_argument("--width", type=int, default=defaults.width, help=width_help)
    parser.add_argument("--vocoder", choices=("hifigan", "griffinlim"), default="hifigan", help=vocoder_help)
    parser.add_argument("--crop", action="store_true", help=crop_help)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--out", required=True, type=Path, help="output folder")


# --- sample folders -------------------------------------------------------------------------------------------------


def sample_folder(out: Path, index: int) -> Path:
    """Where sample `index` of a run into OUT goes."""
    return out / f"sample_{index:03d}"


def check_writable_location(path: Path, flag: str, folder: bool = True) -> None:
    """Refuses, before any work, an output location that cannot be written: an existing thing of the wrong kind, a
    path under a file, or a folder this user may not write into (checked on the nearest folder that exists)."""
    if path.exists():
        if folder and not path.is_dir():
            raise CliError(f"{flag} {path} exists and is not a folder")
        if not folder and path.is_dir():
            raise CliError(f"{flag} {path} is a folder; give a file name")
    parent = path if folder and path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CliError(f"{flag} {path} cannot be written: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"{flag} {path} cannot be written: {parent} is not writable by this user")


def check_out_folder(out: Path) -> None:
    """Refuses an --out that exists and is not a folder, or that cannot be created or written."""
    check_writable_location(out, "--out")


def check_output_file(path: Path, overwrite: bool, flag: str = "the output") -> None:
    """Refuses an output file that exists (without --overwrite) or cannot be written; before any work."""
    check_writable_location(path, flag, folder=False)
    if path.exists() and not overwrite:
        raise CliError(f"{path} already exists; choose another name or pass --overwrite")


def warn_truncated_prompts(request, image_tokenizer, audio_tokenizer) -> dict[str, int]:
    """Say once, on stderr, which prompts are too long for their text encoder and how much of each is ignored;
    returns `{field: tokens dropped}` for the records."""
    from imgsound_core.text import prompt_truncation, truncation_warning

    truncated = prompt_truncation(request, image_tokenizer, audio_tokenizer)
    for field, dropped in truncated.items():
        tokenizer = image_tokenizer if field.startswith("image") else audio_tokenizer
        flag = "--" + field.replace("_", "-")
        print(
            f"imgsound: warning: {truncation_warning(field, dropped, tokenizer.model_max_length, flag)}",
            file=sys.stderr,
        )
    return truncated


def remove_stale_samples(out: Path, count: int) -> None:
    """After an --overwrite run of `count` samples: remove the earlier run's sample folders beyond them."""
    import shutil

    for folder in stale_sample_folders(out, count):
        shutil.rmtree(folder)
        print(f"removed {folder} (from an earlier run)", file=sys.stderr)


def stale_sample_folders(out: Path, count: int) -> list[Path]:
    """Sample folders of an earlier run into OUT beyond the `count` this run writes (what --overwrite removes, so
    that OUT holds one run's samples, not a mix)."""
    if not out.is_dir():
        return []
    found = []
    for path in out.iterdir():
        index = path.name.removeprefix("sample_")
        if path.is_dir() and path.name.startswith("sample_") and index.isdigit() and int(index) >= count:
            found.append(path)
    return sorted(found)


def sample_targets(out: Path, count: int, overwrite: bool, resume: bool = False) -> list[Path]:
    """The folders of `count` new samples in OUT; checked before any model loads, so that a run never spends
    minutes loading weights only to refuse its output folder."""
    if resume and overwrite:
        raise CliError("--resume keeps finished samples and --overwrite replaces them: pass one of them")
    targets = [sample_folder(out, index) for index in range(count)]
    check_out_folder(out)
    existing = [target for target in targets if target.exists()]
    if existing and not (overwrite or resume):
        raise CliError(
            f"{existing[0]} already exists; pass --resume to keep the finished samples and make the rest, "
            "--overwrite to replace them, or choose another --out"
        )
    return targets


def add_resume_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the sample folders in OUT that hold exactly the sample this command would make (same id: same "
        "request, models, dtype, vocoder, crop) and make only the missing ones, e.g. after Ctrl-C",
    )


def samples_to_make(args: argparse.Namespace, targets: list[Path], requests: list, method: str) -> list[int]:
    """The indices of the samples this run must make: all of them, or with --resume those whose folder does not
    already hold this very sample (identified from the model folders, before any weights load)."""
    if not args.resume:
        return list(range(len(requests)))
    from imgsound_core.identity import SampleContext, identify_source

    planned = SampleContext(
        identify_source(args.image_model, "image"),
        identify_source(args.audio_model, "audio"),
        args.dtype,
        args.vocoder,
        args.crop,
        method=method,
    )
    finished = finished_samples(targets, requests, planned)
    if finished:
        print(f"resuming: {len(finished)} of {len(requests)} samples are finished and kept", file=sys.stderr)
    return [index for index in range(len(requests)) if index not in finished]


def finished_samples(targets: list[Path], requests: list, context) -> set[int]:
    """With --resume: the indices whose folder already holds this very sample (its sample.json's id is the one this
    run would give it). A folder holding another sample is refused rather than kept or replaced."""
    import json

    from imgsound_core.identity import sample_id

    done = set()
    for index, (target, request) in enumerate(zip(targets, requests)):
        if not (target / "sample.json").is_file():
            continue
        try:
            found = json.loads((target / "sample.json").read_text()).get("sample_id")
        except (OSError, ValueError, AttributeError):
            found = None
        if found != sample_id(request, context):
            raise CliError(
                f"{target} holds another sample (other settings or models than this command's); pass --overwrite "
                "to replace it, or choose another --out"
            )
        done.add(index)
    return done


def sample_dirs(root: Path) -> list[Path]:
    """Every sample folder (one holding sample.json) under `root`, sorted."""
    if not root.is_dir():
        raise CliError(f"{root} is not a folder")
    folders = sorted({p.parent for p in root.rglob("sample.json")})
    if not folders:
        raise CliError(f"{root} holds no sample folders (none has a sample.json)")
    return folders


def named_sample_dirs(paths: list[Path]) -> list[Path]:
    """SAMPLE_DIR arguments → sample folders: a folder holding sample.json is one; any other folder stands for the
    sample folders under it."""
    folders: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise CliError(f"{path} is not a folder")
        folders += [path] if (path / "sample.json").is_file() else sample_dirs(path)
    return folders


def read_sample(folder: Path):
    """A sample folder's record, its spectrogram.png as float32 in [0, 1], and its audio.wav with the sample rate."""
    import json

    import numpy as np
    import soundfile
    from PIL import Image

    try:
        record = json.loads((folder / "sample.json").read_text())
        with Image.open(folder / "spectrogram.png") as picture:
            gray = np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
        waveform, rate = soundfile.read(folder / "audio.wav", dtype="float32")
    except (OSError, ValueError, RuntimeError) as error:
        raise CliError(f"{folder} is not a complete sample folder ({error})") from None
    return record, gray, waveform, rate


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same folder: an interrupted run leaves no half file."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    from imgsound_core.modes import umask_mode

    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temp, umask_mode())  # mkstemp makes it 0600; the file gets the mode any new file would
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def update_record(folder: Path, record: dict, updates: dict) -> None:
    """Rewrites the folder's sample.json as `record` with `updates` merged in."""
    import json

    atomic_write_bytes(
        folder / "sample.json", (json.dumps({**record, **updates}, indent=2, sort_keys=True) + "\n").encode()
    )


# --- models and runs ------------------------------------------------------------------------------------------------


def load_audio_bundle(model: str, vocoder: str, device, dtype):
    """The audio model's UNet, VAE and text encoder, and its HiFi-GAN only when --vocoder hifigan needs it."""
    from imgsound_core.models.bundle import audio_parts, load_bundle

    return load_bundle(model, "audio", parts=audio_parts(vocoder), device=device, dtype=dtype)


def load_vocoder(name: str, audio_bundle=None, audio_model: str | None = None, device: str = "cpu"):
    """Griffin-Lim, or HiFi-GAN: the loaded audio bundle's, else the one of `audio_model` (the default model's)."""
    from imgsound_core.audio.vocoder import GriffinLimVocoder, HiFiGANVocoder

    if name == "griffinlim":
        return GriffinLimVocoder()
    if audio_bundle is not None:
        return HiFiGANVocoder.from_bundle(audio_bundle)
    from imgsound_core.models.bundle import DEFAULT_AUDIO_MODEL, load_bundle

    bundle = load_bundle(audio_model or DEFAULT_AUDIO_MODEL, "audio", parts={"vocoder"}, device=device)
    return HiFiGANVocoder(bundle.vocoder, device=bundle.device)


def summary(name: str, values: list[float]) -> str:
    """`values`' mean with a 95% confidence interval, both ×100, the way the paper reports scores."""
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    margin = 1.96 * array.std() / np.sqrt(len(array)) if len(array) > 1 else 0.0
    return f"{name} {100 * array.mean():.1f} ± {100 * margin:.1f} (×100, 95% CI, n={len(array)})"


def quiet_libraries_on_import() -> None:
    """What `quiet_libraries` does, through the variables the libraries read when they are first imported: free,
    so that a command that stops at a bad argument never imports them at all."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def quiet_libraries() -> None:
    """diffusers/transformers log load-time chatter (and their own progress bars) that users cannot act on."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging_module in (diffusers_logging, transformers_logging):
        logging_module.set_verbosity_error()
        logging_module.disable_progress_bar()
