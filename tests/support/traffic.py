"""Test-side helpers: reading exported samples and waiting for conditions."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Tuple

from prometheus_client.parser import text_string_to_metric_families

from obs.services import http_get

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample an HTTP endpoint exposes."""
    return parse_samples(http_get(url).decode())


def parse_samples(exposition: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by name and sorted labels."""
    samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def growth(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much :func:`total` grew between two scrapes: what the test's own requests added."""
    return total(after, name, **labels) - total(before, name, **labels)


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy and return it; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def completions(records: Iterable[Mapping[str, Any]], model: str) -> List[Mapping[str, Any]]:
    return [
        r for r in records if r.get("event") == "request_completed" and r.get("model_name") == model
    ]
