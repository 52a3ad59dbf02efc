"""Tests for the curation gallery (`imgsound gallery`, imgsound_core/gallery.py and its page).

Sources are built from real artifacts (`render_artifacts` on small smooth random tensors): an `imgsound generate`
folder, a sweep folder with a manifest (consolidated or parts only), a manifest.parquet path, and a sweep on a
local S3 server. The page is driven in real headless Chromium from `file://`: cards, playback and the playhead,
seeking, sorting, grouping, filtering, favourites and their export, keys, pages, and missing files at view time.
One test takes docs/gallery.png, the README's picture of the gallery (written when missing or with
IMGSOUND_UPDATE_DOCS=1).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from imgsound_core.artifacts import render_artifacts, write_sample_dir
from imgsound_core.cli import main
from imgsound_core.gallery import (
    MARKER,
    MEDIA_FILES,
    MEDIA_ROLES,
    STATIC_ASSETS,
    THUMB_MAX_SIZE,
    GalleryRecord,
    data_script,
    make_thumbnail,
    static_asset,
    unique_keys,
)
from jobs.gallery import collect_sweep_samples

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "gallery.png"
IMGSOUND = Path(sys.executable).with_name("imgsound")
HEIGHT, WIDTH = 64, 256  # 256 columns = 2.56 s of audio
DURATION_S = WIDTH * 160 / 16000


@dataclass(frozen=True)
class Spec:
    """One test sample: its prompts, seed and scores (None: not scored)."""

    image_prompt: str
    audio_prompt: str
    seed: int
    clip: float | None
    clap: float | None

    @property
    def sample_id(self) -> str:
        return hashlib.sha256(f"{self.image_prompt}|{self.audio_prompt}|{self.seed}".encode()).hexdigest()[:16]

    @property
    def total(self) -> float | None:
        return None if self.clip is None or self.clap is None else self.clip + self.clap


CASTLE = ("a painting of castle towers, grayscale", "bell ringing")
TIGER = ("a tiger, grayscale", "tiger growling")
SPECS = [
    Spec(*CASTLE, 0, 0.31, 0.20),
    Spec(*CASTLE, 1, 0.25, 0.35),
    Spec(*CASTLE, 2, None, None),
    Spec(*TIGER, 3, 0.40, 0.10),
    Spec(*TIGER, 4, 0.22, 0.41),
]
IDS = [spec.sample_id for spec in SPECS]


def by_score(specs: list[Spec], metric: str) -> list[str]:
    """The page's order for a score: best first, unscored last, ties in source order."""

    def key(item: tuple[int, Spec]) -> tuple[bool, float, int]:
        index, spec = item
        value = {"clip": spec.clip, "clap": spec.clap, "sum": spec.total}[metric]
        return (value is None, -(value or 0.0), index)

    return [spec.sample_id for _, spec in sorted(enumerate(specs), key=key)]


# ---- sources ------------------------------------------------------------------------------------------------------


def smooth(generator: torch.Generator, channels: int, height: int, width: int) -> torch.Tensor:
    """Random but smooth pictures (blobs): they look like something and compress well in the screenshot."""
    coarse = torch.rand((1, channels, 4, 16), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").clamp(0, 1)[0]


def artifacts_for(spec: Spec) -> dict[str, bytes]:
    generator = torch.Generator().manual_seed(spec.seed)
    rows = torch.linspace(0, 1, HEIGHT)[:, None]
    harmonics = (torch.sin(rows * 40 + spec.seed) > 0.7).float() * torch.linspace(1, 0.3, WIDTH)[None, :]
    spectrogram = (0.6 * smooth(generator, 1, HEIGHT, WIDTH)[0] + 0.4 * harmonics).clamp(0, 1)
    # As in the method, the picture is the same canvas seen by the image model: here a tinted copy.
    tint = torch.rand(3, 1, 1, generator=generator) * 0.5 + 0.5
    image = (spectrogram[None] * tint + 0.1 * smooth(generator, 3, HEIGHT, WIDTH)).clamp(0, 1)
    waveform = 0.1 * torch.randn(WIDTH * 160, generator=generator)
    record = {
        "image_prompt": spec.image_prompt,
        "audio_prompt": spec.audio_prompt,
        "seed": spec.seed,
        "sample_id": spec.sample_id,
    }
    if spec.clip is not None:
        record |= {"clip_score": spec.clip, "clap_score": spec.clap}
    return render_artifacts(image, spectrogram, waveform, record)


def write_generate_folder(root: Path, specs: list[Spec]) -> Path:
    """`imgsound generate`'s layout: ROOT/sample_000/ … (the scores as `imgsound score` writes them)."""
    for index, spec in enumerate(specs):
        write_sample_dir(root / f"sample_{index:03d}", artifacts_for(spec))
    return root


def manifest_row(spec: Spec, index: int, root: Path) -> dict:
    from jobs.manifest import COLUMNS

    row = dict.fromkeys(COLUMNS)
    uri = (root / "samples" / spec.sample_id).as_uri()
    row |= {
        "sample_id": spec.sample_id,
        "sweep": "gallery-test",
        "pair_index": 0 if (spec.image_prompt, spec.audio_prompt) == CASTLE else 1,
        "sample_index": index,
        "image_prompt": spec.image_prompt,
        "audio_prompt": spec.audio_prompt,
        "seed": spec.seed,
        "height": HEIGHT,
        "width": WIDTH,
        "image_uri": f"{uri}/image.png",
        "spectrogram_uri": f"{uri}/spectrogram.png",
        "audio_uri": f"{uri}/audio.wav",
        "record_uri": f"{uri}/sample.json",
        "status": "ok",
        "clip_score": spec.clip,
        "clap_score": spec.clap,
    }
    return row


def write_sweep_folder(root: Path, specs: list[Spec], parts_only: bool = False) -> Path:
    """A sweep's layout: ROOT/samples/<id>/… and ROOT/manifest.parquet (or only ROOT/manifest/part-*.parquet)."""
    from jobs.manifest import MANIFEST_FILE, batch_part_key, parquet_bytes, table_from_rows

    for spec in specs:
        write_sample_dir(root / "samples" / spec.sample_id, artifacts_for(spec))
    rows = [manifest_row(spec, index, root) for index, spec in enumerate(specs)]
    if parts_only:
        for half in (rows[:2], rows[2:]):
            target = root / batch_part_key(r["sample_id"] for r in half)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(parquet_bytes(table_from_rows(half)))
    else:
        (root / MANIFEST_FILE).write_bytes(parquet_bytes(table_from_rows(rows)))
    return root


def run_gallery(*args: str | Path, sweep: bool = False) -> tuple[int, str, str]:
    """`imgsound gallery …` (or, for sweeps, `python -m jobs.gallery …`) in-process; (exit code, stdout, stderr)."""
    from jobs.gallery import main as sweep_gallery_main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = sweep_gallery_main([*map(str, args)]) if sweep else main(["gallery", *map(str, args)])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.stdout, sys.stderr = saved
    return code, out.getvalue(), err.getvalue()


def build(source: str | Path, out: Path, *extra: str, sweep: bool = False) -> Path:
    code, stdout, stderr = run_gallery(source, "--out", out, *extra, sweep=sweep)
    assert code == 0, stderr
    assert f"wrote {out / 'index.html'}" in stdout
    return out


def read_data(site: Path) -> dict:
    text = (site / "data" / "samples.js").read_text()
    prefix = "window.IMGSOUND_GALLERY = "
    assert text.startswith(prefix) and text.endswith(";\n")
    return json.loads(text[len(prefix) : -2])


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMGSOUND_DEBUG", raising=False)


@pytest.fixture(scope="module")
def generate_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_generate_folder(tmp_path_factory.mktemp("generate") / "run", SPECS)


@pytest.fixture(scope="module")
def site(generate_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(generate_source, tmp_path_factory.mktemp("sites") / "gallery")


# ---- the site on disk ---------------------------------------------------------------------------------------------


def test_site_layout_and_data(site: Path, generate_source: Path) -> None:
    """index.html and its assets, one media folder per sample (copies + small thumbnails), relative URLs."""
    for name in (*STATIC_ASSETS, "data/samples.js", MARKER):
        assert (site / name).is_file(), name
    assert not [p for p in site.parent.iterdir() if p.name.startswith(".")], "staging left behind"
    data = read_data(site)
    assert [s["id"] for s in data["samples"]] == IDS
    assert data["page_size"] == 50 and data["title"] == "imgsound · run"
    for sample, spec in zip(data["samples"], SPECS):
        assert (sample["image_prompt"], sample["audio_prompt"], sample["seed"]) == (
            spec.image_prompt,
            spec.audio_prompt,
            spec.seed,
        )
        assert (sample["clip_score"], sample["clap_score"]) == (spec.clip, spec.clap)
        assert sample["duration_s"] == pytest.approx(DURATION_S)
        assert sample["aspect"] == pytest.approx(WIDTH / HEIGHT)
        assert set(sample["media"]) == set(MEDIA_ROLES)
        for url in sample["media"].values():
            assert not url.startswith(("/", "file:", "http")), url  # relative: works from disk and any host
            assert (site / url).is_file(), url
        folder = generate_source / f"sample_{SPECS.index(spec):03d}"
        for name in ("image.png", "spectrogram.png", "audio.wav"):
            assert (site / sample["media"][name.split(".")[0]]).read_bytes() == (folder / name).read_bytes()
        with Image.open(site / sample["media"]["spectrogram_thumb"]) as thumb:
            assert thumb.format in ("WEBP", "JPEG") and thumb.width <= THUMB_MAX_SIZE[0]


def test_thumbnails_are_small() -> None:
    """A 256×1024 spectrogram becomes a 512×128 thumbnail, a fraction of the PNG's bytes; small ones stay."""
    generator = torch.Generator().manual_seed(0)
    big = render_artifacts(
        smooth(generator, 3, 256, 1024), smooth(generator, 1, 256, 1024)[0], torch.zeros(1024 * 160), {}
    )
    thumb = make_thumbnail(big["spectrogram.png"])
    assert thumb.size == (512, 128) and thumb.source_size == (1024, 256)
    assert len(thumb.data) < len(big["spectrogram.png"]) / 4
    assert make_thumbnail(artifacts_for(SPECS[0])["image.png"]).size == (WIDTH, HEIGHT)  # never upscaled


def test_data_script_with_server_routes() -> None:
    """A server serves the same page with its own media routes; the data stays safe to inline in <script>."""
    record = GalleryRecord(sample_id="abc", key="abc", image_prompt="</script><b>", audio_prompt="ü", seed=3)
    script = data_script([record], media_url=lambda r, role: f"/gallery/media/{r.sample_id}/{role}", page_size=7)
    assert "</script>" not in script and script.isascii()
    data = json.loads(script.removeprefix("window.IMGSOUND_GALLERY = ").removesuffix(";\n"))
    assert data["page_size"] == 7 and data["version"] == 1
    (sample,) = data["samples"]
    assert sample["image_prompt"] == "</script><b>" and sample["audio_prompt"] == "ü"
    assert sample["media"] == {role: f"/gallery/media/abc/{role}" for role in MEDIA_ROLES}
    assert sample["clip_score"] is None
    page = static_asset("index.html")
    assert b'<script src="data/samples.js">' in page and b'<script src="gallery.js">' in page
    assert b"IMGSOUND_GALLERY" in static_asset("gallery.js")
    assert set(MEDIA_FILES) == set(MEDIA_ROLES)


def test_sweep_layout_names_agree() -> None:
    from imgsound_core import gallery
    from jobs.manifest import MANIFEST_FILE, MANIFEST_PREFIX

    assert (gallery._SWEEP_MANIFEST, gallery._SWEEP_PARTS) == (MANIFEST_FILE, MANIFEST_PREFIX)


def test_no_heavy_imports(generate_source: Path, tmp_path: Path) -> None:
    """A gallery of a generate folder loads neither Ray nor boto3 nor even pyarrow."""
    code = (
        "import sys; from imgsound_core.gallery import build_gallery, collect_samples;"
        f" build_gallery(collect_samples({str(generate_source)!r}), {str(tmp_path / 'site')!r});"
        " print(sorted(m for m in ('ray', 'boto3', 'botocore', 'pyarrow') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=REPO
    )
    assert done.stdout.strip() == "[]", done
    assert (tmp_path / "site" / "index.html").is_file()


def test_unique_keys() -> None:
    assert unique_keys(["a", "A", "a/b", "a_b", "", "../x"]) == ["a", "A-2", "a_b", "a_b-2", "sample", "x"]


def test_overwrite_replaces_only_galleries(generate_source: Path, tmp_path: Path) -> None:
    out = build(generate_source, tmp_path / "g")
    code, _, err = run_gallery(generate_source, "--out", out)
    assert code == 2 and "--overwrite" in err
    build(generate_source, out, "--overwrite", "--page-size", "2")
    assert read_data(out)["page_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]  # nothing aside or half-written


# ---- other sources ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["folder", "manifest-path", "file-uri", "parts-only"])
def test_manifest_sources(layout: str, tmp_path: Path) -> None:
    """A sweep output: the manifest's rows (prompts, seeds, scores) and samples/<id>/ beside it."""
    root = write_sweep_folder(tmp_path / "sweep", SPECS, parts_only=layout == "parts-only")
    source = {
        "folder": root,
        "manifest-path": root / "manifest.parquet",
        "file-uri": root.as_uri(),
        "parts-only": root,
    }[layout]
    records = [s.record for s in collect_sweep_samples(source)]
    assert [r.sample_id for r in records] == IDS
    assert [(r.clip_score, r.clap_score) for r in records] == [(s.clip, s.clap) for s in SPECS]
    assert records[3].label == "pair 1 · sample 3"
    site = build(source, tmp_path / "site", sweep=True)
    assert [s["id"] for s in read_data(site)["samples"]] == IDS
    assert read_data(site)["title"] == "imgsound · sweep"
    # The core command reads generate folders only, and says where sweeps go.
    assert "python -m jobs.gallery" in build_error(source, tmp_path / "core")


def test_s3_sweep_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep on S3 (a local moto server): read through jobs.store, copied into the site."""
    boto3 = pytest.importorskip("boto3")
    from jobs.manifest import MANIFEST_FILE, parquet_bytes, table_from_rows
    from jobs.store import open_store
    from tests.s3_server import CLEARED_ENV_VARS, MotoServer

    server = MotoServer()
    for name in CLEARED_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    with server:
        boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket="gallery-test")
        store = open_store("s3://gallery-test/runs/r1")
        rows = []
        for index, spec in enumerate(SPECS[:2]):
            for name, data in artifacts_for(spec).items():
                store.put_bytes(f"samples/{spec.sample_id}/{name}", data)
            rows.append(manifest_row(spec, index, tmp_path))
        store.put_bytes(MANIFEST_FILE, parquet_bytes(table_from_rows(rows)))
        site = build("s3://gallery-test/runs/r1", tmp_path / "site", sweep=True)
        data = read_data(site)
        assert [s["id"] for s in data["samples"]] == IDS[:2] and data["title"] == "imgsound · r1"
        sample = data["samples"][0]
        assert (site / sample["media"]["audio"]).read_bytes() == store.get_bytes(f"samples/{IDS[0]}/audio.wav")
        missing = build_error("s3://gallery-test/nothing-here", tmp_path / "none", sweep=True)
        assert "holds no samples" in missing


# ---- bad input ----------------------------------------------------------------------------------------------------


def build_error(source: str | Path, out: Path, *extra: str, sweep: bool = False) -> str:
    """The one sentence of a refused build; nothing may be left at or beside `out`."""
    before = set(out.parent.iterdir()) if out.parent.exists() else set()
    code, stdout, stderr = run_gallery(source, "--out", out, *extra, sweep=sweep)
    assert code == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    prefix = "gallery: error: " if sweep else "imgsound: error: "
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr
    assert "Traceback" not in stderr
    after = set(out.parent.iterdir()) if out.parent.exists() else set()
    assert not [p for p in after - before if p.name.startswith(".")], "half-written staging left behind"
    return lines[0]


def test_bad_sources(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no samples" in build_error(empty, tmp_path / "out")
    assert "does not exist" in build_error(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "notes.txt").write_text("hello")
    assert "is not a folder of samples" in build_error(tmp_path / "notes.txt", tmp_path / "out")
    assert "neither" in build_error(tmp_path / "notes.txt", tmp_path / "out", sweep=True)
    assert "does not exist" in build_error(tmp_path / "nowhere", tmp_path / "out", sweep=True)

    no_wav = write_generate_folder(tmp_path / "no-wav", SPECS[:3])
    (no_wav / "sample_001" / "audio.wav").unlink()
    message = build_error(no_wav, tmp_path / "out")
    assert "sample_001 has no audio.wav" in message

    corrupt = write_generate_folder(tmp_path / "corrupt", SPECS[:2])
    png = corrupt / "sample_001" / "image.png"
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])  # truncated
    assert "sample_001/image.png is not a picture that decodes" in build_error(corrupt, tmp_path / "out")
    (corrupt / "sample_001" / "image.png").write_bytes(b"not a png at all")
    assert "image.png" in build_error(corrupt, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    bad_json = write_generate_folder(tmp_path / "bad-json", SPECS[:1])
    (bad_json / "sample_000" / "sample.json").write_text("{")
    assert "not valid JSON" in build_error(bad_json, tmp_path / "out")

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "manifest.parquet").write_bytes(b"PAR1 garbage")
    assert "is not a readable manifest" in build_error(sweep, tmp_path / "out", sweep=True)
    from jobs.manifest import SCHEMA, parquet_bytes

    (sweep / "manifest.parquet").write_bytes(parquet_bytes(SCHEMA.empty_table()))
    assert "has no rows" in build_error(sweep / "manifest.parquet", tmp_path / "out", sweep=True)

    # A sample id becomes part of a path: one that climbs out of samples/ is refused, not followed.
    from jobs.manifest import COLUMNS, table_from_rows

    row = {column: None for column in COLUMNS}
    row.update(sample_id="../../x", pair_index=0, sample_index=0, image_prompt="a", audio_prompt="b", seed=0)
    (sweep / "manifest.parquet").write_bytes(parquet_bytes(table_from_rows([row])))
    assert "is not a sample id" in build_error(sweep / "manifest.parquet", tmp_path / "out", sweep=True)


def test_bad_targets(generate_source: Path, tmp_path: Path) -> None:
    """Never into a folder that holds other things, nor over a file; an earlier gallery needs --overwrite."""
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "thesis.tex").write_text("precious")
    assert "not a gallery" in build_error(generate_source, occupied, "--overwrite")
    assert (occupied / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    assert "not a folder" in build_error(generate_source, tmp_path / "file")
    (tmp_path / "empty").mkdir()
    build(generate_source, tmp_path / "empty")  # an empty folder is fine


def test_console_script_missing_wav(tmp_path: Path) -> None:
    """The installed `imgsound` (a real process): exit code 2, one sentence, no traceback."""
    source = write_generate_folder(tmp_path / "run", SPECS[:2])
    (source / "sample_000" / "audio.wav").unlink()
    done = subprocess.run(
        [str(IMGSOUND), "gallery", str(source), "--out", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [f"imgsound: error: {source / 'sample_000'} has no audio.wav"]
    assert not (tmp_path / "site").exists()


# ---- the page in Chromium -----------------------------------------------------------------------------------------


@pytest.fixture()
def page(browser) -> Iterator:
    """A fresh context per test (its own localStorage); any script error on the page fails the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors


def open_site(page, site: Path, cards: int | None = None) -> None:
    page.goto((site / "index.html").as_uri())
    page.wait_for_selector(".card")
    if cards is not None:
        assert page.locator(".card").count() == cards


def card_ids(page) -> list[str]:
    return page.eval_on_selector_all(".card", "cards => cards.map(card => card.dataset.id)")


def audio_state(page, index: int) -> dict:
    return page.evaluate(
        "i => { const a = document.querySelectorAll('.card audio')[i];"
        " return {time: a.currentTime, duration: a.duration, paused: a.paused}; }",
        index,
    )


def test_one_card_per_sample(page, site: Path) -> None:
    open_site(page, site, cards=len(SPECS))
    assert card_ids(page) == IDS  # grouped by pair, source order inside
    assert page.locator("h2.group").count() == 2
    for index, spec in enumerate(SPECS):
        card = page.locator(".card").nth(index)
        assert card.locator(".image-prompt").inner_text() == spec.image_prompt
        assert card.locator(".audio-prompt").inner_text() == spec.audio_prompt
        assert card.locator(".seed").inner_text() == str(spec.seed)
        if spec.clip is None:
            assert card.locator(".scores").count() == 0
        else:
            assert card.locator(".scores").inner_text() == f"CLIP {spec.clip:.3f} · CLAP {spec.clap:.3f}"
        assert card.locator("audio").get_attribute("preload") == "none"
        assert card.locator("img").first.get_attribute("loading") == "lazy"
    assert page.locator("#page-info").inner_text() == "page 1 / 1"
    # Nothing was fetched for audio before a play.
    assert page.evaluate("[...document.querySelectorAll('audio')].every(a => a.readyState === 0)")


def test_play_moves_the_playhead(page, site: Path) -> None:
    open_site(page, site)
    card = page.locator(".card").first
    card.locator("button.play").click()
    page.wait_for_function("() => document.querySelector('.card audio').currentTime > 0.3")
    early = card.locator(".playhead").bounding_box()["x"]
    page.wait_for_function("() => document.querySelector('.card audio').currentTime > 1.0")
    late = card.locator(".playhead").bounding_box()["x"]
    assert late > early + 5, (early, late)
    box = card.locator(".spectrogram").bounding_box()
    assert box["x"] <= early < late <= box["x"] + box["width"]
    page.keyboard.press(" ")  # space pauses the current sample
    page.wait_for_function("() => document.querySelector('.card audio').paused")
    state = audio_state(page, 0)
    assert 1.0 < state["time"] < state["duration"] == pytest.approx(DURATION_S, abs=0.01)


def test_click_on_the_spectrogram_seeks(page, site: Path) -> None:
    open_site(page, site)
    spectrogram = page.locator(".card").nth(1).locator(".spectrogram")
    box = spectrogram.bounding_box()
    spectrogram.click(position={"x": box["width"] / 2, "y": box["height"] / 2})
    page.wait_for_function("() => document.querySelectorAll('.card audio')[1].readyState >= 1")
    page.wait_for_function(
        "() => { const a = document.querySelectorAll('.card audio')[1];"
        " return Math.abs(a.currentTime - a.duration / 2) < 0.05; }"
    )
    assert audio_state(page, 1)["paused"]  # a seek, not a play
    head = spectrogram.locator(".playhead").bounding_box()
    assert abs(head["x"] + head["width"] / 2 - (box["x"] + box["width"] / 2)) < 3
    assert page.locator(".card").nth(1).get_attribute("class").split().count("current") == 1


def test_sort_filter_and_group(page, site: Path) -> None:
    open_site(page, site)
    page.uncheck("#group")
    for metric in ("sum", "clip", "clap"):
        page.select_option("#sort", metric)
        assert card_ids(page) == by_score(SPECS, metric), metric
    page.select_option("#sort", "original")
    assert card_ids(page) == IDS
    # Grouped and sorted: the pair holding the best sample first, sorted inside each pair.
    page.check("#group")
    page.select_option("#sort", "sum")
    tiger = by_score([s for s in SPECS if (s.image_prompt, s.audio_prompt) == TIGER], "sum")
    castle = by_score([s for s in SPECS if (s.image_prompt, s.audio_prompt) == CASTLE], "sum")
    assert card_ids(page) == tiger + castle
    # A minimum score hides the samples below it and those without that score.
    page.select_option("#min-metric", "clip")
    page.fill("#min-score", "0.3")
    assert set(card_ids(page)) == {s.sample_id for s in SPECS if s.clip is not None and s.clip >= 0.3}
    assert page.locator("#count").inner_text() == f"2 of {len(SPECS)} samples"
    page.fill("#min-score", "")
    assert len(card_ids(page)) == len(SPECS)
    # The state lives in the URL: a reload keeps it.
    page.reload()
    page.wait_for_selector(".card")
    assert page.input_value("#sort") == "sum" and card_ids(page) == tiger + castle


def test_favourites_persist_and_export(page, site: Path, tmp_path: Path) -> None:
    open_site(page, site)
    marked = [IDS[3], IDS[1]]
    for sample_id in marked:
        page.locator(f'.card[data-id="{sample_id}"] button.fav').click()
    page.locator(f'.card[data-id="{IDS[0]}"] .meta').click()  # select a card, then f toggles it on and off
    page.keyboard.press("f")
    page.keyboard.press("f")
    assert page.locator("#favourite-count").inner_text() == "2"
    page.reload()  # kept in localStorage
    page.wait_for_selector(".card.favourite")
    assert sorted(page.eval_on_selector_all(".card.favourite", "cs => cs.map(c => c.dataset.id)")) == sorted(marked)
    page.check("#favourites-only")
    assert sorted(card_ids(page)) == sorted(marked)
    with page.expect_download() as download_info:
        page.click("#export")
    download = download_info.value
    assert download.suggested_filename == "favourites.json"
    target = tmp_path / "favourites.json"
    download.save_as(target)
    assert json.loads(target.read_text()) == [i for i in IDS if i in marked]  # exactly the marked ids


def test_keys_move_and_play(page, site: Path) -> None:
    open_site(page, site)
    page.click("#min-score")
    page.keyboard.press("ArrowRight")  # a field keeps its keys…
    assert page.locator(".card.current").count() == 0
    page.keyboard.press("Escape")  # …until Escape leaves it
    page.keyboard.press("ArrowRight")
    assert page.locator(".card.current").get_attribute("data-id") == IDS[0]
    page.keyboard.press("ArrowRight")
    assert page.locator(".card.current").get_attribute("data-id") == IDS[1]
    # The clips are 2.56 s long; at a quarter speed a busy machine cannot let one end before the next key arrives
    # (the keys' behaviour is what is tested here, not the playback speed).
    page.evaluate(
        "document.querySelectorAll('.card audio').forEach(a => a.defaultPlaybackRate = a.playbackRate = 0.25)"
    )
    page.keyboard.press(" ")
    page.wait_for_function("() => !document.querySelectorAll('.card audio')[1].paused")
    page.keyboard.press("ArrowRight")  # while listening, the next sample plays on
    page.wait_for_function("() => !document.querySelectorAll('.card audio')[2].paused")
    assert audio_state(page, 1)["paused"]
    assert page.locator(".card.current").get_attribute("data-id") == IDS[2]
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => !document.querySelectorAll('.card audio')[1].paused")
    page.keyboard.press(" ")
    page.wait_for_function("() => [...document.querySelectorAll('.card audio')].every(a => a.paused)")


def test_pages(page, generate_source: Path, tmp_path: Path) -> None:
    site = build(generate_source, tmp_path / "paged", "--page-size", "2")
    open_site(page, site, cards=2)
    assert card_ids(page) == IDS[:2] and page.locator("#page-info").inner_text() == "page 1 / 3"
    page.click("#next")
    assert card_ids(page) == IDS[2:4] and page.locator("#page-info").inner_text() == "page 2 / 3"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")  # past the page's last card: the next page
    assert card_ids(page) == IDS[4:] and page.locator(".card.current").get_attribute("data-id") == IDS[4]
    assert page.locator("#next").is_disabled()
    page.keyboard.press("ArrowLeft")
    assert card_ids(page) == IDS[2:4] and page.locator(".card.current").get_attribute("data-id") == IDS[3]


def test_missing_files_at_view_time(page, site: Path, tmp_path: Path) -> None:
    """Files deleted after the build: placeholders, and the rest of the page keeps working."""
    broken = tmp_path / "broken"
    shutil.copytree(site, broken)
    media = broken / "media" / IDS[0]
    (media / MEDIA_FILES["image_thumb"]).unlink()
    (media / MEDIA_FILES["spectrogram_thumb"]).unlink()
    (media / "audio.wav").unlink()
    open_site(page, broken, cards=len(SPECS))
    first = page.locator(".card").first
    first.locator(".placeholder", has_text="picture missing").wait_for()
    first.locator(".placeholder", has_text="spectrogram missing").wait_for()
    first.locator("button.play").click()
    first.locator(".time.missing", has_text="audio missing").wait_for()
    assert first.locator("button.play").is_disabled()
    second = page.locator(".card").nth(1)
    assert second.locator(".placeholder").count() == 0
    second.locator("button.play").click()
    page.wait_for_function("() => document.querySelectorAll('.card audio')[1].currentTime > 0.2")

    (broken / "data" / "samples.js").unlink()
    page.goto((broken / "index.html").as_uri())
    page.locator("#message", has_text="could not be loaded").wait_for()


def test_screenshot_for_the_readme(page, site: Path) -> None:
    """docs/gallery.png: the gallery on a few samples, one favourite, one card mid-play. Quantised: small."""
    page.set_viewport_size({"width": 1100, "height": 620})
    open_site(page, site)
    page.locator(f'.card[data-id="{IDS[1]}"] button.fav').click()
    page.evaluate("Promise.all([...document.images].map(i => i.decode().catch(() => null)))")
    spectrogram = page.locator(".card").first.locator(".spectrogram")
    box = spectrogram.bounding_box()
    spectrogram.click(position={"x": box["width"] * 0.4, "y": box["height"] / 2})
    page.wait_for_function("() => document.querySelector('.card audio').readyState >= 1")
    page.mouse.move(0, 0)
    shot = Image.open(io.BytesIO(page.screenshot()))
    assert shot.size == (1100, 620)
    buffer = io.BytesIO()
    shot.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(buffer, "PNG", optimize=True)
    assert len(buffer.getvalue()) < 400_000
    # Rendering differs by a few pixels from run to run: the README's copy is written when missing or asked for
    # (IMGSOUND_UPDATE_DOCS=1), so a test run leaves the working tree clean.
    if not SCREENSHOT.exists() or os.environ.get("IMGSOUND_UPDATE_DOCS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(buffer.getvalue())
