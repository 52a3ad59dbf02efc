"""HiFi-GAN V1 generator: Auffusion's vocoder, its config, and its on-disk checkpoint format.

This module owns the network that turns a natural-log mel spectrogram (B, 256, W) into a waveform
(B, 1, W·160), the `HiFiGANConfig` that shapes it, and reading/writing the published layout:

    <vocoder_dir>/config.json   HiFi-GAN's training config (unknown keys such as learning rates are ignored)
    <vocoder_dir>/vocoder.pt    torch pickle {"generator": state_dict}, every conv stored weight-normed as
                                <name>.weight_g (‖w‖ per output slice), <name>.weight_v (direction), <name>.bias

The module itself uses plain convolutions: weight norm only matters during training, so it is folded into a
plain weight when a checkpoint is loaded (w = g · v / ‖v‖) and unfolded again when one is saved. Parameter names
follow the original layout: `conv_pre`, `ups.{i}`, `resblocks.{j}.convs1.{k}` / `.convs2.{k}` (ResBlock1) or
`resblocks.{j}.convs.{k}` (ResBlock2), `conv_post`.

Architecture, with C0 = upsample_initial_channel and stage i ∈ [0, len(upsample_rates)):

    x = conv_pre(log_mel)                              # Conv1d(n_mels → C0, k=7)
    for stage i with rate u_i and kernel k_i:
        x = ConvTranspose1d(C_i → C_i / 2, k_i, stride u_i)(leaky_relu(x, 0.1))   # length × u_i
        x = mean_j ResBlock_j(x)                       # one ResBlock per (kernel, dilations) pair
    waveform = tanh(conv_post(leaky_relu(x, 0.01)))   # Conv1d(C_last → 1, k=7)

so the output length is W · prod(upsample_rates) = W · hop_size.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from imgsound_core.modes import umask_mode

__all__ = [
    "AUFFUSION_HIFIGAN_CONFIG",
    "CHECKPOINT_FILENAME",
    "CONFIG_FILENAME",
    "LRELU_SLOPE",
    "Generator",
    "HiFiGANConfig",
    "ResBlock1",
    "ResBlock2",
    "fold_weight_norm",
    "load_hifigan",
    "save_hifigan",
    "tiny_hifigan_config",
    "unfold_weight_norm",
]

# Negative slope of every leaky ReLU inside the network (HiFi-GAN's choice).
LRELU_SLOPE = 0.1
# The activation before conv_post is called without a slope in the original code, so it uses torch's default.
FINAL_LRELU_SLOPE = 0.01
# Kernel of conv_pre and conv_post; padding 3 keeps the length.
OUTER_CONV_KERNEL = 7

CONFIG_FILENAME = "config.json"
CHECKPOINT_FILENAME = "vocoder.pt"
# Key of the generator's state dict inside vocoder.pt (HiFi-GAN's generator checkpoint layout).
GENERATOR_KEY = "generator"
# How many offending keys an error message lists before it stops.
MAX_KEYS_IN_ERROR = 5

_WEIGHT_G = ".weight_g"
_WEIGHT_V = ".weight_v"
_WEIGHT_NORM_SUFFIXES = (
    (_WEIGHT_G, _WEIGHT_V),
    # Newer torch (torch.nn.utils.parametrizations.weight_norm) names the same pair differently.
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


@dataclasses.dataclass(frozen=True)
class HiFiGANConfig:
    """Shape of a HiFi-GAN generator plus the audio settings it was trained with.

    Field names are those of HiFi-GAN's config.json. Sequences are stored as tuples so the config is immutable
    and hashable; `to_json_dict` turns them back into lists.
    """

    resblock: str
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    num_mels: int
    sampling_rate: int
    hop_size: int
    n_fft: int
    win_size: int
    fmin: float
    fmax: float | None

    def __post_init__(self) -> None:
        # Accept lists (as parsed from JSON) but store tuples, so equal configs compare and hash equal.
        for name in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        dilations = tuple(tuple(int(d) for d in group) for group in self.resblock_dilation_sizes)
        object.__setattr__(self, "resblock_dilation_sizes", dilations)
        object.__setattr__(self, "resblock", str(self.resblock))

        if self.resblock not in ("1", "2"):
            raise ValueError(f"HiFi-GAN resblock must be '1' or '2', got {self.resblock!r}.")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(
                f"upsample_rates {self.upsample_rates} and upsample_kernel_sizes {self.upsample_kernel_sizes} "
                "must have the same length."
            )
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError(
                f"resblock_kernel_sizes {self.resblock_kernel_sizes} and resblock_dilation_sizes "
                f"{self.resblock_dilation_sizes} must have the same length."
            )
        if math.prod(self.upsample_rates) != self.hop_size:
            raise ValueError(
                f"The product of upsample_rates {self.upsample_rates} is {math.prod(self.upsample_rates)}, "
                f"but it must equal hop_size {self.hop_size} for one mel frame to become one hop of audio."
            )
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates) != 0:
            raise ValueError(
                f"upsample_initial_channel {self.upsample_initial_channel} must be divisible by "
                f"2**{len(self.upsample_rates)} because every upsampling stage halves the channels."
            )

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> HiFiGANConfig:
        """Build from a parsed config.json, keeping only the known fields (training keys are ignored)."""
        names = [field.name for field in dataclasses.fields(cls)]
        # fmax is null in the published file (meaning sr / 2), so only it may be absent.
        missing = [name for name in names if name not in data and name != "fmax"]
        if missing:
            raise ValueError(f"The HiFi-GAN config is missing the fields {missing}.")
        return cls(**{name: data.get(name) for name in names})

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict with lists in place of tuples."""
        data = dataclasses.asdict(self)
        for name, value in data.items():
            if isinstance(value, tuple):
                data[name] = [list(v) if isinstance(v, tuple) else v for v in value]
        return data


# Auffusion's vocoder. Auffusion's own config.json is only on the model hub; these numbers are those of the published
# copy in FoleyCrafter (built on Auffusion), which match Auffusion's 256 mels, 160-sample hop and 16 kHz exactly.
AUFFUSION_HIFIGAN_CONFIG = HiFiGANConfig(
    resblock="1",
    upsample_rates=(5, 4, 4, 2),
    upsample_kernel_sizes=(11, 8, 8, 4),
    upsample_initial_channel=512,
    resblock_kernel_sizes=(3, 7, 11),
    resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
    num_mels=256,
    sampling_rate=16000,
    hop_size=160,
    n_fft=2048,
    win_size=1024,
    fmin=0,
    fmax=None,
)


def tiny_hifigan_config() -> HiFiGANConfig:
    """A narrow generator with Auffusion's interface (256 mels in, 160 samples per frame out) for fast tests.

    Same upsampling rates and kernels, so every length computation is exercised; 32 initial channels (down to 2)
    and a single short ResBlock per stage make it run in a few milliseconds per second of audio on a CPU.
    """
    return dataclasses.replace(
        AUFFUSION_HIFIGAN_CONFIG,
        upsample_initial_channel=32,
        resblock_kernel_sizes=(3,),
        resblock_dilation_sizes=((1, 3),),
    )


def _same_padding(kernel_size: int, dilation: int) -> int:
    """Padding that keeps the length of a stride-1 convolution with an odd kernel."""
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """HiFi-GAN's ResBlock1: per dilation d, x += conv(lrelu(conv_d(lrelu(x)))). Shape (B, C, L) → (B, C, L)."""

    def __init__(self, channels: int, kernel_size: int, dilations: Iterable[int]) -> None:
        super().__init__()
        dilations = tuple(dilations)
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=1, padding=_same_padding(kernel_size, 1))
            for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dilated, plain in zip(self.convs1, self.convs2):
            residual = dilated(F.leaky_relu(x, LRELU_SLOPE))
            residual = plain(F.leaky_relu(residual, LRELU_SLOPE))
            x = x + residual
        return x


class ResBlock2(nn.Module):
    """HiFi-GAN's lighter ResBlock2: per dilation d, x += conv_d(lrelu(x)). Shape (B, C, L) → (B, C, L)."""

    def __init__(self, channels: int, kernel_size: int, dilations: Iterable[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x


class Generator(nn.Module):
    """HiFi-GAN V1 generator: log-mel (B, num_mels, W) → waveform (B, 1, W · hop_size) in [-1, 1].

    Weights start from torch's default initialisation; real use loads them with `load_hifigan`. Every layer
    acts on each batch item separately, so a sample's output does not depend on what it is batched with.
    """

    def __init__(self, config: HiFiGANConfig) -> None:
        super().__init__()
        self.config = config
        self.num_kernels = len(config.resblock_kernel_sizes)
        resblock_class = ResBlock1 if config.resblock == "1" else ResBlock2

        self.conv_pre = nn.Conv1d(
            config.num_mels, config.upsample_initial_channel, OUTER_CONV_KERNEL, padding=OUTER_CONV_KERNEL // 2
        )
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = config.upsample_initial_channel
        for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes):
            # Padding and output_padding chosen so that L_out = (L - 1)·u - 2p + k + output_padding = L·u exactly.
            if (kernel - rate) % 2 == 0:
                padding, output_padding = (kernel - rate) // 2, 0
            else:
                padding, output_padding = (kernel - rate) // 2 + 1, 1
            self.ups.append(
                nn.ConvTranspose1d(
                    channels, channels // 2, kernel, stride=rate, padding=padding, output_padding=output_padding
                )
            )
            channels //= 2
            for res_kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(resblock_class(channels, res_kernel, dilations))
        self.conv_post = nn.Conv1d(channels, 1, OUTER_CONV_KERNEL, padding=OUTER_CONV_KERNEL // 2)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """log_mel: (B, num_mels, W) natural-log mel → waveform (B, 1, W · hop_size)."""
        if log_mel.ndim != 3 or log_mel.shape[1] != self.config.num_mels:
            raise ValueError(
                f"Expected a log-mel of shape (B, {self.config.num_mels}, W), got shape {tuple(log_mel.shape)}."
            )
        x = self.conv_pre(log_mel)
        for stage, upsample in enumerate(self.ups):
            x = upsample(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[stage * self.num_kernels : (stage + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        x = self.conv_post(F.leaky_relu(x, FINAL_LRELU_SLOPE))
        return torch.tanh(x)


def _norm_except_dim0(weight: torch.Tensor) -> torch.Tensor:
    """‖w‖₂ over every dim but 0, shaped (out, 1, ..., 1): the `g` of torch's weight_norm with dim=0."""
    return torch.linalg.vector_norm(weight, dim=tuple(range(1, weight.ndim)), keepdim=True)


class _WeightNormPair(NamedTuple):
    prefix: str
    g_key: str
    v_key: str


def _weight_norm_pair(key: str, state_dict: Mapping[str, torch.Tensor]) -> _WeightNormPair | None:
    """The complete (g, v) pair that `key` belongs to, or None if it is not half of one."""
    for g_suffix, v_suffix in _WEIGHT_NORM_SUFFIXES:
        for suffix in (g_suffix, v_suffix):
            if key.endswith(suffix):
                prefix = key.removesuffix(suffix)
                pair = _WeightNormPair(prefix, prefix + g_suffix, prefix + v_suffix)
                if pair.g_key in state_dict and pair.v_key in state_dict:
                    return pair
    return None


def _fold(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """w = g · v / ‖v‖, computed in at least float32 and returned in v's dtype."""
    compute_dtype = torch.promote_types(v.dtype, torch.float32)
    g, v_compute = g.to(compute_dtype), v.to(compute_dtype)
    # A zero slice has v = 0 there, so clamping its zero norm yields 0 instead of 0/0 = NaN.
    norm = _norm_except_dim0(v_compute).clamp_min(torch.finfo(compute_dtype).tiny)
    return (v_compute * (g / norm)).to(v.dtype)


def fold_weight_norm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every weight-norm pair by the plain weight it stands for ("remove weight norm" at load time).

    Each `<name>.weight_g` (g, shape (out, 1, ..., 1)) and `<name>.weight_v` (v, the weight's shape) becomes

        <name>.weight = g · v / ‖v‖,   ‖v‖ over all dims except 0

    which is what torch's legacy `weight_norm(module, dim=0)` computes (for ConvTranspose1d, dim 0 is the input
    channel axis, as in the original training code). The pair names of the newer parametrization API
    (`<name>.parametrizations.weight.original0/1`) are folded the same way. Other entries pass through unchanged,
    a `weight_g` without its `weight_v` (or the reverse) included, so a broken checkpoint still fails the key
    check. Folding is computed in at least float32 and cast back to the stored dtype.
    """
    folded: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        pair = _weight_norm_pair(key, state_dict)
        if pair is None:
            folded[key] = value
        elif key == pair.g_key:  # emit the folded weight once, where its g entry stood
            folded[pair.prefix + ".weight"] = _fold(state_dict[pair.g_key], state_dict[pair.v_key])
    return folded


def unfold_weight_norm(state_dict: Mapping[str, torch.Tensor], weight_names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Inverse of `fold_weight_norm` for the listed module names: `<name>.weight` → `weight_g`, `weight_v`.

    g = ‖w‖ over all dims except 0 (keepdim, shape (out, 1, 1) for a conv) and v = w, exactly as weight norm
    initialises itself from a plain weight, which is the form a checkpoint written during training has.
    """
    names = set(weight_names)
    unfolded: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        prefix = key.removesuffix(".weight")
        if key.endswith(".weight") and prefix in names:
            unfolded[prefix + _WEIGHT_G] = _norm_except_dim0(value)
            unfolded[prefix + _WEIGHT_V] = value
        else:
            unfolded[key] = value
    return unfolded


def _conv_module_names(module: nn.Module) -> list[str]:
    """Names of the layers that HiFi-GAN trains with weight norm: all of its convolutions."""
    return [name for name, sub in module.named_modules() if isinstance(sub, (nn.Conv1d, nn.ConvTranspose1d))]


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_IN_ERROR])
    more = f" and {len(keys) - MAX_KEYS_IN_ERROR} more" if len(keys) > MAX_KEYS_IN_ERROR else ""
    return f"{shown}{more}"


def _check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: Path) -> None:
    """Raise one readable ValueError if the keys or shapes of `found` differ from `expected`."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    mismatched = [
        f"{key} (checkpoint {tuple(found[key].shape)}, model {tuple(expected[key].shape)})"
        for key in expected
        if key in found and tuple(found[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_first(mismatched)}")
    if problems:
        raise ValueError(f"The HiFi-GAN checkpoint {source} does not fit its config: {'; '.join(problems)}.")


def load_hifigan(
    vocoder_dir: str | os.PathLike[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Generator:
    """Load a HiFi-GAN vocoder stored in the published layout (config.json + vocoder.pt).

    Weight norm is folded into plain weights, the keys and shapes are checked against the config, and the
    generator is returned in eval mode with gradients off, on `device` in `dtype`.
    """
    vocoder_dir = Path(vocoder_dir)
    config_path, checkpoint_path = vocoder_dir / CONFIG_FILENAME, vocoder_dir / CHECKPOINT_FILENAME
    for path in (config_path, checkpoint_path):
        if not path.is_file():
            raise FileNotFoundError(f"The HiFi-GAN vocoder file {path} does not exist.")

    config = HiFiGANConfig.from_json_dict(json.loads(config_path.read_text()))
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping) or GENERATOR_KEY not in checkpoint:
        raise ValueError(f"The HiFi-GAN checkpoint {checkpoint_path} has no {GENERATOR_KEY!r} entry.")
    state_dict = fold_weight_norm(checkpoint[GENERATOR_KEY])

    generator = Generator(config)
    _check_state_dict(generator.state_dict(), state_dict, checkpoint_path)
    generator.load_state_dict(state_dict, strict=True)
    generator.to(device=device, dtype=dtype).eval()
    generator.requires_grad_(False)
    return generator


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write via `write(tmp_path)` next to `path`, then rename, so readers never see a half-written file."""
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp_path = Path(tmp_name)
    # mkstemp creates the file private (0600); give the result the usual permissions of a data file.
    tmp_path.chmod(umask_mode())
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def save_hifigan(generator: Generator, config: HiFiGANConfig, vocoder_dir: str | os.PathLike[str]) -> None:
    """Write `generator` in the published layout: `config.json` and `vocoder.pt` = {"generator": state_dict}.

    Every convolution is stored weight-normed (`weight_g`, `weight_v`, `bias`) like a checkpoint from training,
    on CPU in the generator's dtype. Both files are written atomically; the folder is created if needed.
    """
    if config != generator.config:
        raise ValueError("The config passed to save_hifigan differs from the config the generator was built with.")
    vocoder_dir = Path(vocoder_dir)
    vocoder_dir.mkdir(parents=True, exist_ok=True)

    plain = {key: value.detach().to("cpu").clone().contiguous() for key, value in generator.state_dict().items()}
    state_dict = unfold_weight_norm(plain, _conv_module_names(generator))
    config_text = json.dumps(config.to_json_dict(), indent=2) + "\n"

    _atomic_write(vocoder_dir / CONFIG_FILENAME, lambda tmp: tmp.write_text(config_text))
    # Serialise in memory: torch.save names the archive after the file it writes, so saving to a temporary name
    # would make the bytes differ from run to run.
    buffer = io.BytesIO()
    torch.save({GENERATOR_KEY: state_dict}, buffer)
    _atomic_write(vocoder_dir / CHECKPOINT_FILENAME, lambda tmp: tmp.write_bytes(buffer.getvalue()))
