"""The worker's upkeep thread: its files kept in place, GPU memory sampled on the interval.

Liveness no longer needs a heartbeat: the exporter sees a worker as alive while it holds its
ledger lock (:mod:`obs.ledger`). What a background thread still has to do is

* put the worker's files back when the metrics directory was removed under it (a temp
  cleaner, an operator's ``rm -rf``): the ledger and every metric file are re-created with
  the values in memory, and the event is counted, so the worker does not vanish;
* read GPU memory on its interval, so an idle worker's gauges are current, not the values
  of its last batch.

Each task's failure is counted and the thread goes on: it never dies.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

INTERVAL_S = 10.0


def start(
    tasks: Sequence[Callable[[], None]],
    on_error: Callable[[], None],
    interval_s: float = INTERVAL_S,
) -> threading.Thread:
    """Run each task every ``interval_s`` from a daemon thread, whatever they raise."""

    def upkeep() -> None:
        while True:
            time.sleep(interval_s)
            for task in tasks:
                try:
                    task()
                except Exception:
                    try:
                        on_error()
                    except Exception:
                        pass

    thread = threading.Thread(target=upkeep, name="tsobs-upkeep", daemon=True)
    thread.start()
    return thread
