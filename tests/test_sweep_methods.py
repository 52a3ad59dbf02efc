"""Sweeps of the baselines (imprint, SDS) without Ray: spec validation, ids, the worker's rows and files."""

from __future__ import annotations

import json

import pytest

from jobs.manifest import MANIFEST_FILE, read_parquet_bytes
from jobs.spec import SweepModels, SweepSpec, expand
from tests.in_process import run_sweep_in_process

pytestmark = pytest.mark.slow


def spec_data(tiny_models, method: str, params: dict) -> dict:
    return {
        "name": f"tiny-{method}",
        "method": method,
        "pairs": [{"image": "castle towers", "audio": "bell ringing"}],
        "samples_per_pair": 2,
        "params": params,
        "models": {
            "image": str(tiny_models / "image"),
            "audio": str(tiny_models / "audio"),
            "image_prior": str(tiny_models / "if-stage-1"),
            "dtype": "fp32",
            "device": "cpu",
        },
        "crop": True,
        "batch_size": 2,
    }


def manifest_rows(spec: SweepSpec, root) -> list[dict]:
    store, _ = run_sweep_in_process(spec, root)
    return read_parquet_bytes(store.get_bytes(MANIFEST_FILE)).to_pylist()


def test_params_are_checked_against_the_methods_own_fields(tiny_models):
    with pytest.raises(ValueError, match="unknown params for method imprint: steps"):
        SweepSpec.model_validate(spec_data(tiny_models, "imprint", {"steps": 4}))
    with pytest.raises(ValueError, match="ratio"):
        SweepSpec.model_validate(spec_data(tiny_models, "imprint", {"ratio": 3}))
    with pytest.raises(ValueError, match="image_start_step must be between 0 and iterations"):
        SweepSpec.model_validate(spec_data(tiny_models, "sds", {"iterations": 2, "image_start_step": 5}))
    imprint = SweepSpec.model_validate(spec_data(tiny_models, "imprint", {"image_steps": 2}))
    denoise = SweepSpec.model_validate(spec_data(tiny_models, "denoise", {"steps": 2, "image_start_step": 1}))
    imprint_ids = {p.sample_id for p in expand(imprint, SweepModels.identify(imprint))}
    assert imprint_ids.isdisjoint(p.sample_id for p in expand(denoise, SweepModels.identify(denoise)))


def test_an_imprint_sweep_writes_rows_and_files(tmp_path, tiny_models):
    params = {"image_steps": 2, "audio_steps": 3, "height": 64, "width": 256}
    spec = SweepSpec.model_validate({**spec_data(tiny_models, "imprint", params), "video": True})
    rows = manifest_rows(spec, tmp_path)
    assert [r["seed"] for r in rows] == [0, 1] and {r["method"] for r in rows} == {"imprint"}
    assert rows[0]["steps"] is None  # the denoise-only columns stay empty; settings_json has the method's own
    assert json.loads(rows[0]["settings_json"])["audio_steps"] == 3
    for row in rows:
        folder = tmp_path / "samples" / row["sample_id"]
        for name in ("image.png", "spectrogram.png", "spectrogram_original.png", "audio.wav", "sample.json"):
            assert (folder / name).is_file(), name
        assert row["video_uri"] == (folder / "video.mp4").as_uri()  # `video: true` in the spec
        assert (folder / "video.mp4").read_bytes()[4:8] == b"ftyp"
        assert json.loads((folder / "sample.json").read_text())["method"] == "imprint"


def test_an_sds_sweep_writes_rows_and_files(tmp_path, tiny_models):
    params = {"iterations": 2, "image_start_step": 1, "height": 64, "width": 256, "crop_size": 64, "hidden": 8}
    spec = SweepSpec.model_validate({**spec_data(tiny_models, "sds", params), "samples_per_pair": 1})
    rows = manifest_rows(spec, tmp_path)
    assert len(rows) == 1 and rows[0]["method"] == "sds" and rows[0]["video_uri"] is None
    assert rows[0]["image_model"] == str(tiny_models / "if-stage-1")  # the image prior, part of the sample id
    record = json.loads((tmp_path / "samples" / rows[0]["sample_id"] / "sample.json").read_text())
    assert record["iterations"] == 2 and record["image_guidance"] == 80.0
    assert rows[0]["denoise_s"] > 0


def test_a_manifest_written_under_the_earlier_ids_resumes_with_nothing_to_do(tmp_path, tiny_models):
    """Sweeps written before model identities hashed the spec's model names; their rows still count as done."""
    import pyarrow as pa

    from jobs.manifest import MANIFEST_FILE, MANIFEST_PREFIX, parquet_bytes, read_parquet_bytes
    from jobs.sweep import finalize, plan
    from tests.in_process import run_sweep_in_process

    spec = SweepSpec.model_validate(spec_data(tiny_models, "denoise", {"steps": 2, "image_start_step": 1}))
    store, points = run_sweep_in_process(spec, tmp_path / "run")
    table = read_parquet_bytes(store.get_bytes(MANIFEST_FILE))
    legacy = {p.sample_id: p.legacy_id for p in points}
    assert all(p.legacy_id != p.sample_id for p in points)  # folders are fingerprinted now: the ids did change
    old = table.set_column(0, "sample_id", pa.array([legacy[i] for i in table.column("sample_id").to_pylist()]))
    for key in store.list(MANIFEST_PREFIX):
        store.delete(key)
    store.put_bytes(MANIFEST_FILE, parquet_bytes(old))
    again, batches = plan(spec, store)
    assert batches == [] and len(again) == len(points)
    assert finalize(store, again) == len(points)
    assert set(read_parquet_bytes(store.get_bytes(MANIFEST_FILE)).column("sample_id").to_pylist()) == set(
        legacy.values()
    )


def test_worker_options_forward_storage_settings_but_never_credentials(monkeypatch):
    from jobs.sweep import worker_options

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_PROFILE", "sweeps")
    monkeypatch.setenv("IMGSOUND_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-value")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-value")
    forwarded = worker_options(use_gpu=False)["runtime_env"]["env_vars"]
    assert forwarded["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and forwarded["AWS_PROFILE"] == "sweeps"
    assert forwarded["IMGSOUND_S3_MAX_ATTEMPTS"] == "3"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(forwarded)
    assert "secret-value" not in str(forwarded) and "session-value" not in str(forwarded)
