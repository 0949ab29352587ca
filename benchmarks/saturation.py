"""The mixin at saturation: throughput and in-worker cost in a real TorchServe, driven by wrk.

One TorchServe serves every variant, each model with one worker of its own: two plain
handlers (``plain_a``, ``plain_b``: the A/A control, whose ratio is the noise floor), the
mixin with its JSON lines on stdout (the default; TorchServe's frontend re-logs every line),
and the mixin writing them to a file (``TSOBS_LOG_FILE``). wrk drives one model at a time
over keep-alive connections, the variants alternating in rounds in a rotating order.

In-worker cost comes from TorchServe's own timers, which its frontend logs to ``ts_log.log``
for every batch: ``PredictionTime`` (``ts/service.py``, around the handler's ``handle``) less
``HandlerTime`` (``BaseHandler.handle``'s body) is the time spent in ``handle``'s wrappers.
For the plain handler that is TorchServe's own bookkeeping; the mixin's begin/finish adds to
it. Both timers are rounded to 10 µs per batch, so per-request figures are means over many
batches (the rounding averages out; a median would not).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk_post.lua"

PLAIN_A = "plain_a"
PLAIN_B = "plain_b"
STDOUT = "json_lines_on_stdout"
TO_FILE = "json_lines_to_file"
FLOOR = "floor_writes"
"""The same writes with the least Python (``handlers/floor_writes.py``): what no Python
instrumentation can go below."""
ARCHIVES = {PLAIN_A: "tiny_plain.mar", PLAIN_B: "tiny_plain.mar", STDOUT: "tiny.mar"}
"""Archive of each variant; ``TO_FILE``'s and ``FLOOR``'s are derived (see :func:`variant_archive`)."""

FEATURES = [0.1, 0.2, 0.3, 0.4]
SLEEP_S = 0.005


@dataclass(frozen=True)
class Phase:
    """One load shape: a batch size, a request body and the variants driven with it."""

    name: str
    batch_size: int
    connections: int
    body: Any
    variants: Tuple[str, ...]
    max_batch_delay_ms: int = 1

    def model(self, variant: str) -> str:
        return f"{variant}_b{self.batch_size}"


PHASES = (
    Phase("trivial_batch_1", 1, 8, FEATURES, (PLAIN_A, PLAIN_B, STDOUT, TO_FILE, FLOOR)),
    # The example handler sleeps for {"sleep": s} in preprocess: a step that holds the worker
    # for 5 ms but leaves the CPU free, as a GPU step does (its CPU side is a few launches).
    # A busy loop would instead measure contention for this host's two cores.
    Phase(
        "sleep_5ms_batch_1",
        1,
        8,
        {"sleep": SLEEP_S, "features": FEATURES},
        (PLAIN_A, PLAIN_B, STDOUT, FLOOR),
    ),
    Phase(
        "trivial_batch_32",
        32,
        64,
        FEATURES,
        (PLAIN_A, PLAIN_B, STDOUT, FLOOR),
        max_batch_delay_ms=50,
    ),
)


def spread(values: Sequence[float], digits: int = 3) -> Dict[str, Optional[float]]:
    """Min, median and max: what one noisy figure needs beside it."""
    if not values:
        return {"min": None, "median": None, "max": None}
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }


def variant_archive(base: Path, handler: Path, out: Path, extra: Sequence[Path] = ()) -> Path:
    """A copy of the archive ``base`` whose entry point is ``handler`` (added to it, with
    ``extra`` files)."""
    with zipfile.ZipFile(base) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as mar:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["handler"] = handler.name
                manifest["model"]["modelName"] = out.stem
                data = json.dumps(manifest, indent=2).encode()
            mar.writestr(item, data)
        for path in (handler, *extra):
            mar.write(path, path.name)
    return out


def floor_archive(plain: Path, out: Path) -> Path:
    """The plain archive with the floor's writes (``FLOOR``)."""
    handlers = HERE / "handlers"
    return variant_archive(plain, handlers / "tiny_floor.py", out, [handlers / "floor_writes.py"])


class LogTail:
    """New lines of a log file that log4j may roll over (rename) while we read it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "rb")
        self._file.seek(0, os.SEEK_END)

    def read(self) -> List[str]:
        data = self._file.read()
        try:
            rolled = os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            rolled = False
        if rolled:  # our descriptor still reads the renamed file: finish it, then follow
            self._file.close()
            self._file = open(self.path, "rb")
            data += self._file.read()
        return data.decode(errors="replace").splitlines()

    def close(self) -> None:
        self._file.close()


_TIMER = re.compile(
    r"result=\[METRICS\](HandlerTime|PredictionTime)\.Milliseconds:([0-9.]+)"
    r"\|#ModelName:([^,|]+),[^|]*\|#type:\w+\|#hostname:[^,]*,\d+,(.*?), pattern="
)


def batch_timers(lines: Sequence[str]) -> Dict[str, List[Tuple[float, int]]]:
    """Per model, ``(PredictionTime - HandlerTime in ms, batch size)`` of each batch.

    A timer line carries the batch's request IDs, which pair the two timers and count the
    batch; the frontend logs each line twice, which the pairing absorbs.
    """
    timers: Dict[Tuple[str, str], Dict[str, float]] = {}
    for line in lines:
        match = _TIMER.search(line)
        if match:
            name, value, model, ids = match.groups()
            timers.setdefault((model, ids), {})[name] = float(value)
    batches: Dict[str, List[Tuple[float, int]]] = {}
    for (model, ids), pair in timers.items():
        if len(pair) == 2:
            gap = pair["PredictionTime"] - pair["HandlerTime"]
            batches.setdefault(model, []).append((gap, ids.count(",") + 1))
    return batches


def run_wrk(url: str, body: Any, connections: int, seconds: int) -> Dict[str, Any]:
    """One wrk run (one thread, keep-alive connections); its summary from the Lua script."""
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(WRK_SCRIPT),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env={**os.environ, "BENCH_BODY": json.dumps(body)},
    )
    if done.returncode or "WRK_SUMMARY " not in done.stdout:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    summary = json.loads(done.stdout.rsplit("WRK_SUMMARY ", 1)[1])
    if summary["non_2xx"]:
        raise RuntimeError(f"{url}: {summary['non_2xx']} answers were not 2xx: {summary}")
    summary["requests_per_s"] = summary["requests"] / (summary["duration_us"] / 1e6)
    return summary


def register(management_url: str, model: str, archive: str, phase: Phase) -> None:
    query = urllib.parse.urlencode(
        {
            "url": archive,
            "model_name": model,
            "batch_size": phase.batch_size,
            "max_batch_delay": phase.max_batch_delay_ms,
            "initial_workers": 1,
            "synchronous": "false",
        }
    )
    request = urllib.request.Request(f"{management_url}/models?{query}", method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        answer.read()


def measure(
    phases: Sequence[Phase], rounds: int, seconds: int, scratch: Path
) -> Dict[str, Dict[str, Any]]:
    """Drive every phase's variants in rotating rounds; round 0 of each phase warms up."""
    from handler_mixins.example.build import build_archives
    from obs.torchserve import TorchServe, TorchServePorts

    store = scratch / "store"
    # Batch size and delay come from the registration (an archive's own batchSize wins when > 1).
    build_archives(store, workers=1, batch_size=1, max_batch_delay_ms=1)
    variant_archive(
        store / ARCHIVES[STDOUT],
        HERE / "handlers" / "tiny_observed_to_file.py",
        store / "to_file.mar",
    )
    floor_archive(store / ARCHIVES[PLAIN_A], store / "floor.mar")
    archives = {**ARCHIVES, TO_FILE: "to_file.mar", FLOOR: "floor.mar"}
    server = TorchServe(
        scratch / "torchserve",
        store,
        TorchServePorts.free(9700),
        load_models="",
        env={
            "PROMETHEUS_MULTIPROC_DIR": str(scratch / "metrics"),
            "TSOBS_BENCH_LOG_FILE": str(scratch / "tsobs.jsonl"),
            "OMP_NUM_THREADS": "1",  # every worker alike, whatever the host sets
        },
        # The host metrics collector is a fresh process every minute: CPU noise.
        extra_config={"enable_model_api": "true", "disable_system_metrics": "true"},
    )
    server.start()
    tail: Optional[LogTail] = None
    try:
        models = {}
        for phase in phases:
            for variant in phase.variants:
                models[phase.model(variant)] = (archives[variant], phase)
        server.wait_ready([], workers=1)
        for model, (archive, phase) in models.items():
            register(server.ports.management_url, model, archive, phase)
        server.wait_ready(list(models), workers=1, timeout=600)
        tail = LogTail(server.log_dir / "ts_log.log")
        results = {
            phase.name: _drive(server.ports.inference_url, phase, rounds, seconds, tail)
            for phase in phases
        }
        # Proof the file sink was the one measured: its variant's lines are all in the file.
        with open(scratch / "tsobs.jsonl", "rb") as lines:
            results[phases[0].name]["json_lines_in_file"] = sum(1 for _ in lines)
        return results
    finally:
        if tail is not None:
            tail.close()
        server.stop()


def _round_timers(tail: LogTail, models: Sequence[str]) -> Dict[str, List[Tuple[float, int]]]:
    """The timers of the round just driven, once every model's have come (a loaded frontend
    logs them seconds late); lines of an earlier round arriving late count with this one."""
    lines = tail.read()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        batches = batch_timers(lines)
        if all(model in batches for model in models):
            break
        time.sleep(0.5)
        lines += tail.read()
    return batches


def _drive(url: str, phase: Phase, rounds: int, seconds: int, tail: LogTail) -> Dict[str, Any]:
    variants = phase.variants
    rates: Dict[str, List[float]] = {v: [] for v in variants}
    gaps: Dict[str, List[float]] = {v: [] for v in variants}
    """Per round, mean PredictionTime - HandlerTime per request (µs)."""
    sizes: Dict[str, List[float]] = {v: [] for v in variants}
    load = [os.getloadavg()[0]]
    for round_ in range(rounds + 1):
        order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
        summaries = {}
        for variant in order:
            summaries[variant] = run_wrk(
                f"{url}/predictions/{phase.model(variant)}",
                phase.body,
                phase.connections,
                seconds if round_ else 1,
            )
        batches = _round_timers(tail, [phase.model(v) for v in variants])
        if not round_:
            continue
        for variant in variants:
            timed = batches.get(phase.model(variant))
            if not timed:
                raise RuntimeError(f"{phase.model(variant)}: no timer lines in ts_log.log")
            requests = sum(size for _, size in timed)
            rates[variant].append(summaries[variant]["requests_per_s"])
            gaps[variant].append(sum(gap for gap, _ in timed) * 1000 / requests)
            sizes[variant].append(requests / len(timed))
    load.append(os.getloadavg()[0])
    reference = PLAIN_A

    def against_plain(series: Dict[str, List[float]], how: str) -> Dict[str, Any]:
        out = {}
        for variant in variants:
            if variant != reference:
                pairs = zip(series[variant], series[reference])
                values = [a / b if how == "ratio" else a - b for a, b in pairs]
                out["aa_control" if variant == PLAIN_B else variant] = spread(values)
        return out

    return {
        "batch_size": phase.batch_size,
        "connections": phase.connections,
        "rounds": rounds,
        "seconds_per_run": seconds,
        "load_average_1m": [round(x, 1) for x in load],
        "requests_per_s": {v: spread(rates[v], 1) for v in variants},
        "throughput_ratio": against_plain(rates, "ratio"),
        "mean_batch_size": {v: spread(sizes[v], 1) for v in variants},
        "prediction_minus_handler_us_per_request": {v: spread(gaps[v], 2) for v in variants},
        "added_us_per_request": against_plain(gaps, "difference"),
    }


def wrk_available() -> bool:
    return shutil.which("wrk") is not None
