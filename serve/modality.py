"""The UNet deployment: one model's UNet (+ its text encoder, + the image VAE), batched across requests.

One class serves both models (`ImageUNet` and `AudioUNet` are two deployments of it). `predict` takes one request's
rows for one DDIM step (`imgsound_core.scheduler.ModelInputs`) and `@serve.batch` merges rows of many requests —
at any step, since every row carries its own timestep — into one classifier-free-guided UNet call. Prompts travel
as strings and are embedded here, once per prompt per replica (an LRU cache), so no 77×768 tensors cross the
network at every step. No sampling logic here: that is the core's.

With `compile` (the placement's; by default on for CUDA) the UNet is compiled with batch buckets
(`imgsound_core.compile`), and every bucket up to the deployment's `max_batch_size` is compiled when the replica
starts (in `reconfigure`, which Serve runs before the replica takes traffic), for the default picture size;
other sizes compile on first use.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from typing import Any

import torch
from ray import serve

from imgsound_core.compile import CompiledUNet, maybe_compile
from imgsound_core.decode import decode_latents, encode_pixels
from imgsound_core.host import prepare_model_process
from imgsound_core.identity import dtype_name, model_identity
from imgsound_core.models.bundle import load_bundle, parse_device, parse_dtype
from imgsound_core.noise import latent_shape
from imgsound_core.request import SampleRequest
from imgsound_core.sampler import predict_guided_eps
from imgsound_core.scheduler import ModelInputs
from imgsound_core.text import dropped_tokens, encode_prompts
from serve.config import BatchConfig, ModelPlacement
from serve.metrics import UNetMetrics

PROMPT_CACHE_SIZE = 4096  # embeddings kept per replica (77×768 fp16 ≈ 118 kB each for the real models)


def count_samples(items: list[ModelInputs]) -> int:
    """Serve's batch size for UNet work: samples, not calls (one call may carry several samples)."""
    return sum(len(item) for item in items)


class PromptEmbeddings:
    """An LRU cache of prompt embeddings, computed in one text-encoder call per batch of new prompts."""

    def __init__(self, tokenizer, text_encoder, capacity: int = PROMPT_CACHE_SIZE) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.capacity = capacity
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def get(self, prompts: list[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            for prompt, embedding in zip(missing, encode_prompts(self.tokenizer, self.text_encoder, missing)):
                self._cache[prompt] = embedding
        for prompt in prompts:
            self._cache.move_to_end(prompt)
        rows = torch.stack([self._cache[p] for p in prompts])
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return rows


@serve.deployment(max_ongoing_requests=64)
class UNetDeployment:
    """`role` is "image" or "audio"; `placement` a `ModelPlacement` dict (model, dtype, device, torch_threads,
    compile)."""

    def __init__(self, role: str, placement: dict[str, Any]) -> None:
        settings = ModelPlacement.model_validate(placement)
        prepare_model_process(settings.torch_threads)
        parts = {"unet", "text"} | ({"vae"} if role == "image" else set())
        self.role = role
        self.bundle = load_bundle(
            settings.model, role, parts=parts, device=parse_device(settings.device), dtype=parse_dtype(settings.dtype)
        )
        self.prompts = PromptEmbeddings(self.bundle.tokenizer, self.bundle.text_encoder)
        self.identity = model_identity(self.bundle)
        self.metrics = UNetMetrics(role)
        # The buckets follow the batch size that `reconfigure` sets; until then, the batch handler's default.
        self.unet = maybe_compile(self.bundle.unet, settings.compile, BatchConfig().max_batch_size)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = BatchConfig.model_validate(user_config or {})
        self.predict.set_max_batch_size(config.max_batch_size)
        self.predict.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        if isinstance(self.unet, CompiledUNet):
            self.unet.max_samples = config.max_batch_size
            self.warm_up()

    def warm_up(self) -> tuple[int, ...]:
        """Compile every batch bucket up to the max batch size for the default picture size (a no-op when the UNet
        is not compiled; buckets compiled before are only run once). Returns the sample buckets run."""
        if not isinstance(self.unet, CompiledUNet):
            return ()
        default = SampleRequest(image_prompt="-", audio_prompt="-")
        shape = latent_shape(default.height, default.width, self.bundle.latent_channels)
        return self.unet.warm_up(shape, int(self.bundle.tokenizer.model_max_length))

    def dropped_tokens(self, prompts: list[str]) -> list[int]:
        """Tokens each prompt loses to the text encoder's context (77 for CLIP); 0 for those that fit."""
        return [dropped_tokens(self.bundle.tokenizer, prompt) if prompt else 0 for prompt in prompts]

    def model_info(self) -> dict[str, Any]:
        """What the driver needs once: the DDIM scheduler config, the latent channels and the model's identity."""
        return {
            "scheduler_config": self.bundle.scheduler_config,
            "latent_channels": self.bundle.latent_channels,
            "identity": self.identity.__dict__,
            "dtype": dtype_name(self.bundle.dtype),
            "device": self.bundle.device.type,
            "compiled": isinstance(self.unet, CompiledUNet),
            "context_tokens": int(self.bundle.tokenizer.model_max_length),
            "replica_pid": os.getpid(),
        }

    def _forward(self, items: list[ModelInputs]) -> list[torch.Tensor]:
        """One UNet forward per latent shape present (requests of different sizes cannot share a tensor)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(tuple(item.latents.shape[1:]), []).append(index)
        outputs: list[torch.Tensor | None] = [None] * len(items)
        for indices in groups.values():
            group = [items[i] for i in indices]
            for index, output in zip(indices, self._forward_same_shape(group)):
                outputs[index] = output
        return outputs  # type: ignore[return-value]

    def _forward_same_shape(self, items: list[ModelInputs]) -> list[torch.Tensor]:
        """`(R, C, h, w)` float32 CPU guided estimates per item, from one forward over all their rows."""
        latents = torch.cat([item.latents for item in items])  # (N, C, h, w): all requests' rows, one batch
        timesteps = torch.cat([item.timesteps for item in items])
        prompts = [p for item in items for p in item.prompts]
        negatives = [p for item in items for p in item.negatives]
        guidance = torch.cat([item.guidance_scale for item in items])
        eps = predict_guided_eps(
            self.unet, latents, timesteps, self.prompts.get(prompts), self.prompts.get(negatives), guidance
        ).cpu()
        self.metrics.observe(len(latents), int(torch.unique(timesteps).numel()), len(items))
        outputs, start = [], 0
        for item in items:
            outputs.append(eps[start : start + len(item)])
            start += len(item)
        return outputs

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, batch_size_fn=count_samples)
    async def predict(self, items: list[ModelInputs]) -> list[torch.Tensor]:
        # The forward runs in a worker thread so the replica keeps answering health checks meanwhile.
        return await asyncio.to_thread(self._forward, items)

    async def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """`(B, C, h, w)` final latents → `(B, 3, H, W)` pictures in [0, 1] (image role only)."""
        if self.bundle.vae is None:
            raise ValueError(f"the {self.role} UNet deployment has no VAE")
        return await asyncio.to_thread(decode_latents, self.bundle.vae, latents)

    async def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` source pictures in [−1, 1] → `(B, C, h, w)` clean latents, float32 (image role only: the
        image model's VAE encodes a source picture, see `Driver._source_latent`)."""
        if self.bundle.vae is None:
            raise ValueError(f"the {self.role} UNet deployment has no VAE")
        return await asyncio.to_thread(encode_pixels, self.bundle.vae, pixels)
