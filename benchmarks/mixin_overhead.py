"""Cost of the mixin: microseconds per request in-process, and throughput through TorchServe.

In-process, the example handler runs with and without the mixin through TorchServe's own
Python backend (``ts.service.Service.predict``), with multi-process metrics files and JSON
lines written to a file, as in production; calls alternate so both see the same machine.
End to end, one TorchServe serves both variants and each is driven in alternating rounds,
once with the JSON lines on stdout (the default: TorchServe's frontend re-logs every line)
and once with them in a file of their own (``TSOBS_LOG_FILE``). Prints one JSON object.

    python benchmarks/mixin_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGETS_US = {1: 20.0, 32: 5.0}
TARGET_RATIO = 0.98


def in_process(batch_sizes: List[int], calls: int, scratch: Path) -> Dict[str, Dict[str, float]]:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
    from handler_mixins.example.build import MODEL_NAME, PLAIN_MODEL_NAME, build_archives
    from handler_mixins.testing import load_model, predict, unpack_archive, wire_request

    store = scratch / "store"
    build_archives(store, batch_size=max(batch_sizes))
    real_stdout = sys.stdout
    results = {}
    with open(scratch / "log.jsonl", "w") as log_file:
        sys.stdout = log_file  # the mixin's JSON lines are written and flushed here
        try:
            services = {
                name: load_model(
                    unpack_archive(store / f"{name}.mar", scratch / name), name, max(batch_sizes)
                )
                for name in (MODEL_NAME, PLAIN_MODEL_NAME)
            }
            for size in batch_sizes:
                requests = [
                    wire_request(
                        f"r{i}",
                        b"[0.1, 0.2, 0.3, 0.4]",
                        {
                            "X-Request-ID": f"c{i}",
                            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        },
                    )
                    for i in range(size)
                ]
                times: Dict[str, List[float]] = {MODEL_NAME: [], PLAIN_MODEL_NAME: []}
                for _ in range(50):  # warm up both
                    for name in times:
                        predict(services[name], requests)
                for _ in range(calls):
                    for name in times:
                        started = time.perf_counter()
                        predict(services[name], requests)
                        times[name].append(time.perf_counter() - started)
                observed = statistics.median(times[MODEL_NAME])
                plain = statistics.median(times[PLAIN_MODEL_NAME])
                results[str(size)] = {
                    "plain_us_per_batch": round(plain * 1e6, 1),
                    "mixin_us_per_batch": round(observed * 1e6, 1),
                    "mixin_cost_us_per_request": round((observed - plain) * 1e6 / size, 2),
                }
        finally:
            sys.stdout = real_stdout
    return results


def end_to_end(requests: int, rounds: int, scratch: Path, **env: str) -> Dict[str, Any]:
    from handler_mixins.example.build import MODEL_NAME, PLAIN_MODEL_NAME, build_archives
    from obs.torchserve import TorchServe, TorchServePorts
    from obs.traffic import json_request, send_all

    store = scratch / "e2e-store"
    build_archives(store, workers=1, batch_size=8, max_batch_delay_ms=5)
    server = TorchServe(
        scratch / "ts",
        store,
        TorchServePorts.free(9700),
        load_models=f"{MODEL_NAME}={MODEL_NAME}.mar,{PLAIN_MODEL_NAME}={PLAIN_MODEL_NAME}.mar",
        env={"PROMETHEUS_MULTIPROC_DIR": str(scratch / "e2e-metrics"), **env},
    )
    server.start()
    try:
        server.wait_ready([MODEL_NAME, PLAIN_MODEL_NAME], workers=1)
        traffic = [json_request([0.1, 0.2, 0.3, i % 7]) for i in range(requests)]
        send_all(server.ports.inference_url, MODEL_NAME, traffic[:200])  # warm up
        send_all(server.ports.inference_url, PLAIN_MODEL_NAME, traffic[:200])
        rates: Dict[str, List[float]] = {MODEL_NAME: [], PLAIN_MODEL_NAME: []}
        for round_ in range(rounds):
            order = (MODEL_NAME, PLAIN_MODEL_NAME) if round_ % 2 else (PLAIN_MODEL_NAME, MODEL_NAME)
            for name in order:
                started = time.perf_counter()
                answers = send_all(server.ports.inference_url, name, traffic, concurrency=16)
                elapsed = time.perf_counter() - started
                assert all(a.status == 200 for a in answers)
                rates[name].append(requests / elapsed)
    finally:
        server.stop()
    # Each round pairs the two variants back to back: the median of the per-round ratios
    # resists the machine's drift better than a ratio of overall means.
    ratios = sorted(m / p for m, p in zip(rates[MODEL_NAME], rates[PLAIN_MODEL_NAME]))
    return {
        "plain_requests_per_s": round(statistics.median(rates[PLAIN_MODEL_NAME]), 1),
        "mixin_requests_per_s": round(statistics.median(rates[MODEL_NAME]), 1),
        "throughput_ratio": round(statistics.median(ratios), 3),
        "throughput_ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)],
        "rounds": rounds,
        "requests_per_round": requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds (noisier)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        per_request = in_process([1, 8, 32], 300 if args.quick else 2000, Path(scratch))
        rounds = 4 if args.quick else 16
        e2e = {
            "json_lines_on_stdout": end_to_end(500, rounds, Path(scratch) / "stdout"),
            "json_lines_to_file": end_to_end(
                500,
                rounds,
                Path(scratch) / "file",
                TSOBS_LOG_FILE=str(Path(scratch) / "tsobs.jsonl"),
            ),
        }
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "in_process": per_request,
        "end_to_end": e2e,
        "targets": {
            "us_per_request_batch_1": TARGETS_US[1],
            "us_per_request_batch_32": TARGETS_US[32],
            "throughput_ratio": TARGET_RATIO,
        },
        "met": {
            "batch_1": per_request["1"]["mixin_cost_us_per_request"] <= TARGETS_US[1],
            "batch_32": per_request["32"]["mixin_cost_us_per_request"] <= TARGETS_US[32],
            "throughput_ratio": {
                sink: result["throughput_ratio"] >= TARGET_RATIO for sink, result in e2e.items()
            },
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
