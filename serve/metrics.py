"""Metrics of the serving app, recorded through Ray Serve's metrics API and shown whole at `GET /metrics`.

Every replica records its own series with `ray.serve.metrics` (the Driver: requests, steps, samples, failures,
retries; the UNet replicas: the shape of each batched forward). Ray exports them on every node's metrics port
(`ray start --metrics-export-port`, 8080 on the KubeRay pods) with per-worker labels, where Prometheus can
scrape them as they are. `GET /metrics` on any Driver replica reads every node's export and sums each imgsound
series over the labels that only say *which process* recorded it (worker, replica, node, session), so one scrape
shows the whole service, with any number of replicas on any number of nodes. Ray exports every
`metrics_report_interval_ms` (10 s by default), so the view lags by up to that much.

Names follow Prometheus conventions (base units, `_total` counters); Ray prefixes its export with `ray_`, which
`/metrics` drops again.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterable

LATENCY_BUCKETS_S = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600]
STEP_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
BATCH_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128]

PREFIX = "imgsound_"
RAY_PREFIX = "ray_"
# Labels that name the recording process, not what was measured: summed away in the service view.
PROCESS_LABELS = frozenset(
    {
        "WorkerId",
        "Component",
        "NodeAddress",
        "SessionName",
        "Version",
        "JobId",
        "ReplicaId",
        "replica",
        "deployment",
        "application",
        "route",
        "otel_scope_name",
        "otel_scope_schema_url",
        "otel_scope_version",
    }
)


class DriverMetrics:
    """The Driver's series: per request, per step, per sample."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.request_latency = metrics.Histogram(
            "imgsound_request_duration_seconds",
            "Time to answer POST /v1/generate, by outcome",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("outcome",),
        )
        self.step_latency = metrics.Histogram(
            "imgsound_step_duration_seconds",
            "One DDIM step of one request: both UNet calls and the update",
            boundaries=STEP_BUCKETS_S,
        )
        self.samples_in_flight = metrics.Gauge(
            "imgsound_samples_in_flight", "Samples being denoised or rendered now (summed over Driver replicas)"
        )
        self.samples_generated = metrics.Counter("imgsound_samples_generated_total", "Samples generated and returned")
        self.failures = metrics.Counter(
            "imgsound_request_failures_total", "Requests that did not produce samples, by reason", tag_keys=("reason",)
        )
        self.retries = metrics.Counter(
            "imgsound_remote_call_retries_total",
            "Remote calls retried after a failure, by the deployment called",
            tag_keys=("target",),
        )
        self.jobs = metrics.Counter(
            "imgsound_jobs_total", "Jobs that ended, by final status (POST /v1/jobs)", tag_keys=("status",)
        )


class UNetMetrics:
    """The shape of every batched UNet forward, recorded in the UNet replica that ran it."""

    def __init__(self, model: str) -> None:
        from ray.serve import metrics

        self.tags = {"model": model}
        self.batch_samples = metrics.Histogram(
            "imgsound_unet_batch_samples",
            "Samples in one UNet forward (its batch is twice that: CFG pairs)",
            boundaries=BATCH_BUCKETS,
            tag_keys=("model",),
        )
        self.batch_timesteps = metrics.Histogram(
            "imgsound_unet_batch_timesteps",
            "Distinct timesteps in one UNet forward (>1: requests at different steps)",
            boundaries=BATCH_BUCKETS,
            tag_keys=("model",),
        )
        self.batch_requests = metrics.Histogram(
            "imgsound_unet_batch_requests",
            "Requests whose rows shared one UNet forward",
            boundaries=BATCH_BUCKETS,
            tag_keys=("model",),
        )

    def observe(self, samples: int, timesteps: int, requests: int) -> None:
        self.batch_samples.observe(samples, tags=self.tags)
        self.batch_timesteps.observe(timesteps, tags=self.tags)
        self.batch_requests.observe(requests, tags=self.tags)


class WorkAbandoned(Exception):
    """Raised in a stage's worker thread when its caller has gone; nobody awaits it."""


class StageMetrics:
    """Samples a CPU/GPU stage after the UNets (decode + vocode, render) finished, and samples it dropped because
    their caller had gone (the call timed out or the client left): work nobody would receive."""

    def __init__(self, stage: str) -> None:
        from ray.serve import metrics

        self.tags = {"stage": stage}
        self.done = metrics.Counter(
            "imgsound_stage_samples_total", "Samples a stage finished, by stage", tag_keys=("stage",)
        )
        self.abandoned = metrics.Counter(
            "imgsound_abandoned_samples_total",
            "Samples a stage dropped because their caller had gone, by stage",
            tag_keys=("stage",),
        )

    def finished(self, samples: int) -> None:
        self.done.inc(samples, tags=self.tags)

    def dropped(self, samples: int) -> None:
        if samples:
            self.abandoned.inc(samples, tags=self.tags)


# --- the service view ------------------------------------------------------------------------------------------------


def node_metrics_urls() -> list[str]:
    """The metrics export URL of every live Ray node (`ray.nodes()`: NodeManagerAddress, MetricsExportPort)."""
    import ray

    urls = []
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if node.get("Alive") and port:
            urls.append(f"http://{node['NodeManagerAddress']}:{int(port)}/metrics")
    return urls


def fetch(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - a node address from Ray
        return response.read().decode("utf-8", errors="replace")


def service_exposition(texts: Iterable[str]) -> str:
    """Prometheus text of the imgsound families in `texts` (Ray's per-node exports), summed over process labels.

    Counters, gauges and histogram buckets/sums/counts all add up across processes: a service-wide total, the
    service-wide number in flight, and the service's latency distribution.
    """
    from prometheus_client.parser import text_string_to_metric_families

    kinds: dict[str, str] = {}
    helps: dict[str, str] = {}
    sums: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            name = family.name.removeprefix(RAY_PREFIX)
            if not name.startswith(PREFIX):
                continue
            kinds.setdefault(name, family.type)
            helps.setdefault(name, family.documentation)
            for sample in family.samples:
                sample_name = sample.name.removeprefix(RAY_PREFIX)
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in PROCESS_LABELS))
                series = sums.setdefault(sample_name, {})
                series[labels] = series.get(labels, 0.0) + float(sample.value)
    lines: list[str] = []
    for name in sorted(kinds):
        exposed = name + "_total" if kinds[name] == "counter" and not name.endswith("_total") else name
        lines.append(f"# HELP {exposed} {helps[name]}")
        lines.append(f"# TYPE {exposed} {kinds[name]}")
        for sample_name in sorted(s for s in sums if s == exposed or _belongs(s, name)):
            for labels, value in sorted(sums[sample_name].items(), key=lambda item: _series_order(item[0])):
                lines.append(f"{sample_name}{_label_text(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _belongs(sample_name: str, family: str) -> bool:
    return sample_name in (family, f"{family}_bucket", f"{family}_sum", f"{family}_count", f"{family}_total")


def _series_order(labels: tuple[tuple[str, str], ...]) -> tuple:
    """Buckets in numeric `le` order, the rest by label values."""
    rest = tuple((k, v) for k, v in labels if k != "le")
    le = next((v for k, v in labels if k == "le"), None)
    return rest, math.inf if le in (None, "+Inf") else float(le)


def _label_text(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels)
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else f"{value:.1f}"
