"""The SDS baseline: one implicit picture optimised so that both diffusion models find it likely.

The paper's second baseline (its Table 1 "SDS" row). A Fourier-feature MLP renders a picture x of `(C, H, W)`
(C = 1 in the paper's examples) in [0, 1]; every iteration adds two score-distillation losses and takes an AdamW
step on the MLP's weights:

    image view   8 random 256×256 crops of x (3 channels), resized to 64×64, in [−1, 1]   → DeepFloyd IF stage I
    audio view   x as a spectrogram picture (channel mean, 3 channels), VAE-encoded with gradients → Auffusion

    for a view v (a batch of B) and its model:  t ~ U{20, …, 980},  ε ~ N(0, I),  v_t = √ᾱ_t v + √(1 − ᾱ_t) ε
        g = w(t) · (ε̂(v_t, t, y) − ε),  w(t) = 1 − ᾱ_t               (ε̂ classifier-free guided: 80 / 10)
        L = ½ Σ (v − stopgrad(v − g))² / B      so that ∂L/∂v = g / B, carried back through the view to x

    total = image_weight · L_image + audio_weight · L_audio   (0.4 / 1; L_image skipped before `image_start_step`)

The final picture is the sample's image; its channel mean is the spectrogram, vocoded as usual. All randomness
(Fourier frequencies, crops, timesteps, noise, the VAE's sample) comes from generators seeded by `seed`, and a
checkpoint holds their states with the weights and the optimiser, so a resumed run continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgsound_core.methods import SDSSettings  # noqa: F401 - re-exported: the request of this method

T_MIN_FRACTION, T_MAX_FRACTION = 0.02, 0.98  # timesteps sampled in [20, 980] of 1000, as the reference


class FourierImage(nn.Module):
    """A picture as a per-pixel MLP of fixed random Fourier features of its (u, v) coordinates.

    features(u, v) = [sin(2π (u, v) B), cos(2π (u, v) B)], B ~ N(0, 1) · scale of shape (2, F), frozen;
    then three blocks of 1×1 conv → ReLU → BatchNorm, a 1×1 conv to C channels and a sigmoid. The module stays in
    train mode (BatchNorm with batch statistics), as in the reference, including for the final render.
    """

    def __init__(
        self,
        height: int = 256,
        width: int = 1024,
        channels: int = 1,
        hidden: int = 256,
        features: int = 128,
        scale: float = 10.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        frequencies = torch.randn((2, features), generator=generator) * scale
        u = torch.linspace(0, 1, width + 1)[:-1]  # [0, 1) along each axis (endpoint excluded)
        v = torch.linspace(0, 1, height + 1)[:-1]
        grid = torch.stack(torch.meshgrid(v, u, indexing="ij"), dim=-1)  # (H, W, 2)
        projected = 2 * math.pi * grid @ frequencies  # (H, W, F)
        encoded = torch.cat([projected.sin(), projected.cos()], dim=-1).permute(2, 0, 1)[None]  # (1, 2F, H, W)
        self.register_buffer("features", encoded, persistent=False)
        self.register_buffer("frequencies", frequencies)
        layers: list[nn.Module] = []
        width_in = 2 * features
        for _ in range(3):
            layers += [_seeded_conv(width_in, hidden, generator), nn.ReLU(), nn.BatchNorm2d(hidden)]
            width_in = hidden
        layers += [_seeded_conv(hidden, channels, generator), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self) -> torch.Tensor:
        """The picture, `(C, H, W)` in [0, 1]."""
        return self.net(self.features)[0]


def _seeded_conv(width_in: int, width_out: int, generator: torch.Generator | None) -> nn.Conv2d:
    """A 1×1 conv with PyTorch's default scale (±1/√fan_in), drawn from `generator`, not the global RNG."""
    conv = nn.utils.skip_init(nn.Conv2d, width_in, width_out, 1)
    bound = 1 / math.sqrt(width_in)
    with torch.no_grad():
        conv.weight.uniform_(-bound, bound, generator=generator)
        conv.bias.uniform_(-bound, bound, generator=generator)
    return conv


def sample_timestep(num_train_timesteps: int, generator: torch.Generator) -> int:
    """t uniform in [⌊0.02 T⌋, ⌊0.98 T⌋], inclusive."""
    low, high = int(num_train_timesteps * T_MIN_FRACTION), int(num_train_timesteps * T_MAX_FRACTION)
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def random_crops(picture: torch.Tensor, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` independent `size × size` crops of `(C, H, W)`, repeated to 3 channels: `(count, 3, size, size)`."""
    channels, height, width = picture.shape
    if size > height or size > width:
        raise ValueError(f"a {size}-pixel crop does not fit a {height}×{width} picture")
    tops = torch.randint(0, height - size + 1, (count,), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (count,), generator=generator).tolist()
    crops = torch.stack([picture[:, y : y + size, x : x + size] for y, x in zip(tops, lefts)])
    return crops.expand(-1, 3, -1, -1) if channels == 1 else crops


def image_view(picture: torch.Tensor, crop: int, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """What the image prior sees: random crops resized (bilinear) to `size` and mapped to [−1, 1]."""
    crops = random_crops(picture, crop, count, generator)
    return F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1


def spectrogram_view(picture: torch.Tensor) -> torch.Tensor:
    """What the audio prior sees: the channel mean as a 3-channel picture in [−1, 1], `(1, 3, H, W)`."""
    return picture.mean(dim=0, keepdim=True)[None].expand(-1, 3, -1, -1) * 2 - 1


def sds_loss(x: torch.Tensor, eps_hat: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """½ Σ (x − stopgrad(x − g))² / B with g = (1 − ᾱ_t)(ε̂ − ε): a scalar whose gradient w.r.t. x is g / B.

    Args:
        x: `(B, …)` the view (with gradients); eps_hat, eps: like x; alpha_bar_t: a scalar or `(B,)`.
    """
    weight = (1 - torch.as_tensor(alpha_bar_t, dtype=torch.float32, device=x.device)).reshape(-1)
    weight = weight.expand(x.shape[0]).reshape(-1, *([1] * (x.ndim - 1)))
    grad = torch.nan_to_num(weight * (eps_hat.float() - eps.float()))
    target = (x.float() - grad).detach()
    return 0.5 * ((x.float() - target) ** 2).sum() / x.shape[0]


class SDSRun:
    """One SDS optimisation: `step()` takes an iteration; `render()` gives the picture, spectrogram and audio.

    Args:
        if_stage: DeepFloyd IF stage I with its text encoder (`load_if_stage(…, 1)`), the image prior.
        audio: the audio bundle (unet, vae, text), the audio prior.
        device: where the picture and its optimiser live (the priors stay where they were loaded).
    """

    def __init__(self, settings: SDSSettings, if_stage, audio, device: str | torch.device = "cpu") -> None:
        from diffusers import DDIMScheduler

        from imgsound_core.models.deepfloyd import encode_if_prompts
        from imgsound_core.text import encode_prompts

        self.settings = settings
        self.if_stage = if_stage
        self.audio = audio
        self.device = torch.device(device)
        self.generator = torch.Generator("cpu").manual_seed(settings.seed)
        self.learner = FourierImage(
            settings.height,
            settings.width,
            settings.channels,
            settings.hidden,
            settings.features,
            settings.feature_scale,
            generator=self.generator,
        ).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.learner.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        self.step_index = 0
        with torch.no_grad():
            self.image_text = encode_if_prompts(if_stage, [settings.image_prompt, settings.image_negative])
            self.audio_text = encode_prompts(
                audio.tokenizer, audio.text_encoder, [settings.audio_prompt, settings.audio_negative]
            )
        self.image_alphas = if_stage.scheduler.alphas_cumprod.float()
        self.audio_alphas = DDIMScheduler.from_config(audio.scheduler_config).alphas_cumprod.float()
        self.image_size = int(if_stage.unet.config.sample_size)

    def image_loss(self, picture: torch.Tensor) -> torch.Tensor:
        from imgsound_core.models.deepfloyd import guided_noise

        s = self.settings
        view = image_view(picture, s.crop_size, s.crops, self.image_size, self.generator)
        t = sample_timestep(len(self.image_alphas), self.generator)
        eps = torch.randn(view.shape, generator=self.generator).to(view.device)
        alpha_bar = self.image_alphas[t]
        noisy = (alpha_bar.sqrt() * view + (1 - alpha_bar).sqrt() * eps).detach()
        count = view.shape[0]
        prompt, negative = (e[None].expand(count, -1, -1) for e in self.image_text)
        eps_hat, _ = guided_noise(self.if_stage.unet, noisy, torch.tensor([t]), prompt, negative, s.image_guidance)
        return sds_loss(view, eps_hat.clone(), eps, alpha_bar)

    def audio_loss(self, picture: torch.Tensor) -> torch.Tensor:
        from imgsound_core.sampler import predict_guided_eps

        s = self.settings
        vae = self.audio.vae
        view = spectrogram_view(picture).to(device=vae.device, dtype=vae.dtype)
        posterior = vae.encode(view).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=self.generator).to(posterior.mean)
        latent = (posterior.mean + posterior.std * noise) * float(vae.config.scaling_factor)
        t = sample_timestep(len(self.audio_alphas), self.generator)
        eps = torch.randn(latent.shape, generator=self.generator).to(latent.device)
        alpha_bar = self.audio_alphas[t]
        noisy = (alpha_bar.sqrt() * latent.float() + (1 - alpha_bar).sqrt() * eps).detach()
        prompt, negative = self.audio_text[0:1], self.audio_text[1:2]
        with torch.no_grad():
            eps_hat = predict_guided_eps(
                self.audio.unet, noisy, torch.tensor([t]), prompt, negative, torch.tensor([s.audio_guidance])
            )
        return sds_loss(latent, eps_hat, eps, alpha_bar)

    def step(self) -> dict[str, float]:
        """One iteration; returns the losses (for progress display)."""
        s = self.settings
        self.optimizer.zero_grad(set_to_none=True)
        picture = self.learner()
        audio_loss = self.audio_loss(picture)
        total = s.audio_weight * audio_loss.to(self.device)
        losses = {"audio": float(audio_loss.detach())}
        if self.step_index >= s.image_start_step and s.image_weight > 0:
            image_loss = self.image_loss(picture)
            total = total + s.image_weight * image_loss.to(self.device)
            losses["image"] = float(image_loss.detach())
        total.backward()
        self.optimizer.step()
        self.step_index += 1
        return losses

    def run(self, until: int | None = None, callback: Callable[[int, dict[str, float]], None] | None = None) -> None:
        """Iterate up to `until` (default: all iterations); `callback(step, losses)` after each."""
        end = self.settings.iterations if until is None else min(until, self.settings.iterations)
        while self.step_index < end:
            losses = self.step()
            if callback is not None:
                callback(self.step_index, losses)

    @torch.no_grad()
    def render(self) -> torch.Tensor:
        """The picture `(C, H, W)` in [0, 1], float32 on the CPU (train-mode BatchNorm, as the reference)."""
        return self.learner().float().cpu()

    def sample(self, vocoder) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The current picture as a sample: `(3, H, W)` image, `(H, W)` spectrogram (its channel mean, what plays)
        and the waveform `vocoder` makes of it."""
        from imgsound_core.audio.vocoder import spectrogram_to_waveform

        picture = self.render()
        spectrogram = picture.mean(dim=0)
        waveform = spectrogram_to_waveform(spectrogram[None], vocoder)[0].float().cpu()
        return picture.expand(3, -1, -1), spectrogram, waveform

    def state_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "step": self.step_index,
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if dict(state["settings"]) != self.settings.to_dict():
            changed = sorted(k for k, v in self.settings.to_dict().items() if state["settings"].get(k) != v)
            raise ValueError(f"the checkpoint was made with other settings ({', '.join(changed)})")
        self.learner.load_state_dict(state["learner"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step_index = int(state["step"])

    def save_checkpoint(self, path: str | Path) -> None:
        """Atomically write the run's state (weights, optimiser, step, RNG) to `path`."""
        path = Path(path)
        temporary = path.with_name(f".{path.name}.partial")
        torch.save(self.state_dict(), temporary)
        temporary.replace(path)

    def load_checkpoint(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
