"""TorchServe's own metrics, fetched at scrape time, so one port carries both sets.

KServe scrapes one port per model server (``prometheus.kserve.io/port``) and its
queue-proxy aggregation reads one app port; other setups allow one endpoint too. With
``torchserve-obs exporter --torchserve-metrics URL`` the exporter appends TorchServe's
exposition to its own. A TorchServe that is down, slow or answers garbage never breaks the
scrape: its part is left out and ``tsobs_exporter_torchserve_up`` says 0.

TorchServe's exposition is passed through byte for byte, not re-encoded: its counters have
no ``_total`` suffix (``Requests2XX``), and prometheus_client would add one, renaming the
series every rule and dashboard selects. For the same reason the merged endpoint always
answers in the Prometheus text format: those counters are not valid OpenMetrics.
"""

from __future__ import annotations

import argparse
import http.client
import time
import urllib.parse
from typing import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from obs.signals import Metrics

MAX_BODY_BYTES = 16 * 1024 * 1024
"""TorchServe's exposition is kilobytes; anything this big is not worth a scrape."""


class UpstreamError(Exception):
    """TorchServe's metrics could not be fetched or parsed for this scrape."""


class TorchServeMetrics:
    """Fetches TorchServe's ``/metrics`` with a deadline and reports how that went.

    ``fetch`` returns the exposition to append; ``collect`` (a prometheus_client collector)
    yields the gauges about the last fetch, so call ``fetch`` first in each scrape.
    """

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urllib.parse.urlsplit(metrics_url(url))
        self.url = url
        self.timeout = timeout
        self._host = parsed.hostname
        self._port = parsed.port or 80
        self._path = (parsed.path or "/metrics") + (f"?{parsed.query}" if parsed.query else "")
        self._up = 0.0
        self._duration = 0.0

    def fetch(self) -> bytes:
        """TorchServe's exposition, or ``b""`` when it failed (then ``up`` reads 0)."""
        started = time.monotonic()
        try:
            body = self._get(started + self.timeout)
            _check_exposition(body)
        except UpstreamError:
            self._up, body = 0.0, b""
        else:
            self._up = 1.0
        self._duration = time.monotonic() - started
        if body and not body.endswith(b"\n"):
            body += b"\n"
        return body

    def _get(self, deadline: float) -> bytes:
        """The body of a 200 answer, read whole before ``deadline`` or not at all."""
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            connection.request("GET", self._path, headers={"Accept": "text/plain"})
            response = connection.getresponse()
            if response.status != 200:
                raise UpstreamError(f"{self.url} answered {response.status}")
            chunks = []
            size = 0
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UpstreamError(f"{self.url} took longer than {self.timeout}s")
                if connection.sock is not None:
                    connection.sock.settimeout(remaining)
                chunk = response.read1(65536)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise UpstreamError(f"{self.url} sent more than {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
        except (OSError, http.client.HTTPException) as err:
            raise UpstreamError(f"{self.url}: {err}") from err
        finally:
            connection.close()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = Metrics.EXPORTER_TORCHSERVE_UP
        yield GaugeMetricFamily(up.name, up.help, value=self._up)
        duration = Metrics.EXPORTER_TORCHSERVE_FETCH_DURATION
        yield GaugeMetricFamily(duration.name, duration.help, value=self._duration)


def _check_exposition(body: bytes) -> None:
    """Refuse what would make Prometheus fail the whole scrape if passed through."""
    try:
        text = body.decode("utf-8")
        for _ in text_string_to_metric_families(text):
            pass
    except (UnicodeDecodeError, ValueError, IndexError, TypeError) as err:
        raise UpstreamError(f"not a Prometheus text exposition: {err}") from err
    # Prometheus refuses a second TYPE line for a name; prometheus_client's parser does not.
    typed = [
        w for line in text.splitlines() if line.startswith("# TYPE ") for w in line.split()[2:3]
    ]
    if "# EOF" in text or len(typed) != len(set(typed)):
        raise UpstreamError("not a Prometheus text exposition: EOF marker or repeated TYPE")


def metrics_url(value: str) -> str:
    """argparse type: an ``http://host:port/path`` URL (TorchServe serves no TLS on 8082)."""
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme != "http" or not parsed.hostname:
        raise argparse.ArgumentTypeError(f"must be an http:// URL, not {value!r}")
    return value


def timeout_seconds(value: str) -> float:
    """argparse type: seconds, more than 0 and at most 60 (a scrape must stay short)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 60:
        raise argparse.ArgumentTypeError(f"must be seconds between 0 and 60, not {value!r}")
    return seconds
