"""Work handed to one background thread, in order, with back-pressure: files written while the next step runs.

    with InOrderWorker(max_pending=4) as writer:
        for result in sampler.generate(requests):
            writer.submit(write_files, result, then=lambda path: print("wrote", path))

The thread encodes and writes (PNG/zlib, WAV, ffmpeg and file I/O release the GIL) while the caller's thread
keeps the accelerator busy. `submit` blocks while `max_pending` items are unfinished, so memory stays bounded; the
`then` callbacks run on the caller's thread, in submission order (progress bars, messages). The first failure is
raised in the caller's thread — at the next `submit` or when the block ends — and nothing after it runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class InOrderWorker:
    """One worker thread; items run in submission order; at most `max_pending` unfinished at a time."""

    def __init__(self, max_pending: int = 4, name: str = "imgsound-writer") -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: deque[tuple[Future, Callable[[Any], None] | None]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any, then: Callable[[Any], None] | None = None) -> None:
        """Queue `fn(*args)`; first collect finished items (and wait for the oldest while the queue is full)."""
        self._collect(block=False)
        while len(self._pending) >= self.max_pending:
            self._collect_oldest()
        self._pending.append((self._executor.submit(fn, *args), then))

    def drain(self) -> None:
        """Wait for every queued item; raise the first failure."""
        while self._pending:
            self._collect_oldest()

    def _collect(self, block: bool) -> None:
        while self._pending and (block or self._pending[0][0].done()):
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        future, then = self._pending.popleft()
        try:
            result = future.result()
        except BaseException:
            self._cancel()
            raise
        if then is not None:
            then(result)

    def _cancel(self) -> None:
        for future, _ in self._pending:
            future.cancel()
        self._pending.clear()

    def __enter__(self) -> InOrderWorker:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is None:
                self.drain()
            else:  # the caller failed: what has not started is dropped, what runs is let finish (no torn files)
                self._cancel()
        finally:
            self._executor.shutdown(wait=True)
