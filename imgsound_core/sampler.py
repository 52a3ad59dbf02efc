"""The local sampler: drives the step scheduler with two model bundles, then decodes and vocodes.

One code path for one sample or thousands: requests become samples in a `StepScheduler`; every step runs each
UNet once on all the samples that use it (classifier-free guidance as one batch of 2R rows), combines, and steps.
Finished samples are decoded in small batches and yielded as they finish. The CLI and the sweep workers use this
class; the server runs the same scheduler with remote UNets.

On an accelerator the whole loop stays there: latents, DDIM state and prompt embeddings live on the UNets' device
from the first step to the VAE decode, and the step loop makes no host↔device synchronisation, so Python queues
step after step while the GPU works. The spectrogram goes from the audio VAE to the vocoder on the device too.
Optionally the UNets are compiled (`imgsound_core.compile`) and the two UNet calls of a step run on two CUDA
streams (`overlap_unets`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from imgsound_core.audio.vocoder import Vocoder, spectrogram_to_waveform
from imgsound_core.compile import Backend, CompiledUNet, maybe_compile
from imgsound_core.composition import guided_eps
from imgsound_core.decode import decode_latents, encode_pixels, spectrogram_from_decoded
from imgsound_core.init_source import blend_latents
from imgsound_core.models.bundle import ModelBundle, check_pair
from imgsound_core.noise import initial_latents, latent_shape
from imgsound_core.request import SampleRequest
from imgsound_core.scheduler import ModelInputs, SampleState, StepPlan, StepScheduler
from imgsound_core.text import TextEmbeddingCache
from imgsound_core.transfer import to_device


@torch.inference_mode()
def predict_guided_eps(
    unet,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    guidance_scale: torch.Tensor,
) -> torch.Tensor:
    """One UNet call for R samples with classifier-free guidance.

    `unet` is a diffusers UNet or a `CompiledUNet`. When the inputs are on the UNet's device (the local sampler),
    nothing is copied and the estimates stay there; from the CPU (the server's UNet deployments), the inputs are
    copied to the UNet and the estimates back.

    Args:
        latents: `(R, C, h, w)`; timesteps: `(R,)`; prompt_embeds, negative_embeds: `(R, L, D)`;
        guidance_scale: `(R,)`.
    Returns:
        `(R, C, h, w)` float32 guided estimates, on the latents' device.
    """
    device = unet.device
    dtype = unet.dtype
    # rows: [uncond_0..uncond_{R-1}, cond_0..cond_{R-1}] — the reference code's CFG layout, per sample.
    model_input = torch.cat([latents, latents]).to(device=device, dtype=dtype)
    model_timesteps = to_device(torch.cat([timesteps, timesteps]), device)
    context = torch.cat([negative_embeds, prompt_embeds]).to(device=device, dtype=dtype)
    eps = unet(model_input, model_timesteps, encoder_hidden_states=context).sample
    eps_uncond, eps_cond = eps.float().chunk(2)
    return guided_eps(eps_uncond, eps_cond, to_device(guidance_scale, device)).to(latents.device)


@dataclass
class SampleResult:
    """One finished sample. Tensors are float32 on the CPU.

    Attributes:
        image: `(3, H, W)` in [0, 1], the image model's decode.
        spectrogram: `(H, W)` in [0, 1], the audio model's decode (channel mean), row 0 = highest frequency.
        waveform: `(W · 160,)` at 16 kHz.
        latents: `(C, H/8, W/8)` the final clean latent.
        timings_s: seconds spent in denoising (wall time while in flight), decoding and vocoding.
    """

    key: str
    request: SampleRequest
    image: torch.Tensor
    spectrogram: torch.Tensor
    waveform: torch.Tensor
    latents: torch.Tensor
    timings_s: dict[str, float] = field(default_factory=dict)


ProgressCallback = Callable[[int], None]


class Sampler:
    """Generates samples with an image bundle and an audio bundle (both need unet, vae and text; the vocoder is
    passed separately so HiFi-GAN and Griffin-Lim are interchangeable).

    Args:
        max_batch_samples: samples per step (each is 2 UNet rows).
        decode_batch_size: samples per VAE decode and vocoder call.
        compile: torch.compile the UNets (`imgsound_core.compile`): None = on for CUDA, off on the CPU.
        compile_backend, compile_mode: torch.compile's backend and mode when compiling.
        overlap_unets: run the image and the audio UNet of a step on two CUDA streams, so that one can use what
            the other leaves of the GPU (a no-op off CUDA). Off by default: with batches of many samples each UNet
            already fills the GPU, and the gain is unmeasured.
    """

    def __init__(
        self,
        image: ModelBundle,
        audio: ModelBundle,
        vocoder: Vocoder,
        max_batch_samples: int = 16,
        decode_batch_size: int = 4,
        *,
        compile: bool | None = None,
        compile_backend: Backend = "inductor",
        compile_mode: str | None = None,
        overlap_unets: bool = False,
    ) -> None:
        for bundle in (image, audio):
            if bundle.unet is None or bundle.vae is None or bundle.text_encoder is None:
                raise ValueError(f"the {bundle.role} bundle needs its unet, vae and text encoder loaded")
        check_pair(image, audio)
        self.image = image
        self.audio = audio
        self.vocoder = vocoder
        self.max_batch_samples = max_batch_samples
        self.decode_batch_size = decode_batch_size
        self.image_text = TextEmbeddingCache(image.tokenizer, image.text_encoder)
        self.audio_text = TextEmbeddingCache(audio.tokenizer, audio.text_encoder)
        # The reference method builds its one DDIM scheduler from the image model's config.
        self.scheduler_config = image.scheduler_config
        # Latents and the step's tensors live where the image UNet runs (the audio UNet's estimates are moved
        # there if it runs elsewhere).
        self.device = torch.device(image.unet.device)
        self.image_unet = maybe_compile(
            image.unet, compile, max_batch_samples, backend=compile_backend, mode=compile_mode
        )
        self.audio_unet = maybe_compile(
            audio.unet, compile, max_batch_samples, backend=compile_backend, mode=compile_mode
        )
        self.compiled = isinstance(self.image_unet, CompiledUNet)
        self.overlap_unets = (
            overlap_unets and self.device.type == "cuda" and torch.device(audio.unet.device) == self.device
        )
        # One side stream per UNet; the step's other work stays on the current stream.
        self._streams = (torch.cuda.Stream(self.device), torch.cuda.Stream(self.device)) if self.overlap_unets else ()

    def warm_up(self, height: int = 256, width: int = 1024, max_samples: int | None = None) -> None:
        """Compile every batch bucket of both UNets for `height × width` samples, up to `max_samples` (default:
        `max_batch_samples`), so that the first real step is not the slow one. Does nothing when not compiled."""
        shape = latent_shape(height, width, self.image.latent_channels)
        for unet, bundle in ((self.image_unet, self.image), (self.audio_unet, self.audio)):
            if isinstance(unet, CompiledUNet):
                unet.warm_up(shape, int(bundle.tokenizer.model_max_length), max_samples or self.max_batch_samples)

    def _run_unet(self, unet, cache: TextEmbeddingCache, inputs: ModelInputs) -> torch.Tensor | None:
        if len(inputs) == 0:
            return None
        return predict_guided_eps(
            unet,
            inputs.latents,
            inputs.timesteps,
            cache.get(inputs.prompts),
            cache.get(inputs.negatives),
            inputs.guidance_scale,
        )

    def _run_unets(self, plan: StepPlan) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The step's guided estimates `(eps_image, eps_audio)`, each `(R, C, h, w)` or None when no row uses it."""
        calls = ((self.image_unet, self.image_text, plan.image), (self.audio_unet, self.audio_text, plan.audio))
        if not self.overlap_unets or len(plan.image) == 0 or len(plan.audio) == 0:
            return self._run_unet(*calls[0]), self._run_unet(*calls[1])
        main = torch.cuda.current_stream(self.device)
        results = []
        for stream, call in zip(self._streams, calls):
            stream.wait_stream(main)  # the plan's tensors are written on the main stream
            with torch.cuda.stream(stream):
                results.append(self._run_unet(*call))
        for stream, eps in zip(self._streams, results):
            main.wait_stream(stream)  # the combine and the DDIM step read both estimates
            # Made on a side stream, used and freed on the main one: the allocator must not hand the memory back
            # to the side stream before the main stream is done with it.
            eps.record_stream(main)
        return results[0], results[1]

    def source_latent(
        self, image: torch.Tensor | None = None, audio: torch.Tensor | None = None, audio_weight: float = 0.5
    ) -> torch.Tensor:
        """The clean latent z₀ `(C, H/8, W/8)` to start a sample from (SDEdit), float32 on the CPU.

        `image` is a source picture, encoded by the image model's VAE; `audio` a source sound's mel picture,
        encoded by the audio model's VAE: each VAE was trained on that kind of picture, and both encode into the
        one latent space that both UNets denoise (Auffusion is a finetune of SD-1.5). Each is `(3, H, W)` in
        [−1, 1] (`InitSource.pixels()`). With both, z₀ = (1 − w) · z_image + w · z_audio with w = `audio_weight`:
        the weight the method already gives the two models' estimates (the plain average at the default 0.5).
        """
        image_latent = None if image is None else encode_pixels(self.image.vae, image[None])[0]
        audio_latent = None if audio is None else encode_pixels(self.audio.vae, audio[None])[0]
        return blend_latents(image_latent, audio_latent, audio_weight)

    def denoise(
        self,
        requests: Sequence[SampleRequest],
        progress: ProgressCallback | None = None,
        latents: Sequence[torch.Tensor] | None = None,
        init: Sequence[torch.Tensor | None] | None = None,
    ) -> Iterator[tuple[SampleState, float]]:
        """Run the DDIM loop; yield `(state, seconds_in_flight)` for each sample as it finishes.

        `progress(n)` is called after every step with the number of sample-steps just taken. `latents`, one
        `(C, H/8, W/8)` per request, replaces the seed's initial noise (methods that draw their own, e.g. imprint).
        `init`, one clean source latent z₀ `(C, H/8, W/8)` or None per request (`source_latent`), starts each
        request whose strength is below 1 at its step index k = `request.start_index` from
        z_k = √ᾱ_{t_k} · z₀ + √(1 − ᾱ_{t_k}) · ε, ε being the noise it would start from otherwise; a request at
        strength 1 ignores its entry and starts from ε at step 0.
        """
        if latents is not None and len(latents) != len(requests):
            raise ValueError("one initial latent per request")
        if init is not None and len(init) != len(requests):
            raise ValueError("one source latent (or None) per request")
        scheduler = StepScheduler(self.scheduler_config, self.max_batch_samples, device=self.device)
        started: dict[str, float] = {}
        for index, request in enumerate(requests):
            shape = latent_shape(request.height, request.width, self.image.latent_channels)
            initial = initial_latents([request.seed], shape)[0] if latents is None else latents[index]
            if tuple(initial.shape) != shape:
                raise ValueError(f"request {index}: an initial latent of shape {tuple(initial.shape)}, not {shape}")
            scheduler.add_sample(str(index), request, initial, None if init is None else init[index])
        self.image_text.add([r.image_prompt for r in requests] + [r.image_negative for r in requests])
        self.audio_text.add([r.audio_prompt for r in requests] + [r.audio_negative for r in requests])
        while scheduler.has_work():
            plan = scheduler.schedule()
            now = time.perf_counter()
            for key in plan.keys:
                started.setdefault(key, now)
            eps_image, eps_audio = self._run_unets(plan)
            finished = scheduler.update(plan, eps_image, eps_audio)
            if progress is not None:
                progress(len(plan))
            done_at = time.perf_counter()
            for state in finished:
                yield state, done_at - started[state.key]

    def decode(self, states: Sequence[SampleState], denoise_s: Sequence[float]) -> list[SampleResult]:
        """Decode finished samples: picture (image VAE), spectrogram (audio VAE), waveform (vocoder).

        Both VAEs decode in batches of `decode_batch_size`; the spectrograms stay on the audio VAE's device for a
        vocoder there (HiFi-GAN on the GPU), so only the results cross to the host.
        """
        if not states:
            return []
        latents = torch.stack([s.latents for s in states]).float()
        t0 = time.perf_counter()
        images = decode_latents(self.image.vae, latents, self.decode_batch_size)
        on_device = spectrogram_from_decoded(
            decode_latents(self.audio.vae, latents, self.decode_batch_size, keep_on_device=True)
        )
        spectrograms = on_device.cpu()
        t1 = time.perf_counter()
        # Griffin-Lim (and any vocoder elsewhere) gets the host copy; HiFi-GAN on the VAE's device the device one.
        vocoder_device = torch.device(getattr(self.vocoder, "device", "cpu"))
        same_device = vocoder_device.type == on_device.device.type and vocoder_device.index in (
            None,
            on_device.device.index,
        )
        waveforms = spectrogram_to_waveform(on_device if same_device else spectrograms, self.vocoder)
        t2 = time.perf_counter()
        n = len(states)
        return [
            SampleResult(
                key=state.key,
                request=state.request,
                image=images[i],
                spectrogram=spectrograms[i],
                waveform=waveforms[i].float().cpu(),
                latents=state.latents.cpu(),
                timings_s={"denoise": denoise_s[i], "decode": (t1 - t0) / n, "vocode": (t2 - t1) / n},
            )
            for i, state in enumerate(states)
        ]

    def generate(
        self,
        requests: Sequence[SampleRequest],
        progress: ProgressCallback | None = None,
        init: Sequence[torch.Tensor | None] | None = None,
    ) -> Iterator[SampleResult]:
        """Generate every request; yield results in the order samples finish (input order for equal step counts).

        `init`: per request, the clean latent of its source or None (see `denoise`). Finished samples are decoded
        in groups of `decode_batch_size` so memory stays bounded.
        """
        pending: list[tuple[SampleState, float]] = []
        for item in self.denoise(requests, progress, init=init):
            pending.append(item)
            if len(pending) >= self.decode_batch_size:
                yield from self.decode([s for s, _ in pending], [t for _, t in pending])
                pending = []
        if pending:
            yield from self.decode([s for s, _ in pending], [t for _, t in pending])
