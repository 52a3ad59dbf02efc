"""CLIP and CLAP scores, computed as the paper's evaluators compute them.

CLIP score (image side): the grayscale spectrogram, repeated to 3 channels, is cut into H×H windows along its
width at stride H/8 (25 windows for 256×1024, 24 for 256×992); pixels become uint8 by truncation (x·255 cast, as the
reference code does); each window and the image prompt go through CLIP; the score is
max(mean over windows of cos(image, text), 0) — in [0, 1] (the paper reports it ×100).

CLAP score (audio side): the waveform is resampled to 48 kHz, peak-normalised (max |x| = 1), and the score is
max(cos(audio embedding, text embedding), 0).

Models load with transformers' `from_pretrained` from a folder or hub id (the tiny-model writer makes
real-format random ones). No sampling logic, no storage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from imgsound_core.defaults import CLAP_MODEL_ID, CLIP_MODEL_ID  # noqa: F401, E402 - re-exported

CLAP_SAMPLE_RATE_HZ = 48_000
WINDOW_STRIDE_DIVISOR = 8  # windows overlap: stride H/8, as in the reference evaluator


def spectrogram_windows(spectrogram: torch.Tensor) -> np.ndarray:
    """`(H, W)` or `(C, H, W)` in [0, 1] → `(N, H, H, 3)` uint8 windows (one window if square).

    The 3 channels are the channel mean repeated (the paper scores the grayscale spectrogram).
    """
    gray = spectrogram.float().mean(dim=0) if spectrogram.ndim == 3 else spectrogram.float()
    height, width = gray.shape
    if width < height:
        raise ValueError(f"a spectrogram of {height}×{width} is narrower than one {height}×{height} window")
    if width == height:
        windows = gray[None]
    else:
        windows = gray.unfold(1, height, height // WINDOW_STRIDE_DIVISOR).permute(1, 0, 2)  # (N, H, H)
    pixels = (windows * 255).to(torch.uint8)  # truncation, as the reference casts
    return pixels[..., None].repeat(1, 1, 1, 3).numpy()


def resolve_scorer(source: str, what: str = "scorer", flag: str = "--clip-model/--clap-model") -> str:
    """A scorer's folder or hub id → the local folder `from_pretrained` should read, never the network.

    A folder is itself; a hub id is the folder `imgsound download --scorers` wrote under `IMGSOUND_MODELS_DIR`, else
    its snapshot in the local Hugging Face cache. Anything else is a `ModelNotAvailableError` saying how to get it,
    at once (the models' own rule: nothing is downloaded behind the user's back).
    """
    from pathlib import Path

    from imgsound_core.models.errors import ModelNotAvailableError
    from imgsound_core.models.location import find_downloaded

    if Path(source).expanduser().is_dir():
        return source
    downloaded = find_downloaded(source)
    if downloaded is not None:
        return str(downloaded[0])
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(source, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means the same thing: not on this machine
        raise ModelNotAvailableError(
            f"The {what} '{source}' is not on this machine (no such folder, not in the local Hugging Face cache, "
            f"not under IMGSOUND_MODELS_DIR); get it with `imgsound download DIR --scorers` and set "
            f"IMGSOUND_MODELS_DIR=DIR, or pass {flag} FOLDER (`imgsound tiny-models` writes tiny ones)."
        ) from None


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True)


def _features(output) -> torch.Tensor:
    """transformers ≥ 5 returns a model output from get_*_features; older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipScorer:
    def __init__(self, source: str = CLIP_MODEL_ID, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        from transformers import CLIPModel, CLIPProcessor

        path = resolve_scorer(source, "CLIP scorer", "--clip-model")
        self.processor = CLIPProcessor.from_pretrained(path)
        self.model = CLIPModel.from_pretrained(path).to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def score(self, spectrograms: Sequence[torch.Tensor], prompts: Sequence[str]) -> list[float]:
        """One score in [0, 1] per (spectrogram, prompt) pair."""
        if len(spectrograms) != len(prompts):
            raise ValueError("one prompt per spectrogram")
        text = self.processor.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
        text_embeds = _unit(_features(self.model.get_text_features(**text.to(self.device))))
        scores = []
        for index, spectrogram in enumerate(spectrograms):
            windows = list(spectrogram_windows(spectrogram))
            embeds = []
            for start in range(0, len(windows), self.batch_size):
                pixels = self.processor.image_processor(windows[start : start + self.batch_size], return_tensors="pt")
                embeds.append(
                    _features(self.model.get_image_features(pixel_values=pixels.pixel_values.to(self.device)))
                )
            image_embeds = _unit(torch.cat(embeds))
            cosine = (image_embeds @ text_embeds[index]).mean().item()
            scores.append(max(cosine, 0.0))
        return scores


def prepare_clap_audio(waveform: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Resample to 48 kHz (librosa's default resampler) and peak-normalise, as the reference evaluator does."""
    import librosa

    audio = np.asarray(waveform, dtype=np.float32).reshape(-1)
    if sample_rate_hz != CLAP_SAMPLE_RATE_HZ:
        audio = librosa.resample(audio, orig_sr=sample_rate_hz, target_sr=CLAP_SAMPLE_RATE_HZ)
    return librosa.util.normalize(audio).astype(np.float32)


class ClapScorer:
    def __init__(self, source: str = CLAP_MODEL_ID, device: str | torch.device = "cpu") -> None:
        from transformers import ClapModel, ClapProcessor

        path = resolve_scorer(source, "CLAP scorer", "--clap-model")
        self.processor = ClapProcessor.from_pretrained(path)
        self.model = ClapModel.from_pretrained(path).to(device).eval()
        self.device = torch.device(device)

    @torch.inference_mode()
    def score(self, waveforms: Sequence[np.ndarray], sample_rate_hz: int, prompts: Sequence[str]) -> list[float]:
        """One score in [0, 1] per (waveform, prompt) pair."""
        if len(waveforms) != len(prompts):
            raise ValueError("one prompt per waveform")
        audio = [prepare_clap_audio(w, sample_rate_hz) for w in waveforms]
        inputs = self.processor(
            text=list(prompts), audio=audio, sampling_rate=CLAP_SAMPLE_RATE_HZ, padding=True, return_tensors="pt"
        ).to(self.device)
        output = self.model(**inputs)
        cosine = (_unit(output.audio_embeds) * _unit(output.text_embeds)).sum(dim=-1)
        return [max(float(c), 0.0) for c in cosine]


def cycle_consistency(spectrogram: np.ndarray, waveform: np.ndarray) -> dict[str, float]:
    """The vocoder cycle check (the paper's Fig. 6): re-encode `waveform` with the mel front end and compare it with
    the spectrogram it was made from.

    Args:
        spectrogram: `(H, W)` picture in [0, 1] (row 0 = highest frequency); other heights than 256 are resized.
        waveform: 16 kHz audio made from it; columns beyond the shorter of the two are ignored.
    Returns:
        `{"mae": mean |Δ| in [0, 1] units, "correlation": Pearson r over all bins}`.
    """
    from imgsound_core.audio.mel import waveform_to_spectrogram_image

    respectrogram = waveform_to_spectrogram_image(torch.from_numpy(np.ascontiguousarray(waveform, np.float32)))
    respectrogram = respectrogram.mean(dim=0).numpy()
    picture = torch.as_tensor(np.asarray(spectrogram, dtype=np.float32))
    if picture.shape[0] != respectrogram.shape[0]:  # played at 256 mel bins, as the vocoders resize it
        size = (respectrogram.shape[0], picture.shape[1])
        picture = torch.nn.functional.interpolate(picture[None, None], size=size, mode="bilinear", align_corners=False)[
            0, 0
        ]
    columns = min(respectrogram.shape[1], picture.shape[1])
    a = picture.numpy().astype(np.float64)[:, :columns].ravel()
    b = respectrogram.astype(np.float64)[:, :columns].ravel()
    correlation = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
    return {"mae": float(np.abs(a - b).mean()), "correlation": correlation}


def decode_spectrogram_png(data: bytes) -> np.ndarray:
    """`spectrogram.png` bytes → `(H, W)` float32 gray in [0, 1] (k/255, as the reference evaluator reads it)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("L"), dtype=np.float32) / 255.0


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """`audio.wav` bytes → `((N,) float32 mono, sample rate)`."""
    import io

    import soundfile

    waveform, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return waveform.mean(axis=1), int(rate)


class SampleScorer:
    """CLIP, CLAP and the cycle check of generated samples, in batches: what a sweep's scoring stage computes.

    Each sample: its spectrogram picture `(H, W)` in [0, 1], its audio, the image prompt (CLIP side) and the audio
    prompt (CLAP side). The cycle check needs the 16 kHz generated audio; other rates give null cycle columns.
    """

    def __init__(
        self, clip_model: str = CLIP_MODEL_ID, clap_model: str = CLAP_MODEL_ID, device: str | torch.device = "cpu"
    ) -> None:
        self.clip = ClipScorer(clip_model, device=device)
        self.clap = ClapScorer(clap_model, device=device)

    def score(
        self,
        spectrograms: Sequence[np.ndarray],
        waveforms: Sequence[np.ndarray],
        sample_rate_hz: int,
        image_prompts: Sequence[str],
        audio_prompts: Sequence[str],
        cycle: bool = True,
    ) -> list[dict[str, float | None]]:
        """One `{clip_score, clap_score, cycle_mae, cycle_correlation}` per sample (cycle columns None if off)."""
        from imgsound_core.audio.mel import SAMPLE_RATE_HZ

        clip_scores = self.clip.score([torch.from_numpy(s) for s in spectrograms], image_prompts)
        clap_scores = self.clap.score(list(waveforms), sample_rate_hz, audio_prompts)
        rows = []
        for spectrogram, waveform, clip_score, clap_score in zip(spectrograms, waveforms, clip_scores, clap_scores):
            check = (
                cycle_consistency(spectrogram, waveform)
                if cycle and sample_rate_hz == SAMPLE_RATE_HZ
                else {"mae": None, "correlation": None}
            )
            rows.append(
                {
                    "clip_score": clip_score,
                    "clap_score": clap_score,
                    "cycle_mae": check["mae"],
                    "cycle_correlation": check["correlation"],
                }
            )
        return rows
