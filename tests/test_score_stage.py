"""The sweep's scoring stage without Ray: workers are plain classes, the store a folder."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
import yaml

from imgsound_core.identity import ModelIdentity
from imgsound_core.scoring import ClapScorer, ClipScorer, cycle_consistency, decode_spectrogram_png, decode_wav
from jobs.manifest import MANIFEST_FILE, read_parquet_bytes
from jobs.score import SCORE_COLUMNS, SCORES_PREFIX, ScoreWorker, apply_scores, read_scores, unscored_rows
from jobs.spec import SweepModels, SweepSpec, load_spec
from jobs.sweep import finalize
from tests.in_process import run_sweep_in_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tiny_models):
    """A finished 2-pair × 2-sample tiny sweep in a folder (generated with the sweep worker, no Ray)."""
    root = tmp_path_factory.mktemp("sweep")
    spec = SweepSpec.model_validate(
        {
            "name": "scored",
            "pairs": [{"image": "castle towers", "audio": "bell ringing"}, {"image": "dogs", "audio": "dog barking"}],
            "samples_per_pair": 2,
            "params": {"steps": 2, "image_start_step": 1, "height": 64, "width": 256},
            "models": {
                "image": str(tiny_models / "image"),
                "audio": str(tiny_models / "audio"),
                "dtype": "fp32",
                "device": "cpu",
            },
            "scoring": {"clip": str(tiny_models / "clip"), "clap": str(tiny_models / "clap"), "device": "cpu"},
            "batch_size": 4,
        }
    )
    store, points = run_sweep_in_process(spec, root)
    return spec, store, points


def test_scoring_fills_every_row_with_the_scorers_values(generated, tiny_models):
    spec, store, _ = generated
    manifest = read_parquet_bytes(store.get_bytes(MANIFEST_FILE))
    rows = unscored_rows(manifest, read_scores(store))
    assert len(rows) == 4
    worker = ScoreWorker(spec.scoring.model_dump(), store.uri)
    worker.run(rows[:3])
    worker.run(rows[3:])
    scored = apply_scores(manifest, read_scores(store)).to_pylist()
    assert not unscored_rows(apply_scores(manifest, read_scores(store)), read_scores(store))

    clip = ClipScorer(str(tiny_models / "clip"))
    clap = ClapScorer(str(tiny_models / "clap"))
    for row in scored:
        gray = decode_spectrogram_png(store.get_bytes(f"samples/{row['sample_id']}/spectrogram.png"))
        waveform, rate = decode_wav(store.get_bytes(f"samples/{row['sample_id']}/audio.wav"))
        assert row["clip_score"] == pytest.approx(
            clip.score([torch.from_numpy(gray)], [row["image_prompt"]])[0], abs=1e-6
        )  # batched with other prompts: padding changes float rounding only
        assert row["clap_score"] == pytest.approx(clap.score([waveform], rate, [row["audio_prompt"]])[0], abs=1e-6)
        check = cycle_consistency(gray, waveform)
        assert row["cycle_correlation"] == pytest.approx(check["correlation"])
        assert row["cycle_mae"] == pytest.approx(check["mae"])


def test_scores_survive_reconsolidation_and_are_never_computed_twice(generated):
    spec, store, points = generated
    if not read_scores(store).num_rows:
        manifest = read_parquet_bytes(store.get_bytes(MANIFEST_FILE))
        ScoreWorker(spec.scoring.model_dump(), store.uri).run(unscored_rows(manifest, read_scores(store)))
    scores_before = read_scores(store).sort_by("sample_id")
    finalize(store, points)  # a resubmitted sweep consolidates again: the scores must be in the result
    table = read_parquet_bytes(store.get_bytes(MANIFEST_FILE))
    for name in SCORE_COLUMNS:
        assert table.column(name).null_count == 0, name
    assert unscored_rows(table, read_scores(store)) == []
    assert read_scores(store).sort_by("sample_id").equals(scores_before)  # the same scores, none recomputed
    parts_after = {k: store.get_bytes(k) for k in store.list(SCORES_PREFIX)}
    assert len(parts_after) == 1  # compacted into one part
    finalize(store, points)
    assert {k: store.get_bytes(k) for k in store.list(SCORES_PREFIX)} == parts_after  # a compacted part stays


def test_apply_scores_keeps_existing_values_and_fills_only_nulls():
    from jobs.manifest import SCHEMA
    from jobs.score import SCORE_SCHEMA

    base = {name: None for name in SCHEMA.names}
    manifest = pa.Table.from_pylist(
        [{**base, "sample_id": "a", "clip_score": 0.5}, {**base, "sample_id": "b"}], schema=SCHEMA
    )
    scores = pa.Table.from_pylist(
        [
            {"sample_id": "a", "clip_score": 0.9, "clap_score": 0.1, "cycle_mae": 0.2, "cycle_correlation": 0.3},
            {"sample_id": "b", "clip_score": 0.7, "clap_score": 0.6, "cycle_mae": 0.1, "cycle_correlation": 0.8},
        ],
        schema=SCORE_SCHEMA,
    )
    rows = {r["sample_id"]: r for r in apply_scores(manifest, scores).to_pylist()}
    assert rows["a"]["clip_score"] == 0.5 and rows["a"]["clap_score"] == 0.1
    assert rows["b"]["clip_score"] == 0.7 and rows["b"]["cycle_correlation"] == 0.8
    assert [r["sample_id"] for r in unscored_rows(manifest, scores.slice(0, 1))] == ["b"]


def test_scoring_switch_in_specs(tmp_path):
    base = yaml.safe_load(open("jobs/specs/tiny.yaml"))
    for value, expected in ((True, "openai/clip-vit-base-patch16"), ({}, "openai/clip-vit-base-patch16")):
        (tmp_path / "s.yaml").write_text(yaml.safe_dump({**base, "scoring": value}))
        assert load_spec(tmp_path / "s.yaml").scoring.clip == expected
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**base, "scoring": False}))
    assert load_spec(tmp_path / "s.yaml").scoring is None
    # Scoring never changes what a sample is.
    with_scoring = SweepSpec.model_validate({**base, "scoring": True})
    without = SweepSpec.model_validate(base)
    models = SweepModels(ModelIdentity.of_hub("org/image", "1"), ModelIdentity.of_hub("org/audio", "2"))
    assert with_scoring.context(models) == without.context(models)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--methods", "ours,magic"], "unknown method magic"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--pairs", "-1"], "--pairs must be at least 1"),
    ],
)
def test_table1_bad_flags_fail_before_any_work(tmp_path, capsys, flags, message):
    from jobs.table1 import main

    assert main(["jobs/specs/tiny.yaml", "--output", str(tmp_path / "t1"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t1").exists()


def test_table1_reduced_spec_keeps_the_warm_start_fraction():
    from jobs.spec import load_spec
    from jobs.table1 import METHODS, method_spec, reduce_spec

    spec = reduce_spec(load_spec("jobs/specs/paper_table1.yaml"), pairs=3, samples_per_pair=2, steps=20)
    assert spec.prompt_pairs() == load_spec("jobs/specs/paper_table1.yaml").prompt_pairs()[:3]
    assert spec.params["steps"] == 20 and spec.params["image_start_step"] == 2 and spec.samples_per_pair == 2
    image_alone = method_spec(spec, METHODS["image-alone"])
    assert image_alone.params["audio_start_step"] == 20 and image_alone.params["image_start_step"] == 0
    assert image_alone.scoring is not None and image_alone.name.endswith("image-alone")
    assert method_spec(spec, METHODS["ours"]).params == spec.params
