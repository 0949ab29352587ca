"""JSON log lines: one object per line on stdout, optionally shipped to Fluentd.

Three producers share one :class:`LogEmitter`, so every line has the same shape whoever
wrote it: the mixin's per-request completion lines (built as dicts on the hot path),
structlog loggers from :func:`get_logger`, and the user's own stdlib loggers through
:class:`StdlibJsonFormatter`. Nothing here touches the root logger: TorchServe parses
worker stdout for ``[METRICS]`` lines written through it.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, TextIO

import orjson
import structlog
from pythonjsonlogger.json import JsonFormatter

from obs.context import add_batch_context
from obs.fluent import FluentShipper
from obs.logfile import LogFile, write_all
from obs.settings import Settings
from obs.signals import ECS_EVENT_OUTCOME, ECS_FIELDS, ECS_OUTCOMES, Field

LOGGER_NAME = "torchserve_obs"
MAX_MESSAGE_LENGTH = 2048
MAX_TRACEBACK_LENGTH = 16384

Record = Dict[str, Any]


_current_second: List[Any] = [None, ""]
"""The last whole second formatted, so a timestamp costs one format per second, not per line."""


def iso_timestamp(epoch: Optional[float] = None) -> str:
    """UTC ISO-8601 with microseconds and a ``Z``, the format Elasticsearch's ``date`` reads."""
    now = time.time() if epoch is None else epoch
    second = int(now)
    cached_second, formatted = _current_second
    if second != cached_second:
        formatted = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _current_second[:] = [second, formatted]
    return f"{formatted}.{int((now - second) * 1_000_000):06d}Z"


def milliseconds(seconds: float) -> float:
    """``seconds`` in milliseconds to the microsecond, as ``round(seconds * 1000, 3)`` but a
    fifth of its cost: the integer's quotient prints as its shortest decimal."""
    return int(seconds * 1e6 + 0.5) / 1000


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marking the cut so nobody mistakes it for whole."""
    return text if len(text) <= limit else text[:limit] + "...[truncated]"


def _fallback(value: Any) -> str:
    return repr(value)


def render(record: Mapping[str, Any]) -> bytes:
    """One JSON object, no newline inside it: orjson escapes every control character."""
    return orjson.dumps(record, default=_fallback, option=orjson.OPT_NON_STR_KEYS)


class LogEmitter:
    """Renders records, writes them as whole lines, and hands them to the Fluentd shipper.

    A batch of records is written with one write and one flush, so lines from the same
    batch are never interleaved with TorchServe's own output. Lines go to ``log_file`` if
    given, else to ``stream`` (stdout by default).
    """

    def __init__(
        self,
        settings: Settings,
        stream: Optional[TextIO] = None,
        shipper: Optional[FluentShipper] = None,
        log_file: Optional[LogFile] = None,
    ) -> None:
        self._ecs = settings.log_fields == "ecs"
        self._stream = stream
        self._log_file = log_file
        self._shipper = shipper
        self._lock = threading.Lock()

    def emit(
        self, records: Sequence[Mapping[str, Any]], shared: Optional[Mapping[str, Any]] = None
    ) -> None:
        """Write one line per record; ``shared`` fields (which records must not repeat) lead
        every line and are rendered once, not once per record."""
        if shared and (self._ecs or self._shipper is not None):  # ECS nests fields: merge first
            records, shared = [{**shared, **r} for r in records], None
        if self._ecs:
            records = [to_ecs(r) for r in records]
        if shared:
            head = render(shared)[:-1]  # the shared fields without the closing brace
            lines = [head + b"," + render(r)[1:] if r else head + b"}" for r in records]
            data = b"\n".join(lines) + b"\n"
        else:
            data = b"\n".join([render(r) for r in records]) + b"\n"
        with self._lock:
            if self._log_file is not None:
                self._log_file.write(data)
            else:
                write_lines(self._stream or sys.stdout, data)
        if self._shipper is not None:
            for record in records:
                self._shipper.ship(record)

    def stop_shipping(self) -> None:
        """From now on every record is counted as dropped instead of shipped (signal-safe)."""
        if self._shipper is not None:
            self._shipper.stop()

    def close(self) -> None:
        if self._shipper is not None:
            self._shipper.close()


def to_ecs(record: Mapping[str, Any]) -> Record:
    """ECS names for a record; ``event.outcome`` gets one of the values ECS allows."""
    renamed = {ECS_FIELDS.get(key, key): value for key, value in record.items()}
    outcome = record.get(Field.OUTCOME)
    if outcome is not None:
        renamed[ECS_EVENT_OUTCOME] = ECS_OUTCOMES.get(outcome, "unknown")
    return renamed


def write_lines(stream: TextIO, data: bytes) -> None:
    """Write whole lines with one system call, after whatever ``stream`` still buffers.

    Straight to the file descriptor when there is one: no text layer, and the lines are out
    of the process before the request is answered, so a killed worker loses none of them.
    """
    stream.flush()
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: an in-memory stream
        stream.write(data.decode())
        stream.flush()
        return
    write_all(fd, data)


_emitter: Optional[LogEmitter] = None
_emitter_lock = threading.Lock()


def emitter() -> LogEmitter:
    """The process-wide emitter, created from the environment on first use."""
    global _emitter
    if _emitter is None:
        with _emitter_lock:
            if _emitter is None:
                _emitter = LogEmitter(Settings.from_env())
    return _emitter


def configure(
    settings: Settings,
    on_drop: Callable[[str, int], None],
    stream: Optional[TextIO] = None,
) -> LogEmitter:
    """Install the process-wide emitter; Fluentd shipping starts here if configured.

    Called once per worker after it starts, never at import: fluent-logger's sender thread
    must be created in the process that uses it.
    """
    global _emitter
    log_file = None
    if stream is None and settings.log_file is not None:
        # Append mode: each batch is one write(), so workers sharing the file never
        # interleave inside a line.
        log_file = LogFile(
            settings.log_file, settings.log_file_max_bytes, settings.log_file_backups
        )
    shipper = None
    if settings.fluent_host:
        shipper = FluentShipper(
            host=settings.fluent_host,
            port=settings.fluent_port,
            tag=settings.fluent_tag,
            queue_size=settings.fluent_queue_size,
            buffer_bytes=settings.fluent_buffer_bytes,
            on_drop=on_drop,
        )
    with _emitter_lock:
        previous, _emitter = (
            _emitter,
            LogEmitter(settings, stream=stream, shipper=shipper, log_file=log_file),
        )
    if previous is not None:
        previous.close()
    if shipper is not None:
        _flush_at_exit()
    return _emitter


def _close_emitter() -> None:
    if _emitter is not None:
        _emitter.close()


_exit_hooks: List[bool] = []

EXIT_DEADLINE_S = 2.5
"""A worker sent SIGTERM is gone this long after it, flushed or not (TorchServe and the
kubelet expect it to go; the flush has :data:`obs.fluent.CLOSE_TIMEOUT_S` of it)."""
YIELD_EVERY_S = 0.05
YIELD_FOR_S = 0.02
"""After SIGTERM the main thread sleeps this long every :data:`YIELD_EVERY_S`: a thread
that waits for the GIL behind a busy main thread and an I/O-bound one can wait seconds."""


def _flush_at_exit() -> None:
    """Flush the Fluentd queue when the worker exits or is sent SIGTERM, then exit as before.

    Once per process. The SIGTERM handler takes no lock, writes no metric and does no I/O
    (the interrupted code may hold prometheus_client's non-reentrant lock): it restores the
    default action, stops the shipper taking records and wakes a thread started here, which
    flushes, counts what is left, and sends SIGTERM again, so the process still dies of
    SIGTERM. A worker busy in inference keeps that thread from the GIL for seconds, so
    (when SIGALRM is free) the main thread then gives way on a timer: every
    :data:`YIELD_EVERY_S` it sleeps a moment, holding nothing the flush needs except where
    the timer interrupted a metric write (the next tick lands elsewhere), and at
    :data:`EXIT_DEADLINE_S` it sends SIGTERM whatever the flush has done. A SIGKILLed
    worker loses what was still queued: nothing can run then.
    """
    if _exit_hooks:
        return
    _exit_hooks.append(True)
    atexit.register(_close_emitter)
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        return
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    owner = os.getpid()
    terminated: List[bool] = []
    deadline: List[float] = []

    def terminate() -> None:
        """Once: the flushing thread and the deadline may both get here."""
        if not terminated:
            terminated.append(True)
            os.kill(owner, signal.SIGTERM)

    def terminate_after_flush() -> None:
        os.read(wake_read, 1)
        try:
            _close_emitter()
        finally:
            terminate()

    def give_way(signum: int, frame: Any) -> None:
        if terminated or time.monotonic() >= deadline[0]:
            signal.setitimer(signal.ITIMER_REAL, 0)
            terminate()
        else:
            time.sleep(YIELD_FOR_S)

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signum, previous if callable(previous) else signal.SIG_DFL)
        if os.getpid() != owner:  # a forked child: the flushing thread is not here
            os.kill(os.getpid(), signum)
            return
        if _emitter is not None:
            _emitter.stop_shipping()
        if signal.getsignal(signal.SIGALRM) == signal.SIG_DFL and not any(
            signal.getitimer(signal.ITIMER_REAL)
        ):
            deadline.append(time.monotonic() + EXIT_DEADLINE_S)
            signal.signal(signal.SIGALRM, give_way)
            signal.setitimer(signal.ITIMER_REAL, YIELD_EVERY_S, YIELD_EVERY_S)
        try:
            os.write(wake_write, b"x")
        except OSError:  # already woken
            pass

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: atexit alone
        os.close(wake_read)
        os.close(wake_write)
        return
    threading.Thread(target=terminate_after_flush, name="tsobs-sigterm", daemon=True).start()


def limit_exception(_logger: Any, _method: str, event: Record) -> Record:
    """Keep a traceback's last :data:`MAX_TRACEBACK_LENGTH` characters: the innermost frames
    and the message, which a huge exception text must not push into an unbounded line."""
    text = event.get(Field.EXCEPTION)
    if isinstance(text, str) and len(text) > MAX_TRACEBACK_LENGTH:
        event[Field.EXCEPTION] = "[truncated]..." + text[-MAX_TRACEBACK_LENGTH:]
    return event


def add_timestamp(_logger: Any, _method: str, event: Record) -> Record:
    event[Field.TIMESTAMP] = iso_timestamp()
    return event


class _EmitterLogger:
    """structlog's output end: hands the finished event dict to the current emitter."""

    def msg(self, **event: Any) -> None:
        emitter().emit((event,))

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def get_logger(name: str = LOGGER_NAME, **initial_fields: Any) -> Any:
    """A structlog logger whose lines carry the current batch's model, worker and request IDs.

    Use it in overridden ``preprocess``/``inference``/``postprocess`` methods: the batch
    context arrives through a context variable, no ``context`` argument needed.
    """
    level = _LEVELS[Settings.from_env().log_level]
    return structlog.wrap_logger(
        _EmitterLogger(),
        processors=[
            structlog.processors.add_log_level,
            add_batch_context,
            add_timestamp,
            structlog.processors.format_exc_info,
            limit_exception,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
    ).bind(**{Field.LOGGER: name, **initial_fields})


class StdlibJsonFormatter(JsonFormatter):
    """python-json-logger formatter giving stdlib records our field names and batch context."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={
                "levelname": Field.LEVEL,
                "name": Field.LOGGER,
                "message": Field.EVENT,
                "exc_info": Field.EXCEPTION,
            },
        )

    def add_fields(
        self, log_record: Record, record: logging.LogRecord, message_dict: Record
    ) -> None:
        log_record[Field.TIMESTAMP] = iso_timestamp(record.created)
        super().add_fields(log_record, record, message_dict)

    def process_log_record(self, log_record: Record) -> Record:
        log_record[Field.LEVEL] = str(log_record.get(Field.LEVEL, "")).lower()
        return limit_exception(None, "", add_batch_context(None, "", log_record))

    def jsonify_log_record(self, log_record: Record) -> str:
        return render(log_record).decode()


class JsonLinesHandler(logging.Handler):
    """Sends stdlib records through the shared emitter (stdout and Fluentd)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(StdlibJsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            emitter().emit((orjson.loads(self.format(record)),))
        except Exception:
            self.handleError(record)


def route_to_json(logger_names: Iterable[str]) -> List[logging.Logger]:
    """Make these stdlib loggers write JSON lines and stop propagating to the root logger.

    Only named loggers are touched; the root logger keeps TorchServe's plain format, which
    its frontend needs to parse ``[METRICS]`` lines.
    """
    routed = []
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(h, JsonLinesHandler) for h in logger.handlers):
            logger.addHandler(JsonLinesHandler())
        logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        routed.append(logger)
    return routed
