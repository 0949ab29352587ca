"""torchserve-obs demo: the example model in a real TorchServe, traffic, and what it left.

Builds the example archive, starts TorchServe (two workers, batch size 8) and the exporter
on free loopback ports, sends mixed traffic (valid, malformed, one failing, with client
request IDs and trace context), then prints sample log lines, latency percentiles and
metrics, and says what to do next. Every run starts clean: the archives, logs and metrics
of an earlier run are removed first, so the counts and lines shown are this run's.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from obs.exporter import exporter_service
from obs.services import free_port, http_get, wait_until_http_ok
from obs.signals import Metrics, Stage
from obs.torchserve import TorchServe, TorchServePorts
from obs.traffic import Request, json_log_entries, json_request, send_all

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
QUANTILES = (0.5, 0.9, 0.99)
SAMPLE_LINE_CHARS = 700
"""Longer sample lines (a traceback) are cut, visibly, to this many characters."""

RUN_OUTPUTS = ("model-store", "torchserve", "metrics", "exporter.out")
"""What a run writes under its workdir; removed before each run, and nothing else is."""


def demo_traffic(count: int) -> List[Request]:
    """``count`` requests: valid ones, every tenth malformed, the last one asking to fail."""
    rng = random.Random(0)
    requests = []
    for index in range(count - 1):
        headers = {"X-Request-ID": f"demo-{index}"} if index % 2 == 0 else {}
        if index % 5 == 0:
            headers["traceparent"] = f"00-{TRACE_ID}-{index + 1:016x}-01"
        if index % 10 == 9:
            requests.append(Request(b"this is not a list of numbers", headers))
        else:
            requests.append(json_request([round(rng.uniform(-2, 2), 2) for _ in range(4)], headers))
    return requests + [json_request({"fail": "demo"})]


def run(args: argparse.Namespace) -> int:
    from handler_mixins.example.build import MODEL_NAME, build_archives
    from obs.errors import UsageError

    if args.requests < 2:
        raise UsageError("--requests must be at least 2 (the last one is the failing request)")
    workdir = Path(args.workdir).resolve()
    for name in RUN_OUTPUTS:
        _remove(workdir / name)
    store = workdir / "model-store"
    print(f"building the example model archive in {store}", flush=True)
    build_archives(store, workers=2, batch_size=8)
    metrics_dir = workdir / "metrics"
    server = TorchServe(
        workdir=workdir / "torchserve",
        model_store=store,
        # Worker sockets are /tmp/.ts.sock.PORT whatever TMPDIR says: numbers of its own.
        ports=TorchServePorts.free(first_worker=free_port()),
        load_models=f"{MODEL_NAME}={MODEL_NAME}.mar",
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    exporter_port = free_port()
    exporter = exporter_service(metrics_dir, exporter_port, workdir / "exporter.out")
    exporter_url = f"http://127.0.0.1:{exporter_port}"
    try:
        print("starting TorchServe (about 20 s)...", flush=True)
        try:
            server.start().wait_ready([MODEL_NAME], workers=2)
        except (OSError, RuntimeError, TimeoutError) as err:
            raise UsageError(f"TorchServe did not start: {err}") from None
        exporter.start()
        wait_until_http_ok(f"{exporter_url}/-/healthy", 30, exporter.process)

        responses = send_all(server.ports.inference_url, MODEL_NAME, demo_traffic(args.requests))
        statuses = sorted({r.status for r in responses})
        print(f"\nsent {len(responses)} requests; answers with status {statuses}", flush=True)
        entries = _wait_for_completions(server.json_log, len(responses))

        _print_logs(server.json_log, entries)
        exposition = http_get(f"{exporter_url}/metrics").decode()
        _print_latency([r.seconds for r in responses], exposition)
        _print_metrics(exposition)
        if args.keep_running:
            _print_running(server, exporter_url, MODEL_NAME)
            try:
                while server.service is not None and server.service.running():
                    time.sleep(1)
            except KeyboardInterrupt:
                print(flush=True)
    finally:
        exporter.stop()
        server.stop()
    _print_next_steps(workdir, kept_running=args.keep_running)
    return 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _wait_for_completions(
    model_log: Path, count: int, timeout: float = 30.0
) -> List[Tuple[str, Dict[str, Any]]]:
    """The log's JSON entries once every request's line is there: TorchServe's frontend
    copies worker lines into model_log.log asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        entries = json_log_entries(model_log) if model_log.exists() else []
        done = sum(1 for _, r in entries if r.get("event") == "request_completed")
        if done >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.2)


def _print_logs(model_log: Path, entries: List[Tuple[str, Dict[str, Any]]]) -> None:
    completed = [(line, r) for line, r in entries if r.get("event") == "request_completed"]
    samples = [e for e in completed if "client_request_id" not in e[1]][:1]
    samples += [e for e in completed if "trace_id" in e[1]][:1]
    samples += [e for e in completed if e[1].get("outcome") == "client_error"][:1]
    samples += [e for e in entries if e[1].get("event") == "batch_failed"][:1]
    print(f"\n{len(entries)} JSON log lines in {model_log}; a few of them, as written there:")
    for line, _ in samples:
        cut = len(line) - SAMPLE_LINE_CHARS
        print(line if cut <= 0 else f"{line[:SAMPLE_LINE_CHARS]} [... {cut} more characters]")


def quantile(q: float, buckets: Sequence[Tuple[float, float]]) -> float:
    """``histogram_quantile`` as Prometheus computes it, from (upper bound, cumulative count)."""
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below or 1)
        lower, below = upper, count
    return lower


def exact_quantile(q: float, values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _print_latency(client_seconds: Sequence[float], exposition: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    buckets: Dict[str, List[Tuple[float, float]]] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != Metrics.STAGE_DURATION.name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                stage = sample.labels["stage"]
                buckets.setdefault(stage, []).append((float(sample.labels["le"]), sample.value))
    header = "".join(f"{'p' + format(q * 100, 'g'):>10}" for q in QUANTILES)
    print(f"\n{'latency':<12}{header}")
    client = "".join(f"{exact_quantile(q, client_seconds) * 1000:>8.1f}ms" for q in QUANTILES)
    print(f"{'client':<12}{client}   per request, as the client measured it")
    for stage in Stage.TIMED:
        series = sorted(buckets.get(stage, []))
        if series and series[-1][1] > 0:
            row = "".join(f"{quantile(q, series) * 1000:>8.1f}ms" for q in QUANTILES)
            print(f"{stage:<12}{row}   per batch, histogram_quantile of the exporter's buckets")


def _print_metrics(exposition: str) -> None:
    shown = (
        Metrics.REQUESTS.name,
        Metrics.STAGE_DURATION.series("count"),
        Metrics.BATCH_SIZE.series("sum"),
        Metrics.BATCH_SIZE.series("count"),
        Metrics.ERRORS.name,
        Metrics.MODEL_INFO.name,
        Metrics.WORKERS.name,
    )
    print("\nmetrics from the exporter (a selection):")
    for line in exposition.splitlines():
        if line.startswith(shown):
            print(line)


def _print_running(server: TorchServe, exporter_url: str, model: str) -> None:
    print(
        f"\nrunning until Ctrl-C:\n"
        f"  curl -X POST {server.ports.inference_url}/predictions/{model} "
        "-H 'Content-Type: application/json' -d '[1,2,3,4]'\n"
        f"  curl {exporter_url}/metrics                  this bundle's metrics\n"
        f"  curl http://127.0.0.1:{server.ports.metrics}/metrics                  TorchServe's own\n"
        f"  tail -f {server.json_log}",
        flush=True,
    )


def _print_next_steps(workdir: Path, kept_running: bool) -> None:
    command = _own_command()
    print(f"\nTorchServe and the exporter are stopped; their logs stay in {workdir}. Next:")
    if not kept_running:
        print(f"  {command} demo --keep-running   the same, left running to query by hand")
    print(
        "  make stack-up      the example model with Prometheus, the generated alert rules,\n"
        "                     Alertmanager and Grafana (if installed) with the dashboards:\n"
        "                     see docs/stack.md; or import dashboards/*.json into your Grafana\n"
        '  README.md, "Add it to a handler"   instrument your own model'
    )


def _own_command() -> str:
    """How the user can run this command again from here."""
    script = Path(sys.executable).parent / "torchserve-obs"
    if not script.exists():
        return "torchserve-obs"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the example model in TorchServe with traffic, print logs and metrics",
        description=__doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
    )
    parser.add_argument(
        "--workdir",
        default=".demo",
        help="where archives, logs and metrics go; emptied of an earlier run's (default: .demo)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=200,
        help="requests to send, the failing one included (default: 200)",
    )
    parser.add_argument(
        "--keep-running", action="store_true", help="leave TorchServe running until Ctrl-C"
    )
    parser.set_defaults(func=run)
