"""The server's output store: S3 (a real S3-speaking server on loopback) or a folder, checked at start-up."""

from __future__ import annotations

import boto3
import pytest

from jobs.store import StoreError
from serve.driver import open_output_store
from tests.s3_server import MotoServer


@pytest.fixture(scope="module")
def s3():
    server = MotoServer()
    server.start()
    yield server
    server.stop()


def test_s3_output_store_is_checked_and_written(s3, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket="served")
    store = open_output_store("s3://served/run")
    uri = store.put_bytes("abc/sample.json", b"{}")
    assert uri == "s3://served/run/abc/sample.json"
    assert client.get_object(Bucket="served", Key="run/abc/sample.json")["Body"].read() == b"{}"
    assert not [k for k in store.list("") if k.startswith("_probe/")]  # the start-up probe cleaned up after itself
    with pytest.raises(StoreError, match="missing-bucket"):
        open_output_store("s3://missing-bucket/run")


def test_no_store_and_bad_store_uris(tmp_path):
    assert open_output_store(None) is None
    assert open_output_store(str(tmp_path / "served")).uri.startswith("file://")
    with pytest.raises(StoreError):
        open_output_store("gs://bucket/run")
