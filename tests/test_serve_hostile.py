"""The service under hostile or careless clients, on a real local Ray over real sockets: slow bodies, huge bodies,
bad values that used to fail only after the work, hostile Range headers and corrupt stored files."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from serve.local import http, start

pytestmark = pytest.mark.slow

LIMITS = {
    "max_body_bytes": 65536,
    "max_body_bytes_buffered": 131072,
    "body_timeout_s": 3.0,
    "max_body_reads_per_client": 8,
}
SMALL = dict(image_prompt="a", audio_prompt="b", steps=2, image_start_step=0, height=64, width=128)


@pytest.fixture(scope="module")
def service(tiny_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serve-hostile")
    cluster = start(tiny_models, workdir, overrides={"limits": LIMITS}, args={"output_store": (workdir / "s").as_uri()})
    yield cluster
    cluster.stop()


def generate(service, **body):
    return http("POST", f"{service.url}/v1/generate", body)


def raw_request(service, head: bytes, body: bytes = b"", timeout: float = 30) -> tuple[int, bytes]:
    """Send `head` + `body` on one socket and read the answer: (status, whole response)."""
    url = urlparse(service.url)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(head + body)
        answer = b""
        while True:  # the headers, then as many body bytes as Content-Length says
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer:
                headers, _, content = answer.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", headers)
                if length is None or len(content) >= int(length.group(1)):
                    break
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"steps": True}, "true or false"),
        ({"num_samples": True}, "true or false"),
        ({"image_guidance": False}, "true or false"),
        ({"crop": True, "width": 32}, "crop drops the last 32 columns"),
    ],
)
def test_values_that_used_to_fail_after_the_work_are_a_422_first(service, changes, words):
    status, _, answer = generate(service, **{**SMALL, **changes})
    assert status == 422 and words in json.dumps(answer), answer


def test_text_no_tokenizer_can_take_and_deep_json_are_a_422(service):
    surrogate = b'{"image_prompt": "\\ud800", "audio_prompt": "b", "steps": 2}'
    status, _, answer = http("POST", f"{service.url}/v1/generate", raw=surrogate)
    assert status == 422 and "detail" in answer
    deep = b'{"image_prompt": "a", "audio_prompt": "b", "x": ' + b"[" * 10000 + b"]" * 10000 + b"}"
    status, _, answer = http("POST", f"{service.url}/v1/generate", raw=deep)
    assert status == 422 and "detail" in answer
    assert generate(service, **SMALL)[0] == 200  # and the service still works


def test_a_body_over_the_limit_is_refused_before_it_is_read(service):
    head = (
        b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    )
    # Declares 100 MB and sends one byte: a server waiting for the rest would answer 408 after the body timeout.
    status, answer = raw_request(service, head, b"{")
    assert status == 413 and b"larger than 65536 bytes" in answer
    chunked = (
        b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 40000
    body = b"".join(b"%x\r\n" % len(piece) + piece + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    status, answer = raw_request(service, chunked, body)  # no Content-Length: counted while it arrives
    assert status == 413


def test_a_range_of_five_thousand_digits_is_a_416(service):
    status, _, body = generate(service, **SMALL, outputs=["audio"])
    assert status == 200
    sample_id = body["samples"][0]["sample_id"]
    status, _, _ = http("GET", f"{service.url}/gallery/data/samples.js")
    url = f"{service.url}/gallery/media/{sample_id}/audio"
    status, _, answer = http("GET", url, headers={"Range": "bytes=" + "9" * 5000 + "-"})
    assert status == 416 and "detail" in answer
    status, _, answer = http("GET", url, headers={"Range": "bytes=0-" + "9" * 5000})
    assert status == 416


def test_a_corrupt_stored_picture_is_a_404_not_a_500(service):
    status, _, body = generate(service, **{**SMALL, "seed": 77}, outputs=["spectrogram"])
    assert status == 200
    sample = body["samples"][0]
    Path(urlparse(sample["uris"]["spectrogram"]).path).write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    deadline = time.monotonic() + 30
    while True:  # the gallery re-lists the store every 10 s
        status, _, answer = http("GET", f"{service.url}/gallery/media/{sample['sample_id']}/spectrogram_thumb")
        if status != 404 or "no sample" not in json.dumps(answer) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert status == 404 and "not a readable picture" in answer["detail"], answer


def test_slow_bodies_are_cut_off_and_health_answers_throughout(service):
    """300 connections trickle their bodies (and 50 their headers); health answers every probe all the while,
    and every slow body is answered (408 after the body timeout, or 429 at once past the per-client limit)."""
    url = urlparse(service.url)
    slow_bodies, slow_headers = [], []
    for _ in range(300):
        sock = socket.create_connection((url.hostname, url.port), timeout=10)
        sock.sendall(
            b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        slow_bodies.append(sock)
    for _ in range(50):
        sock = socket.create_connection((url.hostname, url.port), timeout=10)
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n")
        slow_headers.append(sock)
    for sock in slow_bodies + slow_headers:
        sock.setblocking(False)
    answers: dict[int, bytes] = {}
    started = time.monotonic()
    try:
        while time.monotonic() - started < 15:
            for index, sock in enumerate(slow_bodies):
                if index in answers:
                    continue
                try:
                    data = sock.recv(4096)
                    answers[index] = data or b"closed"
                except BlockingIOError:
                    try:
                        sock.send(b" ")  # one more byte of the body: never enough
                    except OSError:
                        answers[index] = b"closed"
                except OSError:
                    answers[index] = b"closed"
            for sock in slow_headers:
                try:
                    sock.send(b"X-Slow: 1\r\n")
                except OSError:
                    pass
            status, _, body = http("GET", f"{service.url}/v1/health", timeout=10)  # a hang raises here
            assert status == 200 and body["status"] == "ok"
            time.sleep(1)
    finally:
        for sock in slow_bodies + slow_headers:
            sock.close()
    statuses = [int(data.split(b" ", 2)[1]) for data in answers.values() if data.startswith(b"HTTP/1.1 ")]
    assert len(answers) == 300, f"{300 - len(answers)} slow bodies were never answered"
    assert set(statuses) <= {408, 429} and 408 in statuses and 429 in statuses, sorted(set(statuses))
    assert generate(service, **SMALL)[0] == 200  # the service is whole again


def test_large_bodies_arriving_at_once_are_bounded_for_the_replica(service):
    """Two 60 kB bodies half sent hold 100 kB of the replica's 128 kB for bodies in flight: a third gets a 503 with
    Retry-After as soon as its bytes would go beyond, the two are cut off at the body timeout, and the bytes they held
    are given back (a request of the same size is then served)."""
    url = urlparse(service.url)
    head = b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n"
    held = []
    try:
        for _ in range(2):
            sock = socket.create_connection((url.hostname, url.port), timeout=30)
            sock.sendall(head + b" " * 50000)
            held.append(sock)
        time.sleep(0.5)  # their bytes have arrived at the replica
        status, answer = raw_request(service, head, b" " * 50000)
        assert status == 503 and b"retry-after" in answer.lower() and b"too many large request bodies" in answer
        for sock in held:
            assert int(sock.recv(4096).split(b" ", 2)[1]) == 408
    finally:
        for sock in held:
            sock.close()
    padded = json.dumps(SMALL).encode()
    padded = padded[:-1] + b" " * (55000 - len(padded)) + b"}"
    head = b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    assert raw_request(service, head % len(padded), padded)[0] == 200
