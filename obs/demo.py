"""``torchserve-obs demo``: the example model in a real TorchServe, traffic, and what it left.

Builds the example archive, starts TorchServe (two workers, batch size 8) and the exporter
on free loopback ports, sends mixed traffic (valid, malformed, failing, with client
request IDs and trace context), then prints sample log lines and metrics and stops.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any, List

from obs.exporter import exporter_service
from obs.services import free_port, http_get, wait_until_http_ok
from obs.signals import Metrics
from obs.torchserve import TorchServe, TorchServePorts
from obs.traffic import Request, json_log_lines, json_request, predict, send_all

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def demo_traffic(count: int) -> List[Request]:
    rng = random.Random(0)
    requests = []
    for index in range(count):
        headers = {"X-Request-ID": f"demo-{index}"} if index % 2 == 0 else {}
        if index % 5 == 0:
            headers["traceparent"] = f"00-{TRACE_ID}-{index + 1:016x}-01"
        if index % 10 == 9:
            requests.append(Request(b"this is not a list of numbers", headers))
        else:
            requests.append(json_request([round(rng.uniform(-2, 2), 2) for _ in range(4)], headers))
    return requests


def run(args: argparse.Namespace) -> int:
    from handler_mixins.example.build import MODEL_NAME, build_archives
    from obs.errors import UsageError

    workdir = Path(args.workdir).resolve()
    store = workdir / "model-store"
    print(f"building the example model archive in {store}", flush=True)
    build_archives(store, workers=2, batch_size=8)
    metrics_dir = workdir / "metrics"
    server = TorchServe(
        workdir=workdir / "torchserve",
        model_store=store,
        ports=TorchServePorts.free(),
        load_models=f"{MODEL_NAME}={MODEL_NAME}.mar",
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    exporter_port = free_port()
    exporter = exporter_service(metrics_dir, exporter_port, workdir / "exporter.out")
    try:
        print("starting TorchServe (about 20 s)...", flush=True)
        try:
            server.start().wait_ready([MODEL_NAME], workers=2)
        except (OSError, RuntimeError, TimeoutError) as err:
            raise UsageError(f"TorchServe did not start: {err}") from None
        exporter.start()
        exporter_url = f"http://127.0.0.1:{exporter_port}"
        wait_until_http_ok(f"{exporter_url}/-/healthy", 30, exporter.process)
        print(
            f"TorchServe: {server.ports.inference_url}   exporter: {exporter_url}/metrics",
            flush=True,
        )

        traffic = demo_traffic(args.requests)
        responses = send_all(server.ports.inference_url, MODEL_NAME, traffic)
        responses.append(
            predict(server.ports.inference_url, MODEL_NAME, json_request({"fail": "demo"}))
        )
        statuses = sorted({r.status for r in responses})
        print(f"\nsent {len(responses)} requests; answers with status {statuses}", flush=True)
        time.sleep(1.0)  # TorchServe's frontend writes worker lines to model_log.log asynchronously

        _print_logs(server.json_log)
        _print_metrics(http_get(f"{exporter_url}/metrics").decode())
        if args.keep_running:
            print("\nrunning until Ctrl-C", flush=True)
            while server.service is not None and server.service.running():
                time.sleep(1)
    finally:
        exporter.stop()
        server.stop()
    return 0


def _print_logs(model_log: Path) -> None:
    records = json_log_lines(model_log)
    completed = [r for r in records if r.get("event") == "request_completed"]
    samples: List[Any] = [r for r in completed if "client_request_id" not in r][:1]
    samples += [r for r in completed if "trace_id" in r][:1]
    samples += [r for r in completed if r.get("outcome") == "client_error"][:1]
    failed = [r for r in records if r.get("event") == "batch_failed"][:1]
    for record in failed:
        record["exception"] = record["exception"][:120] + "..."
    print(f"\n{len(records)} JSON log lines in {model_log}; a few of them:")
    for record in samples + failed:
        print(json.dumps(record))


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


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the example model in TorchServe with traffic, print logs and metrics",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--workdir", default=".demo", help="where archives, logs and metrics go (default: .demo)"
    )
    parser.add_argument("--requests", type=int, default=200, help="requests to send (default: 200)")
    parser.add_argument(
        "--keep-running", action="store_true", help="leave TorchServe running until Ctrl-C"
    )
    parser.set_defaults(func=run)
