"""The imprint baseline: a picture and a spectrogram generated separately, then the picture imprinted on it.

The paper's simplest way to make a spectrogram look like a picture (its Table 1 "Imprint" row). Per sample:

    g     = mean over RGB of SD's picture            (B, H, W) in [0, 1]; `image_steps` (50) DDIM steps alone
    s     = Auffusion's spectrogram picture          (B, H, W) in [0, 1]; `audio_steps` (100) DDIM steps alone
    g'    = 1 − g  (invert = True, the reference's setting; else g' = g)
    s_new = s ⊙ (1 − ρ · g')                          ρ = `ratio` (0.5): with the defaults s · (0.5 + 0.5 · g)

in the normalised log-mel picture domain, so dark picture pixels attenuate the sound by up to ρ and bright ones
leave it unchanged; s_new is vocoded. Noise as in the reference: one generator seeded `seed` draws the image
latent first and the audio latent next. Both denoising runs go through the core Sampler together — different
step counts share UNet batches — so imprint is batched like the method itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from imgsound_core.audio.vocoder import Vocoder, spectrogram_to_waveform
from imgsound_core.decode import decode_latents, spectrogram_from_decoded
from imgsound_core.methods import ImprintRequest  # noqa: F401 - re-exported: the request of this method
from imgsound_core.models.bundle import ModelBundle
from imgsound_core.noise import latent_shape
from imgsound_core.sampler import ProgressCallback, Sampler


def imprint_spectrogram(spectrogram: torch.Tensor, gray: torch.Tensor, ratio: float = 0.5, invert: bool = True):
    """`s ⊙ (1 − ρ · g')` with `g' = 1 − g` if `invert` else `g`; any matching shapes, values in [0, 1]."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be between 0 and 1, got {ratio}")
    if spectrogram.shape != gray.shape:
        raise ValueError(f"spectrogram {tuple(spectrogram.shape)} and picture {tuple(gray.shape)} differ in shape")
    mask_source = 1.0 - gray if invert else gray
    return spectrogram * (1.0 - ratio * mask_source)


def imprint_latents(seed: int, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The image latent, then the audio latent, from one CPU generator seeded `seed` (the reference's order)."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    image = torch.randn((1, *shape), generator=generator)[0]
    audio = torch.randn((1, *shape), generator=generator)[0]
    return image, audio


@dataclass
class ImprintResult:
    """One imprint sample: `image` (3, H, W) SD's picture; `spectrogram` (H, W) s_new (what plays);
    `original_spectrogram` (H, W) s; `waveform` (W · 160,) at 16 kHz; timings in seconds."""

    key: str
    request: ImprintRequest
    image: torch.Tensor
    spectrogram: torch.Tensor
    original_spectrogram: torch.Tensor
    waveform: torch.Tensor
    timings_s: dict[str, float] = field(default_factory=dict)


class ImprintSampler:
    """Imprint samples with the same bundles and vocoder as the method's Sampler; `compile` and `overlap_unets` are
    the Sampler's (None: compiled on CUDA, not on the CPU)."""

    def __init__(
        self,
        image: ModelBundle,
        audio: ModelBundle,
        vocoder: Vocoder,
        max_batch_samples: int = 16,
        *,
        compile: bool | None = None,
        overlap_unets: bool = False,
    ) -> None:
        self.sampler = Sampler(
            image, audio, vocoder, max_batch_samples=max_batch_samples, compile=compile, overlap_unets=overlap_unets
        )
        self.vocoder = vocoder

    def generate(
        self, requests: Sequence[ImprintRequest], progress: ProgressCallback | None = None
    ) -> Iterator[ImprintResult]:
        """Yield one result per request, in request order."""
        runs, latents = [], []
        for request in requests:
            shape = latent_shape(request.height, request.width, self.sampler.image.latent_channels)
            image_latent, audio_latent = imprint_latents(request.seed, shape)
            runs += [request.image_request(), request.audio_request()]
            latents += [image_latent, audio_latent]
        t0 = time.perf_counter()
        finished = {state.key: state for state, _ in self.sampler.denoise(runs, progress, latents=latents)}
        denoise_s = (time.perf_counter() - t0) / max(len(requests), 1)
        batch = self.sampler.decode_batch_size
        for index, request in enumerate(requests):
            t1 = time.perf_counter()
            image_latent = finished[str(2 * index)].latents[None].float()
            audio_latent = finished[str(2 * index + 1)].latents[None].float()
            picture = decode_latents(self.sampler.image.vae, image_latent, batch)[0]
            original = spectrogram_from_decoded(decode_latents(self.sampler.audio.vae, audio_latent, batch))[0]
            imprinted = imprint_spectrogram(original, picture.mean(dim=0), request.ratio, request.invert)
            t2 = time.perf_counter()
            waveform = spectrogram_to_waveform(imprinted[None], self.vocoder)[0].float().cpu()
            t3 = time.perf_counter()
            yield ImprintResult(
                key=str(index),
                request=request,
                image=picture,
                spectrogram=imprinted,
                original_spectrogram=original,
                waveform=waveform,
                timings_s={"denoise": denoise_s, "decode": t2 - t1, "vocode": t3 - t2},
            )
