"""The Serve app on a real local Ray (2 CPUs) with tiny models, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import soundfile
from PIL import Image

from imgsound_core.cli import main as cli_main
from serve.local import http, start

pytestmark = pytest.mark.slow

LIMITS = {
    "max_samples_in_flight": 24,
    "max_steps": 200,
    "max_samples_per_request": 8,
    "max_prompt_chars": 500,
    "max_source_bytes": 64 * 1024,
}
REPO = Path(__file__).resolve().parents[1]
CASTLE = REPO / "docs" / "examples" / "castle.png"


@pytest.fixture(scope="module")
def service(tiny_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serve")
    store = (workdir / "store").as_uri()
    cluster = start(tiny_models, workdir, overrides={"limits": LIMITS}, args={"output_store": store})
    yield cluster
    cluster.stop()


def generate(service, **body):
    return http("POST", f"{service.url}/v1/generate", body)


def npy(sample) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(sample["base64"]["spectrogram_npy"])))


def metric_samples(service, name: str) -> dict[str, float]:
    """`{label-set + le: value}` of one metric family from /metrics."""
    status, _, text = http("GET", f"{service.url}/metrics")
    assert status == 200
    values = {}
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            values[match.group(1) or ""] = float(match.group(2))
    return values


def test_health_docs_and_openapi(service):
    status, _, body = http("GET", f"{service.url}/v1/health")
    assert status == 200 and body["status"] == "ok"
    status, _, spec = http("GET", f"{service.url}/openapi.json")
    assert status == 200 and "/v1/generate" in spec["paths"]
    status, _, page = http("GET", f"{service.url}/docs")
    assert status == 200 and "swagger" in page.lower()


def test_response_equals_the_cli_also_with_8_other_requests_in_flight(service, tiny_models, tmp_path):
    params = dict(
        image_prompt="a painting of castle towers",
        audio_prompt="bell ringing",
        steps=6,
        image_start_step=2,
        seed=42,
        audio_weight=0.4,
    )
    out = tmp_path / "cli"
    assert (
        cli_main(
            [
                "generate",
                "--image-model",
                str(tiny_models / "image"),
                "--audio-model",
                str(tiny_models / "audio"),
                "--out",
                str(out),
                "--image-prompt",
                params["image_prompt"],
                "--audio-prompt",
                params["audio_prompt"],
                "--steps",
                "6",
                "--image-start-step",
                "2",
                "--seed",
                "42",
                "--audio-weight",
                "0.4",
            ]
        )
        == 0
    )
    expected = np.load(out / "sample_000" / "spectrogram.npy")

    status, _, alone = generate(service, **params, outputs=["spectrogram_npy", "audio", "record"])
    assert status == 200
    assert np.abs(npy(alone["samples"][0]) - expected).max() < 1e-4
    assert alone["samples"][0]["seed"] == 42 and alone["samples"][0]["parameters"]["audio_weight"] == 0.4

    others = [
        dict(
            image_prompt=f"other picture {i}",
            audio_prompt=f"other sound {i}",
            steps=5 + i,
            image_start_step=i % 3,
            seed=i,
            height=128,
            width=256,
            outputs=["record"],
        )
        for i in range(8)
    ]
    with ThreadPoolExecutor(max_workers=9) as pool:
        futures = [pool.submit(generate, service, **body) for body in others]
        time.sleep(0.5)  # the others are mid-way when the request under test arrives
        target = pool.submit(generate, service, **params, outputs=["spectrogram_npy"])
        statuses = [f.result()[0] for f in futures]
        status, _, busy = target.result()
    assert statuses == [200] * 8
    assert status == 200
    assert np.abs(npy(busy["samples"][0]) - expected).max() < 1e-4


def test_concurrent_requests_share_unet_forwards_across_steps(service):
    before_timesteps = metric_samples(service, "imgsound_unet_batch_timesteps_bucket")
    before_requests = metric_samples(service, "imgsound_unet_batch_requests_bucket")
    bodies = [
        dict(
            image_prompt=f"p{i}",
            audio_prompt=f"s{i}",
            steps=8 + 2 * i,
            image_start_step=0,
            seed=i,
            height=64,
            width=128,
            outputs=["record"],
        )
        for i in range(6)
    ]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda b: generate(service, **b), bodies))
    assert [r[0] for r in results] == [200] * 6
    for _, _, response in results:  # the time to first step lies between admission and the end of denoising
        timings = response["timings_s"]
        assert 0 <= timings["admit"] < timings["first_step"] < timings["admit"] + timings["denoise"]

    def delta_above_one(after, before, model):
        """Forwards of `model` in this test whose value was > 1 (total count minus the le=1 bucket)."""
        total = f'{{le="+Inf",model="{model}"}}'
        ones = f'{{le="1.0",model="{model}"}}'
        return (after.get(total, 0) - before.get(total, 0)) - (after.get(ones, 0) - before.get(ones, 0))

    # Every replica exports its series to Ray about once a second: wait for this test's forwards to show.
    deadline = time.monotonic() + 60
    while True:
        after_timesteps = metric_samples(service, "imgsound_unet_batch_timesteps_bucket")
        after_requests = metric_samples(service, "imgsound_unet_batch_requests_bucket")
        merged = {
            model: (
                delta_above_one(after_requests, before_requests, model),
                delta_above_one(after_timesteps, before_timesteps, model),
            )
            for model in ("image", "audio")
        }
        if all(a > 0 and b > 0 for a, b in merged.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for model, (requests_merged, steps_mixed) in merged.items():
        assert requests_merged > 0, f"no {model} forward merged requests"
        assert steps_mixed > 0, f"no {model} forward mixed steps"
    generated = metric_samples(service, "imgsound_samples_generated_total")
    assert generated[""] >= 6


BAD_INPUTS = [
    ({"image_prompt": "", "audio_prompt": "bells"}, "image_prompt must not be empty"),
    ({"image_prompt": "a", "audio_prompt": "   "}, "audio_prompt must not be empty"),
    ({"image_prompt": "x" * 501, "audio_prompt": "b"}, "longer than 500"),
    ({"image_prompt": "a", "audio_prompt": "b", "audio_guidance": -1}, "audio_guidance"),
    ({"image_prompt": "a", "audio_prompt": "b", "steps": 0}, "steps"),
    ({"image_prompt": "a", "audio_prompt": "b", "steps": 100000}, "steps"),
    ({"image_prompt": "a", "audio_prompt": "b", "height": 100}, "height"),
    ({"image_prompt": "a", "audio_prompt": "b", "width": 4096}, "width"),
    ({"image_prompt": "a", "audio_prompt": "b", "num_samples": 0}, "num_samples"),
    ({"image_prompt": "a", "audio_prompt": "b", "num_samples": 9}, "num_samples"),
    ({"image_prompt": "a", "audio_prompt": "b", "audio_weight": 2}, "audio_weight"),
    ({"image_prompt": "a", "audio_prompt": "b", "image_start_step": 5, "audio_start_step": 5}, "start_step"),
    ({"image_prompt": "a", "audio_prompt": "b", "vocoder": "wavenet"}, "vocoder"),
    ({"image_prompt": "a", "audio_prompt": "b", "outputs": ["hologram"]}, "outputs"),
    ({"image_prompt": "a", "audio_prompt": "b", "guidance": 3}, "guidance"),
    ({"audio_prompt": "b"}, "image_prompt"),
    ({"image_prompt": "a", "audio_prompt": "b", "steps": "many"}, "steps"),
]


@pytest.mark.parametrize("body, message", BAD_INPUTS)
def test_bad_inputs_get_a_422_that_names_the_problem(service, body, message):
    status, _, answer = generate(service, **body)
    assert status == 422
    assert message in str(answer["detail"])


@pytest.mark.parametrize(
    "raw",
    [
        b"{bad json",
        b'{"image_prompt": "a", "audio_prompt": "b", "seed": NaN}',
        b'{"image_prompt": "a", "audio_prompt": "b", "image_guidance": NaN}',
        b"[]",
    ],
)
def test_malformed_bodies_get_a_4xx_and_the_service_still_answers(service, raw):
    status, _, answer = http("POST", f"{service.url}/v1/generate", raw=raw)
    assert 400 <= status < 500 and "detail" in answer
    status, _, _ = generate(
        service,
        image_prompt="a",
        audio_prompt="b",
        steps=1,
        image_start_step=0,
        height=64,
        width=64,
        outputs=["record"],
    )
    assert status == 200


def test_a_full_queue_answers_503_with_retry_after(service):
    """24 samples may be in flight; 4 requests of 8 cannot all be admitted at once."""
    body = dict(
        image_prompt="q",
        audio_prompt="q",
        steps=30,
        image_start_step=0,
        num_samples=8,
        height=64,
        width=64,
        outputs=["record"],
    )
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: generate(service, **body), range(4)))
    statuses = sorted(r[0] for r in results)
    assert 503 in statuses and 200 in statuses
    rejected = next(r for r in results if r[0] == 503)
    assert int(rejected[1]["retry-after"]) >= 1 and "in flight" in rejected[2]["detail"]


KILL_REPLICA = """
import ray
ray.init(address="auto", namespace="serve", logging_level="ERROR")
names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
         if a["name"].startswith("SERVE_REPLICA") and "#ImageUNet#" in a["name"]]
assert names, "no ImageUNet replica found"
ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
print("killed", names[0])
"""


def test_killing_a_unet_replica_mid_request_is_survived(service):
    outcome: dict = {}

    def long_request():
        outcome["result"] = generate(
            service,
            image_prompt="long",
            audio_prompt="long",
            steps=120,
            image_start_step=0,
            height=128,
            width=512,
            outputs=["record"],
        )

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(3)
    # A separate driver process joins the cluster (with its auth token) to kill the replica.
    killed = subprocess.run(
        [sys.executable, "-c", KILL_REPLICA], env=service.env, capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == 0 and "killed" in killed.stdout, killed.stderr[-2000:]
    worker.join(timeout=240)
    assert not worker.is_alive(), "the request did not finish in bounded time"
    status, _, body = outcome["result"]
    assert status == 200 or (status == 503 and "ImageUNet" in body["detail"]), (status, body)
    deadline = time.monotonic() + 180
    while True:  # the replacement replica takes a while to load its model
        status, _, body = generate(
            service,
            image_prompt="after",
            audio_prompt="after",
            steps=2,
            image_start_step=0,
            height=64,
            width=64,
            outputs=["record"],
        )
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert status == 200, body


def test_output_store_writes_files_and_returns_uris(service):
    """A cropped and an uncropped sample of the same request are two samples: two ids, two sets of files, both
    intact after both requests."""
    status, _, cropped = generate(
        service,
        image_prompt="a",
        audio_prompt="b",
        steps=2,
        image_start_step=0,
        height=64,
        width=256,
        crop=True,
        outputs=["image", "audio", "record"],
    )
    assert status == 200
    sample = cropped["samples"][0]
    assert set(sample["base64"]) == {"image", "audio", "record"} and set(sample["uris"]) == {"image", "audio", "record"}
    picture_bytes = base64.b64decode(sample["base64"]["image"])
    stored = Path(urlparse(sample["uris"]["image"]).path)
    assert stored.parent.name == sample["sample_id"] and stored.read_bytes() == picture_bytes

    status, _, body = generate(
        service,
        image_prompt="a",
        audio_prompt="b",
        steps=2,
        image_start_step=0,
        height=64,
        width=256,
        outputs=["image", "audio", "record"],
        inline=False,
    )
    assert status == 200 and body["samples"][0]["base64"] == {}
    full = body["samples"][0]
    assert full["sample_id"] != sample["sample_id"]
    record = json.loads(Path(urlparse(full["uris"]["record"]).path).read_text())
    assert record["sample_id"] == full["sample_id"] and record["steps"] == 2 and record["crop"] is False

    # Both sets of files, each as its own request made it.
    for answer, width in ((sample, 224), (full, 256)):
        with Image.open(Path(urlparse(answer["uris"]["image"]).path)) as picture:
            assert picture.size == (width, 64) and picture.mode == "RGB"
        audio, rate = soundfile.read(Path(urlparse(answer["uris"]["audio"]).path))
        assert rate == 16000 and audio.shape == (width * 160,)
        stored_record = json.loads(Path(urlparse(answer["uris"]["record"]).path).read_text())
        assert stored_record["crop"] is (width == 224) and stored_record["sample_id"] == answer["sample_id"]
    assert stored.read_bytes() == picture_bytes


def test_the_same_sample_has_one_id_and_record_via_cli_http_and_sweep(service, tiny_models, tmp_path):
    """One request through `imgsound generate`, POST /v1/generate and a sweep: the same sample_id, the same record
    (apart from timings and the sweep's own fields), the same spectrogram; no local path in what HTTP returns."""
    from jobs.spec import SweepSpec
    from tests.in_process import run_sweep_in_process

    out = tmp_path / "cli"
    flags = ["--image-prompt", "castle towers", "--audio-prompt", "bells", "--steps", "4", "--image-start-step"]
    flags += ["1", "--seed", "7", "--height", "64", "--width", "256", "--audio-weight", "0.3"]
    models = ["--image-model", str(tiny_models / "image"), "--audio-model", str(tiny_models / "audio")]
    assert cli_main(["generate", *models, *flags, "--out", str(out)]) == 0
    cli_record = json.loads((out / "sample_000" / "sample.json").read_text())

    body = dict(image_prompt="castle towers", audio_prompt="bells", steps=4, image_start_step=1, seed=7, height=64)
    status, _, answer = generate(service, **body, width=256, audio_weight=0.3, outputs=["record", "spectrogram_npy"])
    assert status == 200
    served = answer["samples"][0]
    http_record = json.loads(base64.b64decode(served["base64"]["record"]))
    assert str(tiny_models) not in json.dumps(answer)  # paths of the server's models stay on the server

    models_spec = {"image": str(tiny_models / "image"), "audio": str(tiny_models / "audio"), "dtype": "fp32"}
    spec = SweepSpec.model_validate(
        {
            "name": "identity",
            "pairs": [{"image": "castle towers", "audio": "bells"}],
            "seed": 7,
            "params": {"steps": 4, "image_start_step": 1, "height": 64, "width": 256, "audio_weight": 0.3},
            "models": {**models_spec, "device": "cpu"},
        }
    )
    store, points = run_sweep_in_process(spec, tmp_path / "sweep")
    sweep_record = json.loads(store.get_bytes(f"samples/{points[0].sample_id}/sample.json"))

    assert cli_record["sample_id"] == served["sample_id"] == http_record["sample_id"] == sweep_record["sample_id"]
    assert served["sample_id"] == points[0].sample_id
    volatile = {"timings_s", "created_utc", "sweep", "pair_index"}
    same = {k: v for k, v in cli_record.items() if k not in volatile}
    assert same == {k: v for k, v in http_record.items() if k not in volatile}
    assert same == {k: v for k, v in sweep_record.items() if k not in volatile}
    assert np.abs(npy(served) - np.load(out / "sample_000" / "spectrogram.npy")).max() < 1e-4


def test_video_output_and_the_gallery_of_the_output_store(service):
    import urllib.request

    status, _, body = generate(
        service,
        image_prompt="castle",
        audio_prompt="bells",
        steps=2,
        image_start_step=0,
        height=64,
        width=256,
        outputs=["video", "audio"],
    )
    assert status == 200, body
    sample = body["samples"][0]
    video = base64.b64decode(sample["base64"]["video"])
    assert video[4:8] == b"ftyp" and Path(urlparse(sample["uris"]["video"]).path).read_bytes() == video

    status, headers, _ = http("GET", f"{service.url}/gallery/")  # urllib follows /gallery → /gallery/ too
    assert status == 200 and headers["content-type"].startswith("text/html")
    status, _, script = http("GET", f"{service.url}/gallery/data/samples.js")
    assert status == 200 and script.startswith("window.IMGSOUND_GALLERY = ")
    data = json.loads(script.removeprefix("window.IMGSOUND_GALLERY = ").rstrip().rstrip(";"))
    served = {s["id"]: s for s in data["samples"]}
    assert sample["sample_id"] in served
    audio_url = f"{service.url}/gallery/{served[sample['sample_id']]['media']['audio']}"
    wav = Path(urlparse(sample["uris"]["audio"]).path).read_bytes()
    request = urllib.request.Request(audio_url, headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 206 and response.read() == wav[100:200]
        assert response.headers["Content-Range"] == f"bytes 100-199/{len(wav)}"
    status, _, _ = http("GET", f"{service.url}/gallery/media/{sample['sample_id']}/nonsense")
    assert status == 404
    status, _, _ = http("GET", f"{service.url}/gallery/media/no-such-sample/audio")
    assert status == 404


def test_a_too_long_prompt_is_reported_in_the_response_and_the_record(service):
    long_prompt = " ".join(["castle"] * 60)  # within the 500 characters the server takes, over 77 tokens (tiny vocab)
    status, _, body = generate(
        service,
        image_prompt="a",
        audio_prompt=long_prompt,
        steps=1,
        image_start_step=0,
        height=64,
        width=64,
        outputs=["record"],
    )
    assert status == 200
    dropped = body["samples"][0]["parameters"]["prompt_tokens_dropped"]
    assert set(dropped) == {"audio_prompt"} and dropped["audio_prompt"] > 0
    assert len(body["warnings"]) == 1 and f"the last {dropped['audio_prompt']} are ignored" in body["warnings"][0]
    status, _, body = generate(
        service,
        image_prompt="a",
        audio_prompt="b",
        steps=1,
        image_start_step=0,
        height=64,
        width=64,
        outputs=["record"],
    )
    assert body["warnings"] == [] and "prompt_tokens_dropped" not in body["samples"][0]["parameters"]


def chirp_wav(seconds: float = 0.5, rate: int = 22050) -> bytes:
    """A short stereo chirp at 22.05 kHz: resampled, mixed down and padded on its way to a mel picture."""
    t = np.arange(round(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * np.cumsum(300 + 2500 * t / t[-1]) / rate)
    out = io.BytesIO()
    soundfile.write(out, np.stack([mono, mono], axis=1).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_request_from_a_picture_and_a_sound_equals_the_cli(service, tiny_models, tmp_path):
    """init_image + init_audio + strength over HTTP: the CLI's sample (id, record, spectrogram), the sources' hashes in
    the record, the sound's padding said in the warnings; at strength 1 the sources are ignored, and said to be."""
    sound = tmp_path / "chirp.wav"
    sound.write_bytes(chirp_wav())
    out = tmp_path / "cli"
    flags = ["--image-prompt", "castle towers", "--audio-prompt", "bells", "--steps", "6", "--image-start-step", "1"]
    flags += ["--seed", "3", "--height", "64", "--width", "256", "--audio-weight", "0.3", "--strength", "0.5"]
    flags += ["--init-image", str(CASTLE), "--init-audio", str(sound)]
    models = ["--image-model", str(tiny_models / "image"), "--audio-model", str(tiny_models / "audio")]
    assert cli_main(["generate", *models, *flags, "--out", str(out)]) == 0
    cli_record = json.loads((out / "sample_000" / "sample.json").read_text())

    body = dict(image_prompt="castle towers", audio_prompt="bells", steps=6, image_start_step=1, seed=3, height=64)
    body |= dict(width=256, audio_weight=0.3, strength=0.5, init_image=b64(CASTLE.read_bytes()))
    status, _, answer = generate(
        service, **body, init_audio=b64(sound.read_bytes()), outputs=["record", "spectrogram_npy"]
    )
    assert status == 200, answer
    served = answer["samples"][0]
    record = json.loads(base64.b64decode(served["base64"]["record"]))
    assert served["sample_id"] == cli_record["sample_id"]
    assert record["init_image_sha256"] == hashlib.sha256(CASTLE.read_bytes()).hexdigest()
    assert record["init_audio_sha256"] == hashlib.sha256(sound.read_bytes()).hexdigest()
    assert record["strength"] == 0.5
    volatile = {"timings_s", "created_utc"}
    assert {k: v for k, v in record.items() if k not in volatile} == {
        k: v for k, v in cli_record.items() if k not in volatile
    }
    assert np.abs(npy(served) - np.load(out / "sample_000" / "spectrogram.npy")).max() < 1e-4
    assert any("init_audio" in w and "padded" in w for w in answer["warnings"]), answer["warnings"]

    # Strength 1: plain generation, the picture ignored (and the answer says so).
    plain = {k: v for k, v in body.items() if k not in ("strength", "init_image")}
    status, _, ignored = generate(service, **body | {"strength": 1.0}, outputs=["record"])
    assert status == 200, ignored
    status, _, without = generate(service, **plain, outputs=["record"])
    assert ignored["samples"][0]["sample_id"] == without["samples"][0]["sample_id"] != served["sample_id"]
    assert any("init_image is ignored" in w for w in ignored["warnings"]), ignored["warnings"]


@pytest.mark.parametrize(
    "fields, status, words",
    [
        ({"init_image": "not base64!"}, 422, "init_image is not base64"),
        ({"init_image": ""}, 422, "init_image is empty"),
        ({"init_audio": b64(b"just some text, not a sound at all")}, 422, "init_audio"),
        ({"init_image": b64(b"GIF89a" + bytes(40))}, 422, "init_image"),
        ({"init_image": b64(bytes(64 * 1024 + 1))}, 413, "larger than 65536 bytes"),
        ({"strength": 0.5}, 422, "give init_image or init_audio"),
        ({"strength": 0.0, "init_image": b64(b"x")}, 422, "strength"),
        ({"strength": True, "init_image": b64(b"x")}, 422, "true or false"),
    ],
)
def test_bad_sources_are_a_413_or_422_that_names_them(service, fields, status, words):
    code, _, answer = generate(service, image_prompt="a", audio_prompt="b", steps=2, height=64, width=64, **fields)
    assert code == status and words in json.dumps(answer), answer
