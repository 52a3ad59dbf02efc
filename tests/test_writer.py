"""A sweep's write stage (jobs/writer.py) alone, on a folder store: the order of its writes and its encoding threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from jobs.manifest import COLUMNS, batch_part_key
from jobs.writer import GeneratedBatch, GeneratedSample, SampleWriter

SPEC = {
    "name": "writer",
    "pairs": [{"image": "castle towers", "audio": "bell ringing"}],
    "samples_per_pair": 4,
    "params": {"steps": 2, "height": 16, "width": 64},
    "models": {"image": "models/tiny/image", "audio": "models/tiny/audio", "device": "cpu"},
}


def batch_of(count: int) -> GeneratedBatch:
    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        sample_id = f"{index:064x}"
        point = {"sample_id": sample_id, "pair_index": 0, "sample_index": index, "request": {}}
        samples.append(
            GeneratedSample(
                point=point,
                record={"sample_id": sample_id, "seed": index},
                row={**dict.fromkeys(COLUMNS), "sample_id": sample_id, "sweep": "writer", "seed": index},
                image=rng.random((3, 16, 64), dtype=np.float32),
                spectrogram=rng.random((16, 64), dtype=np.float32),
                waveform=rng.uniform(-1, 1, 64 * 160).astype(np.float32),
            )
        )
    return GeneratedBatch(points=[s.point for s in samples], samples=samples)


def test_every_file_then_every_record_then_the_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Encoding several samples at once keeps the exactly-once order of the writes."""
    writer = SampleWriter(SPEC, str(tmp_path))
    writes: list[str] = []
    put = writer.store.put_bytes
    monkeypatch.setattr(writer.store, "put_bytes", lambda key, data: writes.append(key) or put(key, data))
    batch = batch_of(6)
    written = writer.write(batch)

    part = batch_part_key(p["sample_id"] for p in batch.points)
    assert written["part"] == part and writes[-1] == part
    records = [i for i, key in enumerate(writes) if key.endswith("/sample.json")]
    others = [i for i, key in enumerate(writes[:-1]) if not key.endswith("/sample.json")]
    assert len(records) == 6 and len(others) == 6 * 4
    assert max(others) < min(records)
    assert written["sample_ids"] == [s.record["sample_id"] for s in batch.samples]
    for sample in batch.samples:
        folder = tmp_path / "samples" / sample.record["sample_id"]
        assert sorted(p.name for p in folder.iterdir()) == [
            "audio.wav",
            "image.png",
            "sample.json",
            "spectrogram.npy",
            "spectrogram.png",
        ]


def test_samples_of_a_batch_are_encoded_at_the_same_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two samples' encodings must overlap: each waits (up to 10 s) for another to be under way."""
    monkeypatch.setattr(SampleWriter, "RENDER_THREADS", 2)
    writer = SampleWriter(SPEC, str(tmp_path))
    meeting = threading.Barrier(2, timeout=10)
    render = writer._render

    def render_when_another_is_under_way(sample: GeneratedSample) -> dict[str, bytes]:
        meeting.wait()
        return render(sample)

    monkeypatch.setattr(writer, "_render", render_when_another_is_under_way)
    assert len(writer.write(batch_of(4))["sample_ids"]) == 4
