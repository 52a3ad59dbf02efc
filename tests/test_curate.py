"""jobs.curate: the selection rules, the dataset as `datasets` loads it, S3 both ways, and bad input.

The sweep here is synthetic but real in format: every sample's files come from the core's `render_artifacts`
(small random tensors), the manifest from `jobs.manifest`, and the scores are chosen so that every ranking has a
tie at the top-K boundary. Sample ids sort in the reverse of sample_index order, so a tie rule that looked at the
id first would pick different samples.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile
import yaml
from PIL import Image

from jobs import curate
from jobs.manifest import COLUMNS, MANIFEST_FILE, parquet_bytes, table_from_rows
from jobs.store import LocalStore, Store, open_store
from tests.s3_server import CLEARED_ENV_VARS, MotoServer

# pair_index → (clip, clap) of each sample_index. Pair 0 ties: sums 0.8 three times (0.3+0.5, 0.5+0.3, 0.4+0.4),
# CLIP 0.4 twice (average rank 3.5), rank means 3.5 three times. Pair 1's sample 1 has no CLAP score.
SCORES: dict[int, list[tuple[float | None, float | None]]] = {
    0: [(0.30, 0.50), (0.50, 0.30), (0.40, 0.40), (0.60, 0.10), (0.20, 0.70), (0.40, 0.20)],
    1: [(0.70, 0.60), (0.65, None), (0.10, 0.20), (0.55, 0.65)],
    2: [(0.05, 0.05), (0.15, 0.10)],
}
PROMPTS = {
    0: ("a painting of castle towers, grayscale", "bell ringing"),
    1: ("a painting of dogs", "dog barking"),
    2: ("a tiger", "a tiger growling"),
}
HEIGHT, WIDTH = 64, 256
URI_COLUMNS = {
    "image.png": "image_uri",
    "spectrogram.png": "spectrogram_uri",
    "spectrogram.npy": "spectrogram_npy_uri",
    "audio.wav": "audio_uri",
    "sample.json": "record_uri",
}
IMAGE_MODEL, AUDIO_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5", "auffusion/auffusion-full-no-adapter"


def sample_id(pair: int, index: int) -> str:
    return f"p{pair}s{9 - index}"  # sorts in the reverse of sample_index order


def ids(pair_and_indices: list[tuple[int, int]]) -> list[str]:
    return [sample_id(p, i) for p, i in pair_and_indices]


@pytest.fixture(scope="module")
def artifacts() -> dict[str, dict[str, bytes]]:
    """Every sample's files, rendered by the core from small random tensors (distinct per sample)."""
    import torch

    from imgsound_core.artifacts import render_artifacts

    files = {}
    for pair, samples in SCORES.items():
        for index in range(len(samples)):
            generator = torch.Generator().manual_seed(100 * pair + index)
            image = torch.rand(3, HEIGHT, WIDTH, generator=generator)
            spectrogram = torch.rand(HEIGHT, WIDTH, generator=generator)
            waveform = torch.rand(WIDTH * 160, generator=generator) - 0.5
            record = {"sample_id": sample_id(pair, index), "pair_index": pair, "sample_index": index}
            files[sample_id(pair, index)] = render_artifacts(image, spectrogram, waveform, record)
    return files


def manifest_row(pair: int, index: int, uris: dict[str, str], scores=None) -> dict[str, Any]:
    clip, clap = scores if scores is not None else SCORES[pair][index]
    row: dict[str, Any] = {column: None for column in COLUMNS}
    row.update(
        sample_id=sample_id(pair, index),
        sweep="unit",
        pair_index=pair,
        sample_index=index,
        image_prompt=PROMPTS[pair][0],
        audio_prompt=PROMPTS[pair][1],
        image_negative="",
        audio_negative="",
        seed=1000 + index,
        steps=4,
        image_guidance=10.0,
        audio_guidance=10.0,
        image_start_step=1,
        audio_start_step=0,
        audio_weight=0.5,
        height=HEIGHT,
        width=WIDTH,
        vocoder="griffinlim",
        crop=False,
        image_model=IMAGE_MODEL,
        audio_model=AUDIO_MODEL,
        dtype="fp32",
        device="cpu",
        status="ok",
        clip_score=clip,
        clap_score=clap,
        cycle_mae=0.01 * index,
        cycle_correlation=0.9 - 0.01 * index,
        **uris,
    )
    return row


def write_sweep(
    store: Store,
    files: dict[str, dict[str, bytes]],
    manifest_store: Store | None = None,
    scores: dict[int, list[tuple[float | None, float | None]]] = SCORES,
):
    """Artifacts at samples/<id>/ of `store`, manifest.parquet in `manifest_store` (default: the same store)."""
    rows = []
    for pair, samples in scores.items():
        for index, pair_scores in enumerate(samples):
            sid = sample_id(pair, index)
            uris = {
                column: store.put_bytes(f"samples/{sid}/{name}", files[sid][name])
                for name, column in URI_COLUMNS.items()
            }
            rows.append(manifest_row(pair, index, uris, pair_scores))
    table = table_from_rows(rows)
    (manifest_store or store).put_bytes(MANIFEST_FILE, parquet_bytes(table))
    return table


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, artifacts) -> Path:
    """A local sweep folder; tests only read it."""
    root = tmp_path_factory.mktemp("sweep")
    write_sweep(LocalStore(root), artifacts)
    return root


@pytest.fixture(scope="module")
def manifest(sweep) -> pd.DataFrame:
    return pd.read_parquet(sweep / MANIFEST_FILE)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = curate.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def kept_ids(table) -> list[str]:
    return table.column("sample_id").to_pylist()


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- selection -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rank_by", "top_k", "expected"),
    [
        ("clip", 2, [(0, 3), (0, 1), (1, 0), (1, 1), (2, 1), (2, 0)]),  # CLIP alone: pair 1's unscored-CLAP row counts
        ("clap", 2, [(0, 4), (0, 0), (1, 3), (1, 0), (2, 1), (2, 0)]),
        # 0.8 three times at the boundary: the lowest sample_index (0) wins, then 1.
        ("sum", 2, [(0, 4), (0, 0), (1, 0), (1, 3), (2, 1), (2, 0)]),
        ("sum", 3, [(0, 4), (0, 0), (0, 1), (1, 0), (1, 3), (1, 2), (2, 1), (2, 0)]),
        # pair 0 rank means: s1 3.0, s2 3.25, then s0, s3, s4 all 3.5 (→ by sample_index), s5 4.25.
        ("rank-mean", 3, [(0, 1), (0, 2), (0, 0), (1, 0), (1, 3), (1, 2), (2, 1), (2, 0)]),
    ],
)
def test_top_k_per_pair_for_each_ranking_with_ties_at_the_boundary(manifest, sweep, rank_by, top_k, expected):
    table = pq.read_table(sweep / MANIFEST_FILE)
    selection = curate.select(table, rank_by=rank_by, top_k_per_pair=top_k)
    assert kept_ids(selection.rows) == ids(expected)
    ranks = selection.rows.column("rank_in_pair").to_pylist()
    pairs = selection.rows.column("pair_index").to_pylist()
    for pair in set(pairs):
        assert [r for r, p in zip(ranks, pairs) if p == pair] == list(range(1, pairs.count(pair) + 1))


def test_rank_values_use_average_ranks_for_ties(sweep):
    table = pq.read_table(sweep / MANIFEST_FILE)
    rows = curate.select(table, rank_by="rank-mean").rows
    pair0 = [(r["sample_id"], r["rank_value"]) for r in rows.to_pylist() if r["pair_index"] == 0]
    # CLIP 0.4 twice shares rank 3.5, so s2 is (3.5 + 3) / 2 = 3.25 and s5 (3.5 + 5) / 2 = 4.25.
    assert pair0 == list(zip(ids([(0, 1), (0, 2), (0, 0), (0, 3), (0, 4), (0, 5)]), [3.0, 3.25, 3.5, 3.5, 3.5, 4.25]))
    assert curate.average_ranks([0.2, 0.4, 0.4, 0.9]) == [4.0, 2.5, 2.5, 1.0]
    sums = curate.select(table, rank_by="sum", top_k_per_pair=1).rows.column("rank_value").to_pylist()
    assert sums == [0.9, 1.3, 0.25]


def test_equal_keys_and_sample_index_fall_back_to_sample_id():
    rows = [manifest_row(0, 0, {}, (0.5, 0.5)) for _ in range(3)]
    for row, sid in zip(rows, ["c", "a", "b"]):
        row["sample_id"] = sid
    selection = curate.select(table_from_rows(rows), rank_by="sum", top_k_per_pair=2)
    assert kept_ids(selection.rows) == ["a", "b"]


def test_sums_equal_up_to_float_round_off_tie():
    # 0.1 + 0.7 is 0.7999999999999999 in floats, 0.5 + 0.3 is 0.8: the same sum, so sample_index decides.
    rows = [manifest_row(0, i, {}, scores) for i, scores in enumerate([(0.5, 0.3), (0.1, 0.7), (0.2, 0.2)])]
    selection = curate.select(table_from_rows(rows), rank_by="sum", top_k_per_pair=2)
    assert kept_ids(selection.rows) == ids([(0, 0), (0, 1)])
    assert selection.rows.column("rank_value").to_pylist() == [0.8, 0.8]


def test_min_filters_keep_scores_equal_to_the_minimum(sweep):
    table = pq.read_table(sweep / MANIFEST_FILE)
    selection = curate.select(table, min_clip=0.4, min_clap=0.4)
    assert kept_ids(selection.rows) == ids([(0, 2), (1, 0), (1, 3)])
    assert (selection.candidates, selection.unscored, selection.below_minimum) == (12, 1, 8)
    # A CLIP filter with a CLIP ranking keeps pair 1's sample without a CLAP score.
    clip_only = curate.select(table, rank_by="clip", min_clip=0.6)
    assert kept_ids(clip_only.rows) == ids([(0, 3), (1, 0), (1, 1)])


def test_include_restricts_the_candidates_and_filters_still_apply(sweep, tmp_path, capsys):
    table = pq.read_table(sweep / MANIFEST_FILE)
    chosen = ids([(0, 3), (0, 4), (1, 2)])
    assert kept_ids(curate.select(table, top_k_per_pair=1, include=chosen).rows) == ids([(0, 4), (1, 2)])
    assert kept_ids(curate.select(table, min_clap=0.5, include=chosen).rows) == ids([(0, 4)])

    favourites = tmp_path / "favourites.json"
    favourites.write_text(json.dumps({"sample_ids": chosen}))
    code, out, err = run(capsys, sweep, "--out", tmp_path / "out", "--include", favourites, "--top-k-per-pair", "1")
    assert code == 0, err
    assert pq.read_table(tmp_path / "out" / "data").column("sample_id").to_pylist() == ids([(0, 4), (1, 2)])
    assert curate.read_include(str(favourites)) == chosen
    favourites.write_text(json.dumps(chosen))
    assert curate.read_include(str(favourites)) == chosen


def test_a_missing_score_kind_fails_with_one_sentence(tmp_path, artifacts, capsys):
    no_clap = {pair: [(clip, None) for clip, _ in samples] for pair, samples in SCORES.items()}
    write_sweep(LocalStore(tmp_path / "sweep"), artifacts, scores=no_clap)
    code, _, err = run(capsys, tmp_path / "sweep", "--out", tmp_path / "out")
    assert code == 2
    assert err.strip() == (
        "curate: error: The manifest has no CLAP scores; run the sweep with scoring enabled (`scoring:` in the spec) "
        "first."
    )
    assert not (tmp_path / "out").exists()
    code, _, err = run(
        capsys, tmp_path / "sweep", "--out", tmp_path / "out", "--rank-by", "clip", "--top-k-per-pair", "1"
    )
    assert code == 0, err
    assert pq.read_table(tmp_path / "out" / "data").column("sample_id").to_pylist() == ids([(0, 3), (1, 0), (2, 1)])


def test_pair_statistics_match_pandas(sweep, tmp_path, capsys, manifest):
    code, _, err = run(capsys, sweep, "--out", tmp_path / "out", "--top-k-per-pair", "2", "--min-clap", "0.2")
    assert code == 0, err
    pairs = pd.read_parquet(tmp_path / "out" / curate.PAIRS_FILE)
    kept = pd.read_parquet(tmp_path / "out" / "data")

    grouped = manifest.groupby("pair_index")
    expected = pd.DataFrame(
        {
            "image_prompt": grouped["image_prompt"].first(),
            "audio_prompt": grouped["audio_prompt"].first(),
            "generated": grouped.size(),
            "kept": kept.groupby("pair_index").size().reindex(grouped.size().index, fill_value=0),
            **{
                f"{score}_{stat}": grouped[f"{score}_score"].agg(stat)
                for score in ("clip", "clap")
                for stat in ("mean", "std", "min", "max")
            },
            "kept_clip_mean": kept.groupby("pair_index")["clip_score"].mean(),
            "kept_clap_mean": kept.groupby("pair_index")["clap_score"].mean(),
        }
    ).reset_index()
    assert list(pairs["kept"]) == [2, 2, 0]  # pair 2's CLAP scores are all below 0.2
    pd.testing.assert_frame_equal(pairs, expected[pairs.columns], check_dtype=False)


# --- the dataset ---------------------------------------------------------------------------------------------


def test_the_dataset_loads_with_datasets_and_decodes_images_and_audio(sweep, tmp_path, capsys, artifacts, monkeypatch):
    from datasets import Audio, Features, load_dataset
    from datasets import Image as ImageFeature

    written: list[str] = []
    put_bytes = LocalStore.put_bytes
    monkeypatch.setattr(
        LocalStore, "put_bytes", lambda self, key, data: written.append(key) or put_bytes(self, key, data)
    )
    out = tmp_path / "curated"
    code, stdout, err = run(capsys, sweep, "--out", out, "--top-k-per-pair", "2", "--shard-rows", "4")
    assert code == 0, err
    expected = ids([(0, 4), (0, 0), (1, 0), (1, 3), (2, 1), (2, 0)])

    shards = sorted(p.name for p in (out / "data").iterdir())
    assert shards == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert [k for k in written if not k.startswith("_probe/")] == [f"data/{s}" for s in shards] + [
        curate.PAIRS_FILE,
        curate.CARD_FILE,
    ]  # the card is written last
    assert not (out / "_probe").exists()

    files = sorted(str(p) for p in (out / "data").glob("*.parquet"))
    by_files = load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache1"))
    by_folder = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache2"))
    for dataset in (by_files, by_folder):
        assert dataset["sample_id"] == expected
        assert isinstance(dataset.features, Features)
        assert isinstance(dataset.features["image"], ImageFeature)
        assert isinstance(dataset.features["spectrogram"], ImageFeature)
        assert isinstance(dataset.features["audio"], Audio) and dataset.features["audio"].sampling_rate == 16000
        for column in ("pair_index", "sample_index", "image_prompt", "audio_prompt", "seed", "steps", "audio_weight"):
            assert column in dataset.column_names
        for column in ("image_model", "audio_model", "clip_score", "clap_score", "cycle_correlation"):
            assert column in dataset.column_names
        assert dataset["rank_in_pair"] == [1, 2, 1, 2, 1, 2]
        assert dataset["rank_value"] == pytest.approx([0.9, 0.8, 1.3, 1.2, 0.25, 0.1])

    first = by_folder[0]
    source = artifacts[expected[0]]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (WIDTH, HEIGHT)
    assert first["image"].mode == "RGB"
    assert np.array_equal(np.asarray(first["image"]), np.asarray(Image.open(io.BytesIO(source["image.png"]))))
    assert first["spectrogram"].mode == "L" and first["spectrogram"].size == (WIDTH, HEIGHT)
    samples, rate = soundfile.read(io.BytesIO(source["audio.wav"]))
    assert first["audio"]["sampling_rate"] == 16000 == rate
    assert np.allclose(first["audio"]["array"], samples, atol=1e-6) and len(samples) == WIDTH * 160
    assert first["seed"] == 1004 and first["image_model"] == IMAGE_MODEL and first["clip_score"] == 0.2

    pairs = load_dataset(str(out), "pairs", split="train", cache_dir=str(tmp_path / "cache3"))
    assert pairs["pair_index"] == [0, 1, 2] and pairs["kept"] == [2, 2, 2]

    card = (out / curate.CARD_FILE).read_text()
    front_matter = yaml.safe_load(card.split("---")[1])
    assert front_matter["configs"][0]["config_name"] == "default"
    assert front_matter["configs"][0]["data_files"][0]["path"] == "data/*.parquet"
    assert "CC BY-NC-SA 4.0" in card and "CreativeML OpenRAIL-M" in card and "non-commercial" in card
    assert "python -m jobs.curate" in card and "--top-k-per-pair 2" in card
    assert "| generated (in the manifest) | 12 |" in card and "| **kept** | **6** |" in card

    lines = stdout.strip().splitlines()
    assert lines[-1] == f"curated 6 of 12 samples from 3 of 3 pairs in 2 shards → {LocalStore(out).uri}"
    assert any(line.split()[:2] == ["0", "2/6"] and "bell ringing" in line for line in lines)


def test_curate_imports_neither_datasets_nor_torch():
    code = "import sys, jobs.curate; print(sorted(m for m in ('datasets', 'torch') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_audio_rate_is_the_cores():
    from imgsound_core.audio.mel import SAMPLE_RATE_HZ

    assert curate.AUDIO_SAMPLE_RATE_HZ == SAMPLE_RATE_HZ
    assert curate.hf_features(curate.DATASET_SCHEMA)["audio"] == {"sampling_rate": SAMPLE_RATE_HZ, "_type": "Audio"}


def test_artifacts_are_found_after_the_sweep_was_copied(tmp_path, artifacts, capsys):
    """A copied sweep keeps URIs naming the original place: the copy's samples/<id>/ is used."""
    original = tmp_path / "original"
    write_sweep(LocalStore(original), artifacts)
    shutil.copytree(original, tmp_path / "sweep")
    shutil.rmtree(original)
    code, _, err = run(capsys, tmp_path / "sweep" / MANIFEST_FILE, "--out", tmp_path / "out", "--top-k-per-pair", "1")
    assert code == 0, err
    table = pq.read_table(tmp_path / "out" / "data")
    assert table.column("sample_id").to_pylist() == ids([(0, 4), (1, 0), (2, 1)])
    assert table.column("audio").to_pylist()[0]["bytes"] == artifacts[sample_id(0, 4)]["audio.wav"]


def hostile_sweep(tmp_path: Path, artifacts, change) -> Path:
    """A sweep whose manifest's first row is edited by `change(row, root)`."""
    root = tmp_path / "sweep"
    table = write_sweep(LocalStore(root), artifacts)
    rows = table.to_pylist()
    change(rows[0], root)
    LocalStore(root).put_bytes(MANIFEST_FILE, parquet_bytes(table_from_rows(rows)))
    return root


@pytest.mark.parametrize(
    "name, change, words",
    [
        (
            "a file outside the sweep",
            lambda row, root: row.update(image_uri=(root.parent / "id_rsa").as_uri()),
            "is missing",
        ),
        (
            "a file of the sweep outside the sample's folder",
            lambda row, root: row.update(image_uri=(root / "manifest.parquet").as_uri()),
            "curation reads only the sweep's own artifacts",
        ),
        (
            "a climb out of the sample's folder",
            lambda row, root: row.update(image_uri=(root / "samples" / row["sample_id"]).as_uri() + "/../../x.png"),
            "curation reads only the sweep's own artifacts",
        ),
        ("a sample id that climbs", lambda row, root: row.update(sample_id="../../x"), "not a sample id"),
        (
            "a file that is not what it claims",
            lambda row, root: (root / "samples" / row["sample_id"] / "audio.wav").write_bytes(b"#!/bin/sh\nrm -rf /\n"),
            "is not a WAV",
        ),
        (
            "a picture that is not a PNG",
            lambda row, root: (root / "samples" / row["sample_id"] / "image.png").write_text("ssh-rsa AAAA secret"),
            "is not a PNG",
        ),
    ],
)
def test_a_manifest_cannot_make_curation_publish_other_files(tmp_path, artifacts, capsys, name, change, words):
    """Curation reads only the sweep's own samples/<id>/ files, and only files that are what their column says:
    any other row is one sentence, exit 2, and nothing written. (A secret lying next to the sweep stays there.)"""
    (tmp_path / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY----- secret")
    root = hostile_sweep(tmp_path, artifacts, change)
    code, _, err = run(capsys, root, "--out", tmp_path / "out")
    assert code == 2, (name, err)
    assert words in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))


# --- S3 ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto():
    server = MotoServer()
    with pytest.MonkeyPatch.context() as patch:
        for name in CLEARED_ENV_VARS:
            patch.delenv(name, raising=False)
        for name, value in server.env().items():
            patch.setenv(name, value)
        with server:
            yield server


def test_s3_round_trip(moto, tmp_path, artifacts, capsys, monkeypatch):
    bucket = f"imgsound-curate-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto.endpoint_url)
    client.create_bucket(Bucket=bucket)
    # Only --endpoint-url names the server here, so the option is what routes every request.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    write_sweep(open_store(f"s3://{bucket}/runs/r1", endpoint_url=moto.endpoint_url), artifacts)
    argv = [f"s3://{bucket}/runs/r1/manifest.parquet", "--out", f"s3://{bucket}/curated/r1", "--rank-by", "clap"]
    code, stdout, err = run(capsys, *argv, "--top-k-per-pair", "1", "--endpoint-url", moto.endpoint_url)
    assert code == 0, err
    assert stdout.strip().splitlines()[-1].endswith(f"→ s3://{bucket}/curated/r1")

    local = tmp_path / "download"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="curated/r1/")["Contents"]]
    assert sorted(k.removeprefix("curated/r1/") for k in keys) == [
        curate.CARD_FILE,
        "data/train-00000-of-00001.parquet",
        curate.PAIRS_FILE,
    ]
    for key in keys:
        target = local / key.removeprefix("curated/r1/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    from datasets import load_dataset

    dataset = load_dataset(str(local), split="train", cache_dir=str(tmp_path / "cache"))
    assert dataset["sample_id"] == ids([(0, 4), (1, 3), (2, 1)])
    samples, _ = soundfile.read(io.BytesIO(artifacts[sample_id(1, 3)]["audio.wav"]))
    assert np.allclose(dataset[1]["audio"]["array"], samples, atol=1e-6)
    assert f"s3://{bucket}/runs/r1/manifest.parquet" in (local / curate.CARD_FILE).read_text()

    # The folder form of MANIFEST works too, and the written dataset is protected.
    code, _, err = run(
        capsys, f"s3://{bucket}/runs/r1", "--out", f"s3://{bucket}/curated/r1", "--endpoint-url", moto.endpoint_url
    )
    assert code == 2 and "already holds a curated dataset" in err


# --- bad input, overwrite, storage failure -------------------------------------------------------------------


@pytest.fixture(scope="module")
def existing(sweep, tmp_path_factory) -> Path:
    """A complete curated dataset, which no failed run may change."""
    out = tmp_path_factory.mktemp("existing") / "out"
    assert curate.main([str(sweep), "--out", str(out), "--top-k-per-pair", "1"]) == 0
    return out


def _include_file(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "include.json"
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("make_argv", "message"),
    [
        (lambda s, o, t: [t / "nowhere" / MANIFEST_FILE, "--out", o, "--overwrite"], "There is no manifest at"),
        (lambda s, o, t: [t, "--out", o, "--overwrite"], "There is no manifest at"),
        (
            lambda s, o, t: [_include_file(t, "not parquet"), "--out", o, "--overwrite"],
            "is not a readable sweep manifest",
        ),
        (lambda s, o, t: [s, "--out", o, "--overwrite", "--top-k-per-pair", "-1"], "at least 1, got '-1'"),
        (lambda s, o, t: [s, "--out", o, "--overwrite", "--top-k-per-pair", "0"], "at least 1, got '0'"),
        (lambda s, o, t: [s, "--out", o, "--overwrite", "--min-clip", "1.5"], "scores are in [0, 1], got '1.5'"),
        (lambda s, o, t: [s, "--out", o, "--overwrite", "--min-clap", "-0.1"], "scores are in [0, 1], got '-0.1'"),
        (lambda s, o, t: [s, "--out", o, "--overwrite", "--min-clap", "nan"], "scores are in [0, 1], got 'nan'"),
        (lambda s, o, t: [s, "--out", o, "--overwrite", "--shard-rows", "0"], "at least 1, got '0'"),
        (lambda s, o, t: [s, "--out", o, "--overwrite", "--rank-by", "best"], "invalid choice: 'best'"),
        (lambda s, o, t: [s, "--overwrite"], "the following arguments are required: --out"),
        (
            lambda s, o, t: [s, "--out", o, "--overwrite", "--include", _include_file(t, '["p0s9", "nope"]')],
            "1 of the 2 sample ids to include are not in the manifest (first: nope)",
        ),
        (lambda s, o, t: [s, "--out", o, "--overwrite", "--include", _include_file(t, "{")], "is not JSON"),
        (
            lambda s, o, t: [s, "--out", o, "--overwrite", "--include", _include_file(t, '{"ids": 1}')],
            "must hold a JSON",
        ),
        (lambda s, o, t: [s, "--out", o, "--overwrite", "--include", t / "absent.json"], "Cannot read the --include"),
        (lambda s, o, t: [s, "--out", o, "--overwrite", "--min-clip", "0.99"], "No sample passes --min-clip 0.99"),
        (lambda s, o, t: [s, "--out", o], "already holds a curated dataset"),
        (lambda s, o, t: [s, "--out", s, "--overwrite"], "is a sweep's folder"),
        (lambda s, o, t: [s, "--out", "s3://Bad_Bucket/x"], "is not a valid S3 bucket name"),
        (lambda s, o, t: [s, "--out", "ftp://host/x"], "unsupported scheme 'ftp'"),
    ],
)
def test_bad_input_exits_2_with_one_sentence_and_leaves_the_output_alone(
    sweep, existing, tmp_path, capsys, make_argv, message
):
    before = folder_digest(existing)
    sweep_before = folder_digest(sweep)
    code, stdout, err = run(capsys, *make_argv(sweep, existing, tmp_path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("curate: error: ") and message in lines[0], err
    assert "Traceback" not in err and stdout == ""
    assert folder_digest(existing) == before
    assert folder_digest(sweep) == sweep_before


def test_argument_errors_exit_2_from_the_command_line(sweep, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jobs.curate", str(sweep), "--out", str(tmp_path / "o"), "--top-k-per-pair", "-3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.startswith("curate: error: argument --top-k-per-pair")
    assert not (tmp_path / "o").exists()


def test_a_missing_artifact_is_bad_input_and_nothing_is_written(tmp_path, artifacts, capsys):
    write_sweep(LocalStore(tmp_path / "sweep"), artifacts)
    (tmp_path / "sweep" / "samples" / sample_id(2, 1) / "audio.wav").unlink()
    code, _, err = run(capsys, tmp_path / "sweep", "--out", tmp_path / "out", "--top-k-per-pair", "1")
    assert code == 2
    assert f"The audio_uri of sample {sample_id(2, 1)} is missing" in err
    assert not (tmp_path / "out").exists()
    # Not kept, not needed: the same sweep curates when that sample is left out.
    code, _, err = run(capsys, tmp_path / "sweep", "--out", tmp_path / "out", "--min-clip", "0.2")
    assert code == 0, err


def test_overwrite_replaces_the_dataset_and_removes_stale_shards(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(capsys, sweep, "--out", out, "--shard-rows", "2")[0] == 0
    assert len(list((out / "data").iterdir())) == 6  # 11 scored samples, 2 per shard
    code, _, err = run(capsys, sweep, "--out", out, "--top-k-per-pair", "1", "--rank-by", "clip")
    assert code == 2 and "--overwrite" in err
    assert len(list((out / "data").iterdir())) == 6

    code, _, err = run(capsys, sweep, "--out", out, "--top-k-per-pair", "1", "--rank-by", "clip", "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    assert pq.read_table(out / "data").column("sample_id").to_pylist() == ids([(0, 3), (1, 0), (2, 1)])
    assert pq.read_table(out / curate.PAIRS_FILE).column("kept").to_pylist() == [1, 1, 1]
    assert "--rank-by clip" in (out / curate.CARD_FILE).read_text()


def test_a_storage_failure_while_writing_exits_1_and_leaves_no_card(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data").write_text("a file where the shards' folder should be")
    code, stdout, err = run(capsys, sweep, "--out", out, "--top-k-per-pair", "1")
    assert code == 1
    assert err.startswith("curate: error: storage failed: Could not write") and "rerun with --overwrite" in err
    assert not (out / curate.CARD_FILE).exists() and not (out / curate.PAIRS_FILE).exists()
    assert stdout == ""
