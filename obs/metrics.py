"""prometheus_client metrics created from :mod:`obs.signals`, shared across worker processes.

prometheus_client's multiprocess mode names each process's files after ``os.getpid()``
and never removes them, so every worker restart would add files and slow every scrape.
TorchServe restarts a crashed worker on the same port, so we name the files after a
stable worker identity (``w9000``) instead: the restarted worker reopens its
predecessor's files and continues its counters, and the directory holds one set of
files per worker port however often workers die.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Tuple

from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.metrics import MetricWrapperBase

from obs import ledger, mpvalue
from obs.gpu import GpuMemory
from obs.settings import MULTIPROC_DIR_ENV
from obs.signals import Label, Metrics, MetricSpec, Stage

_identity: Dict[str, str] = {}


def use_multiprocess_dir(directory: Path, identity: str) -> None:
    """Write this process's metric values to ``directory`` under a stable ``identity``.

    Two live processes must never share an identity: they would overwrite each other's
    values. A TorchServe worker port is held by one live worker at a time. Counters and
    histograms continue from the files of earlier processes with this identity; gauges start
    empty, so nothing an earlier process set (an older model version, say) shows as current.
    """
    if _identity.get("value") == identity and os.environ.get(MULTIPROC_DIR_ENV) == str(directory):
        return
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"gauge_*_{identity}.db"):
        stale.unlink()  # a predecessor's gauges: this process owns the identity's from its start
    os.environ[MULTIPROC_DIR_ENV] = str(directory)

    def take_child_lock(child: str) -> None:
        ledger.open_ledger(directory, child)

    mpvalue.configure(directory, identity, on_child=take_child_lock)
    values.ValueClass = mpvalue.MultiProcessValue
    _identity["value"] = identity


def use_memory_only() -> None:
    """Keep metric values in memory, written nowhere: the metrics directory is unusable.

    prometheus_client picks multi-process values at import when ``PROMETHEUS_MULTIPROC_DIR``
    is set, and would then fail to create its files there.
    """
    values.ValueClass = values.MutexValue
    _identity.pop("value", None)


def create(spec: MetricSpec) -> MetricWrapperBase:
    """The prometheus_client object for ``spec``, unregistered: the exporter reads the files."""
    common: Dict[str, Any] = {
        "documentation": spec.help,
        "labelnames": spec.labels,
        "registry": None,
    }
    if spec.kind == "counter":
        return Counter(spec.name, **common)
    if spec.kind == "histogram":
        return Histogram(spec.name, buckets=spec.buckets, **common)
    if spec.kind == "gauge":
        return Gauge(spec.name, multiprocess_mode=spec.multiprocess_mode or "all", **common)
    raise ValueError(f"metric {spec.name}: unknown kind {spec.kind!r}")


class ProcessInstruments:
    """Metrics of the process rather than of a model: log drops and internal failures."""

    def __init__(self) -> None:
        self._dropped = create(Metrics.LOG_RECORDS_DROPPED)
        self._internal = create(Metrics.INTERNAL_ERRORS)

    def count_dropped(self, reason: str, count: int) -> None:
        self._dropped.labels(reason).inc(count)

    def count_internal_error(self, component: str) -> None:
        self._internal.labels(component).inc()


def _cells(child: Any) -> mpvalue.Cells:
    return child._sum, list(child._upper_bounds), child._buckets


def _observe_each(observations: Iterable[Tuple[mpvalue.Cells, float]]) -> None:
    """:func:`obs.mpvalue.observe_all` for values kept in memory only."""
    for (total, bounds, buckets), amount in observations:
        total.inc(amount)
        buckets[bisect_left(bounds, amount)].inc(1.0)


class ModelInstruments:
    """The per-model metrics with their label children cached: the hot path only observes.

    Requests, worker starts and model loads are not here: they are counted in the worker's
    ledger (:mod:`obs.ledger`), which stays exact when the worker is killed mid-batch.
    """

    def __init__(self, model: str, version: str) -> None:
        self.model = model
        self.version = version
        stage = create(Metrics.STAGE_DURATION)
        self.stage_seconds = {s: stage.labels(model, version, s) for s in Stage.TIMED}
        self.batch_size = create(Metrics.BATCH_SIZE).labels(model, version)
        self.batch_fill = create(Metrics.BATCH_FILL).labels(model, version)
        self._stage_cells = {s: _cells(c) for s, c in self.stage_seconds.items()}
        self._size_cells = _cells(self.batch_size)
        self._fill_cells = _cells(self.batch_fill)
        multiprocess = isinstance(self._size_cells[0], mpvalue.MultiProcessValue)
        self._observe_all: Callable[[Iterable[Tuple[mpvalue.Cells, float]]], None] = (
            mpvalue.observe_all if multiprocess else _observe_each
        )
        self._errors = create(Metrics.ERRORS)
        self._error_children: Dict[Tuple[str, str], Any] = {}
        self.load_seconds = create(Metrics.MODEL_LOAD_DURATION).labels(model, version)
        self._info = create(Metrics.MODEL_INFO)
        self.torch_mismatch = create(Metrics.TORCH_VERSION_MISMATCH).labels(model, version)
        self._gpu = {
            spec.name: create(spec)
            for spec in (
                Metrics.GPU_MEMORY_ALLOCATED,
                Metrics.GPU_MEMORY_RESERVED,
                Metrics.GPU_MEMORY_PEAK,
                Metrics.GPU_MEMORY_USED,
                Metrics.GPU_MEMORY_TOTAL,
            )
        }

    def observe_batch(self, stage_seconds: Mapping[str, float], size: int, fill: float) -> None:
        """A batch's stage durations, size and fill ratio, written together (one lock)."""
        cells = self._stage_cells
        observations = [(cells[stage], seconds) for stage, seconds in stage_seconds.items()]
        if size:
            observations.append((self._size_cells, size))
            observations.append((self._fill_cells, fill))
        self._observe_all(observations)

    def count_error(self, stage: str, exception: str) -> None:
        key = (stage, exception)
        child = self._error_children.get(key)
        if child is None:
            child = self._error_children[key] = self._errors.labels(
                self.model, self.version, stage, exception
            )
        child.inc()

    def set_info(
        self, handler: str, torch_version: str, torchserve_version: str, python_version: str
    ) -> None:
        self._info.labels(
            **{
                Label.MODEL: self.model,
                Label.VERSION: self.version,
                Label.HANDLER: handler,
                Label.TORCH_VERSION: torch_version,
                Label.TORCHSERVE_VERSION: torchserve_version,
                Label.PYTHON_VERSION: python_version,
            }
        ).set(1)

    def set_gpu_memory(self, device: str, memory: GpuMemory) -> None:
        for spec, value in (
            (Metrics.GPU_MEMORY_ALLOCATED, memory.allocated),
            (Metrics.GPU_MEMORY_RESERVED, memory.reserved),
            (Metrics.GPU_MEMORY_PEAK, memory.peak),
        ):
            self._gpu[spec.name].labels(self.model, self.version, device).set(value)
        self._gpu[Metrics.GPU_MEMORY_USED.name].labels(device).set(memory.used)
        self._gpu[Metrics.GPU_MEMORY_TOTAL.name].labels(device).set(memory.total)
