"""The `imgsound` command line: argument parsing, progress and error reporting over the library.

Every failure the user can cause ends with exit code 2 and one sentence on stderr (`imgsound: error: …`), never a
traceback; `IMGSOUND_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing failure: printed as one sentence, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_model_args(parser: argparse.ArgumentParser, image: bool = True, audio: bool = True) -> None:
    from imgsound_core.models.bundle import DEFAULT_AUDIO_MODEL, DEFAULT_IMAGE_MODEL

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
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 … [%(default)s]")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="weights dtype [%(default)s]")


def build_parser() -> argparse.ArgumentParser:
    from imgsound_core.request import SampleRequest
    from imgsound_core.scoring import CLAP_MODEL_ID, CLIP_MODEL_ID

    defaults = SampleRequest(image_prompt="-", audio_prompt="-")
    parser = argparse.ArgumentParser(
        prog="imgsound",
        description="Generate images that sound: spectrograms that look like a picture and play as natural audio.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="generate samples (picture, spectrogram, audio) from an image prompt and an audio prompt",
        description="Multimodal denoising: both diffusion models denoise one latent together. Writes "
        "OUT/sample_000/, OUT/sample_001/, … each with image.png, spectrogram.png, spectrogram.npy, audio.wav "
        "and sample.json.",
    )
    gen.add_argument("--image-prompt", required=True, help="what the spectrogram should look like")
    gen.add_argument("--audio-prompt", required=True, help="what it should sound like")
    gen.add_argument("--image-negative", default="", help="negative prompt of the image model ['']")
    gen.add_argument("--audio-negative", default="", help="negative prompt of the audio model ['']")
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
        default=defaults.image_start_step,
        help="first step at which the image model contributes (warm start) [%(default)s]",
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
        "--seed", type=int, default=defaults.seed, help="seed of sample 0; sample i uses seed+i [%(default)s]"
    )
    gen.add_argument("--num-samples", type=_positive_int, default=1, help="samples to generate [%(default)s]")
    gen.add_argument(
        "--batch-size",
        type=_positive_int,
        default=16,
        help="samples denoised together in one UNet call per model [%(default)s]",
    )
    gen.add_argument("--height", type=int, default=defaults.height, help="pixels; multiple of 8 [%(default)s]")
    gen.add_argument(
        "--width", type=int, default=defaults.width, help="pixels (100 columns = 1 s); multiple of 8 [%(default)s]"
    )
    gen.add_argument(
        "--vocoder", choices=("hifigan", "griffinlim"), default="hifigan", help="spectrogram → audio [%(default)s]"
    )
    gen.add_argument(
        "--crop", action="store_true", help="drop the last 32 columns (0.32 s) of pictures and audio, as the paper does"
    )
    gen.add_argument("--overwrite", action="store_true", help="replace sample folders that already exist in OUT")
    gen.add_argument("--out", required=True, type=Path, help="output folder")
    _add_model_args(gen)

    tiny = sub.add_parser(
        "tiny-models", help="write tiny random-weight models in the real on-disk formats (tests, demo)"
    )
    tiny.add_argument("dir", type=Path, help="writes DIR/image (SD-1.5 layout) and DIR/audio (Auffusion layout)")
    tiny.add_argument(
        "--seed", type=int, default=0, help="weights are a deterministic function of the seed [%(default)s]"
    )

    download = sub.add_parser(
        "download",
        help="download the real weights from the Hugging Face hub (needs a network)",
        description="Downloads DIR/image and DIR/audio, then converts pickled weights to safetensors.",
    )
    download.add_argument("dir", type=Path)
    _add_model_args(download)
    download.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) for both models")

    convert = sub.add_parser("convert", help="convert a model folder's pickled .bin weights to safetensors, once")
    convert.add_argument("dir", type=Path)

    i2a = sub.add_parser(
        "image-to-audio",
        help="play any picture as a spectrogram (no diffusion)",
        description="The picture is made grayscale, resized to 256 rows (row 0 = 8 kHz, bottom = 0 Hz), "
        "read as a normalised log-mel spectrogram (bright = loud) and vocoded.",
    )
    i2a.add_argument("image", type=Path)
    i2a.add_argument("out", type=Path, help="output .wav (16 kHz)")
    i2a.add_argument("--vocoder", choices=("griffinlim", "hifigan"), default="griffinlim", help="[%(default)s]")
    i2a.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="duration; default keeps the picture's aspect ratio at 256 rows (100 columns per second)",
    )
    i2a.add_argument("--invert", action="store_true", help="dark = loud instead of bright = loud")
    i2a.add_argument("--audio-model", default=None, help="Auffusion-layout folder or hub id (for --vocoder hifigan)")
    i2a.add_argument("--device", default="cpu")

    a2s = sub.add_parser(
        "audio-to-spectrogram",
        help="Auffusion's mel front end: a sound file → spectrogram picture",
        description="Reads any sound file (mixed to mono, resampled to 16 kHz) and writes the 256-row "
        "normalised log-mel picture the models work in.",
    )
    a2s.add_argument("wav", type=Path)
    a2s.add_argument("out", type=Path, help="output .png")
    a2s.add_argument("--npy", type=Path, default=None, help="also write the float32 [0,1] spectrogram as .npy")
    score = sub.add_parser(
        "score",
        help="CLIP and CLAP scores of generated samples, written into their sample.json",
        description="Scores every sample folder under DIR (those holding sample.json): CLIP on "
        "spectrogram.png against the image prompt, CLAP on audio.wav against the audio prompt.",
    )
    score.add_argument("dir", type=Path)
    score.add_argument("--clip-model", default=os.environ.get("IMGSOUND_CLIP_MODEL", CLIP_MODEL_ID))
    score.add_argument("--clap-model", default=os.environ.get("IMGSOUND_CLAP_MODEL", CLAP_MODEL_ID))
    score.add_argument("--device", default="cpu")

    cycle = sub.add_parser(
        "cycle-check",
        help="re-encode each sample's audio and compare it with its spectrogram",
        description="The vocoder cycle check: audio.wav → Auffusion's mel front end → compared "
        "with spectrogram.png (mean absolute difference and correlation), written into sample.json.",
    )
    cycle.add_argument("dir", type=Path)
    return parser


def _sample_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise CliError(f"{root} is not a folder")
    folders = sorted({p.parent for p in root.rglob("sample.json")})
    if not folders:
        raise CliError(f"{root} holds no sample folders (none has a sample.json)")
    return folders


def _read_sample(folder: Path):
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


def _update_record(folder: Path, record: dict, updates: dict) -> None:
    import json

    _atomic_write_bytes(
        folder / "sample.json", (json.dumps({**record, **updates}, indent=2, sort_keys=True) + "\n").encode()
    )


def _summary(name: str, values: list[float]) -> str:
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    margin = 1.96 * array.std() / np.sqrt(len(array)) if len(array) > 1 else 0.0
    return f"{name} {100 * array.mean():.1f} ± {100 * margin:.1f} (×100, 95% CI, n={len(array)})"


def cmd_score(args: argparse.Namespace) -> None:
    import torch

    from imgsound_core.scoring import ClapScorer, ClipScorer

    folders = _sample_dirs(args.dir)
    try:
        clip = ClipScorer(args.clip_model, device=args.device)
        clap = ClapScorer(args.clap_model, device=args.device)
    except OSError as error:
        raise CliError(
            f"a scoring model could not be loaded ({str(error).splitlines()[0][:200]}); pass "
            f"--clip-model/--clap-model folders (`imgsound tiny-models` writes tiny ones)"
        ) from None
    clip_scores, clap_scores = [], []
    for folder in folders:
        record, gray, waveform, rate = _read_sample(folder)
        clip_score = clip.score([torch.from_numpy(gray)], [record["image_prompt"]])[0]
        clap_score = clap.score([waveform], rate, [record["audio_prompt"]])[0]
        _update_record(
            folder,
            record,
            {
                "clip_score": clip_score,
                "clap_score": clap_score,
                "scorers": {"clip": args.clip_model, "clap": args.clap_model},
            },
        )
        clip_scores.append(clip_score)
        clap_scores.append(clap_score)
        print(f"{folder}: clip {clip_score:.4f} clap {clap_score:.4f}")
    print(_summary("CLIP", clip_scores))
    print(_summary("CLAP", clap_scores))


def cmd_cycle_check(args: argparse.Namespace) -> None:
    from imgsound_core.scoring import cycle_consistency

    correlations = []
    for folder in _sample_dirs(args.dir):
        record, gray, waveform, rate = _read_sample(folder)
        if rate != 16000:
            raise CliError(f"{folder / 'audio.wav'} is {rate} Hz; the cycle check needs the 16 kHz generated audio")
        result = cycle_consistency(gray, waveform)
        _update_record(folder, record, {"cycle_check": result})
        correlations.append(result["correlation"])
        print(f"{folder}: correlation {result['correlation']:.3f}, mean |Δ| {result['mae']:.3f}")
    print(f"mean correlation {sum(correlations) / len(correlations):.3f} over {len(correlations)} samples")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _load_vocoder(name: str, audio_bundle=None, audio_model: str | None = None, device: str = "cpu"):
    from imgsound_core.audio.vocoder import GriffinLimVocoder, HiFiGANVocoder

    if name == "griffinlim":
        return GriffinLimVocoder()
    if audio_bundle is not None:
        return HiFiGANVocoder(
            audio_bundle.vocoder, device=audio_bundle.device, dtype=next(audio_bundle.vocoder.parameters()).dtype
        )
    from imgsound_core.models.bundle import DEFAULT_AUDIO_MODEL, load_bundle

    bundle = load_bundle(audio_model or DEFAULT_AUDIO_MODEL, "audio", parts={"vocoder"}, device=device)
    return HiFiGANVocoder(bundle.vocoder, device=bundle.device)


def _versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    from imgsound_core import __version__

    return {
        "imgsound": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def cmd_generate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from imgsound_core.artifacts import render_artifacts, write_sample_dir
    from imgsound_core.models.bundle import load_bundle, parse_device, parse_dtype
    from imgsound_core.request import SampleRequest
    from imgsound_core.sampler import Sampler

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
    )
    requests = request.expand(args.num_samples)
    targets = [args.out / f"sample_{i:03d}" for i in range(len(requests))]
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} exists and is not a folder")
    existing = [t for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise CliError(f"{existing[0]} already exists; choose another --out or pass --overwrite")
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype)

    t0 = time.perf_counter()
    image = load_bundle(args.image_model, "image", parts={"unet", "vae", "text"}, device=device, dtype=dtype)
    audio_parts = {"unet", "vae", "text"} | ({"vocoder"} if args.vocoder == "hifigan" else set())
    audio = load_bundle(args.audio_model, "audio", parts=audio_parts, device=device, dtype=dtype)
    vocoder = _load_vocoder(args.vocoder, audio_bundle=audio)
    load_s = time.perf_counter() - t0
    sampler = Sampler(image, audio, vocoder, max_batch_samples=args.batch_size)
    context = {"image_model": image.describe(), "audio_model": audio.describe(), "vocoder": args.vocoder}
    versions = _versions()

    total = sum(r.steps for r in requests)
    with tqdm(total=total, unit="step", desc="denoising", disable=None, file=sys.stderr) as bar:
        for result in sampler.generate(requests, progress=bar.update):
            index = int(result.key)
            req = result.request
            record: dict[str, Any] = {
                **req.to_dict(),
                "sample_id": req.sample_id({k: v for k, v in context.items()}),
                "sample_index": index,
                **context,
                "device": str(device),
                "dtype": args.dtype,
                "timings_s": {**result.timings_s, "model_load": load_s},
                "versions": versions,
                "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            artifacts = render_artifacts(result.image, result.spectrogram, result.waveform, record, crop=args.crop)
            write_sample_dir(targets[index], artifacts, overwrite=args.overwrite)
            bar.write(f"wrote {targets[index]}", file=sys.stderr)


def cmd_tiny_models(args: argparse.Namespace) -> None:
    from imgsound_core.models.tiny import write_tiny_models

    image, audio = write_tiny_models(args.dir, seed=args.seed)
    print(f"wrote {image}, {audio}, {image.parent / 'clip'} and {image.parent / 'clap'}")


def cmd_download(args: argparse.Namespace) -> None:
    from imgsound_core.models.download import download_model

    for role, repo in (("image", args.image_model), ("audio", args.audio_model)):
        target = args.dir / role
        print(f"downloading {repo} → {target}", file=sys.stderr)
        try:
            _, conversions = download_model(repo, target, revision=args.revision)
        except RuntimeError as error:
            raise CliError(str(error)) from None
        for conversion in conversions:
            if not conversion.skipped:
                print(f"converted {conversion.pickle_path} → {conversion.safetensors_path}", file=sys.stderr)
    print(f"done: pass --image-model {args.dir / 'image'} --audio-model {args.dir / 'audio'}")


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


def _read_picture(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise CliError(f"{path} is not a readable file")
    try:
        with Image.open(path) as picture:
            return picture.convert("L")
    except (UnidentifiedImageError, OSError):
        raise CliError(f"{path} is not a picture PIL can read") from None


def cmd_image_to_audio(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from imgsound_core.artifacts import wav_bytes
    from imgsound_core.audio.mel import N_MELS
    from imgsound_core.audio.vocoder import spectrogram_to_waveform

    if args.out.suffix.lower() != ".wav":
        raise CliError(f"{args.out} must end in .wav")
    gray = _read_picture(args.image)
    if args.seconds is not None:
        if not 0.01 <= args.seconds <= 600:
            raise CliError("--seconds must be between 0.01 and 600")
        columns = round(args.seconds * 100)
    else:
        columns = max(1, round(gray.width * N_MELS / gray.height))
    pixels = np.asarray(gray.resize((columns, N_MELS), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    spectrogram = torch.from_numpy(pixels)
    if args.invert:
        spectrogram = 1.0 - spectrogram
    vocoder = _load_vocoder(args.vocoder, audio_model=args.audio_model, device=args.device)
    waveform = spectrogram_to_waveform(spectrogram[None], vocoder)[0]
    _atomic_write_bytes(args.out, wav_bytes(waveform))
    print(f"wrote {args.out} ({waveform.shape[-1] / 16000:.2f} s)")


def cmd_audio_to_spectrogram(args: argparse.Namespace) -> None:
    import numpy as np
    import soundfile
    import torch

    from imgsound_core.artifacts import npy_bytes, png_bytes
    from imgsound_core.audio.mel import SAMPLE_RATE_HZ, waveform_to_spectrogram_image

    if not args.wav.is_file():
        raise CliError(f"{args.wav} is not a readable file")
    try:
        samples, rate = soundfile.read(args.wav, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError):
        raise CliError(f"{args.wav} is not a sound file libsndfile can read") from None
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE_HZ:
        import librosa

        mono = librosa.resample(mono, orig_sr=rate, target_sr=SAMPLE_RATE_HZ)
    if mono.shape[0] < 160:
        raise CliError(f"{args.wav} is shorter than one spectrogram column (10 ms)")
    image = waveform_to_spectrogram_image(torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32)))
    gray = image.mean(dim=0)
    _atomic_write_bytes(args.out, png_bytes(gray))
    if args.npy is not None:
        _atomic_write_bytes(args.npy, npy_bytes(gray.numpy().astype(np.float32)))
    print(f"wrote {args.out} ({gray.shape[0]}×{gray.shape[1]})")


COMMANDS = {
    "generate": cmd_generate,
    "tiny-models": cmd_tiny_models,
    "download": cmd_download,
    "convert": cmd_convert,
    "image-to-audio": cmd_image_to_audio,
    "audio-to-spectrogram": cmd_audio_to_spectrogram,
    "score": cmd_score,
    "cycle-check": cmd_cycle_check,
}


def _quiet_libraries() -> None:
    """diffusers/transformers log load-time chatter (and their own progress bars) that users cannot act on."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging_module in (diffusers_logging, transformers_logging):
        logging_module.set_verbosity_error()
        logging_module.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.environ.get("IMGSOUND_DEBUG") and args.command != "download":  # downloads keep their progress bars
        _quiet_libraries()
    from imgsound_core.models.bundle import ModelMismatchError, ModelNotAvailableError
    from imgsound_core.request import RequestError

    try:
        COMMANDS[args.command](args)
    except (CliError, RequestError, ModelNotAvailableError, ModelMismatchError, FileExistsError) as error:
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


if __name__ == "__main__":
    sys.exit(main())
