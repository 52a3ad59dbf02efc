"""Asynchronous jobs of the HTTP service: `POST /v1/jobs` runs a `/v1/generate` body in the background.

The state model, its place in the output store, the heartbeat and stale rule, cancellation across replicas, the
server-sent events and the signed webhook live here; the Driver only maps HTTP onto `JobRunner`. Nothing here
imports Ray: the runner takes the Gatekeeper's `admit`/`release` and the Driver's generation as callables, so it
is unit-tested with fakes.

Where state lives. Each job is one JSON object in the output store, `_jobs/<job_id>.json` (the `_` keeps it out
of the gallery's sample folders), written whole and atomically by the store (`Store.put_bytes`), so any Driver
replica answers any status request. The replica that accepted a job runs it and is the only writer while it runs:
it writes on every status change, on progress at most every `jobs.progress_interval_s`, and at least every
`jobs.heartbeat_s` (a `heartbeat` timestamp, wall clock), from a watcher task that does not wait for the step
loop, so a slow step never looks like a dead replica.

Stale rule. A reader that finds a queued or running job whose heartbeat is older than `STALE_HEARTBEATS` ×
`heartbeat_s` reports it `failed` ("the replica running it stopped; resubmit"), persists that verdict, frees the
job's admission ticket at the Gatekeeper (the dead replica never will) and sends its webhook. It also leaves a
cancel marker, so that a replica that was only paused, not dead, stops the job when it wakes instead of
overwriting the verdict.

Cancellation. `DELETE` on the running replica sets the job's flag at once; on another replica it writes the
marker `_jobs/<job_id>.cancel`, which the running replica's watcher polls every `jobs.cancel_poll_s`. Either
way the step loop stops at the next step boundary (`JobCancelled` from its step hook), the job's admission
ticket is released before the job reads `cancelled`, and a queued job leaves the queue at once.

Job ids are 192 random bits (`secrets.token_urlsafe(24)`, 32 URL-safe characters); an id of any other shape is
refused before the store is touched, so no client-chosen string ever becomes a store key.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import re
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imgsound_core import __version__
from serve.admission import Decision, Refused

if TYPE_CHECKING:
    from jobs.store import Store
    from serve.config import Jobs as JobSettings

logger = logging.getLogger("ray.serve")

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

JOB_ID_BYTES = 24  # 192 random bits
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{32}")  # the shape token_urlsafe(24) has, and the only one accepted
JOBS_PREFIX = "_jobs/"
STALE_HEARTBEATS = 5  # a heartbeat older than this many intervals: the replica is gone
STALE_REASON = "the replica running it stopped; resubmit"
INTERRUPTED_REASON = "the replica running it was shut down; resubmit"
INTERNAL_REASON = "the job failed on an internal error"

SIGNATURE_HEADER = "X-Imgsound-Signature"
MAX_WEBHOOK_URL_CHARS = 2048
MIN_SECRET_CHARS = 16


# ---- ids and store layout -----------------------------------------------------------------------------------------


def new_job_id() -> str:
    return secrets.token_urlsafe(JOB_ID_BYTES)


def valid_job_id(job_id: str) -> bool:
    """Whether `job_id` has the shape of an id this service issues (checked before any store access)."""
    return isinstance(job_id, str) and JOB_ID_RE.fullmatch(job_id) is not None


def state_key(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}.json"


def cancel_key(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}.cancel"


def utc_iso(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- the state model ------------------------------------------------------------------------------------------------


class Progress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps_done: int = 0
    steps_total: int = 0


PUBLIC_FIELDS = ("job_id", "status", "progress", "created", "finished", "samples", "warnings", "error")


class JobState(BaseModel):
    """A job as stored. `public()` is what clients see; the rest is the service's bookkeeping."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    status: JobStatus
    progress: Progress = Field(default_factory=Progress)
    created: str
    finished: str | None = None
    samples: list[dict[str, Any]] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    error: str | None = None
    # Bookkeeping, never answered to clients.
    heartbeat: float = Field(description="wall-clock seconds of the running replica's last write")
    replica: str | None = Field(default=None, description="the Serve replica running the job")
    owner: str | None = Field(default=None, description="the label of the API key that submitted it")
    ticket: str | None = Field(default=None, description="its Gatekeeper admission, while it holds one")
    webhook_url: str | None = None

    def public(self) -> dict[str, Any]:
        return self.model_dump(include=set(PUBLIC_FIELDS))

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> JobState:
        return cls.model_validate_json(data)

    def is_stale(self, now: float, heartbeat_s: float) -> bool:
        """A queued or running job whose replica has not written for `STALE_HEARTBEATS` intervals."""
        return not self.terminal and now - self.heartbeat > STALE_HEARTBEATS * heartbeat_s

    def ended(self, status: JobStatus, now: float, error: str | None = None) -> JobState:
        """This job in a terminal state (it holds no ticket any more)."""
        return self.model_copy(
            update={"status": status, "finished": utc_iso(now), "error": error, "heartbeat": now, "ticket": None}
        )


class JobCancelled(Exception):
    """Raised at a step boundary of a job whose cancellation was asked for."""


class JobNotFound(Exception):
    """404: no such job (or not this key's)."""


class JobQueueFull(Exception):
    """503: this replica already holds `jobs.max_queued` queued jobs."""


class JobStateUnreadable(Exception):
    """503: the stored state is not a job's (corrupt, or written by something else)."""


class WebhookRefused(ValueError):
    """422: the webhook URL is not one this server will call; the message says why."""


# ---- webhooks: signing, the SSRF policy, delivery ---------------------------------------------------------------


class WebhookSecret:
    """The HMAC key of webhook signatures, read from a file (as the API keys are): never in args, env or logs."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"a webhook secret must be at least {MIN_SECRET_CHARS} characters")
        self._secret = secret

    @classmethod
    def from_file(cls, path: str | Path) -> WebhookSecret:
        """The file's content less surrounding whitespace; errors name the file, never the content."""
        secret = Path(path).read_bytes().strip()
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"{path}: a webhook secret must be at least {MIN_SECRET_CHARS} characters")
        return cls(secret)

    def sign(self, body: bytes) -> str:
        return signature(self._secret, body)

    def __repr__(self) -> str:
        return "WebhookSecret(…)"


def signature(secret: bytes, body: bytes) -> str:
    """The `X-Imgsound-Signature` value of `body`: `sha256=` and the hex HMAC-SHA256 of its exact bytes."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute the signature of the body as received and compare in constant time."""
    return header is not None and hmac.compare_digest(signature(secret, body), header)


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL: where to connect (`addresses`, already vetted) and what to send as Host and path."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


Resolver = Callable[[str, int], Sequence[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_allowed(address: str, allow_private: bool) -> bool:
    """Public unicast addresses only, unless private ones are allowed (never multicast or unspecified)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    if ip.is_multicast or ip.is_unspecified:
        return False
    # is_global leaves out loopback, RFC 1918, link-local (cloud metadata at 169.254.169.254), CGNAT, reserved, …
    return allow_private or ip.is_global


def parse_webhook_url(url: str) -> tuple[str, str, int, str]:
    """`(scheme, host, port, path?query)` of an http(s) URL with a host and no credentials; WebhookRefused if not."""
    if not isinstance(url, str) or not url:
        raise WebhookRefused("webhook_url must be an http:// or https:// URL")
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise WebhookRefused(f"webhook_url is longer than {MAX_WEBHOOK_URL_CHARS} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise WebhookRefused("webhook_url may not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookRefused("webhook_url is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookRefused("webhook_url must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("webhook_url may not contain credentials (user:password@)")
    host = parts.hostname
    if not host:
        raise WebhookRefused("webhook_url names no host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port or (443 if scheme == "https" else 80), path


def check_webhook_url(url: str, allow_private: bool, resolver: Resolver = resolve) -> WebhookTarget:
    """The target of a webhook URL, or WebhookRefused: http(s) only, bounded length, no credentials, and a host
    whose every address is allowed (`address_allowed`): a name that resolves to a private address is refused even
    when it also resolves to a public one."""
    scheme, host, port, path = parse_webhook_url(url)
    try:
        addresses = tuple(resolver(host, port))
    except (OSError, UnicodeError):
        raise WebhookRefused(f"the webhook host {host[:100]!r} does not resolve") from None
    if not addresses:
        raise WebhookRefused(f"the webhook host {host[:100]!r} does not resolve")
    for address in addresses:
        if not address_allowed(address, allow_private):
            raise WebhookRefused(
                f"the webhook host {host[:100]!r} resolves to a loopback, private, link-local or otherwise "
                "non-public address, which this server does not call (jobs.webhook_allow_private)"
            )
    return WebhookTarget(scheme, host, port, path, addresses)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a vetted address, whatever the host name resolves to now (no DNS rebinding)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to a vetted address, with the certificate checked against the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post_once(target: WebhookTarget, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """One POST to the first vetted address; the HTTP status (redirects are not followed)."""
    kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = kind(target.host, target.port, target.addresses[0], timeout_s)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(65536)  # a little of the answer, so the connection closes cleanly; the rest is ignored
        return response.status
    finally:
        connection.close()


async def deliver_webhook(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    timeout_s: float,
    attempts: int,
    backoff_s: float,
    resolver: Resolver = resolve,
    post: Callable[[WebhookTarget, bytes, dict[str, str], float], int] = post_once,
) -> bool:
    """POST `body` until a 2xx answer, at most `attempts` times, waiting `backoff_s` × 2^n between tries.

    The URL is checked again before every attempt (its host may resolve elsewhere by now) and the connection goes
    to the address just vetted. A 4xx other than 408/429 ends the tries: the receiver refuses this body. Never
    raises: a webhook that fails never fails the job.
    """
    for attempt in range(attempts):
        try:
            target = await asyncio.to_thread(check_webhook_url, url, allow_private, resolver)
            status = await asyncio.wait_for(
                asyncio.to_thread(post, target, body, headers, timeout_s), timeout=timeout_s * 2
            )
            if 200 <= status < 300:
                return True
            logger.warning("webhook of job %s answered %d (attempt %d)", headers.get("X-Imgsound-Job"), status, attempt)
            if 400 <= status < 500 and status not in (408, 429):
                return False
        except WebhookRefused as error:
            logger.warning("webhook of job %s refused: %s", headers.get("X-Imgsound-Job"), error)
            return False
        except (OSError, TimeoutError, http.client.HTTPException) as error:
            logger.warning(
                "webhook of job %s failed (attempt %d): %s",
                headers.get("X-Imgsound-Job"),
                attempt,
                type(error).__name__,
            )
        if attempt + 1 < attempts:
            await asyncio.sleep(backoff_s * 2**attempt)
    return False


# ---- server-sent events -------------------------------------------------------------------------------------------


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    """One event: its name and the JSON on one `data:` line (JSON escapes newlines, so one line is always enough)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


SSE_KEEPALIVE = b": keep-alive\n\n"
SSE_TIME_LIMIT = b": the stream's time limit was reached: read the job's status, or reconnect\n\n"


# ---- the job store --------------------------------------------------------------------------------------------------


class JobStore:
    """Job states and cancel markers in the output store; blocking store calls run in threads."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def read(self, job_id: str) -> JobState | None:
        try:
            data = await asyncio.to_thread(self.store.get_bytes, state_key(job_id))
        except FileNotFoundError:
            return None
        try:
            return JobState.from_bytes(data)
        except ValidationError:
            raise JobStateUnreadable(f"the stored state of job {job_id} is unreadable") from None

    async def write(self, state: JobState) -> None:
        await asyncio.to_thread(self.store.put_bytes, state_key(state.job_id), state.to_bytes())

    async def request_cancel(self, job_id: str) -> None:
        await asyncio.to_thread(self.store.put_bytes, cancel_key(job_id), b"cancel\n")

    async def cancel_requested(self, job_id: str) -> bool:
        return await asyncio.to_thread(self.store.exists, cancel_key(job_id))


# ---- a job on the replica that runs it ----------------------------------------------------------------------------


@dataclass(eq=False)
class LocalJob:
    """A job this replica runs: its current state (for its event streams), the state last written (what status
    requests are answered, so that every replica tells the same story), a change signal, and its cancel flag."""

    state: JobState
    samples: int
    published: JobState | None = None
    version: int = 0
    written_version: int = -1
    written_at: float = -float("inf")
    cancel_requested: bool = False
    superseded: bool = False  # a reader declared it failed while it ran: leave the stored verdict alone
    task: asyncio.Task | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _cancel: asyncio.Event = field(default_factory=asyncio.Event)
    # Writes one at a time, each of the state as it is then: a heartbeat can never land after the final state.
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # tells the watcher to stop after its current write

    def update(self, **changes: Any) -> None:
        self.state = self.state.model_copy(update=changes)
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def progress(self, steps_done: int, steps_total: int) -> None:
        if (steps_done, steps_total) != (self.state.progress.steps_done, self.state.progress.steps_total):
            self.update(progress=Progress(steps_done=steps_done, steps_total=steps_total))

    def request_cancel(self) -> None:
        self.cancel_requested = True
        self._cancel.set()

    async def changed(self, version: int, timeout_s: float) -> None:
        """Return once the state is newer than `version`, or after `timeout_s`."""
        if self.version != version:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)

    async def cancelled_within(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cancel.wait(), timeout_s)
        return self.cancel_requested


StepHook = Callable[[int, int], None]
# The Driver's generation: (ticket, step hook) → (samples as /v1/generate answers them, warnings).
Work = Callable[[str, StepHook], Awaitable[tuple[list[dict[str, Any]], list[str]]]]


class JobRunner:
    """Accepts, runs, reports, streams and cancels jobs on one Driver replica (state in the output store).

    `admit(owner, samples)` and `release(ticket)` are the Gatekeeper's; `user_errors` are the exceptions whose
    message a failed job may show (anything else fails the job as an internal error, logged here).
    """

    def __init__(
        self,
        store: Store,
        settings: JobSettings,
        *,
        replica: str,
        admit: Callable[[str | None, int], Awaitable[Decision]],
        release: Callable[[str], Awaitable[Any]],
        user_errors: tuple[type[BaseException], ...] = (),
        webhook_secret: WebhookSecret | None = None,
        on_end: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        resolver: Resolver = resolve,
    ) -> None:
        self.jobs = JobStore(store)
        self.settings = settings
        self.replica = replica
        self.admit = admit
        self.release = release
        self.user_errors = (Refused, *user_errors)
        self.webhook_secret = webhook_secret
        self.on_end = on_end or (lambda status: None)
        self.clock = clock
        self.resolver = resolver
        self.local: dict[str, LocalJob] = {}
        self.queue: list[LocalJob] = []  # queued jobs of this replica, oldest first: only the first asks to be admitted
        self._background: set[asyncio.Task] = set()  # webhook deliveries and release calls, kept referenced

    # ---- submission ---------------------------------------------------------------------------------------------
    async def check_webhook(self, url: str | None) -> None:
        """WebhookRefused unless `url` is None or one this server will call (and can sign for)."""
        if url is None:
            return
        if self.webhook_secret is None:
            raise WebhookRefused(
                "this server has no webhook secret (jobs.webhook_secret_file), so it sends no webhooks"
            )
        try:
            await asyncio.wait_for(
                asyncio.to_thread(check_webhook_url, url, self.settings.webhook_allow_private, self.resolver),
                timeout=self.settings.webhook_timeout_s,
            )
        except TimeoutError:
            raise WebhookRefused("the webhook host did not resolve in time") from None

    async def submit(self, *, owner: str | None, samples: int, webhook_url: str | None, work: Work) -> JobState:
        """Admit (or queue) a job and start it; its state is in the store before this returns.

        Refused (429 rate limited, 422 too large) as `/v1/generate` is; a full service queues the job, unless this
        replica already holds `jobs.max_queued` queued jobs (JobQueueFull). A refused job leaves nothing behind.
        """
        decision = await self.admit(owner, samples)
        if not decision.admitted and decision.reason != "queue_full":
            raise Refused(decision)
        if not decision.admitted and len(self.queue) >= self.settings.max_queued:
            raise JobQueueFull(f"{len(self.queue)} jobs are already queued on this replica; retry later")
        now = self.clock()
        state = JobState(
            job_id=new_job_id(),
            status="queued",
            created=utc_iso(now),
            heartbeat=now,
            replica=self.replica,
            owner=owner,
            ticket=decision.ticket,
            webhook_url=webhook_url,
        )
        job = LocalJob(state=state, samples=samples)
        try:
            await self._write(job)
        except BaseException:
            if decision.ticket:
                self._background_task(self.release(decision.ticket))
            raise
        self.local[state.job_id] = job
        if not decision.admitted:
            self.queue.append(job)
        job.task = asyncio.create_task(self._run(job, work), name=f"job-{state.job_id}")
        return state

    # ---- running ------------------------------------------------------------------------------------------------
    async def _run(self, job: LocalJob, work: Work) -> None:
        watcher = asyncio.create_task(self._watch(job))
        ticket = job.state.ticket
        final: JobState | None = None
        try:
            if ticket is None:
                ticket = await self._wait_for_admission(job)
            job.update(status="running", ticket=ticket)
            await self._write(job)

            def hook(steps_done: int, steps_total: int) -> None:
                job.progress(steps_done, steps_total)
                if job.cancel_requested:
                    raise JobCancelled

            samples, warnings = await work(ticket, hook)
            total = job.state.progress.steps_total
            job.update(progress=Progress(steps_done=total, steps_total=total))
            final = job.state.ended("succeeded", self.clock()).model_copy(
                update={"samples": samples, "warnings": warnings}
            )
        except JobCancelled:
            final = job.state.ended("cancelled", self.clock())
        except asyncio.CancelledError:
            # The replica is shutting down (cancels go through JobCancelled): say so while the store takes a write.
            if not job.superseded:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self.jobs.write(job.state.ended("failed", self.clock(), INTERRUPTED_REASON)), timeout=2
                    )
            raise
        except self.user_errors as error:
            final = job.state.ended("failed", self.clock(), str(error))
        except Exception:
            logger.exception("job %s failed", job.state.job_id)
            final = job.state.ended("failed", self.clock(), INTERNAL_REASON)
        finally:
            # Not cancelled: a store write in flight (a thread) would still land, perhaps after the final state.
            job.ended.set()
            with contextlib.suppress(Exception):
                await watcher
            if job in self.queue:
                self.queue.remove(job)
            if ticket is not None:
                # Awaited: a job that reads `cancelled` (or any end) no longer holds its samples' slots.
                await self._release_before_verdict(ticket)
            if final is not None:
                await self._finish(job, final)

    async def _release_before_verdict(self, ticket: str) -> None:
        """Free a job's slots at the Gatekeeper before its end is published; bounded, and a failure only leaves the
        ticket to expire (a verdict is never held back by the Gatekeeper)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.release(ticket), timeout=10)

    async def _finish(self, job: LocalJob, final: JobState) -> None:
        job_id = final.job_id
        if not job.superseded:
            job.update(**{name: getattr(final, name) for name in JobState.model_fields})
            for attempt in range(3):  # the terminal state matters most: a few tries before giving up on the store
                try:
                    await self._write(job)
                    break
                except Exception as error:
                    logger.warning("job %s: its final state could not be written (%s)", job_id, error)
                    await asyncio.sleep(0.5 * (attempt + 1))
            self.on_end(final.status)
            self._send_webhook(final)
        self.local.pop(job_id, None)
        job.update()  # wake event streams: they read the store from now on

    async def _wait_for_admission(self, job: LocalJob) -> str:
        """Wait in this replica's queue until the Gatekeeper admits the job (or it is cancelled)."""
        while True:
            if job.cancel_requested:
                raise JobCancelled
            if self.queue and self.queue[0] is job:
                decision = await self.admit(job.state.owner, job.samples)
                if decision.admitted:
                    self.queue.remove(job)
                    return decision.ticket
                if decision.reason == "too_large":
                    raise Refused(decision)
            # Rate limited or still full: wait (a queued job's tokens are taken when it is admitted).
            await job.cancelled_within(self.settings.admission_poll_s)

    async def _write(self, job: LocalJob) -> None:
        async with job.write_lock:
            version = job.version
            state = job.state.model_copy(update={"heartbeat": self.clock()})
            await self.jobs.write(state)
            job.published = state
            job.written_version, job.written_at = version, time.monotonic()

    async def _watch(self, job: LocalJob) -> None:
        """Heartbeats, rate-limited progress writes and the cancel marker's poll, off the step loop."""
        settings = self.settings
        tick = min(settings.heartbeat_s, settings.progress_interval_s, settings.cancel_poll_s) / 2
        polled_at = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.ended.wait(), tick)
            if job.ended.is_set():
                return
            now = time.monotonic()
            since_write = now - job.written_at
            write_due = since_write >= settings.heartbeat_s or (
                job.version != job.written_version and since_write >= settings.progress_interval_s
            )
            try:
                # The marker is read before a write, so a reader's stale verdict is not overwritten.
                if not job.cancel_requested and (write_due or now - polled_at >= settings.cancel_poll_s):
                    polled_at = now
                    if await self.jobs.cancel_requested(job.state.job_id):
                        await self._cancelled_elsewhere(job)
                        if job.superseded:
                            return
                if write_due:
                    await self._write(job)
            except Exception as error:  # a store hiccup must not end the job; a long outage makes it stale
                logger.warning("job %s: heartbeat failed (%s)", job.state.job_id, error)

    async def _cancelled_elsewhere(self, job: LocalJob) -> None:
        """The marker is there: a cancel from another replica, or a reader's stale verdict (then stop quietly)."""
        stored = await self.jobs.read(job.state.job_id)
        if stored is not None and stored.terminal:
            job.superseded = True
        job.request_cancel()

    # ---- reading ------------------------------------------------------------------------------------------------
    async def state(self, job_id: str, owner: str | None) -> JobState:
        """The job's current state, with the stale rule applied; JobNotFound for unknown ids and other keys' jobs."""
        if not valid_job_id(job_id):
            raise JobNotFound(job_id)
        local = self.local.get(job_id)
        state = local.published if local is not None else await self.jobs.read(job_id)
        if state is None or state.owner != owner:
            raise JobNotFound(job_id)
        if local is None and state.is_stale(self.clock(), self.settings.heartbeat_s):
            state = await self._declare_stale(state)
        return state

    async def _declare_stale(self, state: JobState) -> JobState:
        failed = state.ended("failed", self.clock(), STALE_REASON)
        await self.jobs.request_cancel(state.job_id)  # first: a replica that was only paused stops, not overwrites
        if state.ticket:
            # Before the verdict: whoever reads `failed` may resubmit at once, into the slots this job held.
            await self._release_before_verdict(state.ticket)
        await self.jobs.write(failed)
        self.on_end("failed")
        self._send_webhook(failed)
        return failed

    async def events(self, first: JobState) -> AsyncIterator[bytes]:
        """Server-sent events of a job: `progress` on every change seen, `end` with the terminal state, then the
        stream ends; a keep-alive comment when quiet, and at most `jobs.events_max_s` long."""
        settings = self.settings
        started = last_sent = time.monotonic()
        state, sent, seen = first, None, -1
        while True:
            public = state.public()
            if public != sent:
                yield sse_event("end" if state.terminal else "progress", public)
                sent, last_sent = public, time.monotonic()
            if state.terminal:
                return
            now = time.monotonic()
            if now - started >= settings.events_max_s:
                yield SSE_TIME_LIMIT
                return
            if now - last_sent >= settings.events_keepalive_s:
                yield SSE_KEEPALIVE
                last_sent = now
            local = self.local.get(state.job_id)
            if local is not None:  # this replica runs it: every change, at once
                quiet = settings.events_keepalive_s - (time.monotonic() - last_sent)
                await local.changed(seen, max(0.01, min(quiet, settings.events_max_s - (now - started))))
                seen, state = local.version, local.state
            else:  # another replica runs it: as often as that one writes
                await asyncio.sleep(settings.events_poll_s)
                try:
                    state = await self.state(state.job_id, state.owner)
                except Exception as error:  # the store failed (or the state vanished): say so, end the stream
                    logger.warning("event stream of job %s: %s", state.job_id, error)
                    yield sse_event("error", {"detail": "the job's state could not be read; ask for its status"})
                    return

    # ---- cancelling ---------------------------------------------------------------------------------------------
    async def cancel(self, job_id: str, owner: str | None) -> tuple[JobState, bool]:
        """Ask for the job's cancellation: `(its state now, whether a cancellation was asked for)`; False when it
        had already ended (nothing to do)."""
        state = await self.state(job_id, owner)
        if state.terminal:
            return state, False
        local = self.local.get(job_id)
        if local is not None:
            local.request_cancel()
        else:
            await self.jobs.request_cancel(job_id)
        return state, True

    # ---- background work ----------------------------------------------------------------------------------------
    def _background_task(self, awaitable: Awaitable[Any]) -> None:
        async def run() -> None:
            with contextlib.suppress(Exception):
                await awaitable

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _send_webhook(self, final: JobState) -> None:
        if final.webhook_url is None or self.webhook_secret is None:
            return
        body = json.dumps(final.public(), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"imgsound/{__version__}",
            "X-Imgsound-Job": final.job_id,
            SIGNATURE_HEADER: self.webhook_secret.sign(body),
        }
        settings = self.settings
        self._background_task(
            deliver_webhook(
                final.webhook_url,
                body,
                headers,
                allow_private=settings.webhook_allow_private,
                timeout_s=settings.webhook_timeout_s,
                attempts=settings.webhook_attempts,
                backoff_s=settings.webhook_backoff_s,
                resolver=self.resolver,
            )
        )
