"""``torchserve-obs exporter``: serves the workers' metrics, aggregated, over HTTP.

Workers write prometheus_client multiprocess files; this process reads them on every
scrape with a fresh registry (as prometheus_client requires) and adds two gauges about
itself. It binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import (
    Any,
    Collection,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
)

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from obs import archive, ledger, logs
from obs.services import Service
from obs.settings import Settings, metrics_dir_from_env, report
from obs.signals import DEFAULT_PORTS, LostReason, Metrics, Outcome
from obs.upstream import TorchServeMetrics, metrics_url, timeout_seconds

HEALTH_PATH = "/-/healthy"
SETTLE_INTERVAL_S = 5.0
"""How often the exporter settles dead workers' ledgers between scrapes."""


def ledger_families(counts: Iterable[Tuple[ledger.Key, Dict[str, Any]]]) -> List[Metric]:
    """Requests, lost requests, worker starts and model loads, summed over every ledger and
    the archive of folded ones."""
    totals: Dict[ledger.Key, Dict[str, Any]] = defaultdict(ledger.empty_counts)
    for key, found in counts:
        archive.add_counts(totals[key], found)
    spec = Metrics.REQUESTS
    requests = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    spec = Metrics.REQUESTS_LOST
    lost = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    spec = Metrics.WORKER_STARTS
    starts = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    spec = Metrics.MODEL_LOADS
    loads = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    for key, total in sorted(totals.items()):
        labels = list(ledger.split_key(key))
        for outcome, count in zip(Outcome.ALL, total[ledger.REQUESTS]):
            requests.add_metric([*labels, outcome], count)
        lost.add_metric([*labels, LostReason.WORKER_DIED], total[ledger.LOST])
        starts.add_metric(labels, total[ledger.STARTS])
        for outcome, count in zip((Outcome.SUCCESS, Outcome.SERVER_ERROR), total[ledger.LOADS]):
            loads.add_metric([*labels, outcome], count)
    return [requests, lost, starts, loads]


class WorkerFiles:
    """prometheus_client's multiprocess aggregation over the files worth reading.

    Counters and histograms come from every file, dead workers' included, so totals never
    drop; gauges only from live workers: a live process holds its ledger lock (see :mod:`obs.ledger`).
    """

    def __init__(
        self, directory: Path, live: Collection[str], ledgers: Sequence[ledger.Reading] = ()
    ) -> None:
        self.directory = directory
        self.live = live
        self.ledgers = ledgers

    def files(self) -> List[str]:
        return [
            str(path)
            for path in sorted(self.directory.glob("*.db"))
            if not path.name.startswith("gauge_") or path.stem.rsplit("_", 1)[-1] in self.live
        ]

    def collect(self) -> Iterable[Metric]:
        folded = archive.load(self.directory)
        for attempt in range(3):
            try:
                merged = list(archive.merge(self.files(), folded))
                break
            except FileNotFoundError:  # a worker replaced its gauges, or a fold just ran
                if attempt == 2:
                    raise
        yield from merged
        counts = [item for r in self.ledgers for item in r.counts.items()]
        yield from ledger_families(counts + archive.archived_counts(folded))


class MetricsSource:
    """Aggregates one metrics directory into an exposition, and reports on doing so."""

    def __init__(
        self,
        directory: Path,
        upstream: Optional[TorchServeMetrics] = None,
        emitter: Optional[logs.LogEmitter] = None,
        fold_after_s: float = archive.FOLD_AFTER_S,
    ) -> None:
        self.directory = directory
        self.upstream = upstream
        self._emitter = emitter
        self.fold_after_s = fold_after_s
        self._settling = threading.Lock()
        self._last_scrape_seconds = 0.0
        self._live: Mapping[str, Tuple[str, str]] = {}
        self._own = CollectorRegistry()
        self._own.register(self)
        if upstream is not None:
            self._own.register(upstream)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The exporter's own gauges, computed at scrape time (prometheus_client collector)."""
        files = Metrics.EXPORTER_METRICS_FILES
        yield GaugeMetricFamily(files.name, files.help, value=count_files(self.directory))
        duration = Metrics.EXPORTER_SCRAPE_DURATION
        yield GaugeMetricFamily(duration.name, duration.help, value=self._last_scrape_seconds)
        workers = GaugeMetricFamily(
            Metrics.WORKERS.name, Metrics.WORKERS.help, labels=Metrics.WORKERS.labels
        )
        for labels, count in sorted(Counter(self._live.values()).items()):
            workers.add_metric(labels, count)
        yield workers

    def problem(self) -> Optional[str]:
        """Why this exporter cannot do its job with its directory, or None."""
        if not self.directory.is_dir():
            return f"metrics directory {self.directory} does not exist"
        if not os.access(self.directory, os.R_OK | os.X_OK):
            return f"metrics directory {self.directory} is not readable"
        if not os.access(self.directory, os.W_OK):
            return (
                f"metrics directory {self.directory} is not writable: dead workers' "
                "in-flight requests cannot be settled"
            )
        return None

    def healthy(self) -> bool:
        return self.problem() is None

    def _write_lost(self, batches: List[Dict[str, Any]]) -> None:
        """Lost requests' lines: to ``TSOBS_LOG_FILE`` if set, else the exporter's stdout."""
        if self._emitter is None:
            self._emitter = exporter_emitter()
        self._emitter.emit(ledger.lost_request_records(batches))

    def ledgers(self) -> List[ledger.Reading]:
        """Every worker ledger, dead workers' settled on the way (one thread at a time)."""
        with self._settling:
            return list(ledger.read_all(self.directory, self._write_lost, self._retire))

    def _retire(self, identity: str, path: Path, state: Dict[str, Any]) -> bool:
        if not archive.due(path, self.fold_after_s):
            return False
        archive.fold(self.directory, identity, state)
        return True

    def render(self, accept: str) -> Tuple[bytes, str]:
        # TorchServe's counters lack ``_total``: with them, only the text format is valid.
        encoder, content_type = choose_encoder("" if self.upstream else accept)
        upstream = self.upstream.fetch() if self.upstream else b""
        started = time.perf_counter()
        readings = self.ledgers()
        self._live = {
            r.identity: ledger.split_key(r.serving) for r in readings if r.serving is not None
        }
        live_identities = {r.identity for r in readings if r.alive}
        workers = CollectorRegistry()
        workers.register(WorkerFiles(self.directory, live_identities, readings))
        body = encoder(workers)
        self._last_scrape_seconds = time.perf_counter() - started
        own = encoder(self._own)
        if body.endswith(b"# EOF\n"):  # OpenMetrics: one end marker, after both parts
            body = body[: -len(b"# EOF\n")]
        return body + own + upstream, content_type


def count_files(directory: Path) -> int:
    try:
        return sum(1 for path in directory.iterdir() if path.is_file())
    except OSError:  # gone or unreadable: the health endpoint says which
        return 0


def exporter_emitter() -> logs.LogEmitter:
    """Where the exporter writes the lines of requests it settles: the workers' sink when
    ``TSOBS_LOG_FILE`` names one, else stdout."""
    settings = Settings.from_env()
    report(settings.problems)
    stream = None
    if settings.log_file is not None:
        stream = open(settings.log_file, "a", encoding="utf-8")  # for the process lifetime
    return logs.LogEmitter(settings, stream=stream)


def settle_forever(source: MetricsSource, interval_s: float = SETTLE_INTERVAL_S) -> None:
    """Settle dead workers' ledgers between scrapes too, so their lines are not late."""
    while True:
        time.sleep(interval_s)
        try:
            source.ledgers()
        except Exception as err:  # keep settling; the next scrape reports the same failure
            print(f"torchserve-obs exporter: settling failed: {err!r}", file=sys.stderr)


def make_server(source: MetricsSource, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, content_type = source.render(self.headers.get("Accept", ""))
                self._reply(200, body, content_type)
            elif path == HEALTH_PATH:
                problem = source.problem()
                message = "OK\n" if problem is None else f"{problem}\n"
                status = 200 if problem is None else 503
                self._reply(status, message.encode(), "text/plain; charset=utf-8")
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

    server = ThreadingHTTPServer((host, port), Handler)
    server.source = source  # type: ignore[attr-defined]
    return server


def exporter_service(
    metrics_dir: Path,
    port: int,
    log_path: Path,
    host: str = "127.0.0.1",
    fold_after_s: Optional[float] = None,
) -> Service:
    """The exporter as a separate process, as the stack, the demo and the tests run it."""
    argv = [sys.executable, "-m", "obs.cli", "exporter", "--host", host, "--port", str(port)]
    if fold_after_s is not None:
        argv += ["--fold-after", str(fold_after_s)]
    return Service("exporter", [*argv, "--metrics-dir", str(metrics_dir)], log_path)


def run(args: argparse.Namespace) -> int:
    from obs.errors import UsageError

    directory = Path(args.metrics_dir) if args.metrics_dir else metrics_dir_from_env()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"metrics directory {directory}: {err.strerror or err}") from None
    problem = MetricsSource(directory).problem()
    if problem is not None:
        raise UsageError(problem)
    upstream = None
    if args.torchserve_metrics:
        upstream = TorchServeMetrics(args.torchserve_metrics, args.torchserve_timeout)
    try:
        source = MetricsSource(directory, upstream, fold_after_s=args.fold_after)
        server = make_server(source, args.host, args.port)
    except OSError as err:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {err.strerror}") from None
    print(
        f"torchserve-obs exporter: serving {directory} on http://{args.host}:{server.server_port}/metrics",
        flush=True,
    )
    threading.Thread(
        target=settle_forever, args=(server.source,), name="tsobs-settle", daemon=True
    ).start()
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
        "--fold-after",
        type=float,
        default=archive.FOLD_AFTER_S,
        metavar="SECONDS",
        help="fold a dead worker's counters into the archive and remove its files once its "
        f"ledger has been quiet this long (default: {archive.FOLD_AFTER_S:g})",
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
