"""Which workers are alive: a heartbeat file per worker, touched on an interval.

Metric files outlive their workers (that is what keeps counters exact across restarts), so
a gauge written by a worker whose port TorchServe retired, after a scale-down or when a
model version is unregistered, would keep its last value forever. Each worker therefore
touches ``heartbeat_<identity>`` in the metrics directory; the exporter keeps gauges only
from workers whose heartbeat is recent, and counts the live workers per model.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Dict, Tuple

INTERVAL_S = 10.0
TTL_S = 45.0
"""A worker whose heartbeat is older than this is taken for dead."""

PREFIX = "heartbeat_"


def heartbeat_path(directory: Path, identity: str) -> Path:
    return directory / f"{PREFIX}{identity}"


def start(
    directory: Path, identity: str, model: str, version: str, interval_s: float = INTERVAL_S
) -> threading.Thread:
    """Write this worker's heartbeat now, then touch it every ``interval_s`` from a daemon thread."""
    path = heartbeat_path(directory, identity)
    _announce(path, model, version)

    def beat() -> None:
        while True:
            time.sleep(interval_s)
            try:
                os.utime(path)
            except FileNotFoundError:  # the directory was cleaned: write it again
                _announce(path, model, version)

    thread = threading.Thread(target=beat, name="tsobs-heartbeat", daemon=True)
    thread.start()
    return thread


def _announce(path: Path, model: str, version: str) -> None:
    """Write the heartbeat file whole: the exporter never reads a half-written one."""
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(f"{model}\n{version}\n")
    os.replace(scratch, path)


def live_workers(directory: Path, ttl_s: float = TTL_S) -> Dict[str, Tuple[str, str]]:
    """``{identity: (model, version)}`` of the workers whose heartbeat is recent."""
    now = time.time()
    live = {}
    for path in directory.glob(f"{PREFIX}*"):
        try:
            if now - path.stat().st_mtime > ttl_s:
                continue
            model, version = path.read_text().splitlines()[:2]
        except (OSError, ValueError):
            continue
        live[path.name[len(PREFIX) :]] = (model, version)
    return live
