"""The playground page at `/`, in real headless Chromium (Debian's chromium driven by playwright) against the Serve
app on a real local Ray with tiny models and an API key: a job submitted from the form, its progress bar reaching
100 %, its sound playing with the playhead moving, the key only ever in the Authorization header. One test takes
docs/playground.png, the README's picture (written when missing or with IMGSOUND_UPDATE_DOCS=1)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from serve.auth import hash_key
from serve.local import http, start

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "playground.png"
CASTLE = REPO / "docs" / "examples" / "castle.png"
KEY = "key-of-the-playground-tests-0011223344"
HEIGHT, WIDTH = 64, 256  # 2.56 s of sound
INIT_FIELDS = ("init_image", "init_audio", "strength")


@pytest.fixture(scope="module")
def service(tiny_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serve-playground")
    (workdir / "api-keys").write_text(hash_key(KEY) + "\n")
    cluster = start(
        tiny_models,
        workdir,
        args={"output_store": (workdir / "store").as_uri(), "auth": {"api_keys_file": str(workdir / "api-keys")}},
        api_key=KEY,
    )
    yield cluster
    cluster.stop()


@pytest.fixture()
def page(browser) -> Iterator:
    """A fresh context per test; script errors and console errors (CSP violations among them) fail the test, and
    every request is recorded."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Console errors but the browser's own line for each 4xx answer (the tests ask for some of those).
    page.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and "Failed to load resource" not in message.text
            else None
        ),
    )
    page.requests = []
    page.on("request", lambda request: page.requests.append(request))
    yield page
    context.close()
    assert not errors, errors


def server_takes_sources(service) -> bool:
    _, _, spec = http("GET", f"{service.url}/openapi.json")
    schema = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return all(name in schema.get("properties", {}) for name in INIT_FIELDS)


def fill(page, steps: int = 30, seed: int = 3) -> None:
    page.fill("#api-key", KEY)
    page.fill("#image-prompt", "a painting of castle towers, grayscale")
    page.fill("#audio-prompt", "bell ringing")
    page.fill("#steps", str(steps))
    page.fill("#seed", str(seed))
    page.fill("#height", str(HEIGHT))
    page.fill("#width", str(WIDTH))


def run_job(page, service) -> None:
    page.goto(f"{service.url}/")
    fill(page)
    page.click("#submit")
    page.wait_for_function(
        "() => { const p = document.querySelector('#progress'); return p.max > 1 && p.value === p.max; }",
        timeout=120_000,
    )
    page.wait_for_selector(".result img", timeout=60_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)"
    )


def test_a_job_from_the_playground_plays(page, service) -> None:
    run_job(page, service)
    assert page.locator("#progress-label").inner_text().startswith("100 %")
    assert page.locator("#status").inner_text() == "Done."
    result = page.locator(".result").first
    assert page.locator(".result").count() == 1
    assert result.locator("img").first.get_attribute("src").startswith("blob:")
    sizes = page.eval_on_selector_all(".result img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[WIDTH, HEIGHT], [WIDTH, HEIGHT]]
    assert [a.inner_text() for a in result.locator(".downloads a").all()] == [
        "picture",
        "spectrogram",
        "sound",
        "sample.json",
    ]
    parameters = json.loads(result.locator(".parameters pre").inner_text())
    assert parameters["seed"] == 3 and parameters["steps"] == 30 and parameters["num_samples"] == 1

    result.locator("button.play").click()
    page.wait_for_function("() => document.querySelector('.result audio').currentTime > 0.3")
    early = result.locator(".playhead").bounding_box()["x"]
    page.wait_for_function("() => document.querySelector('.result audio').currentTime > 1.0")
    late = result.locator(".playhead").bounding_box()["x"]
    assert late > early + 5, (early, late)
    box = result.locator(".spectrogram").bounding_box()
    assert box["x"] <= early < late <= box["x"] + box["width"]
    result.locator("button.play").click()  # pause
    page.wait_for_function("() => document.querySelector('.result audio').paused")
    duration = page.evaluate("document.querySelector('.result audio').duration")
    assert duration == pytest.approx(WIDTH * 160 / 16000, abs=0.01)

    # The key went in the Authorization header of every API call, never in a URL.
    api_calls = [r for r in page.requests if "/v1/" in r.url]
    kinds = {r.url.split("/v1/")[1].split("/")[0] for r in api_calls}
    assert kinds == {"jobs"} and any(r.url.endswith("/events") for r in api_calls)
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in api_calls)
    assert all(KEY not in r.url for r in page.requests)
    # The key stays in this browser for the next visit.
    page.reload()
    assert page.input_value("#api-key") == KEY


def test_a_job_from_a_picture_in_the_playground(page, service) -> None:
    """The server takes sources: the fields are offered, and a picture sent from the page is the sample's source
    (its SHA-256 in the record, and in the parameters to copy), re-running the strength's share of the steps."""
    assert server_takes_sources(service)
    page.goto(f"{service.url}/")
    page.wait_for_load_state("networkidle")
    assert page.locator("#init-fields").is_visible() and not page.locator("#init-off").is_visible()
    fill(page, steps=4)
    page.set_input_files("#init-image", str(CASTLE))
    page.fill("#strength", "0.5")
    page.click("#submit")
    page.wait_for_selector(".result img", timeout=120_000)
    parameters = json.loads(page.locator(".result .parameters pre").inner_text())
    assert parameters["init_image_sha256"] == hashlib.sha256(CASTLE.read_bytes()).hexdigest()
    assert parameters["strength"] == 0.5 and "init_image" not in parameters
    assert page.locator("#progress").evaluate("p => [p.value, p.max]") == [2, 2]  # half of the 4 steps re-run


def test_a_server_that_refuses_sources_turns_the_fields_off(page, service) -> None:
    """Against a server that does not know the source fields (its 422 names them as unknown), the page turns them
    off and the same form then runs without them."""

    def older_server(route) -> None:
        if route.request.method == "POST" and "init_image" in (route.request.post_data or ""):
            problem = {
                "type": "extra_forbidden",
                "loc": ["body", "init_image"],
                "msg": "Extra inputs are not permitted",
            }
            route.fulfill(status=422, json={"detail": [problem]})
        else:
            route.continue_()

    page.route("**/v1/jobs", older_server)
    page.goto(f"{service.url}/")
    page.wait_for_load_state("networkidle")
    assert page.locator("#init-fields").is_visible()
    fill(page, steps=2)
    page.set_input_files("#init-image", str(CASTLE))
    page.click("#submit")
    page.locator("#message", has_text="does not take a starting picture").wait_for()
    assert not page.locator("#init-fields").is_visible() and page.locator("#init-off").is_visible()
    page.click("#submit")  # without the fields, the same form now runs
    page.wait_for_selector(".result img", timeout=120_000)


def test_no_key_is_a_clear_message(page, service) -> None:
    page.goto(f"{service.url}/")
    fill(page, steps=2)
    page.fill("#api-key", "")
    page.click("#submit")
    page.locator("#message", has_text="An API key is needed").wait_for()


def test_screenshot_for_the_readme(page, service) -> None:
    """docs/playground.png: a finished job, its sound paused part-way. Quantised: small."""
    page.set_viewport_size({"width": 1100, "height": 860})
    run_job(page, service)
    result = page.locator(".result").first
    spectrogram = result.locator(".spectrogram")
    box = spectrogram.bounding_box()
    spectrogram.click(position={"x": box["width"] * 0.4, "y": box["height"] / 2})
    page.wait_for_function("() => document.querySelector('.result audio').currentTime > 0")
    page.fill("#api-key", "")  # the picture shows no key, not even masked
    page.evaluate("document.activeElement.blur()")
    page.mouse.move(0, 0)
    shot = Image.open(io.BytesIO(page.screenshot()))
    assert shot.size == (1100, 860)
    buffer = io.BytesIO()
    shot.convert("RGB").quantize(colors=128, method=Image.Quantize.FASTOCTREE).save(buffer, "PNG", optimize=True)
    assert len(buffer.getvalue()) < 250_000
    # Rendering differs by a few pixels from run to run: the README's copy is written when missing or asked for.
    if not SCREENSHOT.exists() or os.environ.get("IMGSOUND_UPDATE_DOCS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(buffer.getvalue())
