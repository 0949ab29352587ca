"""Per-worker ledgers: exact request, start and load counts that survive any way a worker ends.

A worker killed during a batch (kill -9, the OOM killer, a segfault, TorchServe's response
timeout) never reaches the end of ``handle``: TorchServe answers its requests "Worker died.",
but nothing the worker would have written at the end of the batch exists. So each worker
keeps one small file, ``ledger_<identity>`` in the metrics directory, that holds

* its cumulative counts: requests by outcome, requests lost, worker starts, model loads;
* the batches it is handling right now (request and client IDs, start time), written when a
  batch begins;
* whether it is loading the model.

Every change is one write of the whole state into the worker's shared memory map of the
file (no fsync and no system call: a killed process's page-cache writes are not lost),
alternating between two slots that each carry a checksum and a
sequence number, so a reader always finds the last complete state, even one torn by a kill
in the middle of the write. Finishing a batch adds its outcomes and removes it from the
in-flight set in that one write, so a batch is either in flight or counted, never both.

The worker holds a POSIX lock (``lockf``) on its ledger for its whole life. The kernel drops
it when the process dies, however it dies, and forked children do not inherit it. Whoever
next takes the lock (the restarted worker on the same port, or the exporter) *settles* what
the dead worker left: each in-flight request is counted as a server error and as lost, with
one ``request_completed`` log line; an unfinished model load is counted as failed. The lock
makes settlement exactly-once; the log lines are written before the settling write, so a
settler killed between the two (a window of one system call) writes them again next time
rather than never.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import threading
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import orjson

from obs.context import ID_FIELDS
from obs.logs import LOGGER_NAME, iso_timestamp
from obs.signals import Field, LostReason, Outcome

PREFIX = "ledger_"
SLOT_BYTES = 1 << 16
"""Room for one state; a state that would not fit drops in-flight client IDs, then IDs."""
_HEADER = struct.Struct("<4sII")
_MAGIC = b"TSL1"
_MAX_PAYLOAD = SLOT_BYTES - _HEADER.size

LOST_STATUS = 500
"""Status recorded for a lost request. TorchServe answers "Worker died." with 500 or 507
depending on timing that the worker cannot see; 500 is the usual one."""

REQUESTS = "requests"
"""Counts by outcome: ``[success, client_error, server_error]``."""
LOST = "lost"
STARTS = "starts"
LOADS = "loads"
"""``[succeeded, failed]``."""

Key = str
"""``model_name`` and ``model_version`` joined by a tab: the label set the counts belong to."""

LostLines = Callable[[List[Dict[str, Any]]], None]
"""Receives the settled in-flight batches (as recorded) to write their log lines."""


def model_key(model: str, version: str) -> Key:
    return f"{model}\t{version}"


def split_key(key: Key) -> Tuple[str, str]:
    model, _, version = key.partition("\t")
    return model, version


def ledger_path(directory: Path, identity: str) -> Path:
    return directory / f"{PREFIX}{identity}"


def empty_counts() -> Dict[str, Any]:
    return {REQUESTS: [0, 0, 0], LOST: 0, STARTS: 0, LOADS: [0, 0]}


def _encode(state: Dict[str, Any]) -> bytes:
    payload = orjson.dumps(state)
    if len(payload) > _MAX_PAYLOAD:
        payload = _shrunk(state)
    return _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _shrunk(state: Dict[str, Any]) -> bytes:
    """``state`` made to fit a slot: the counts stay exact, in-flight IDs go."""
    for batch in state["inflight"].values():
        batch["r"] = [r[:1] for r in batch["r"]]
    payload = orjson.dumps(state)
    if len(payload) > _MAX_PAYLOAD:
        for batch in state["inflight"].values():
            batch["r"] = []
        payload = orjson.dumps(state)
    return payload


def read_state(fd: int) -> Optional[Dict[str, Any]]:
    """The newest complete state in a ledger, or None for a new or unreadable one."""
    best: Optional[Dict[str, Any]] = None
    for slot in (0, 1):
        data = os.pread(fd, SLOT_BYTES, slot * SLOT_BYTES)
        if len(data) < _HEADER.size:
            continue
        magic, length, crc = _HEADER.unpack_from(data)
        payload = data[_HEADER.size : _HEADER.size + length]
        if magic != _MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            continue
        try:
            state = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if best is None or state["seq"] > best["seq"]:
            best = state
    return best


def _new_state() -> Dict[str, Any]:
    return {"gen": uuid.uuid4().hex, "seq": 0, "counts": {}, "inflight": {}, "loading": None}


def _next_slot(state: Dict[str, Any]) -> Tuple[int, bytes]:
    """Where the next version of ``state`` goes, and its bytes."""
    state["seq"] += 1
    return (state["seq"] % 2) * SLOT_BYTES, _encode(state)


def _write(fd: int, state: Dict[str, Any]) -> None:
    offset, data = _next_slot(state)
    os.pwrite(fd, data, offset)


def _map(fd: int) -> mmap.mmap:
    """Both slots of a ledger, mapped shared: a write is a copy into the page cache."""
    if os.fstat(fd).st_size < 2 * SLOT_BYTES:
        os.ftruncate(fd, 2 * SLOT_BYTES)
    return mmap.mmap(fd, 2 * SLOT_BYTES)


def settle(state: Dict[str, Any], lost_lines: LostLines) -> int:
    """Count what a dead owner left in flight into ``state`` (not yet written); returns the
    number of requests settled. Log lines first: see the module docstring."""
    batches = list(state["inflight"].values())
    if batches:
        lost_lines(batches)
    settled = 0
    for batch in batches:
        counts = state["counts"].setdefault(batch["m"], empty_counts())
        counts[REQUESTS][2] += batch["s"]
        counts[LOST] += batch["s"]
        settled += batch["s"]
    state["inflight"] = {}
    loading = state.get("loading")
    if loading:
        state["counts"].setdefault(loading, empty_counts())[LOADS][1] += 1
        state["loading"] = None
    return settled


def _lock(path: Path, blocking: bool) -> Optional[int]:
    """An fd of ``path`` with this process's POSIX lock on it; None if another process holds
    it (``blocking=False``). Re-opens when the file was replaced while we waited."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # removed (folded) while we waited for it: lock the new one


_forks = [0]
"""Forks this process is from its ancestors: a ledger opened before a fork is not the child's
(compared instead of ``os.getpid()``, a system call on every write)."""
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))

_owned: Dict[str, Ledger] = {}
"""Ledgers this process owns, by path. POSIX locks belong to a process, so this process must
never open its own ledger a second time: closing that fd would drop the lock."""
_owned_lock = threading.Lock()


class Ledger:
    """The ledger of the running worker. One per process and identity (see :func:`open_ledger`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = _lock(path, blocking=True)
        assert self._fd is not None
        self._forks = _forks[0]
        self._guard = threading.Lock()
        self.state = read_state(self._fd) or _new_state()
        self._slots = _map(self._fd)
        self.settled: Optional[int] = None
        """Requests settled for the predecessor; None until :meth:`settle_predecessor`."""

    def settle_predecessor(self, lost_lines: LostLines) -> int:
        """Settle what the previous owner of this identity left in flight. Once per process:
        later calls (a second handler in the same process) must not touch live batches."""
        with self._guard:
            if self.settled is not None:
                return 0
            settled = settle(self.state, lost_lines)
            self.settled = settled
            self.state["pid"] = os.getpid()
            self._commit()
            return settled

    def _counts(self, key: Key) -> Dict[str, Any]:
        counts = self.state["counts"].get(key)
        if counts is None:
            counts = self.state["counts"][key] = empty_counts()
        return counts

    def _commit(self) -> None:
        if self._forks == _forks[0]:  # a forked child never writes its parent's ledger
            offset, data = _next_slot(self.state)
            self._slots[offset : offset + len(data)] = data

    def start(self, key: Key) -> None:
        """A worker starts loading the model: counted now, so a load that never ends shows."""
        with self._guard:
            self._counts(key)[STARTS] += 1
            self.state["loading"] = key
            self.state["serving"] = None
            self._commit()

    def loaded(self, key: Key, ok: bool) -> None:
        with self._guard:
            self._counts(key)[LOADS][0 if ok else 1] += 1
            self.state["loading"] = None
            self.state["serving"] = key if ok else None
            self._commit()

    def begin(self, batch_id: str, key: Key, record: Dict[str, Any]) -> None:
        """Record a batch as in flight. ``record`` is kept as given and handed back to the
        settler's log writer; it must carry ``s`` (its size)."""
        with self._guard:
            record["m"] = key
            self.state["inflight"][batch_id] = record
            self._counts(key)
            self._commit()

    def finish(self, batch_id: str, key: Key, outcomes: Sequence[int]) -> None:
        """Count a finished batch and take it out of flight, in one write.

        ``outcomes`` is the number of requests per outcome: success, client, server error.
        """
        with self._guard:
            requests = self._counts(key)[REQUESTS]
            for index, count in enumerate(outcomes):
                requests[index] += count
            self.state["inflight"].pop(batch_id, None)
            self._commit()

    def keep_in_place(self) -> bool:
        """Write the ledger anew if its file was removed (the directory went); True if so."""
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                return False
        except FileNotFoundError:
            pass
        with self._guard:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = _lock(self.path, blocking=True)
            assert fd is not None
            previous, self._fd = self._fd, fd
            self._slots.close()
            self._slots = _map(fd)
            os.close(previous)  # releases only the removed file's lock
            self._commit()
        return True


def open_ledger(directory: Path, identity: str, lost_lines: Optional[LostLines] = None) -> Ledger:
    """This process's ledger for ``identity``, locked once per process. With ``lost_lines``
    its predecessor is settled now; else call :meth:`Ledger.settle_predecessor`."""
    path = ledger_path(directory, identity)
    with _owned_lock:
        ledger = _owned.get(str(path))
        if ledger is None or ledger._forks != _forks[0]:
            ledger = _owned[str(path)] = Ledger(path)
            if lost_lines is not None:
                ledger.settle_predecessor(lost_lines)
        return ledger


def owned_paths() -> List[str]:
    return [path for path, ledger in _owned.items() if ledger._forks == _forks[0]]


class Reading:
    """One ledger as the exporter saw it: its counts, and whether a live worker holds it."""

    __slots__ = ("alive", "counts", "identity", "serving", "settled")

    def __init__(self, identity: str, state: Dict[str, Any], alive: bool, settled: int) -> None:
        self.identity = identity
        self.counts: Dict[Key, Any] = state["counts"]
        self.alive = alive
        self.serving: Optional[Key] = state.get("serving") if alive else None
        """The model version a live worker has loaded and serves; None while it loads."""
        self.settled = settled


Retire = Callable[[str, Path, Dict[str, Any]], bool]
"""Called with a dead worker's identity, ledger path and state, its lock held: True when it
folded the worker away (see :mod:`obs.archive`)."""


def read_all(
    directory: Path, lost_lines: LostLines, retire: Optional[Retire] = None
) -> Iterator[Reading]:
    """Every ledger in ``directory``; those no live process holds are settled on the way,
    and handed to ``retire``.

    Call from one thread at a time: POSIX locks cannot tell two threads of one process apart.
    """
    mine = set(owned_paths())
    for path in sorted(directory.glob(f"{PREFIX}*")):
        identity = path.name[len(PREFIX) :]
        if str(path) in mine:
            ledger = _owned[str(path)]
            with ledger._guard:
                yield Reading(identity, _copy(ledger.state), True, 0)
            continue
        try:
            fd = _lock(path, blocking=False)
        except OSError:  # read-only directory: count, but settle nothing
            fd = None
            state = _read_unlocked(path)
            if state is not None:
                yield Reading(identity, state, True, 0)
            continue
        if fd is None:  # a live worker holds it
            state = _read_unlocked(path)
            if state is not None:
                yield Reading(identity, state, True, 0)
            continue
        try:
            state = read_state(fd)
            if state is None:
                continue
            settled = 0
            if state["inflight"] or state.get("loading"):
                settled = settle(state, lost_lines)
                _write(fd, state)
            elif retire is not None and retire(identity, path, state):
                continue
            yield Reading(identity, state, False, settled)
        finally:
            os.close(fd)


def read_file(path: Path) -> Optional[Dict[str, Any]]:
    """A ledger's state, for reading only (never from the process that owns it)."""
    return _read_unlocked(path)


def _read_unlocked(path: Path) -> Optional[Dict[str, Any]]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return read_state(fd)
    finally:
        os.close(fd)


def _copy(state: Dict[str, Any]) -> Dict[str, Any]:
    return orjson.loads(orjson.dumps(state))


def lost_request_records(batches: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One ``request_completed`` line per request of in-flight batches a dead worker left."""
    timestamp = iso_timestamp()
    records = []
    for batch in batches:
        model, version = split_key(batch["m"])
        for index, ids in enumerate(batch["r"] or [[None]] * batch["s"]):
            record: Dict[str, Any] = {
                Field.TIMESTAMP: timestamp,
                Field.LEVEL: "error",
                Field.LOGGER: LOGGER_NAME,
                Field.EVENT: "request_completed",
                Field.MODEL: model,
                Field.VERSION: version,
                Field.WORKER: batch.get("w"),
                Field.BATCH_ID: batch.get("b"),
                Field.BATCH_SIZE: batch["s"],
                Field.BATCH_INDEX: index,
            }
            for name, value in zip(ID_FIELDS, ids):
                if value is not None:
                    record[name] = value
            record[Field.OUTCOME] = Outcome.SERVER_ERROR
            record[Field.STATUS] = LOST_STATUS
            record[Field.REASON] = LostReason.WORKER_DIED
            records.append(record)
    return records
