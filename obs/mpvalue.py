"""prometheus_client's multi-process value, for a process with a stable identity.

prometheus_client names each process's files after ``os.getpid()``. A TorchServe worker is
better named after its port (``w9000``): a restarted worker continues its predecessor's
counters and the directory does not grow with restarts. Pinning the identity switches off
prometheus_client's own protection against ``fork()`` (it compares PIDs), so this is its
``MultiProcessValue`` with that protection put back on our terms:

* A forked child (DataLoader workers, ``multiprocessing``) writes files of its own, under
  ``<identity>-c<pid>``, never its parent's: two processes writing one mmap lose updates.
  Its files carry a ledger lock like a worker's, so the exporter knows when it is gone.
* The lock every write takes is re-created in the child, so a child forked while another
  thread held it does not deadlock on its first metric.
* :func:`rehome` re-creates every file with the values in memory, for when the metrics
  directory was removed under a running worker.
"""

from __future__ import annotations

import os
import struct
import threading
from bisect import bisect_left
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Tuple

from prometheus_client.mmap_dict import MmapedDict, mmap_key

Cells = Tuple["MultiProcessValue", List[float], List["MultiProcessValue"]]
"""A histogram child's sum value, upper bounds and bucket values: what one observation
adds to is its sum and one bucket (prometheus_client's ``_sum``, ``_upper_bounds`` and
``_buckets``; bisection replaces its Python loop over the bounds)."""

_pack_value = struct.Struct("dd").pack
"""A value and its timestamp as MmapedDict stores them, written by slice assignment, as
its ``write_value`` does (``pack_into`` would show readers a transient zero)."""

_lock = threading.Lock()
_files: Dict[str, MmapedDict] = {}
_values: List[Any] = []
_owner = {"identity": "", "directory": "", "pid": -1, "generation": 0, "seen": 0}
_on_child: List[Callable[[str], None]] = []


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _owner["generation"] += 1


def _before_fork() -> None:
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


def identity() -> str:
    """The name this process's files carry: the worker's, or a forked child's own."""
    if os.getpid() == _owner["pid"]:
        return str(_owner["identity"])
    return f"{_owner['identity']}-c{os.getpid()}"


def configure(directory: Path, worker_identity: str, on_child: Callable[[str], None]) -> None:
    """Write this process's values to ``directory`` as ``worker_identity``.

    ``on_child(identity)`` runs in a forked child before its first write (to take its lock).
    """
    with _lock:
        _owner.update(identity=worker_identity, directory=str(directory), pid=os.getpid())
        _on_child[:] = [on_child]
        _reopen(keep_values=False)


def rehome() -> None:
    """Re-create the files (the directory was removed): every value continues from memory."""
    with _lock:
        os.makedirs(str(_owner["directory"]), exist_ok=True)
        _reopen(keep_values=True)


def _reopen(keep_values: bool) -> None:
    """Lock held. Close the files, then reopen them for every value under :func:`identity`."""
    for mmap in _files.values():
        mmap.close()
    _files.clear()
    for value in _values:
        value._open(keep_values)
    _owner["seen"] = _owner["generation"]


def _check_fork() -> None:
    """Lock held. In a process forked since the files were opened: files of its own."""
    if _owner["seen"] != _owner["generation"]:
        _owner["seen"] = _owner["generation"]
        for callback in _on_child:
            callback(identity())
        for mmap in _files.values():
            mmap.close()  # the child's copy of the mapping; the parent's stays open
        _files.clear()
        for value in _values:
            value._open(keep_values=False)


def observe_all(observations: Iterable[Tuple[Cells, float]]) -> None:
    """Observe each amount in its histogram (its sum and one bucket) under one acquisition
    of the lock.

    A batch's observations (a dozen values) then take the lock once instead of once each:
    the batched writer under prometheus_client's API, as its ``values.py`` sits under
    ``metrics.py``. Every value is in its file before this returns. Histogram values never
    carry a timestamp.
    """
    with _lock:
        _check_fork()
        for (total, bounds, buckets), amount in observations:
            total._value += amount
            position = total._position
            total._file._m[position : position + 16] = _pack_value(total._value, 0.0)
            bucket = buckets[bisect_left(bounds, amount)]
            bucket._value += 1.0
            position = bucket._position
            bucket._file._m[position : position + 16] = _pack_value(bucket._value, 0.0)


class MultiProcessValue:
    """Drop-in for prometheus_client's ``MmapedValue`` (``values.ValueClass``)."""

    _multiprocess = True

    def __init__(
        self,
        typ: str,
        metric_name: str,
        name: str,
        labelnames: Any,
        labelvalues: Any,
        help_text: str,
        multiprocess_mode: str = "",
        **_kwargs: Any,
    ) -> None:
        self._prefix = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
        self._key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
        self._value = 0.0
        self._timestamp = 0.0
        with _lock:
            _check_fork()
            self._open(keep_values=False)
            _values.append(self)

    def _open(self, keep_values: bool) -> None:
        """Lock held. Find or open this value's file; read its value, or write ours to it."""
        mmap = _files.get(self._prefix)
        if mmap is None:
            path = os.path.join(str(_owner["directory"]), f"{self._prefix}_{identity()}.db")
            mmap = _files[self._prefix] = MmapedDict(path)
        self._file = mmap
        if keep_values:
            mmap.write_value(self._key, self._value, self._timestamp)
        else:
            self._value, self._timestamp = mmap.read_value(self._key)
        self._position: int = mmap._positions[self._key]
        """Where the value is in the file: :func:`observe_all` writes there directly."""

    def inc(self, amount: float) -> None:
        with _lock:
            _check_fork()
            self._value += amount
            self._timestamp = 0.0
            self._file.write_value(self._key, self._value, self._timestamp)

    def set(self, value: float, timestamp: Any = None) -> None:
        with _lock:
            _check_fork()
            self._value = value
            self._timestamp = timestamp or 0.0
            self._file.write_value(self._key, self._value, self._timestamp)

    def set_exemplar(self, _exemplar: Any) -> None:
        """Exemplars are not kept in multi-process mode (as in prometheus_client)."""

    def get(self) -> float:
        with _lock:
            _check_fork()
            return self._value

    def get_exemplar(self) -> None:
        return None
