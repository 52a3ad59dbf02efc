"""`imgsound score` and `imgsound cycle-check`: measurements of finished sample folders, written into their
sample.json."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from imgsound_core.cli.common import CliError, Subparsers, read_sample, sample_dirs, summary, update_record


def add_score_parser(sub: Subparsers) -> None:
    from imgsound_core.defaults import CLAP_MODEL_ID, CLIP_MODEL_ID

    score = sub.add_parser(
        "score",
        help="CLIP and CLAP scores of generated samples, written into their sample.json",
        description="Scores every sample folder under DIR (those holding sample.json): CLIP on "
        "spectrogram.png against the image prompt, CLAP on audio.wav against the audio prompt.",
    )
    score.add_argument("dir", type=Path, help="a folder of sample folders (an `imgsound generate` --out)")
    score.add_argument(
        "--clip-model",
        default=os.environ.get("IMGSOUND_CLIP_MODEL", CLIP_MODEL_ID),
        help="CLIP folder or hub id, read from this machine only (env IMGSOUND_CLIP_MODEL) [%(default)s]",
    )
    score.add_argument(
        "--clap-model",
        default=os.environ.get("IMGSOUND_CLAP_MODEL", CLAP_MODEL_ID),
        help="CLAP folder or hub id, read from this machine only (env IMGSOUND_CLAP_MODEL) [%(default)s]",
    )
    score.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 … [%(default)s]")


def cmd_score(args: argparse.Namespace) -> None:
    import torch

    from imgsound_core.scoring import ClapScorer, ClipScorer

    folders = sample_dirs(args.dir)
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
        record, gray, waveform, rate = read_sample(folder)
        clip_score = clip.score([torch.from_numpy(gray)], [record["image_prompt"]])[0]
        clap_score = clap.score([waveform], rate, [record["audio_prompt"]])[0]
        update_record(
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
    print(summary("CLIP", clip_scores))
    print(summary("CLAP", clap_scores))


def add_cycle_check_parser(sub: Subparsers) -> None:
    cycle = sub.add_parser(
        "cycle-check",
        help="re-encode each sample's audio and compare it with its spectrogram",
        description="The vocoder cycle check: audio.wav → Auffusion's mel front end → compared "
        "with spectrogram.png (mean absolute difference and correlation), written into sample.json.",
    )
    cycle.add_argument("dir", type=Path)


def cmd_cycle_check(args: argparse.Namespace) -> None:
    from imgsound_core.scoring import cycle_consistency

    correlations = []
    for folder in sample_dirs(args.dir):
        record, gray, waveform, rate = read_sample(folder)
        if rate != 16000:
            raise CliError(f"{folder / 'audio.wav'} is {rate} Hz; the cycle check needs the 16 kHz generated audio")
        result = cycle_consistency(gray, waveform)
        update_record(folder, record, {"cycle_check": result})
        correlations.append(result["correlation"])
        print(f"{folder}: correlation {result['correlation']:.3f}, mean |Δ| {result['mae']:.3f}")
    print(f"mean correlation {sum(correlations) / len(correlations):.3f} over {len(correlations)} samples")
