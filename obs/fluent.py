"""Shipping log records to a Fluentd forward endpoint without ever blocking a request.

fluent-logger's async sender blocks ``emit`` when its queue is full unless the queue is
circular, and silently discards unsendable bytes. Here the queue is circular and bounded,
and every record that will never reach Fluentd is reported to ``on_drop`` with a reason,
so the caller can count it.
"""

from __future__ import annotations

import queue
import time
from typing import Any, Callable, Mapping

import msgpack
import orjson
from fluent import asyncsender

QUEUE_FULL = "queue_full"
SEND_FAILED = "send_failed"
SHUTDOWN = "shutdown"

CLOSE_TIMEOUT_S = 1.5
"""How long shutdown waits for the sender thread: sending can hang on a stalled Fluentd, and
a worker sent SIGTERM must be gone within seconds."""

DropCallback = Callable[[str, int], None]


def plain(value: Any) -> Any:
    """A value msgpack cannot pack (a ``datetime``, a ``UUID``, any object), as the JSON line
    renders it. Without this, fluent-logger replaces the whole record by a "Can't output
    to log" record, and nobody counts the loss."""
    return orjson.loads(orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS))


def count_packets(data: bytes) -> int:
    """Number of forward-protocol events in a run of msgpack-encoded packets."""
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(data)
    return sum(1 for _ in unpacker)


class FluentShipper:
    """A bounded, non-blocking sender; ``on_drop(reason, count)`` hears of every loss."""

    def __init__(
        self,
        host: str,
        port: int,
        tag: str,
        queue_size: int,
        buffer_bytes: int,
        on_drop: DropCallback,
        timeout_s: float = 3.0,
    ) -> None:
        self._on_drop = on_drop
        self._stopped = False
        """No more records are taken: set by :meth:`stop`, first thing in :meth:`close`."""
        self._closed = False
        self._sender = asyncsender.FluentSender(
            tag,
            host=host,
            port=port,
            timeout=timeout_s,
            bufmax=buffer_bytes,
            queue_maxsize=queue_size,
            queue_circular=True,
            queue_overflow_handler=self._queue_overflowed,
            buffer_overflow_handler=self._buffer_overflowed,
            msgpack_kwargs={"default": plain},
        )

    def ship(self, record: Mapping[str, Any]) -> None:
        if self._stopped or not self._sender.emit_with_time(None, time.time(), record):
            self._on_drop(SHUTDOWN, 1)

    def _queue_overflowed(self, _discarded: bytes) -> None:
        self._on_drop(QUEUE_FULL, 1)

    def _buffer_overflowed(self, pending: bytes) -> None:
        self._on_drop(SEND_FAILED, count_packets(pending))

    def stop(self) -> None:
        """Refuse (and count) every record from now on. A plain store, so a signal handler
        may call it: the busy thread it interrupted stops competing with :meth:`close`."""
        self._stopped = True

    def close(self) -> None:
        """Flush what Fluentd will take within :data:`CLOSE_TIMEOUT_S`; count the rest. Once.

        fluent-logger's own ``close`` joins its sender thread without a limit while holding
        the lock every ``emit`` takes, so this does the same steps with a bounded join.
        """
        if self._closed:
            return
        self._closed = True
        self.stop()
        sender = self._sender
        with sender.lock:  # waits out an emit under way; no other starts (see ``ship``)
            sender._closed = True
            unsent = _put_discarding_oldest(sender._queue, asyncsender._TOMBSTONE)
        sender._send_thread.join(CLOSE_TIMEOUT_S)
        unsent += sum(1 for item in list(sender._queue.queue) if isinstance(item, bytes))
        if sender.pendings:
            unsent += count_packets(sender.pendings)
        if unsent:
            self._on_drop(SHUTDOWN, unsent)


def _put_discarding_oldest(items: queue.Queue[Any], item: Any) -> int:
    """Put ``item`` without blocking, discarding the oldest entry if the queue is full (the
    caller is its only producer); returns how many records were discarded for it."""
    try:
        items.put_nowait(item)
        return 0
    except queue.Full:
        try:
            items.get_nowait()
            discarded = 1
        except queue.Empty:  # the sender thread took one meanwhile
            discarded = 0
        items.put_nowait(item)
        return discarded
