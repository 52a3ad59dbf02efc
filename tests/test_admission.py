"""Admission control: the in-flight limit, per-key token buckets, ticket expiry, and bounded memory."""

from __future__ import annotations

import pytest

from serve.admission import AdmissionControl, Decision


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def control(clock, max_in_flight=16, spm=None, burst=None, ttl=600.0, **kwargs) -> AdmissionControl:
    return AdmissionControl(max_in_flight, spm, burst, ttl, clock=clock, **kwargs)


def in_flight(ac: AdmissionControl) -> int:
    return ac.snapshot()["samples_in_flight"]


def test_admitted_requests_get_distinct_tickets_and_hold_their_samples():
    ac = control(FakeClock())
    a, b = ac.admit("k1", 3), ac.admit("k2", 5)
    assert a.admitted and b.admitted and a.ticket and b.ticket and a.ticket != b.ticket
    assert a.reason is None and a.retry_after_s is None
    assert ac.snapshot() == {"samples_in_flight": 8, "max_samples_in_flight": 16, "tickets": 2, "buckets": 0}


def test_in_flight_limit_holds_across_keys():
    ac = control(FakeClock(), max_in_flight=10, queue_retry_after_s=7.0)
    assert ac.admit("k1", 6).admitted
    assert ac.admit("k2", 4).admitted
    refused = ac.admit("k3", 1)
    assert refused == Decision(
        False,
        reason="queue_full",
        retry_after_s=7.0,
        message="10 samples are in flight (limit 10); retry later",
    )
    assert ac.admit(None, 1).reason == "queue_full"


def test_queue_retry_after_defaults_to_five_seconds():
    ac = control(FakeClock(), max_in_flight=1)
    ac.admit("k", 1)
    assert ac.admit("k", 1).retry_after_s == 5.0


def test_release_frees_and_double_or_unknown_release_is_a_no_op():
    ac = control(FakeClock(), max_in_flight=4)
    first = ac.admit("k", 4)
    assert not ac.admit("k", 1).admitted
    ac.release(first.ticket)
    assert in_flight(ac) == 0
    second = ac.admit("k", 4)
    assert second.admitted
    ac.release(first.ticket)  # already released: must not free the second ticket's samples
    ac.release("no-such-ticket")
    assert in_flight(ac) == 4
    assert not ac.admit("k", 1).admitted


def test_expired_tickets_free_their_samples():
    clock = FakeClock()
    ac = control(clock, max_in_flight=4, ttl=30.0)
    old = ac.admit("k", 3)
    clock.advance(10)
    ac.admit("k", 1)
    assert not ac.admit("k", 1).admitted
    clock.advance(19.9)
    assert in_flight(ac) == 4
    clock.advance(0.1)  # the first ticket is now 30 s old
    assert ac.snapshot() == {"samples_in_flight": 1, "max_samples_in_flight": 4, "tickets": 1, "buckets": 0}
    assert ac.admit("k", 3).admitted
    ac.release(old.ticket)  # a late release of an expired ticket frees nothing twice
    assert in_flight(ac) == 4


def test_expiry_happens_on_admit_too():
    clock = FakeClock()
    ac = control(clock, max_in_flight=2, ttl=5.0)
    ac.admit("k", 2)
    clock.advance(5)
    assert ac.admit("k", 2).admitted


def test_burst_then_rate_limited_with_retry_after_from_the_refill_rate():
    clock = FakeClock()
    ac = control(clock, spm=10, burst=4)  # refill: 10/60 samples per second
    assert ac.admit("k", 3).admitted
    refused = ac.admit("k", 2)  # 1 token left, 1 missing: 6 s at 1/6 per second
    assert not refused.admitted and refused.reason == "rate_limited" and refused.ticket is None
    assert refused.retry_after_s == pytest.approx(6.0)
    assert refused.message == "this key's rate of 10 samples per minute is used up; retry in 6 s"
    clock.advance(5.9)
    assert ac.admit("k", 2).reason == "rate_limited"
    clock.advance(0.1)
    assert ac.admit("k", 2).admitted


def test_retry_after_is_exactly_enough():
    clock = FakeClock()
    ac = control(clock, spm=7, burst=5)
    assert ac.admit("k", 5).admitted
    refused = ac.admit("k", 3)
    clock.advance(refused.retry_after_s)
    assert ac.admit("k", 3).admitted


def test_refill_over_time_caps_at_burst():
    clock = FakeClock()
    ac = control(clock, max_in_flight=100, spm=60, burst=5)  # one sample per second
    assert ac.admit("k", 5).admitted
    assert not ac.admit("k", 1).admitted
    clock.advance(2)
    assert ac.admit("k", 2).admitted
    assert not ac.admit("k", 1).admitted
    clock.advance(3600)  # an hour idle refills to the burst, not to 3600
    assert ac.admit("k", 5).admitted
    assert ac.admit("k", 1).reason == "rate_limited"


def test_burst_defaults_to_the_per_minute_rate_and_at_least_one():
    assert control(FakeClock(), spm=10).burst == 10
    assert control(FakeClock(), spm=2.5).burst == 3
    assert control(FakeClock(), spm=0.2).burst == 1
    assert control(FakeClock(), spm=None).burst is None
    ac = control(FakeClock(), spm=10)
    assert ac.admit("k", 10).admitted
    assert ac.admit("k", 1).reason == "rate_limited"


def test_refused_requests_consume_neither_tokens_nor_slots():
    clock = FakeClock()
    ac = control(clock, max_in_flight=4, spm=60, burst=4)  # one sample per second
    held = ac.admit("a", 4)
    for _ in range(5):  # queue_full for key b: its bucket must stay full
        assert ac.admit("b", 3).reason == "queue_full"
    ac.release(held.ticket)
    held = ac.admit("b", 4)
    assert held.admitted  # b still had its whole burst
    clock.advance(1)
    ac.release(held.ticket)
    for _ in range(5):  # rate_limited for b (1 token): must hold no slots and take no tokens
        assert ac.admit("b", 2).reason == "rate_limited"
    assert ac.snapshot()["samples_in_flight"] == 0 and ac.snapshot()["tickets"] == 0
    clock.advance(1)
    assert ac.admit("b", 2).admitted  # 2 tokens after 2 s: the refusals took none


def test_rate_limited_refusal_does_not_deepen_the_debt():
    clock = FakeClock()
    ac = control(clock, spm=60, burst=3)
    ac.admit("k", 3)
    for _ in range(10):
        assert not ac.admit("k", 3).admitted
    clock.advance(3)
    assert ac.admit("k", 3).admitted


def test_keys_have_independent_buckets_and_none_is_one_shared_anonymous_bucket():
    ac = control(FakeClock(), max_in_flight=100, spm=60, burst=2)
    assert ac.admit("a", 2).admitted
    assert ac.admit("a", 1).reason == "rate_limited"
    assert ac.admit("b", 2).admitted
    assert ac.admit(None, 2).admitted
    refused = ac.admit(None, 1)
    assert refused.reason == "rate_limited"
    assert refused.message.startswith("the anonymous rate of 60 samples per minute is used up")


def test_no_rate_limit_without_samples_per_minute():
    ac = control(FakeClock(), max_in_flight=1000)
    for _ in range(500):
        assert ac.admit("k", 1).admitted
    for _ in range(500):
        assert ac.admit(None, 1).admitted
    assert ac.snapshot()["buckets"] == 0


def test_request_larger_than_the_burst_is_refused_as_too_large_without_a_retry_time():
    clock = FakeClock()
    ac = control(clock, spm=60, burst=4)
    refused = ac.admit("k", 5)
    assert refused == Decision(
        False,
        reason="too_large",
        message="5 samples are more than this key's burst of 4; ask for at most 4 per request",
    )
    clock.advance(3600)  # waiting never helps
    assert ac.admit("k", 5).reason == "too_large"
    assert ac.admit("k", 4).admitted  # and the refusal took nothing


def test_request_larger_than_the_in_flight_limit_is_too_large():
    ac = control(FakeClock(), max_in_flight=8)
    refused = ac.admit("k", 9)
    assert refused.reason == "too_large" and refused.retry_after_s is None
    assert "at most 8" in refused.message
    assert ac.admit("k", 8).admitted


def test_full_buckets_are_dropped():
    clock = FakeClock()
    ac = control(clock, max_in_flight=100, spm=60, burst=5)
    ac.admit("a", 5)
    ac.admit("b", 1)
    assert ac.snapshot()["buckets"] == 2
    clock.advance(1)
    ac.admit("c", 1)  # b has refilled (1 s), a has not (needs 5 s)
    assert ac.snapshot()["buckets"] == 3  # b is behind a in the map, so it stays until a is full
    clock.advance(5)
    ac.admit("d", 1)
    assert ac.snapshot()["buckets"] == 1  # only d


def test_bucket_map_is_bounded():
    clock = FakeClock()
    ac = control(clock, max_in_flight=10_000, spm=1, burst=1, max_buckets=50)
    for i in range(500):
        assert ac.admit(f"key-{i}", 1).admitted
    assert ac.snapshot()["buckets"] == 50
    assert ac.admit("key-499", 1).reason == "rate_limited"  # recent buckets are kept


@pytest.mark.parametrize(
    "args",
    [
        dict(max_samples_in_flight=0, samples_per_minute=None, burst=None, ticket_ttl_s=1),
        dict(max_samples_in_flight=1, samples_per_minute=0, burst=None, ticket_ttl_s=1),
        dict(max_samples_in_flight=1, samples_per_minute=None, burst=3, ticket_ttl_s=1),
        dict(max_samples_in_flight=1, samples_per_minute=1, burst=0, ticket_ttl_s=1),
        dict(max_samples_in_flight=1, samples_per_minute=None, burst=None, ticket_ttl_s=0),
    ],
)
def test_bad_settings_are_refused(args):
    with pytest.raises(ValueError):
        AdmissionControl(**args)


def test_zero_samples_is_an_error():
    with pytest.raises(ValueError):
        control(FakeClock()).admit("k", 0)
