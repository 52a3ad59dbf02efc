"""Compiled UNets on the CPU: batch buckets, equality with eager, no recompiles after the warm-up, the CLI flags.

torch.compile's inductor backend takes about a minute per bucket of the tiny UNet on two CPU cores, so the equality
and recompile tests compile with "aot_eager" (dynamo's graph capture and AOTAutograd, without code generation);
one test marked slow compiles with inductor itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

import imgsound_core.compile as compile_module
import imgsound_core.imprint as imprint_module
import imgsound_core.sampler as sampler_module
from imgsound_core.audio.vocoder import HiFiGANVocoder
from imgsound_core.compile import (
    CompiledUNet,
    bucket_for,
    configure_compile_cache,
    cpu_compiler_available,
    pad_rows,
    resolve_compile,
    sample_buckets,
)
from imgsound_core.request import SampleRequest
from imgsound_core.sampler import Sampler
from tests.cli_helpers import run_main

SMALL = dict(height=64, width=256)  # latent 4×8×32
MAX_SAMPLES = 4  # buckets of 1, 2 and 4 samples: 2, 4 and 8 UNet rows


class CountingBackend:
    """A torch.compile backend that counts the graphs dynamo hands it and compiles them with `inner`."""

    def __init__(self, inner: str = "aot_eager") -> None:
        self.inner = lookup_backend(inner)
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return self.inner(graph, example_inputs)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Compiled code is cached on the UNet class's code objects: each test starts and ends without any."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# --- buckets --------------------------------------------------------------------------------------------------------


def test_buckets_are_powers_of_two_up_to_the_largest_batch():
    assert sample_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert sample_buckets(16) == (1, 2, 4, 8, 16)
    assert sample_buckets(12) == (1, 2, 4, 8, 12)
    assert sample_buckets(1) == (1,)
    rows = tuple(2 * s for s in sample_buckets(32))
    expected = {1: 2, 2: 2, 3: 4, 4: 4, 5: 8, 8: 8, 9: 16, 16: 16, 17: 32, 33: 64, 64: 64}
    assert {size: bucket_for(size, rows) for size in expected} == expected
    with pytest.raises(ValueError):
        bucket_for(65, rows)
    with pytest.raises(ValueError):
        sample_buckets(0)


def test_padding_repeats_the_last_row():
    rows = torch.arange(6.0).reshape(3, 2)
    padded = pad_rows(rows, 5)
    assert torch.equal(padded[:3], rows)
    assert torch.equal(padded[3:], rows[2:].expand(2, 2))
    assert pad_rows(rows, 3) is rows


class RowWiseUNet(torch.nn.Module):
    """A UNet stand-in whose output row i depends on input row i only."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))
        self.config = SimpleNamespace(cross_attention_dim=3)

    @property
    def device(self) -> torch.device:
        return self.scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.scale.dtype

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=True):
        out = (
            sample * self.scale
            + timestep.reshape(-1, 1, 1, 1)
            + encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None]
        )
        return (out,) if not return_dict else SimpleNamespace(sample=out)


def test_a_call_runs_on_its_bucket_and_returns_exactly_its_rows():
    unet = RowWiseUNet()
    wrapped = CompiledUNet(unet, MAX_SAMPLES, backend="eager")
    seen: list[int] = []

    def recording(sample, timestep, encoder_hidden_states, return_dict):
        seen.append(sample.shape[0])
        return unet(sample, timestep, encoder_hidden_states, return_dict=return_dict)

    wrapped._compiled = recording  # the bucketing alone, without dynamo
    generator = torch.Generator().manual_seed(0)
    # Row buckets 2, 4, 8; 9 rows and more run in chunks of 8.
    for rows, calls in {1: [2], 2: [2], 3: [4], 5: [8], 8: [8], 9: [8, 2], 19: [8, 8, 4]}.items():
        seen.clear()
        sample = torch.randn((rows, 4, 2, 3), generator=generator)
        timestep = torch.randint(0, 1000, (rows,), generator=generator)
        context = torch.randn((rows, 5, 3), generator=generator)
        with torch.inference_mode():
            expected = unet(sample, timestep, context).sample
        out = wrapped(sample, timestep, encoder_hidden_states=context).sample
        assert seen == calls, rows
        assert out.shape == expected.shape
        assert torch.equal(out, expected)


def test_compile_policy_and_cache_folder(monkeypatch, tmp_path):
    assert resolve_compile(None, "cpu") is False
    assert resolve_compile(None, torch.device("cuda")) is True
    assert resolve_compile(True, "cpu") is True and resolve_compile(False, "cuda") is False
    monkeypatch.setenv("IMGSOUND_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert configure_compile_cache() == tmp_path / "cache" / "torch-compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", compile_module._torch_default_cache_dir())  # torch's own
    assert configure_compile_cache() == tmp_path / "cache" / "torch-compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert configure_compile_cache() == tmp_path / "mine"  # a folder the user chose is kept
    assert torch._dynamo.config.recompile_limit >= compile_module.RECOMPILE_LIMIT


# --- the sampler, compiled --------------------------------------------------------------------------------------------


def varied_requests() -> list[SampleRequest]:
    """Five samples, at most 4 at once: batches of 4, 3, 2 and 1 samples, and the image UNet on fewer rows than the
    audio UNet during the warm starts."""
    settings = [(2, 0), (3, 1), (4, 2), (3, 1), (2, 0)]  # (steps, image start step)
    return [
        SampleRequest(
            image_prompt=f"castle {i}", audio_prompt="bells", steps=steps, image_start_step=start, seed=i, **SMALL
        )
        for i, (steps, start) in enumerate(settings)
    ]


def by_key(results) -> dict[int, sampler_module.SampleResult]:
    return {int(r.key): r for r in results}


def test_compiled_sampler_equals_eager_and_never_recompiles_after_warm_up(tiny_bundles, monkeypatch):
    image, audio = tiny_bundles
    vocoder = HiFiGANVocoder(audio.vocoder)
    backend = CountingBackend("aot_eager")
    compiled = Sampler(image, audio, vocoder, MAX_SAMPLES, compile=True, compile_backend=backend)
    assert compiled.compiled and isinstance(compiled.image_unet, CompiledUNet)
    compiled.warm_up(**SMALL)
    warmed = backend.graphs
    assert warmed >= 1

    padded: list[tuple[int, int]] = []
    original_pad = compile_module.pad_rows

    def recording_pad(tensor, size):
        padded.append((tensor.shape[0], size))
        return original_pad(tensor, size)

    monkeypatch.setattr(compile_module, "pad_rows", recording_pad)
    got = by_key(compiled.generate(varied_requests()))
    assert backend.graphs == warmed, "a batch size after the warm-up compiled a new graph"
    assert {rows for rows, _ in padded} >= {2, 4, 6, 8}, padded  # the load did change
    assert {size for _, size in padded} <= {2, 4, 8}

    eager = by_key(Sampler(image, audio, vocoder, MAX_SAMPLES, compile=False).generate(varied_requests()))
    assert set(got) == set(eager) == set(range(5))
    for key, result in got.items():
        assert (result.spectrogram - eager[key].spectrogram).abs().max().item() < 1e-4
        assert (result.image - eager[key].image).abs().max().item() < 1e-4
        assert (result.waveform - eager[key].waveform).abs().max().item() < 1e-4
        assert result.spectrogram.device.type == "cpu" and result.spectrogram.dtype == torch.float32


def test_compile_is_off_by_default_on_the_cpu_and_overlap_a_no_op(tiny_bundles):
    image, audio = tiny_bundles
    vocoder = HiFiGANVocoder(audio.vocoder)
    plain = Sampler(image, audio, vocoder, MAX_SAMPLES)
    assert not plain.compiled and plain.image_unet is image.unet
    overlapped = Sampler(image, audio, vocoder, MAX_SAMPLES, overlap_unets=True)
    assert overlapped.overlap_unets is False  # CUDA streams only
    request = varied_requests()[1]
    first, second = (next(iter(s.generate([request]))) for s in (plain, overlapped))
    assert torch.equal(first.spectrogram, second.spectrogram)


@pytest.mark.slow
@pytest.mark.skipif(
    not cpu_compiler_available(), reason="inductor's CPU kernels need a C++ compiler and Python's C headers"
)
@pytest.mark.heavy
def test_inductor_compiled_sampler_equals_eager(tiny_bundles):
    """The default backend, code generation included: about a minute on two cores (one UNet, one bucket)."""
    image, audio = tiny_bundles
    vocoder = HiFiGANVocoder(audio.vocoder)
    # Auffusion alone: only the audio UNet runs, so only it compiles.
    request = SampleRequest(image_prompt="castle", audio_prompt="bells", steps=2, image_start_step=2, **SMALL)
    compiled = Sampler(image, audio, vocoder, 1, compile=True)
    got = next(iter(compiled.generate([request])))
    expected = next(iter(Sampler(image, audio, vocoder, 1, compile=False).generate([request])))
    assert (got.spectrogram - expected.spectrogram).abs().max().item() < 1e-4
    assert (got.image - expected.image).abs().max().item() < 1e-4


# --- the command line -----------------------------------------------------------------------------------------------


@pytest.fixture()
def recorded_compile(monkeypatch) -> list:
    """What `compile` each Sampler the commands build was given (they then run uncompiled, to stay fast)."""
    seen: list = []

    class RecordingSampler(Sampler):
        def __init__(self, *args, compile=None, **kwargs):
            seen.append(compile)
            super().__init__(*args, compile=False, **kwargs)

    monkeypatch.setattr(sampler_module, "Sampler", RecordingSampler)
    monkeypatch.setattr(imprint_module, "Sampler", RecordingSampler)
    return seen


def command(name: str, models: Path, out: Path, *extra: str) -> list[str]:
    steps = ["--steps", "1"] if name == "generate" else ["--image-steps", "1", "--audio-steps", "1"]
    return [
        name,
        *("--image-prompt", "castle", "--audio-prompt", "bells", "--height", "64", "--width", "64"),
        *("--image-model", str(models / "image"), "--audio-model", str(models / "audio"), "--vocoder", "griffinlim"),
        *steps,
        *("--out", str(out)),
        *extra,
    ]


def test_the_compile_flags_reach_the_sampler(tiny_models, tmp_path, capsys, recorded_compile):
    records = []
    for index, (name, flags, expected) in enumerate(
        [
            ("generate", (), None),
            ("generate", ("--compile",), True),
            ("generate", ("--no-compile",), False),
            ("imprint", ("--no-compile",), False),
        ]
    ):
        out = tmp_path / f"run{index}"
        outcome = run_main(capsys, *command(name, tiny_models, out, *flags))
        assert outcome.code == 0, outcome.err
        assert recorded_compile[-1] is expected, (name, flags)
        records.append(json.loads((out / "sample_000" / "sample.json").read_text()))
    # How a sample is computed is not what it is: one sample id with and without compilation.
    assert len({record["sample_id"] for record in records[:3]}) == 1


# --- the serve UNet deployment ----------------------------------------------------------------------------------------


def test_the_unet_deployment_compiles_when_asked_and_warms_up_its_buckets(tiny_models, monkeypatch):
    """`compile` of a placement; `reconfigure` (which Serve runs before a replica takes traffic) compiles every
    bucket up to the max batch size, so the first request compiles nothing. The class runs here without Ray."""
    import serve.modality as modality
    from imgsound_core.scheduler import ModelInputs

    deployment_class = modality.UNetDeployment.func_or_class
    placement = {"model": str(tiny_models / "audio")}
    assert deployment_class("audio", placement).model_info()["compiled"] is False  # auto: off on the CPU

    backend = CountingBackend("aot_eager")
    monkeypatch.setattr(
        modality, "maybe_compile", lambda unet, compile, max_samples: CompiledUNet(unet, max_samples, backend=backend)
    )
    deployment = deployment_class("audio", {**placement, "compile": True})
    assert deployment.model_info()["compiled"] is True
    deployment.reconfigure({"max_batch_size": 2})
    assert deployment.unet.row_buckets == (2, 4)
    warmed = backend.graphs
    assert warmed >= 1
    rows = ModelInputs(
        rows=torch.tensor([0]),
        latents=torch.randn(1, 4, 32, 128),  # the default 256×1024 picture's latent, which the warm-up prepares
        timesteps=torch.tensor([981]),
        prompts=["bells"],
        negatives=[""],
        guidance_scale=torch.tensor([7.5]),
    )
    (eps,) = deployment._forward([rows])
    assert eps.shape == (1, 4, 32, 128) and eps.device.type == "cpu"
    assert backend.graphs == warmed


# --- sweeps -------------------------------------------------------------------------------------------------------


def test_a_sweep_spec_may_compile_without_changing_any_sample_id():
    from imgsound_core.identity import ModelIdentity
    from jobs.spec import SweepModels, SweepSpec, expand

    data = {"name": "s", "image_prompts": ["castle"], "audio_prompts": ["bells", "dogs"], "samples_per_pair": 2}
    models = SweepModels(ModelIdentity.of_hub("org/image", "1"), ModelIdentity.of_hub("org/audio", "2"))
    ids = {}
    for setting in (None, True, False):
        spec = SweepSpec.model_validate({**data, "models": {"compile": setting}})
        assert spec.models.compile is setting
        ids[setting] = [point.sample_id for point in expand(spec, models)]
    assert ids[None] == ids[True] == ids[False]
    assert SweepSpec.model_validate(data).models.compile is None
