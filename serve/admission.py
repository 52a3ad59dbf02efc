"""Service-wide admission control: a per-key sample rate and a limit on samples in flight.

One instance serves the whole service (a single-replica deployment wraps it), so the limits hold across driver
replicas. Units are samples, not requests: a request for 4 samples costs 4.

`admit(key, samples)` checks, in this order, and the first refusal wins:

1. Size. A request that could never be admitted is refused at once with reason "too_large" and no retry time
   (the HTTP layer answers it like a validation error, not a 429): more samples than the key's burst, or more
   than `max_samples_in_flight`. Waiting would not help, so the caller is told the most it may ask for.
2. Rate (only when `samples_per_minute` is set). Each key has a token bucket holding up to `burst` samples
   (default: `samples_per_minute` rounded up, at least 1), refilled at `samples_per_minute / 60` per second.
   `key=None` (no auth configured) shares one anonymous bucket. Too few tokens: "rate_limited", with
   `retry_after_s` the time until the bucket holds enough.
3. In flight. Samples of admitted, unreleased, unexpired tickets; over `max_samples_in_flight`: "queue_full",
   with `retry_after_s = queue_retry_after_s` (when a slot frees up is not known here).

A refused request changes nothing: no tokens taken, no slots held. An admitted one takes its tokens and holds
its samples until `release(ticket)`, or until the ticket is `ticket_ttl_s` old (a caller that died never
releases; the TTL must exceed the longest request). Expired tickets are freed at the next `admit` or `snapshot`.

Memory stays bounded: a bucket that has refilled to full is the same as no bucket and is dropped, and at most
`max_buckets` are kept (past that, the least recently used one is dropped, which forgives that key its debt; keys
come from the key file, so this is a guard rather than a policy). Thread-safe.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Reason = Literal["rate_limited", "queue_full", "too_large"]

# Float refill arithmetic may land a hair under a whole number at exactly the advertised retry time.
_TOKEN_EPSILON = 1e-9


@dataclass(frozen=True)
class Decision:
    admitted: bool
    ticket: str | None = None
    reason: Reason | None = None
    retry_after_s: float | None = None
    message: str | None = None


class Refused(Exception):
    """A request the Gatekeeper did not admit: rate limited (429), full (503) or too large (422)."""

    STATUS = {"rate_limited": 429, "queue_full": 503, "too_large": 422}

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.message or "the request was not admitted")
        self.decision = decision


@dataclass
class _Bucket:
    tokens: float
    updated_at: float


@dataclass(frozen=True)
class _Ticket:
    samples: int
    expires_at: float


class AdmissionControl:
    def __init__(
        self,
        max_samples_in_flight: int,
        samples_per_minute: float | None,
        burst: int | None,
        ticket_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        queue_retry_after_s: float = 5.0,
        max_buckets: int = 10_000,
    ) -> None:
        if max_samples_in_flight < 1:
            raise ValueError(f"max_samples_in_flight must be at least 1, got {max_samples_in_flight}")
        if samples_per_minute is not None and not samples_per_minute > 0:
            raise ValueError(f"samples_per_minute must be positive or None, got {samples_per_minute}")
        if burst is not None and samples_per_minute is None:
            raise ValueError("burst needs samples_per_minute")
        if burst is not None and burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if not ticket_ttl_s > 0:
            raise ValueError(f"ticket_ttl_s must be positive, got {ticket_ttl_s}")
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, got {max_buckets}")
        self.max_samples_in_flight = max_samples_in_flight
        self.samples_per_minute = samples_per_minute
        self.burst = None if samples_per_minute is None else burst or max(1, math.ceil(samples_per_minute))
        # Tokens refilled per second; only read when there is a rate limit (burst is not None).
        self.rate_per_s = (samples_per_minute or 0.0) / 60.0
        self.ticket_ttl_s = ticket_ttl_s
        self.queue_retry_after_s = queue_retry_after_s
        self.max_buckets = max_buckets
        self._clock = clock
        self._lock = threading.Lock()
        # Insertion order is expiry order (one TTL for all), so expired tickets are always at the front.
        self._tickets: dict[str, _Ticket] = {}
        self._in_flight = 0
        # Least recently used first: the oldest buckets are the likeliest to have refilled.
        self._buckets: OrderedDict[str | None, _Bucket] = OrderedDict()

    def admit(self, key: str | None, samples: int) -> Decision:
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._drop_full_buckets(now)
            who = "the anonymous" if key is None else "this key's"

            if self.burst is not None and samples > self.burst:
                return Decision(
                    False,
                    reason="too_large",
                    message=f"{samples} samples are more than {who} burst of {self.burst}; "
                    f"ask for at most {self.burst} per request",
                )
            if samples > self.max_samples_in_flight:
                return Decision(
                    False,
                    reason="too_large",
                    message=f"{samples} samples are more than the service's limit of {self.max_samples_in_flight} "
                    f"in flight; ask for at most {self.max_samples_in_flight} per request",
                )

            tokens = self._tokens(key, now)
            if tokens is not None and tokens + _TOKEN_EPSILON < samples:
                wait = (samples - tokens) / self.rate_per_s
                return Decision(
                    False,
                    reason="rate_limited",
                    retry_after_s=wait,
                    message=f"{who} rate of {self.samples_per_minute:g} samples per minute is used up; "
                    f"retry in {math.ceil(wait)} s",
                )

            if self._in_flight + samples > self.max_samples_in_flight:
                return Decision(
                    False,
                    reason="queue_full",
                    retry_after_s=self.queue_retry_after_s,
                    message=f"{self._in_flight} samples are in flight (limit {self.max_samples_in_flight}); "
                    "retry later",
                )

            # Admitted: only now is anything taken.
            if tokens is not None:
                self._buckets[key] = _Bucket(max(0.0, tokens - samples), now)
                self._buckets.move_to_end(key)
                while len(self._buckets) > self.max_buckets:
                    self._buckets.popitem(last=False)
            ticket = secrets.token_hex(16)
            self._tickets[ticket] = _Ticket(samples, now + self.ticket_ttl_s)
            self._in_flight += samples
            return Decision(True, ticket=ticket)

    def release(self, ticket: str) -> None:
        with self._lock:
            held = self._tickets.pop(ticket, None)
            if held is not None:
                self._in_flight -= held.samples

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._expire(self._clock())
            return {
                "samples_in_flight": self._in_flight,
                "max_samples_in_flight": self.max_samples_in_flight,
                "tickets": len(self._tickets),
                "buckets": len(self._buckets),
            }

    def _tokens(self, key: str | None, now: float) -> float | None:
        """Tokens in `key`'s bucket now (a missing bucket is full); None when there is no rate limit."""
        if self.burst is None:
            return None
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self.burst)
        elapsed = max(0.0, now - bucket.updated_at)
        return min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)

    def _drop_full_buckets(self, now: float) -> None:
        # Oldest first, stopping at the first one still refilling: amortized O(1) per admit.
        while self._buckets:
            key = next(iter(self._buckets))
            tokens = self._tokens(key, now)
            if tokens is None or tokens + _TOKEN_EPSILON < self.burst:
                return
            del self._buckets[key]

    def _expire(self, now: float) -> None:
        while self._tickets:
            ticket, held = next(iter(self._tickets.items()))
            if held.expires_at > now:
                return
            del self._tickets[ticket]
            self._in_flight -= held.samples
