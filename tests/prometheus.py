"""Reading the service's `GET /metrics` (Prometheus text format) in tests."""

from __future__ import annotations

import re

from serve.local import http


def series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """`(labels, value)` of every series of metric `name` in Prometheus text `text`."""
    found = []
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            found.append((labels, float(match.group(2))))
    return found


def total(url: str, name: str, **labels: str) -> float:
    """The service-wide value of counter `name`: the sum of its series that carry `labels`, from `url`/metrics."""
    status, _, text = http("GET", f"{url}/metrics", timeout=60)
    assert status == 200, text
    return sum(value for found, value in series(text, name) if all(found.get(k) == v for k, v in labels.items()))
