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
    from imgsound_core.video import DEFAULT_FPS, LAYOUTS, MAX_FPS

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
    gen.add_argument(
        "--video",
        action="store_true",
        help="also write video.mp4 in each sample folder: the spectrogram with a playhead, the sound and the prompts "
        "(`imgsound video` offers other layouts)",
    )
    gen.add_argument("--overwrite", action="store_true", help="replace sample folders that already exist in OUT")
    gen.add_argument("--out", required=True, type=Path, help="output folder")
    _add_model_args(gen)

    imprint = sub.add_parser(
        "imprint",
        help="the imprint baseline: a picture and a spectrogram generated apart, the picture imprinted on it",
        description="The paper's imprint baseline: the image model alone makes a picture (--image-steps), the audio "
        "model alone a spectrogram (--audio-steps); the spectrogram is attenuated by the inverted grayscale picture, "
        "s·(1 − ρ·(1 − g)), and vocoded. Same output layout as generate, plus spectrogram_original.png.",
    )
    imprint.add_argument("--image-prompt", required=True, help="what the spectrogram should look like")
    imprint.add_argument("--audio-prompt", required=True, help="what it should sound like")
    imprint.add_argument("--image-negative", default="", help="negative prompt of the image model ['']")
    imprint.add_argument("--audio-negative", default="", help="negative prompt of the audio model ['']")
    imprint.add_argument("--image-steps", type=int, default=50, help="DDIM steps of the picture [%(default)s]")
    imprint.add_argument("--audio-steps", type=int, default=100, help="DDIM steps of the spectrogram [%(default)s]")
    imprint.add_argument("--image-guidance", type=float, default=7.5, help="image CFG scale [%(default)s]")
    imprint.add_argument("--audio-guidance", type=float, default=7.5, help="audio CFG scale [%(default)s]")
    imprint.add_argument("--ratio", type=float, default=0.5, help="ρ: the largest attenuation, in [0, 1] [%(default)s]")
    imprint.add_argument(
        "--no-invert", action="store_true", help="imprint the picture itself, not its inverse (bright attenuates)"
    )
    imprint.add_argument("--seed", type=int, default=0, help="seed of sample 0; sample i uses seed+i [%(default)s]")
    imprint.add_argument("--num-samples", type=_positive_int, default=1, help="samples to generate [%(default)s]")
    imprint.add_argument("--batch-size", type=_positive_int, default=16, help="samples per UNet call [%(default)s]")
    imprint.add_argument("--height", type=int, default=defaults.height, help="pixels; multiple of 8 [%(default)s]")
    imprint.add_argument("--width", type=int, default=defaults.width, help="pixels; multiple of 8 [%(default)s]")
    imprint.add_argument("--vocoder", choices=("hifigan", "griffinlim"), default="hifigan", help="[%(default)s]")
    imprint.add_argument("--crop", action="store_true", help="drop the last 32 columns, as the paper does")
    imprint.add_argument("--overwrite", action="store_true", help="replace sample folders that already exist in OUT")
    imprint.add_argument("--out", required=True, type=Path, help="output folder")
    _add_model_args(imprint)

    sds = sub.add_parser(
        "sds",
        help="the SDS baseline: one implicit picture optimised by IF (image) and Auffusion (audio) score distillation",
        description="The paper's SDS baseline: a Fourier-feature MLP picture optimised with AdamW by an image SDS "
        "loss (DeepFloyd IF stage I on random crops, guidance 80) and an audio SDS loss (Auffusion, guidance 10); "
        "audio alone for the first --image-start-step iterations. Writes OUT/sample_000/… like generate, with "
        "snapshots/ along the way and checkpoint.pt: run the same command again to resume an interrupted run.",
    )
    sds.add_argument("--image-prompt", required=True, help="what the spectrogram should look like")
    sds.add_argument("--audio-prompt", required=True, help="what it should sound like")
    sds.add_argument("--image-negative", default="", help="negative prompt of the image prior ['']")
    sds.add_argument("--audio-negative", default="", help="negative prompt of the audio prior ['']")
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
    sds.add_argument("--crops", type=_positive_int, default=8, help="random crops per image-loss step [%(default)s]")
    sds.add_argument("--crop-size", type=_positive_int, default=256, help="crop side in pixels [%(default)s]")
    sds.add_argument("--hidden", type=_positive_int, default=256, help="MLP width [%(default)s]")
    sds.add_argument("--features", type=_positive_int, default=128, help="Fourier features [%(default)s]")
    sds.add_argument("--height", type=int, default=defaults.height, help="pixels; multiple of 8 [%(default)s]")
    sds.add_argument("--width", type=int, default=defaults.width, help="pixels; multiple of 8 [%(default)s]")
    sds.add_argument("--seed", type=int, default=0, help="seed of sample 0; sample i uses seed+i [%(default)s]")
    sds.add_argument("--num-samples", type=_positive_int, default=1, help="samples, one after another [%(default)s]")
    sds.add_argument(
        "--snapshot-every", type=int, default=10_000, help="write snapshots/step_N/ every N iterations; 0: never"
    )
    sds.add_argument(
        "--checkpoint-every", type=_positive_int, default=500, help="save checkpoint.pt every N iterations"
    )
    sds.add_argument("--vocoder", choices=("hifigan", "griffinlim"), default="hifigan", help="[%(default)s]")
    sds.add_argument("--crop", action="store_true", help="drop the last 32 columns, as the paper does")
    sds.add_argument("--overwrite", action="store_true", help="start finished samples in OUT again from scratch")
    sds.add_argument("--out", required=True, type=Path, help="output folder")
    _add_model_args(sds, image=False)
    sds.add_argument(
        "--stage-1-model",
        default=os.environ.get("IMGSOUND_IF_STAGE_1_MODEL", "DeepFloyd/IF-I-M-v1.0"),
        help="folder or hub id of DeepFloyd IF stage I, the image prior (env IMGSOUND_IF_STAGE_1_MODEL) [%(default)s]",
    )

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
    download.add_argument(
        "--deepfloyd",
        action="store_true",
        help="instead, download DeepFloyd IF stage I and II (for `colorize`; gated: accept the licence on both model "
        "pages and log in first) into DIR/if-stage-1 and DIR/if-stage-2",
    )
    _add_if_model_args(download)

    convert = sub.add_parser("convert", help="convert a model folder's pickled .bin weights to safetensors, once")
    convert.add_argument("dir", type=Path)

    i2a = sub.add_parser(
        "image-to-audio",
        help="play any picture as a spectrogram (no diffusion)",
        description="The picture is made grayscale, resized to 256 rows (row 0 = 8 kHz, bottom = 0 Hz), "
        "read as a normalised log-mel spectrogram (bright = loud) and vocoded. A PNG written by imgsound carries "
        "its mel settings; they are used (one pixel column = one 10 ms spectrogram column, the stored log range), "
        "and settings this version cannot play are refused.",
    )
    i2a.add_argument("image", type=Path)
    i2a.add_argument("out", type=Path, help="output .wav (16 kHz)")
    i2a.add_argument("--vocoder", choices=("griffinlim", "hifigan"), default="griffinlim", help="[%(default)s]")
    i2a.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="duration; default keeps the picture's aspect ratio at 256 rows (100 columns per second), or, for a "
        "PNG carrying imgsound mel settings, one column per pixel column",
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
        type=_positive_int,
        default=DEFAULT_FPS,
        help=f"frames per second, at most {MAX_FPS} (the paper uses 60) [%(default)s]",
    )
    video.add_argument("--overwrite", action="store_true", help="replace video files that already exist")

    info = sub.add_parser(
        "info",
        help="show the provenance stored inside generated PNG and WAV files",
        description="Prints the text chunks of a PNG or the RIFF INFO fields of a WAV, and the imgsound "
        "provenance (prompts, seed, steps, guidance, models, mel settings, sample id) they carry.",
    )
    info.add_argument("files", nargs="+", type=Path, metavar="FILE")
    info.add_argument("--json", action="store_true", help="print a JSON list, one object per file")

    gallery = sub.add_parser(
        "gallery",
        help="write a static web page to look at, listen to, sort and pick samples",
        description="SOURCE is an `imgsound generate` output folder, a sweep output (a folder or "
        "s3://bucket/prefix holding manifest.parquet and samples/) or a manifest.parquet. Writes DIR/index.html, "
        "which opens from disk or any static host: thumbnails and copies of every picture, spectrogram and sound, "
        "grouped by prompt pair, sorted and filtered by CLIP/CLAP score, with favourites exported as a JSON list "
        "of sample ids.",
    )
    gallery.add_argument("source", metavar="SOURCE", help="generate output folder, sweep output, or manifest.parquet")
    gallery.add_argument("--out", required=True, type=Path, metavar="DIR", help="the site's folder")
    gallery.add_argument("--overwrite", action="store_true", help="replace DIR if an earlier gallery is there")
    gallery.add_argument(
        "--page-size", type=_positive_int, default=50, metavar="N", help="cards per page [%(default)s]"
    )

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
    colorize.add_argument("--steps", type=_positive_int, default=30, help="DDPM steps of each stage [%(default)s]")
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
        "--batch-size", type=_positive_int, default=4, help="pictures colorized together [%(default)s]"
    )
    colorize.add_argument("--overwrite", action="store_true", help="replace color.png where it exists")
    colorize.add_argument(
        "--video",
        action="store_true",
        help="also write video_color.mp4: the colour picture over the spectrogram, one playhead across both",
    )
    _add_if_model_args(colorize)
    colorize.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 … [%(default)s]")
    colorize.add_argument(
        "--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="weights dtype [%(default)s]"
    )
    return parser


def _add_if_model_args(parser: argparse.ArgumentParser) -> None:
    from imgsound_core.models.deepfloyd import DEFAULT_IF_STAGE_1, DEFAULT_IF_STAGE_2

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
    from imgsound_core.video import VideoError

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
            try:
                artifacts = render_artifacts(
                    result.image, result.spectrogram, result.waveform, record, crop=args.crop, video=args.video
                )
            except VideoError as error:
                raise CliError(f"the video of sample {index} failed: {error}") from None
            write_sample_dir(targets[index], artifacts, overwrite=args.overwrite)
            bar.write(f"wrote {targets[index]}", file=sys.stderr)


def cmd_imprint(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from imgsound_core.artifacts import CROP_COLUMNS, png_bytes, render_artifacts, write_sample_dir
    from imgsound_core.imprint import ImprintRequest, ImprintSampler
    from imgsound_core.models.bundle import load_bundle, parse_device, parse_dtype
    from imgsound_core.request import RequestError

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
    except RequestError as error:
        raise CliError(str(error)) from None
    targets = [args.out / f"sample_{i:03d}" for i in range(len(requests))]
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} exists and is not a folder")
    existing = [t for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise CliError(f"{existing[0]} already exists; choose another --out or pass --overwrite")
    device, dtype = parse_device(args.device), parse_dtype(args.dtype)
    image = load_bundle(args.image_model, "image", parts={"unet", "vae", "text"}, device=device, dtype=dtype)
    audio_parts = {"unet", "vae", "text"} | ({"vocoder"} if args.vocoder == "hifigan" else set())
    audio = load_bundle(args.audio_model, "audio", parts=audio_parts, device=device, dtype=dtype)
    sampler = ImprintSampler(image, audio, _load_vocoder(args.vocoder, audio_bundle=audio), args.batch_size)
    context = {"image_model": image.describe(), "audio_model": audio.describe(), "vocoder": args.vocoder}
    total = sum(r.image_steps + r.audio_steps for r in requests)
    with tqdm(total=total, unit="step", desc="imprint", disable=None, file=sys.stderr) as bar:
        for result in sampler.generate(requests, progress=bar.update):
            index = int(result.key)
            record: dict[str, Any] = {
                "method": "imprint",
                **result.request.to_dict(),
                "sample_id": result.request.sample_id(context),
                "sample_index": index,
                **context,
                "device": str(device),
                "dtype": args.dtype,
                "timings_s": result.timings_s,
                "versions": _versions(),
                "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            artifacts = render_artifacts(result.image, result.spectrogram, result.waveform, record, crop=args.crop)
            original = result.original_spectrogram
            if args.crop:
                original = original[..., : original.shape[-1] - CROP_COLUMNS]
            artifacts["spectrogram_original.png"] = png_bytes(original)
            write_sample_dir(targets[index], artifacts, overwrite=args.overwrite)
            bar.write(f"wrote {targets[index]}", file=sys.stderr)


def _sds_artifacts(run, vocoder, record: dict[str, Any], crop: bool) -> dict[str, bytes]:
    from imgsound_core.artifacts import render_artifacts
    from imgsound_core.audio.vocoder import spectrogram_to_waveform

    picture = run.render()
    spectrogram = picture.mean(dim=0)
    waveform = spectrogram_to_waveform(spectrogram[None], vocoder)[0].float().cpu()
    return render_artifacts(picture.expand(3, -1, -1), spectrogram, waveform, record, crop=crop)


def cmd_sds(args: argparse.Namespace) -> None:
    from imgsound_core.models.bundle import load_bundle, parse_device, parse_dtype
    from imgsound_core.models.deepfloyd import load_if_stage
    from imgsound_core.request import RequestError
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
    except RequestError as error:
        raise CliError(str(error)) from None
    if args.snapshot_every < 0:
        raise CliError("--snapshot-every must be 0 (never) or a positive number of iterations")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} exists and is not a folder")
    device, dtype = parse_device(args.device), parse_dtype(args.dtype)
    if_stage = load_if_stage(args.stage_1_model, 1, device=device, dtype=dtype)
    audio_parts = {"unet", "vae", "text"} | ({"vocoder"} if args.vocoder == "hifigan" else set())
    audio = load_bundle(args.audio_model, "audio", parts=audio_parts, device=device, dtype=dtype)
    vocoder = _load_vocoder(args.vocoder, audio_bundle=audio)
    for param in list(audio.unet.parameters()) + list(audio.vae.parameters()) + list(if_stage.unet.parameters()):
        param.requires_grad_(False)  # only the picture learns; gradients flow through the VAE to it
    context = {"stage_1_model": if_stage.describe(), "audio_model": audio.describe(), "vocoder": args.vocoder}

    for index, sample in enumerate(settings):
        _run_sds_sample(args, index, sample, SDSRun(sample, if_stage, audio, device=device), vocoder, context)


def _run_sds_sample(args: argparse.Namespace, index: int, sample, run, vocoder, context: dict[str, Any]) -> None:
    """One SDS sample in OUT/sample_<index>/: resumed from its checkpoint when one is there."""
    import shutil

    from tqdm import tqdm

    from imgsound_core.artifacts import write_sample_dir

    folder = args.out / f"sample_{index:03d}"
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
    record = {"method": "sds", **sample.to_dict(), "sample_index": index, **context, "device": str(run.device)}
    record["sample_id"] = sample.sample_id(context)
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
    record["timings_s"] = {"optimise": time.perf_counter() - started}
    record["versions"] = _versions()
    record["created_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    artifacts = _sds_artifacts(run, vocoder, {**record, "iteration": run.step_index}, args.crop)
    for name in [n for n in artifacts if n != "sample.json"] + ["sample.json"]:  # sample.json: finished
        _atomic_write_bytes(folder / name, artifacts[name])
    print(f"wrote {folder}", file=sys.stderr)


def cmd_tiny_models(args: argparse.Namespace) -> None:
    from imgsound_core.models.tiny import write_tiny_models

    image, audio = write_tiny_models(args.dir, seed=args.seed)
    others = ", ".join(str(image.parent / name) for name in ("clip", "clap", "if-stage-1", "if-stage-2"))
    print(f"wrote {image}, {audio}, {others}")


def cmd_download(args: argparse.Namespace) -> None:
    from imgsound_core.models.deepfloyd import STAGE_FOLDERS, licence_note
    from imgsound_core.models.download import download_model

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
    if args.deepfloyd:
        print(f"done: pass --stage-1-model {args.dir / STAGE_FOLDERS[1]} --stage-2-model {args.dir / STAGE_FOLDERS[2]}")
        return
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


def _stored_mel_settings(path: Path) -> dict[str, Any] | None:
    """The mel settings inside a PNG written by imgsound, checked against this version; None for other pictures."""
    from imgsound_core.provenance import (
        PNG_SIGNATURE,
        ProvenanceError,
        check_mel_settings,
        provenance_from_text,
        read_png_text,
    )

    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        return None
    try:
        found = provenance_from_text(read_png_text(data, str(path)), str(path))
        if found is None or "mel" not in found:
            return None
        check_mel_settings(found["mel"], str(path))
    except ProvenanceError as error:
        raise CliError(str(error)) from None
    return found["mel"]


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
    settings = _stored_mel_settings(args.image)
    if args.seconds is not None:
        if not 0.01 <= args.seconds <= 600:
            raise CliError("--seconds must be between 0.01 and 600")
        columns = round(args.seconds * 100)
    elif settings is not None:
        columns = gray.width  # a generated spectrogram: each pixel column is one 10 ms spectrogram column
    else:
        columns = max(1, round(gray.width * N_MELS / gray.height))
    pixels = np.asarray(gray.resize((columns, N_MELS), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    if args.invert:
        pixels = 1.0 - pixels
    if settings is not None:
        from imgsound_core.provenance import mel_summary, to_default_range

        pixels = to_default_range(pixels, settings)
        print(f"using the mel settings stored in {args.image}: {mel_summary(settings)}")
    spectrogram = torch.from_numpy(pixels)
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


def _video_sample_dirs(paths: list[Path]) -> list[Path]:
    """SAMPLE_DIR arguments → sample folders: a folder holding sample.json is one; any other folder stands for the
    sample folders under it."""
    folders: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise CliError(f"{path} is not a folder")
        folders += [path] if (path / "sample.json").is_file() else _sample_dirs(path)
    return folders


def cmd_video(args: argparse.Namespace) -> None:
    from imgsound_core.video import MAX_FPS, VideoError, render_sample_dir_video, required_files

    if args.fps > MAX_FPS:
        raise CliError(f"--fps must be at most {MAX_FPS}, got {args.fps}")
    folders = _video_sample_dirs(args.dirs)
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
        _atomic_write_bytes(target, data)
        print(f"wrote {target} ({time.perf_counter() - t0:.1f} s)")


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


def cmd_gallery(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from imgsound_core.gallery import GalleryError, build_gallery, check_target, collect_samples, default_title

    try:
        check_target(args.out, args.overwrite)  # before reading a large source, not after
        samples = collect_samples(args.source)
        with tqdm(total=len(samples), unit="sample", desc="gallery", disable=None, file=sys.stderr) as bar:
            built = build_gallery(
                samples,
                args.out,
                title=default_title(args.source),
                page_size=args.page_size,
                overwrite=args.overwrite,
                progress=bar.update,
            )
    except GalleryError as error:
        raise CliError(str(error)) from None
    print(f"wrote {built.index} ({len(built.records)} samples, {built.pages} pages): open it in a browser")


MAX_COLORIZE_PROMPT_CHARS = 500  # the server's prompt limit; IF reads 77 T5 tokens at most anyway


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
    folders = _video_sample_dirs(args.dirs)
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
                _atomic_write_bytes(folder / "color.png", png_bytes(picture))
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
                    _atomic_write_bytes(folder / "video_color.mp4", video)
                record = {
                    **context,
                    "timings_s": {"colorize": seconds, "model_load": load_s},
                    "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                }
                _update_record(folder, inputs[folder][0], {"colorization": record})
                bar.write(f"wrote {folder / 'color.png'}", file=sys.stderr)


COMMANDS = {
    "generate": cmd_generate,
    "imprint": cmd_imprint,
    "sds": cmd_sds,
    "tiny-models": cmd_tiny_models,
    "download": cmd_download,
    "convert": cmd_convert,
    "image-to-audio": cmd_image_to_audio,
    "audio-to-spectrogram": cmd_audio_to_spectrogram,
    "score": cmd_score,
    "cycle-check": cmd_cycle_check,
    "gallery": cmd_gallery,
    "video": cmd_video,
    "info": cmd_info,
    "colorize": cmd_colorize,
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
