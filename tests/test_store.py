"""jobs.store against a real directory and a real S3 protocol server (moto, in its own process on 127.0.0.1)."""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from jobs.store import (
    CONNECT_TIMEOUT_ENV,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_READ_TIMEOUT_S,
    MAX_ATTEMPTS_ENV,
    PROBE_PREFIX,
    READ_TIMEOUT_ENV,
    LocalStore,
    S3Store,
    Store,
    StoreError,
    open_store,
)
from tests.s3_server import CLEARED_ENV_VARS, MotoServer, free_port

# Short enough that an outage fails the test quickly, long enough for a loaded 2-core machine to answer.
FAST_FAIL_ENV = {READ_TIMEOUT_ENV: "1", CONNECT_TIMEOUT_ENV: "1", MAX_ATTEMPTS_ENV: "2"}
SETTINGS_ENV = (READ_TIMEOUT_ENV, CONNECT_TIMEOUT_ENV, MAX_ATTEMPTS_ENV)


@pytest.fixture(scope="module")
def server() -> MotoServer:
    """The module's moto server, not yet started: its port fixes the endpoint the environment names."""
    return MotoServer()


@pytest.fixture(scope="module", autouse=True)
def aws_env(server: MotoServer):
    """Every test here sees dummy credentials and the local endpoint only, so nothing can reach real AWS."""
    with pytest.MonkeyPatch.context() as patch:
        for name in CLEARED_ENV_VARS + SETTINGS_ENV:
            patch.delenv(name, raising=False)
        for name, value in server.env().items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def moto(server: MotoServer, aws_env):
    """The moto server, running for the rest of the module."""
    with server:
        yield server


@pytest.fixture()
def bucket(moto) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"imgsound-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto.endpoint_url).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    """The same contract tests run on both backends (the S3 one under a prefix, as sweeps use it)."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    bucket = request.getfixturevalue("bucket")
    return open_store(f"s3://{bucket}/runs/r1")


def _assert_one_sentence(error: StoreError, *must_mention: str) -> None:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message, message
    assert message.endswith("."), message
    for text in must_mention:
        assert text in message, (text, message)


# Contract on both backends -------------------------------------------------------------------------------------


def test_round_trip(store: Store):
    key = "samples/abc/image.png"
    assert not store.exists(key)
    uri = store.put_bytes(key, b"\x89PNG data")
    assert uri == store.uri_for(key)
    assert uri.startswith(store.uri + "/") and uri.endswith("/samples/abc/image.png")
    assert store.exists(key)
    assert store.get_bytes(key) == b"\x89PNG data"
    store.put_bytes(key, b"replaced")
    assert store.get_bytes(key) == b"replaced"
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # deleting what is gone is a no-op
    with pytest.raises(FileNotFoundError):
        store.get_bytes(key)


def test_delete_many_removes_every_key_past_one_request_and_ignores_missing_ones(store: Store):
    keys = [f"manifest/part-{i:05d}.parquet" for i in range(1003)]  # S3 deletes at most 1000 keys a request
    for key in keys:
        store.put_bytes(key, b"x")
    store.put_bytes("manifest/keep.parquet", b"y")
    store.delete_many([*keys, "manifest/never-written.parquet"])
    assert store.list("manifest/") == ["manifest/keep.parquet"]
    store.delete_many([])


def test_empty_object_round_trips(store: Store):
    store.put_bytes("empty.bin", b"")
    assert store.exists("empty.bin")
    assert store.get_bytes("empty.bin") == b""


def test_list_is_recursive_sorted_relative_and_a_string_prefix(store: Store):
    keys = ["b.txt", "samples/ab/x.wav", "samples/abc/image.png", "samples/abc/audio.wav", "a/deep/er/z.bin"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("samples/") == ["samples/ab/x.wav", "samples/abc/audio.wav", "samples/abc/image.png"]
    assert store.list("samples/abc") == ["samples/abc/audio.wav", "samples/abc/image.png"]
    assert store.list("samples/abc/") == ["samples/abc/audio.wav", "samples/abc/image.png"]
    assert store.list("samples/abc/i") == ["samples/abc/image.png"]
    assert store.list("nothing/here") == []


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "/etc/passwd", "a//b", "./a", "", "a\\b", "a/."])
def test_keys_that_escape_or_alias_are_refused(store: Store, key: str):
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.uri_for(key)


def test_check_writable_leaves_no_probe(store: Store):
    store.check_writable()
    assert store.list(PROBE_PREFIX) == []
    if isinstance(store, LocalStore):  # not even the emptied folder (an object store has no folders)
        assert not (store.root / PROBE_PREFIX.rstrip("/")).exists()


def test_store_pickles_and_works_after(store: Store):
    store.put_bytes("k", b"before")
    store.exists("k")  # an S3 store now holds a client, which must not travel
    copy = pickle.loads(pickle.dumps(store))
    assert copy.uri == store.uri
    assert copy.get_bytes("k") == b"before"


# Local store -------------------------------------------------------------------------------------------------


def test_local_uri_and_layout(tmp_path: Path):
    store = LocalStore(tmp_path / "with space")
    uri = store.put_bytes("a/b.png", b"x")
    assert (tmp_path / "with space" / "a" / "b.png").read_bytes() == b"x"
    assert uri == (tmp_path / "with space" / "a" / "b.png").as_uri()
    assert uri.startswith("file:///") and "%20" in uri
    assert open_store(store.uri).root == store.root  # the URI a store reports opens the same store


def test_local_write_leaves_no_temp_files(tmp_path: Path):
    store = LocalStore(tmp_path)
    for i in range(5):
        store.put_bytes("d/obj.bin", bytes([i]) * 1000)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["obj.bin"]


def test_local_failed_write_keeps_old_content(tmp_path: Path, monkeypatch):
    store = LocalStore(tmp_path)
    store.put_bytes("d/obj.bin", b"old")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StoreError) as caught:
        store.put_bytes("d/obj.bin", b"new" * 1000)
    _assert_one_sentence(caught.value, store.uri_for("d/obj.bin"), "No space left on device")
    monkeypatch.undo()
    assert store.get_bytes("d/obj.bin") == b"old"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["obj.bin"]


def test_local_list_skips_in_flight_temp_files(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_bytes("d/done.bin", b"x")
    (tmp_path / "d" / ".next.bin.0123abcd.imgsound-partial").write_bytes(b"half")
    assert store.list() == ["d/done.bin"]


def test_local_open_touches_nothing(tmp_path: Path):
    open_store(str(tmp_path / "not" / "yet"))
    assert not (tmp_path / "not").exists()


def test_check_writable_fails_on_unwritable_local_root(tmp_path: Path):
    if os.geteuid() == 0:
        # root ignores permission bits, so make the root unwritable for everyone: a path below a regular file.
        blocker = tmp_path / "a-file"
        blocker.write_bytes(b"")
        store = LocalStore(blocker / "sub")
    else:
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        readonly.chmod(0o500)
        store = LocalStore(readonly)
    with pytest.raises(StoreError) as caught:
        store.check_writable()
    _assert_one_sentence(caught.value, store.uri, "writable directory")


# URI parsing ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("s3://my-bucket", "my-bucket", ""),
        ("s3://my-bucket/", "my-bucket", ""),
        ("s3://my.bucket-01/runs/2024-06-01/", "my.bucket-01", "runs/2024-06-01"),
        ("S3://abc/x", "abc", "x"),
    ],
)
def test_open_store_s3_forms(uri: str, bucket: str, prefix: str):
    store = open_store(uri, endpoint_url="http://127.0.0.1:1")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url) == (bucket, prefix, "http://127.0.0.1:1")
    assert store.uri == (f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}")
    assert store.uri_for("k/v.png") == f"s3://{bucket}/{prefix + '/' if prefix else ''}k/v.png"


def test_open_store_local_forms(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = {
        f"file://{tmp_path}/out": tmp_path / "out",
        f"file://localhost{tmp_path}/out": tmp_path / "out",
        (tmp_path / "with space").as_uri(): tmp_path / "with space",
        str(tmp_path / "abs"): tmp_path / "abs",
        "relative/dir": tmp_path / "relative" / "dir",
        "./odd:name": tmp_path / "odd:name",
        ".": tmp_path,
    }
    for uri, root in cases.items():
        store = open_store(uri)
        assert isinstance(store, LocalStore), uri
        assert store.root == root, uri


@pytest.mark.parametrize(
    ("uri", "mentions"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("http://example.com/bucket", "unsupported scheme"),
        ("gs://bucket/x", "unsupported scheme"),
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3:bucket", "malformed"),
        ("s3://Upper-Case", "not a valid S3 bucket name"),
        ("s3://ab", "not a valid S3 bucket name"),
        ("s3://" + "a" * 64, "not a valid S3 bucket name"),
        ("s3://under_score", "not a valid S3 bucket name"),
        ("s3://-leading", "not a valid S3 bucket name"),
        ("s3://two..dots", "not a valid S3 bucket name"),
        ("s3://192.168.0.1", "not a valid S3 bucket name"),
        ("s3://bucket/a/../b", "'..'"),
        ("s3://bucket/p?versionId=1", "query"),
        ("file://relative/dir", "three slashes"),
        ("file:relative", "three slashes"),
        ("file://otherhost/abs", "three slashes"),
    ],
)
def test_open_store_rejects(uri: str, mentions: str):
    with pytest.raises(StoreError) as caught:
        open_store(uri)
    _assert_one_sentence(caught.value, mentions)
    if uri.strip():
        assert repr(uri) in str(caught.value)


def test_open_store_unsupported_scheme_lists_accepted_forms():
    with pytest.raises(StoreError) as caught:
        open_store("gs://bucket/x")
    _assert_one_sentence(caught.value, "'gs://bucket/x'", "s3://bucket[/prefix]", "file:///absolute/path")


def test_open_s3_contacts_nothing():
    # Nothing listens on this port; building the store must not notice.
    store = open_store("s3://bucket", endpoint_url=f"http://127.0.0.1:{free_port()}")
    assert store._client_instance is None


# S3 settings ---------------------------------------------------------------------------------------------------


def test_s3_settings_defaults_env_and_arguments(monkeypatch):
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    default = S3Store("bucket")
    assert (default.read_timeout_s, default.max_attempts) == (DEFAULT_READ_TIMEOUT_S, DEFAULT_MAX_ATTEMPTS)
    for name, value in FAST_FAIL_ENV.items():
        monkeypatch.setenv(name, value)
    from_env = S3Store("bucket", endpoint_url="http://127.0.0.1:1")
    assert (from_env.read_timeout_s, from_env.connect_timeout_s, from_env.max_attempts) == (1.0, 1.0, 2)
    config = from_env._client.meta.config
    assert (config.read_timeout, config.connect_timeout) == (1.0, 1.0)
    assert config.retries == {"total_max_attempts": 2, "mode": "standard"}
    explicit = S3Store("bucket", read_timeout_s=7, max_attempts=3)
    assert (explicit.read_timeout_s, explicit.max_attempts) == (7.0, 3)


@pytest.mark.parametrize(("name", "value"), [(READ_TIMEOUT_ENV, "soon"), (MAX_ATTEMPTS_ENV, "0")])
def test_s3_bad_setting_env_is_a_store_error(monkeypatch, name: str, value: str):
    monkeypatch.setenv(name, value)
    with pytest.raises(StoreError) as caught:
        S3Store("bucket")
    _assert_one_sentence(caught.value, name, repr(value))


# S3 against the moto server ----------------------------------------------------------------------------------


def test_s3_uses_endpoint_from_environment_and_argument(moto, bucket, monkeypatch):
    from_env = open_store(f"s3://{bucket}")
    assert from_env.resolved_endpoint == moto.endpoint_url
    from_env.put_bytes("k", b"v")
    # An explicit endpoint wins over the environment, here pointing at nothing.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    explicit = open_store(f"s3://{bucket}", endpoint_url=moto.endpoint_url)
    assert explicit.get_bytes("k") == b"v"


def test_s3_prefixes_do_not_leak(bucket):
    open_store(f"s3://{bucket}/run1").put_bytes("a", b"1")
    open_store(f"s3://{bucket}/run10").put_bytes("b", b"2")
    assert open_store(f"s3://{bucket}/run1").list() == ["a"]
    assert open_store(f"s3://{bucket}").list() == ["run1/a", "run10/b"]


def test_s3_list_follows_continuation_pages(bucket):
    # S3 returns at most 1000 keys per answer; two stubbed pages prove the listing follows the continuation token.
    store = open_store(f"s3://{bucket}/many")
    with Stubber(store._client) as stub:
        stub.add_response(
            "list_objects_v2",
            {"Contents": [{"Key": "many/k2"}, {"Key": "many/k0"}], "IsTruncated": True, "NextContinuationToken": "t"},
            {"Bucket": bucket, "Prefix": "many/"},
        )
        stub.add_response(
            "list_objects_v2",
            {"Contents": [{"Key": "many/k1"}], "IsTruncated": False},
            {"Bucket": bucket, "Prefix": "many/", "ContinuationToken": "t"},
        )
        assert store.list() == ["k0", "k1", "k2"]
        stub.assert_no_pending_responses()


def test_s3_content_type_follows_the_key(bucket):
    store = open_store(f"s3://{bucket}")
    store.put_bytes("x/image.png", b"png")
    store.put_bytes("x/blob", b"?")
    head = store._client.head_object
    assert head(Bucket=bucket, Key="x/image.png")["ContentType"] == "image/png"
    assert head(Bucket=bucket, Key="x/blob")["ContentType"] == "application/octet-stream"


def test_check_writable_on_missing_bucket(moto):
    store = open_store("s3://no-such-bucket-imgsound/run")
    with pytest.raises(StoreError) as caught:
        store.check_writable()
    _assert_one_sentence(caught.value, "'no-such-bucket-imgsound'", "does not exist", moto.endpoint_url, "create it")


def test_list_on_missing_bucket(moto):
    with pytest.raises(StoreError, match="does not exist"):
        open_store("s3://no-such-bucket-imgsound").list()


def test_access_denied_is_a_store_error(bucket):
    store = open_store(f"s3://{bucket}/run")
    with Stubber(store._client) as stub:
        stub.add_client_error("put_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(StoreError) as caught:
            store.put_bytes("k", b"v")
    _assert_one_sentence(caught.value, f"s3://{bucket}/run/k", "Access denied", "s3:PutObject")


def test_missing_credentials_is_a_store_error(bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = open_store(f"s3://{bucket}")
    with pytest.raises(StoreError) as caught:
        store.check_writable()
    _assert_one_sentence(caught.value, f"s3://{bucket}/{PROBE_PREFIX}", "No usable AWS credentials")


def test_s3_outage_fails_fast_then_recovers(moto, bucket, monkeypatch):
    for name, value in FAST_FAIL_ENV.items():
        monkeypatch.setenv(name, value)
    store = open_store(f"s3://{bucket}/run")
    store.put_bytes("before/outage.bin", b"kept")
    # What bounds the wait is the client's configuration: 1 s timeouts, 2 attempts in all (no timing asserted).
    config = store._client.meta.config
    assert (config.read_timeout, config.connect_timeout, config.retries["total_max_attempts"]) == (1, 1, 2)
    moto.pause()
    try:
        with pytest.raises(StoreError) as caught:
            store.put_bytes("during/outage.bin", b"lost?")
    finally:
        moto.resume()
    _assert_one_sentence(caught.value, moto.endpoint_url, f"s3://{bucket}/run/during/outage.bin", "2 attempts")
    # The same store (and its client) works again, and nothing written before the outage was lost.
    assert store.get_bytes("before/outage.bin") == b"kept"
    store.put_bytes("after/outage.bin", b"fine")
    assert store.get_bytes("after/outage.bin") == b"fine"
    store.check_writable()


def test_unreachable_endpoint_fails_fast(monkeypatch):
    for name, value in FAST_FAIL_ENV.items():
        monkeypatch.setenv(name, value)
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = open_store("s3://some-bucket/run", endpoint_url=endpoint)
    with pytest.raises(StoreError) as caught:
        store.check_writable()
    _assert_one_sentence(caught.value, endpoint, "s3://some-bucket/run/", "Could not reach", "2 attempts")
