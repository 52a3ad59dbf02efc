"""The server's output store: S3 (a real S3-speaking server on loopback) or a folder, checked at start-up."""

from __future__ import annotations

import boto3
import pytest

from jobs.store import StoreError
from serve.renderer import open_output_store


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


def write_served_sample(store, sample_id: str, seed: int) -> None:
    """A sample folder as the server writes it: `<sample_id>/…`, sample.json last."""
    import torch

    from imgsound_core.artifacts import render_artifacts

    generator = torch.Generator().manual_seed(seed)
    record = {"sample_id": sample_id, "image_prompt": "castle", "audio_prompt": "bells", "seed": seed}
    artifacts = render_artifacts(
        torch.rand(3, 64, 256, generator=generator),
        torch.rand(64, 256, generator=generator),
        torch.rand(256 * 160, generator=generator) - 0.5,
        record,
    )
    for name in sorted(artifacts, key=lambda n: n == "sample.json"):
        store.put_bytes(f"{sample_id}/{name}", artifacts[name])


def test_the_store_gallery_lists_serves_and_refreshes(tmp_path):
    import json

    from serve.gallery import NotFound, StoreGallery

    store = open_output_store(str(tmp_path / "served"))
    gallery = StoreGallery(store, refresh_s=0.0)
    assert '"samples":[]' in gallery.data()[0]  # an empty store: a page with no cards
    write_served_sample(store, "aaaa", 1)
    write_served_sample(store, "bbbb", 2)
    data = json.loads(gallery.data()[0].removeprefix("window.IMGSOUND_GALLERY = ").rstrip().rstrip(";"))
    assert sorted(s["id"] for s in data["samples"]) == ["aaaa", "bbbb"]
    sample = next(s for s in data["samples"] if s["id"] == "aaaa")
    assert sample["media"]["audio"] == "media/aaaa/audio"  # relative to the page: any route prefix works
    audio, kind = gallery.media("aaaa", "audio")
    assert kind == "audio/wav" and audio == store.get_bytes("aaaa/audio.wav")
    thumb, kind = gallery.media("aaaa", "spectrogram_thumb")
    assert kind in ("image/webp", "image/jpeg") and thumb == gallery.media("aaaa", "spectrogram_thumb")[0]
    store.delete("bbbb/audio.wav")
    with pytest.raises(NotFound, match="audio.wav of sample bbbb is missing"):
        gallery.media("bbbb", "audio")
    with pytest.raises(NotFound, match="no sample"):
        gallery.media("cccc", "audio")
    with pytest.raises(NotFound, match="unknown media role"):
        gallery.media("aaaa", "secrets")
    from serve.gallery import asset

    with pytest.raises(NotFound):
        asset("../pyproject.toml")
    assert asset("index.html")[1].startswith("text/html")


@pytest.mark.parametrize(
    "header, expected",
    [(None, None), ("bytes=0-9", (0, 9)), ("bytes=90-", (90, 99)), ("bytes=-10", (90, 99)), ("bytes=95-200", (95, 99))],
)
def test_byte_ranges(header, expected):
    from serve.gallery import byte_range

    assert byte_range(header, 100) == expected


def test_unsatisfiable_byte_ranges():
    from serve.gallery import RangeNotSatisfiable, byte_range

    for header in ("bytes=100-", "bytes=50-40", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable):
            byte_range(header, 100)


class CountingStore:
    """A store that counts its reads, to see what a refresh reads."""

    def __init__(self, store) -> None:
        self.store = store
        self.reads: list[str] = []

    def get_bytes(self, key: str) -> bytes:
        self.reads.append(key)
        return self.store.get_bytes(key)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def gallery_ids(gallery) -> list[str]:
    import json

    script, _ = gallery.data()
    return sorted(
        s["id"] for s in json.loads(script.removeprefix("window.IMGSOUND_GALLERY = ").rstrip(" ;\n"))["samples"]
    )


def test_the_store_gallery_reads_only_new_records_and_rebuilds_only_on_change(tmp_path):
    from serve.gallery import StoreGallery

    store = CountingStore(open_output_store(str(tmp_path / "served")))
    for index in range(5):
        write_served_sample(store.store, f"s{index}", index)
    gallery = StoreGallery(store, refresh_s=0.0)
    first, etag = gallery.data()
    assert sorted(key for key in store.reads) == [f"s{i}/sample.json" for i in range(5)]
    store.reads.clear()
    again, same_etag = gallery.data()
    assert store.reads == [] and again is first and same_etag == etag  # nothing new: no read, no rebuild
    write_served_sample(store.store, "s5", 5)
    _, new_etag = gallery.data()
    assert store.reads == ["s5/sample.json"] and new_etag != etag  # only the new record is read
    store.store.delete("s0/sample.json")
    assert "s0" not in gallery_ids(gallery)


def test_a_corrupt_record_is_skipped_and_counted_not_the_end_of_the_gallery(tmp_path):
    from serve.gallery import StoreGallery

    store = open_output_store(str(tmp_path / "served"))
    for index in range(64):
        write_served_sample(store, f"s{index:02d}", index)
    store.put_bytes("s07/sample.json", b"{ not json")
    store.put_bytes("s08/sample.json", b"[1, 2, 3]")
    gallery = StoreGallery(store, refresh_s=0.0)
    assert len(gallery_ids(gallery)) == 62
    assert sorted(gallery.bad_records) == ["s07", "s08"] and "not valid JSON" in gallery.bad_records["s07"]
