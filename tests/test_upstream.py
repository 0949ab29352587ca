"""One port carries both: the exporter serves TorchServe's own metrics beside the mixin's.

The first test runs the ``exporter --torchserve-metrics`` command against the session's real
TorchServe 0.12; the others point the exporter at endpoints that fail the way a TorchServe
can (down, hanging, answering garbage) and check that the scrape itself never breaks.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from handler_mixins.example.build import MODEL_NAME
from obs.cli import build_parser
from obs.exporter import HEALTH_PATH, MetricsSource, make_server
from obs.services import Service, free_port, http_get, wait_until_http_ok
from obs.signals import Metrics
from obs.traffic import json_request, predict
from obs.upstream import TorchServeMetrics
from tests.support.traffic import parse_samples, total

UP = Metrics.EXPORTER_TORCHSERVE_UP.name
FETCH = Metrics.EXPORTER_TORCHSERVE_FETCH_DURATION.name


@pytest.mark.torchserve
def test_merged_endpoint_carries_torchserve_and_mixin_metrics(torchserve, tmp_path: Path) -> None:
    answer = predict(torchserve.ports.inference_url, MODEL_NAME, json_request([0.1, 0.2, 0.3, 0.4]))
    assert answer.status == 200
    port = free_port()
    upstream = f"http://127.0.0.1:{torchserve.ports.metrics}/metrics"
    argv = [sys.executable, "-m", "obs.cli", "exporter", "--port", str(port)]
    argv += ["--metrics-dir", str(torchserve.workdir / "metrics")]
    argv += ["--torchserve-metrics", upstream, "--torchserve-timeout", "5"]
    service = Service("exporter-merged", argv, tmp_path / "exporter.out").start()
    try:
        wait_until_http_ok(f"http://127.0.0.1:{port}{HEALTH_PATH}", 60, service.process)
        # OpenMetrics asked for, text format served: TorchServe's counters have no _total.
        body = http_get(
            f"http://127.0.0.1:{port}/metrics",
            timeout=30,
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        ).decode()
    finally:
        service.stop()
    samples = parse_samples(body)
    assert total(samples, UP) == 1
    assert "\nRequests2XX{" in body, "TorchServe's own counter, passed through unrenamed"
    assert total(samples, "ts_inference_requests_total", model_name=MODEL_NAME) >= 1
    assert total(samples, "tsobs_requests_total", model_name=MODEL_NAME, outcome="success") >= 1
    assert "# EOF" not in body


@pytest.fixture
def exporter_for() -> Iterator:
    """Starts an in-process exporter reading an empty metrics dir and ``upstream``."""
    servers = []

    def start(directory: Path, upstream: TorchServeMetrics) -> str:
        server = make_server(MetricsSource(directory, upstream), "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/metrics"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _scrape(url: str) -> Tuple[str, float]:
    started = time.monotonic()
    body = http_get(url, timeout=30).decode()
    return body, time.monotonic() - started


def test_torchserve_down_is_a_metric_not_a_failed_scrape(tmp_path: Path, exporter_for) -> None:
    nothing = f"http://127.0.0.1:{free_port()}/metrics"
    body, _ = _scrape(exporter_for(tmp_path, TorchServeMetrics(nothing, 2.0)))
    samples = parse_samples(body)
    assert total(samples, UP) == 0
    assert (Metrics.EXPORTER_METRICS_FILES.name, ()) in samples


def test_a_hanging_torchserve_costs_at_most_the_timeout(tmp_path: Path, exporter_for) -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/metrics"
        body, seconds = _scrape(exporter_for(tmp_path, TorchServeMetrics(url, 1.0)))
    samples = parse_samples(body)
    assert total(samples, UP) == 0
    assert 1.0 <= total(samples, FETCH) < 5.0
    assert seconds < 10.0


class _Answer(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.mark.parametrize(
    "bad",
    [
        b"<html>proxy error</html>\n",
        b"# TYPE x counter\nx 1\n# TYPE x counter\nx 2\n",
        b'x{a="1"} one\n',
    ],
)
def test_garbage_from_torchserve_is_left_out(tmp_path: Path, exporter_for, bad: bytes) -> None:
    handler = type("Bad", (_Answer,), {"body": bad})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        body, _ = _scrape(exporter_for(tmp_path, TorchServeMetrics(url, 2.0)))
    finally:
        server.shutdown()
        server.server_close()
    assert total(parse_samples(body), UP) == 0
    assert bad.decode() not in body


def test_exporter_flags_refuse_bad_urls_and_timeouts(capsys) -> None:
    parser = build_parser()
    args = parser.parse_args(["exporter", "--torchserve-metrics", "http://127.0.0.1:8082/metrics"])
    assert args.torchserve_metrics.endswith(":8082/metrics") and args.torchserve_timeout == 2.0
    for bad in (
        ["--torchserve-metrics", "127.0.0.1:8082"],
        ["--torchserve-metrics", "https://x/metrics"],
        ["--torchserve-timeout", "0"],
        ["--torchserve-timeout", "soon"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(["exporter", *bad])
    assert "must be" in capsys.readouterr().err
