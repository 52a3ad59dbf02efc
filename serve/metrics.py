"""Prometheus metrics of the serving app, kept in the driver process and exposed at `GET /metrics`.

UNet batch shapes are measured in the UNet replicas and returned with every estimate (`UNetOutput`), so one
scrape of the driver shows them; names follow Prometheus conventions (base units, `_total` counters).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
STEP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "imgsound_request_duration_seconds",
            "Time to answer POST /v1/generate",
            ["outcome"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.step_latency = Histogram(
            "imgsound_step_duration_seconds",
            "One DDIM step of one request: both UNet calls and the update",
            buckets=STEP_BUCKETS_S,
            registry=r,
        )
        self.unet_batch_samples = Histogram(
            "imgsound_unet_batch_samples",
            "Samples in one UNet forward (its batch is twice that: CFG pairs)",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.unet_batch_timesteps = Histogram(
            "imgsound_unet_batch_timesteps",
            "Distinct timesteps in one UNet forward (>1: requests at different steps)",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.unet_batch_requests = Histogram(
            "imgsound_unet_batch_requests",
            "Requests whose rows shared one UNet forward",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.samples_in_flight = Gauge("imgsound_samples_in_flight", "Samples being denoised now", registry=r)
        self.samples_generated = Counter(
            "imgsound_samples_generated_total", "Samples generated and returned", registry=r
        )
        self.failures = Counter(
            "imgsound_request_failures_total",
            "Requests that did not produce samples, by reason",
            ["reason"],
            registry=r,
        )
        self.retries = Counter(
            "imgsound_remote_call_retries_total", "Remote calls retried after a failure", ["deployment"], registry=r
        )

    def observe_unet(self, model: str, batch_samples: int, batch_timesteps: int, batch_requests: int) -> None:
        self.unet_batch_samples.labels(model=model).observe(batch_samples)
        self.unet_batch_timesteps.labels(model=model).observe(batch_timesteps)
        self.unet_batch_requests.labels(model=model).observe(batch_requests)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
