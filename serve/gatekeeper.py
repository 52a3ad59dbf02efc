"""The Gatekeeper deployment: admission control for the whole service, whatever the number of Driver replicas.

One replica holds `AdmissionControl` (serve/admission.py): samples in flight across every Driver replica and a
token bucket per API key. A Driver asks `admit(key, samples)` before any model work and `release(ticket)` when the
request ends; a Driver that dies never releases, so tickets expire (`limits.admission_ticket_ttl_s`). The calls are
a few microseconds of work each: one replica is plenty, and Serve restarts it if it dies (its counters then start
from zero, which errs towards admitting).
"""

from __future__ import annotations

from typing import Any

from ray import serve

from serve.admission import AdmissionControl, Decision
from serve.config import AppArgs


@serve.deployment(num_replicas=1, max_ongoing_requests=1000)
class GatekeeperDeployment:
    def __init__(self, args: dict[str, Any]) -> None:
        settings = AppArgs.model_validate(args)
        self.control = AdmissionControl(
            max_samples_in_flight=settings.limits.max_samples_in_flight,
            samples_per_minute=settings.auth.samples_per_minute,
            burst=settings.auth.burst,
            ticket_ttl_s=settings.limits.admission_ticket_ttl_s,
            queue_retry_after_s=settings.limits.retry_after_s,
        )

    def admit(self, key: str | None, samples: int) -> Decision:
        return self.control.admit(key, samples)

    def release(self, ticket: str) -> None:
        self.control.release(ticket)

    def snapshot(self) -> dict[str, Any]:
        return self.control.snapshot()
