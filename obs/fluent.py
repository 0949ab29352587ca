"""Shipping log records to a Fluentd forward endpoint without ever blocking a request.

fluent-logger's async sender blocks ``emit`` when its queue is full unless the queue is
circular, and silently discards unsendable bytes. Here the queue is circular and bounded,
and every record that will never reach Fluentd is reported to ``on_drop`` with a reason,
so the caller can count it.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

import msgpack
import orjson
from fluent import asyncsender

QUEUE_FULL = "queue_full"
SEND_FAILED = "send_failed"
SHUTDOWN = "shutdown"

CLOSE_TIMEOUT_S = 2.0
"""How long shutdown waits for the sender thread: ``close()`` can hang on a stalled Fluentd."""

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
        if not self._sender.emit_with_time(None, time.time(), record):
            self._on_drop(SHUTDOWN, 1)

    def _queue_overflowed(self, _discarded: bytes) -> None:
        self._on_drop(QUEUE_FULL, 1)

    def _buffer_overflowed(self, pending: bytes) -> None:
        self._on_drop(SEND_FAILED, count_packets(pending))

    def close(self) -> None:
        """Flush what Fluentd will take within :data:`CLOSE_TIMEOUT_S`; count the rest. Once."""
        if self._closed:
            return
        self._closed = True
        closer = threading.Thread(target=self._sender.close, name="tsobs-fluent-close", daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT_S)
        queued = list(self._sender._queue.queue)  # may still hold the close marker
        unsent = sum(1 for item in queued if isinstance(item, bytes))
        pending = self._sender.pendings
        if pending:
            unsent += count_packets(pending)
        if unsent:
            self._on_drop(SHUTDOWN, unsent)
