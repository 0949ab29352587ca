"""Retired workers' counters, folded into one archive so the metrics directory stays small.

TorchServe gives every new worker a new port (scale-up, re-registration, a new version), so
each scale event would leave a ledger and metric files behind for good, and every scrape
would read them all. The exporter folds a worker that is gone (no process holds its ledger)
and has been quiet for a while into ``archive.json``: its request counts and every counter
and histogram value it wrote are added there, then its files are removed. Totals stay
continuous; gauges of a dead worker are dropped anyway.

Folding is exactly-once: the archive records each folded ledger's generation (a random ID a
ledger gets when created) in the same atomic replace that adds its values, so an exporter
killed between writing the archive and removing the files removes them next time without
adding them again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

from prometheus_client.core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from obs import ledger

NAME = "archive.json"
FOLD_AFTER_S = 60.0
"""A dead worker's files are folded once its ledger has not changed for this long: long
enough that a crashed worker restarting on its port (back-off up to a minute) keeps them."""
FOLDED_TYPES = ("counter", "histogram")


def archive_path(directory: Path) -> Path:
    return directory / NAME


def load(directory: Path) -> Dict[str, Any]:
    try:
        archive = json.loads(archive_path(directory).read_text())
    except FileNotFoundError:
        archive = {}
    archive.setdefault("counts", {})
    archive.setdefault("samples", {typ: {} for typ in FOLDED_TYPES})
    archive.setdefault("folded", {})
    return archive


def _save(directory: Path, archive: Dict[str, Any]) -> None:
    scratch = directory / f".{NAME}.{os.getpid()}.tmp"
    scratch.write_text(json.dumps(archive, sort_keys=True))
    os.replace(scratch, archive_path(directory))


def identity_files(directory: Path, identity: str) -> List[Path]:
    """Every metric file of one worker identity (never another's, children included)."""
    named = [directory / f"{typ}_{identity}.db" for typ in FOLDED_TYPES]
    gauges = [p for p in directory.glob(f"gauge_*_{identity}.db") if p.name.count("_") == 2]
    return [p for p in named if p.exists()] + gauges


def due(path: Path, fold_after_s: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime >= fold_after_s
    except FileNotFoundError:
        return False


def fold(directory: Path, identity: str, state: Dict[str, Any]) -> None:
    """Fold a dead worker into the archive, then remove its files. The caller holds its
    ledger lock, so no worker can start on that identity meanwhile."""
    archive = load(directory)
    files = identity_files(directory, identity)
    if archive["folded"].get(identity) != state["gen"]:
        for key, counts in state["counts"].items():
            add_counts(archive["counts"].setdefault(key, ledger.empty_counts()), counts)
        for path in files:
            typ = path.name.split("_", 1)[0]
            if typ not in FOLDED_TYPES:
                continue
            samples = archive["samples"][typ]
            for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
                samples[key] = samples.get(key, 0.0) + value
        archive["folded"][identity] = state["gen"]
        archive["folded"] = {
            name: gen
            for name, gen in archive["folded"].items()
            if name == identity or ledger.ledger_path(directory, name).exists()
        }
        _save(directory, archive)
    for path in files:
        path.unlink()
    ledger.ledger_path(directory, identity).unlink()


def add_counts(total: Dict[str, Any], counts: Dict[str, Any]) -> None:
    for index in range(3):
        total[ledger.REQUESTS][index] += counts[ledger.REQUESTS][index]
    total[ledger.LOST] += counts[ledger.LOST]
    total[ledger.STARTS] += counts[ledger.STARTS]
    for index in range(2):
        total[ledger.LOADS][index] += counts[ledger.LOADS][index]


def merge(files: Iterable[str], archive: Dict[str, Any]) -> Iterable[Metric]:
    """prometheus_client's multi-process merge of ``files``, with the archive's values added
    as if they were one more process's files."""
    metrics = MultiProcessCollector._read_metrics(list(files))
    for typ, samples in archive["samples"].items():
        for key, value in samples.items():
            metric_name, name, labels, help_text = json.loads(key)
            metric = metrics.get(metric_name)
            if metric is None:
                metric = metrics[metric_name] = Metric(metric_name, help_text, typ)
            metric.add_sample(name, tuple(sorted(labels.items())), value)
    return MultiProcessCollector._accumulate_metrics(metrics, True)


def archived_counts(archive: Dict[str, Any]) -> List[Tuple[ledger.Key, Dict[str, Any]]]:
    return list(archive["counts"].items())
