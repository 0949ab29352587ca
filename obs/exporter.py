"""``torchserve-obs exporter``: serves the workers' metrics, aggregated, over HTTP.

Workers write prometheus_client multiprocess files; this process reads them on every
scrape with a fresh registry (as prometheus_client requires) and adds two gauges about
itself. It binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from obs import heartbeat
from obs.services import Service
from obs.settings import metrics_dir_from_env
from obs.signals import DEFAULT_PORTS, Metrics
from obs.upstream import TorchServeMetrics, metrics_url, timeout_seconds

HEALTH_PATH = "/-/healthy"


class WorkerFiles:
    """prometheus_client's multiprocess aggregation over the files worth reading.

    Counters and histograms come from every file, dead workers' included, so totals never
    drop; gauges only from workers with a recent heartbeat (see :mod:`obs.heartbeat`).
    """

    def __init__(self, directory: Path, live: Mapping[str, Tuple[str, str]]) -> None:
        self.directory = directory
        self.live = live

    def files(self) -> List[str]:
        return [
            str(path)
            for path in sorted(self.directory.glob("*.db"))
            if not path.name.startswith("gauge_") or path.stem.rsplit("_", 1)[-1] in self.live
        ]

    def collect(self) -> Iterable[Metric]:
        return MultiProcessCollector.merge(self.files(), accumulate=True)


class MetricsSource:
    """Aggregates one metrics directory into an exposition, and reports on doing so."""

    def __init__(self, directory: Path, upstream: Optional[TorchServeMetrics] = None) -> None:
        self.directory = directory
        self.upstream = upstream
        self._last_scrape_seconds = 0.0
        self._live: Mapping[str, Tuple[str, str]] = {}
        self._own = CollectorRegistry()
        self._own.register(self)
        if upstream is not None:
            self._own.register(upstream)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The exporter's own gauges, computed at scrape time (prometheus_client collector)."""
        files = Metrics.EXPORTER_METRICS_FILES
        yield GaugeMetricFamily(
            files.name, files.help, value=sum(1 for _ in self.directory.glob("*.db"))
        )
        duration = Metrics.EXPORTER_SCRAPE_DURATION
        yield GaugeMetricFamily(duration.name, duration.help, value=self._last_scrape_seconds)
        workers = GaugeMetricFamily(
            Metrics.WORKERS.name, Metrics.WORKERS.help, labels=Metrics.WORKERS.labels
        )
        for labels, count in sorted(Counter(self._live.values()).items()):
            workers.add_metric(labels, count)
        yield workers

    def healthy(self) -> bool:
        return self.directory.is_dir() and os.access(self.directory, os.R_OK)

    def render(self, accept: str) -> Tuple[bytes, str]:
        # TorchServe's counters lack ``_total``: with them, only the text format is valid.
        encoder, content_type = choose_encoder("" if self.upstream else accept)
        upstream = self.upstream.fetch() if self.upstream else b""
        started = time.perf_counter()
        self._live = heartbeat.live_workers(self.directory)
        workers = CollectorRegistry()
        workers.register(WorkerFiles(self.directory, self._live))
        body = encoder(workers)
        self._last_scrape_seconds = time.perf_counter() - started
        own = encoder(self._own)
        if body.endswith(b"# EOF\n"):  # OpenMetrics: one end marker, after both parts
            body = body[: -len(b"# EOF\n")]
        return body + own + upstream, content_type


def make_server(source: MetricsSource, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, content_type = source.render(self.headers.get("Accept", ""))
                self._reply(200, body, content_type)
            elif path == HEALTH_PATH:
                ok = source.healthy()
                message = (
                    "OK\n" if ok else f"metrics directory {source.directory} is not readable\n"
                )
                self._reply(200 if ok else 503, message.encode(), "text/plain; charset=utf-8")
            elif path == "/":
                page = f"torchserve-obs exporter: /metrics, {HEALTH_PATH}\n"
                self._reply(200, page.encode(), "text/plain; charset=utf-8")
            else:
                self._reply(404, b"not found\n", "text/plain; charset=utf-8")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes every few seconds would drown the exporter's own output."""

    return ThreadingHTTPServer((host, port), Handler)


def exporter_service(
    metrics_dir: Path, port: int, log_path: Path, host: str = "127.0.0.1"
) -> Service:
    """The exporter as a separate process, as the stack, the demo and the tests run it."""
    argv = [sys.executable, "-m", "obs.cli", "exporter", "--host", host, "--port", str(port)]
    return Service("exporter", [*argv, "--metrics-dir", str(metrics_dir)], log_path)


def run(args: argparse.Namespace) -> int:
    from obs.errors import UsageError

    directory = Path(args.metrics_dir) if args.metrics_dir else metrics_dir_from_env()
    directory.mkdir(parents=True, exist_ok=True)
    upstream = None
    if args.torchserve_metrics:
        upstream = TorchServeMetrics(args.torchserve_metrics, args.torchserve_timeout)
    try:
        server = make_server(MetricsSource(directory, upstream), args.host, args.port)
    except OSError as err:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {err.strerror}") from None
    print(
        f"torchserve-obs exporter: serving {directory} on http://{args.host}:{server.server_port}/metrics",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "exporter",
        help="serve the workers' metrics over HTTP",
        description="Serve the metrics of every TorchServe worker, aggregated, for Prometheus.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORTS["exporter"],
        help=f"port to listen on (default: {DEFAULT_PORTS['exporter']})",
    )
    parser.add_argument(
        "--metrics-dir",
        help="the workers' PROMETHEUS_MULTIPROC_DIR (default: that variable, else "
        f"{metrics_dir_from_env()})",
    )
    parser.add_argument(
        "--torchserve-metrics",
        metavar="URL",
        type=metrics_url,
        help="also serve TorchServe's own metrics, fetched from URL at each scrape "
        "(e.g. http://127.0.0.1:8082/metrics), for setups that scrape one port (KServe)",
    )
    parser.add_argument(
        "--torchserve-timeout",
        type=timeout_seconds,
        default=2.0,
        metavar="SECONDS",
        help="give up fetching TorchServe's metrics after this long (default: 2)",
    )
    parser.set_defaults(func=run)
