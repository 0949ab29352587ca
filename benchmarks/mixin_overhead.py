"""What the mixin costs per request: in-process, inside a real worker, and in throughput.

* In-process: the example handler runs through TorchServe's own Python backend
  (``ts.service.Service.predict``) with the mixin, without it (twice: the A/A control), and
  with TorchServe's own custom-metrics API instead (the anchor), calls alternating, with
  multi-process metrics files, JSON lines written to a file and TorchServe's ``[METRICS]``
  lines logged as a worker logs them.
* In a real worker and at saturation: see ``saturation.py`` (one TorchServe, wrk, TorchServe's
  own timers).
* In CPU instructions under callgrind, where valgrind is installed: see ``instructions.py``
  (the one figure this host's noise cannot move).

Every figure is min / median / max over rounds, printed beside its A/A control (plain
against plain: the noise floor), and compared with its target. Prints one JSON object.

    python benchmarks/mixin_overhead.py [--quick | --tiny] [--in-process-only] [--no-instructions]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import instructions  # noqa: E402 (beside this file; the repository root goes on sys.path first)
import saturation  # noqa: E402
from saturation import FLOOR, PHASES, STDOUT, TO_FILE, spread  # noqa: E402

MIXIN, PLAIN_A, PLAIN_B, ANCHOR = "mixin", "plain_a", "plain_b", "ts_metrics_api"
LABELS = {MIXIN: "mixin", PLAIN_B: "aa_control", ANCHOR: "ts_metrics_api", FLOOR: FLOOR}
"""How each variant compared with ``plain_a`` is named in the report."""
BATCH_SIZES = (1, 8, 32)
HEADERS = {
    "X-Request-ID": "bench-client-request-0001",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}


def in_process(rounds: int, calls: int, scratch: Path) -> Dict[str, Any]:
    """The example handler: the mixin, the A/A control and TorchServe's metrics API."""
    from handler_mixins.example.build import MODEL_NAME, PLAIN_MODEL_NAME, build_archives

    store = scratch / "store"
    build_archives(store, batch_size=max(BATCH_SIZES))
    plain = store / f"{PLAIN_MODEL_NAME}.mar"
    archives = {
        MIXIN: store / f"{MODEL_NAME}.mar",
        PLAIN_A: plain,
        PLAIN_B: plain,
        ANCHOR: saturation.variant_archive(
            plain, saturation.HERE / "handlers" / "tiny_ts_metrics.py", store / "anchor.mar"
        ),
        FLOOR: saturation.floor_archive(plain, store / "floor.mar"),
    }
    return compare_in_process(archives, BATCH_SIZES, rounds, calls, scratch)


def compare_in_process(
    archives: Dict[str, Path], batch_sizes: Sequence[int], rounds: int, calls: int, scratch: Path
) -> Dict[str, Any]:
    """Per batch size, µs per request each variant adds to ``plain_a``, round by round.

    Each archive is loaded with TorchServe's loader and driven through
    ``ts.service.Service.predict``, with multi-process metrics files, the mixin's JSON lines
    written to a file, and TorchServe's ``[METRICS]`` lines logged as a worker logs them.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
    from handler_mixins.testing import load_model, predict, unpack_archive, wire_request

    real_stdout = sys.stdout
    results: Dict[str, Any] = {}
    with open(scratch / "log.jsonl", "w") as log_file:
        sys.stdout = log_file  # the mixin's JSON lines are written and flushed here
        # As ts/model_service_worker.py: TorchServe's [METRICS] lines go out through the root logger.
        logging.basicConfig(stream=log_file, format="%(message)s", level=logging.INFO, force=True)
        try:
            services = {
                name: load_model(unpack_archive(archive, scratch / name), name, max(batch_sizes))
                for name, archive in archives.items()
            }
            for size in batch_sizes:
                requests = [
                    wire_request(f"r{i}", b"[0.1, 0.2, 0.3, 0.4]", HEADERS) for i in range(size)
                ]
                for _ in range(20):  # warm up every variant
                    for service in services.values():
                        predict(service, requests)
                per_round = timed_rounds(services, requests, rounds, calls)
                results[f"batch_{size}"] = {
                    "plain_us_per_batch": spread(per_round[PLAIN_A], 1),
                    "added_us_per_request": {
                        LABELS[name]: added(per_round, name, size)
                        for name in archives
                        if name != PLAIN_A
                    },
                    "throughput_ratio": {
                        LABELS[name]: spread(
                            [p / v for p, v in zip(per_round[PLAIN_A], per_round[name])]
                        )
                        for name in archives
                        if name != PLAIN_A
                    },
                }
        finally:
            sys.stdout = real_stdout
            logging.basicConfig(stream=sys.stderr, force=True)
    return {"rounds": rounds, "calls_per_round": calls, "batches": results}


def timed_rounds(
    services: Dict[str, Any], requests: List[Any], rounds: int, calls: int
) -> Dict[str, List[float]]:
    """Per variant, the median µs per batch of each round; calls alternate between variants."""
    from handler_mixins.testing import predict

    per_round: Dict[str, List[float]] = {name: [] for name in services}
    for _ in range(rounds):
        times: Dict[str, List[float]] = {name: [] for name in services}
        for _ in range(calls):
            for name, service in services.items():
                started = time.perf_counter()
                predict(service, requests)
                times[name].append(time.perf_counter() - started)
        for name in services:
            per_round[name].append(statistics.median(times[name]) * 1e6)
    return per_round


def added(per_round: Dict[str, List[float]], name: str, size: int) -> Dict[str, Optional[float]]:
    """µs per request ``name`` adds to ``plain_a``, round by round."""
    pairs = zip(per_round[name], per_round[PLAIN_A])
    return spread([(v - p) / size for v, p in pairs], 2)


def targets(per_request: Dict[str, Any], saturated: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Each target beside the median it is judged on, its range, the A/A control and the
    floor (the same writes with the least Python: how far below it the target is)."""
    rows = []

    def row(
        measure: str,
        source: str,
        goal: str,
        limit: float,
        figures: Optional[Dict[str, Any]],
        variant: str,
    ) -> None:
        figure = figures and figures[variant]
        median = figure["median"] if figure else None
        met = None
        if median is not None:
            met = median <= limit if goal == "<=" else median >= limit
        rows.append(
            {
                "measure": measure,
                "source": source,
                "target": f"{goal} {limit}",
                "median": median,
                "range": [figure["min"], figure["max"]] if figure else None,
                "aa_control": figures and figures["aa_control"],
                "floor": figures and figures.get(FLOOR),
                "met": met,
            }
        )

    for size, limit in ((1, 20.0), (32, 5.0)):
        name = f"trivial_batch_{size}"
        phase = saturated.get(name)
        row(
            f"mixin us per request in a worker at saturation, batch {size}"
            " (PredictionTime - HandlerTime)",
            name,
            "<=",
            limit,
            phase and phase["added_us_per_request"],
            STDOUT,
        )
        batch = per_request["batches"][f"batch_{size}"]
        row(
            f"mixin us per request in-process, batch {size}",
            "in_process",
            "<=",
            limit,
            batch["added_us_per_request"],
            MIXIN,
        )
    for name, sink, limit in (
        ("trivial_batch_1", STDOUT, 0.95),
        ("trivial_batch_1", TO_FILE, 0.95),
        ("sleep_5ms_batch_1", STDOUT, 0.99),
    ):
        phase = saturated.get(name)
        row(
            f"throughput with the mixin / without, wrk at saturation, {name}, {sink}",
            name,
            ">=",
            limit,
            phase and phase["throughput_ratio"],
            sink,
        )
    return rows


def code_version() -> Dict[str, Any]:
    """The commit measured, and whether the checkout differed from it."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        except OSError:  # no git here (a copy of the tree)
            return ""
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "modified": bool(git("status", "--porcelain")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer rounds, shorter runs (noisier)")
    size.add_argument(
        "--tiny", action="store_true", help="a smoke test: the first phase only, one short round"
    )
    parser.add_argument("--in-process-only", action="store_true", help="no TorchServe, no wrk")
    parser.add_argument(
        "--no-instructions", action="store_true", help="skip the callgrind counts (about 4 minutes)"
    )
    args = parser.parse_args()
    rounds, calls, seconds, phases = 5, 400, 5, PHASES
    if args.quick:
        rounds, calls, seconds = 3, 200, 3
    if args.tiny:
        rounds, calls, seconds, phases = 1, 20, 1, PHASES[:1]
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported: as in the servers
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        per_request = in_process(rounds, calls, Path(scratch))
        saturated = {}
        if not args.in_process_only:
            saturated = saturation.measure(phases, rounds, seconds, Path(scratch))
    counted = None
    if not (args.no_instructions or args.tiny) and instructions.available():
        counted = instructions.measure(REPO, (1, 32))
    report = {
        "code": code_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m": [round(load[0], 1), round(os.getloadavg()[0], 1)],
        },
        "targets": targets(per_request, saturated),
        "in_process": per_request,
        "saturation": saturated,
        "instructions_per_batch": counted,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
