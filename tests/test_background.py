"""The in-order background worker: order, back-pressure, failures."""

from __future__ import annotations

import threading

import pytest

from imgsound_core.background import InOrderWorker


def test_items_run_in_order_and_callbacks_run_on_the_callers_thread():
    ran, called, threads = [], [], set()
    caller = threading.get_ident()

    def work(i: int) -> int:
        threads.add(threading.get_ident())
        ran.append(i)
        return i * 10

    def then(result: int) -> None:
        assert threading.get_ident() == caller
        called.append(result)

    with InOrderWorker(max_pending=3) as worker:
        for i in range(20):
            worker.submit(work, i, then=then)
    assert ran == list(range(20))
    assert called == [i * 10 for i in range(20)]
    assert caller not in threads and len(threads) == 1


def test_submit_waits_while_max_pending_items_are_unfinished():
    release = threading.Event()
    started = []

    def blocked(i: int) -> None:
        started.append(i)
        release.wait(timeout=30)

    worker = InOrderWorker(max_pending=2)
    worker.submit(blocked, 0)
    worker.submit(blocked, 1)
    third = threading.Thread(target=worker.submit, args=(blocked, 2))
    third.start()
    third.join(timeout=0.5)
    assert third.is_alive(), "a third item was queued while two were unfinished"
    release.set()
    third.join(timeout=30)
    assert not third.is_alive()
    with worker:
        pass
    assert started == [0, 1, 2]


def test_a_failure_is_raised_in_the_caller_and_nothing_after_it_runs():
    ran = []

    def work(i: int) -> None:
        if i == 1:
            raise OSError("disk full")
        ran.append(i)

    with pytest.raises(OSError, match="disk full"):
        with InOrderWorker(max_pending=1) as worker:
            for i in range(5):
                worker.submit(work, i)
    assert ran == [0]


def test_a_failure_of_the_last_item_is_raised_when_the_block_ends():
    def fail() -> None:
        raise ValueError("bad video")

    worker = InOrderWorker()
    worker.submit(fail)
    with pytest.raises(ValueError, match="bad video"):
        with worker:
            pass
