"""The JSON-lines file (``TSOBS_LOG_FILE``): shared by every worker, bounded on disk.

Each worker appends whole lines with one ``write`` to its own descriptor. Rotation is
cooperative: at most once a second, on the next write, a worker looks at the path; if the
file there is past the size limit, the worker renames it (``tsobs.jsonl`` becomes
``tsobs.jsonl.20261127T120001123456``, its UTC time; the oldest beyond the count kept are
deleted) under a lock file, so that one worker rotates, and reopens. A file is renamed once
and never again, so a shipper that follows files by inode sees one rotation per file. If
the path names another file than the one it writes to
(another worker rotated it, or logrotate with ``create`` did), it reopens. A worker thus
writes at most a second's lines into a renamed file, which a tailing shipper reads to its
end (Fluentd: ``rotate_wait``).
"""

from __future__ import annotations

import calendar
import fcntl
import os
import time
from pathlib import Path
from typing import List, Optional

CHECK_INTERVAL_S = 1.0
"""How often the path is looked at: a ``stat`` a second, not one per line."""


def rotated_files(path: Path) -> List[Path]:
    """The rotated copies of ``path``, oldest first."""
    return sorted(path.parent.glob(path.name + ".[0-9]*"), key=lambda p: (len(p.name), p.name))


def _micros(stamp: str) -> int:
    """Microseconds since the epoch of a rotated file's ``YYYYmmddTHHMMSSffffff`` suffix."""
    seconds = calendar.timegm(time.strptime(stamp[:15], "%Y%m%dT%H%M%S"))
    return seconds * 1_000_000 + int(stamp[15:])


def write_all(fd: int, data: bytes) -> None:
    """Write every byte: ``os.write`` may write less than asked."""
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


class LogFile:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        """``max_bytes`` 0: never rotate here (logrotate may, with ``create``)."""
        self.path = path
        self.max_bytes = max_bytes
        self.backups = max(backups, 1)
        self._fd: Optional[int] = None
        self._inode = -1
        self._next_check = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._reopen()

    def write(self, data: bytes) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + CHECK_INTERVAL_S
            self._check()
        assert self._fd is not None
        write_all(self._fd, data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _reopen(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        previous, self._fd, self._inode = self._fd, fd, os.fstat(fd).st_ino
        if previous is not None:
            os.close(previous)

    def _current(self) -> Optional[os.stat_result]:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            return None

    def _check(self) -> None:
        found = self._current()
        if found is None or found.st_ino != self._inode:
            self._reopen()
        elif self.max_bytes and found.st_size >= self.max_bytes:
            self._rotate()

    def _rotated_name(self) -> str:
        """``<path>.<UTC time to the microsecond>``, later than every rotated file there."""
        micros = int(time.time() * 1e6)
        existing = rotated_files(self.path)
        if existing:
            last = existing[-1].name[len(self.path.name) + 1 :]
            if len(last) == 21 and last.replace("T", "").isdigit():
                micros = max(micros, _micros(last) + 1)
        seconds, fraction = divmod(micros, 1_000_000)
        return f"{self.path}.{time.strftime('%Y%m%dT%H%M%S', time.gmtime(seconds))}{fraction:06d}"

    def _rotate(self) -> None:
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = self._current()
            # Another worker may have rotated while we waited for the lock.
            if (
                found is not None
                and found.st_ino == self._inode
                and found.st_size >= self.max_bytes
            ):
                os.replace(self.path, self._rotated_name())
                for old in rotated_files(self.path)[: -self.backups]:
                    old.unlink()
            self._reopen()
