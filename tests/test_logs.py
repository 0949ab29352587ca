"""JSON lines: one object per line, shared field names, and Fluentd shipping that never blocks."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from obs import logs
from obs.context import bind_batch, reset_batch
from obs.fluent import FluentShipper
from obs.services import free_port
from obs.settings import Settings
from tests.support.forward_receiver import ForwardReceiver
from tests.support.traffic import wait_for


def lines(stream: io.StringIO) -> list:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_exception_and_newlines_stay_inside_one_line(monkeypatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(logs, "_emitter", logs.LogEmitter(Settings.from_env({}), stream=stream))
    log = logs.get_logger("t")
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        log.exception("failed", note="line1\nline2")
    (record,) = lines(stream)
    assert stream.getvalue().count("\n") == 1
    assert record["event"] == "failed" and record["level"] == "error" and record["logger"] == "t"
    assert "Traceback" in record["exception"] and "ValueError: bad\nvalue" in record["exception"]
    assert record["timestamp"].endswith("Z")


def test_stdlib_records_have_the_same_fields_and_batch_context(monkeypatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(logs, "_emitter", logs.LogEmitter(Settings.from_env({}), stream=stream))
    (logger,) = logs.route_to_json(["tests.user_code"])
    token = bind_batch({"model_name": "m", "batch_id": "w1-3"})
    try:
        logger.warning("value %s", 42, extra={"rows": 3})
        try:
            {}["missing"]
        except KeyError:
            logger.exception("oops")
    finally:
        reset_batch(token)
    first, second = lines(stream)
    assert {
        k: first[k] for k in ("event", "level", "logger", "model_name", "batch_id", "rows")
    } == {
        "event": "value 42",
        "level": "warning",
        "logger": "tests.user_code",
        "model_name": "m",
        "batch_id": "w1-3",
        "rows": 3,
    }
    assert first["timestamp"].endswith("Z")
    assert "KeyError" in second["exception"] and second["level"] == "error"
    assert logger.propagate is False
    assert not any(isinstance(h, logs.JsonLinesHandler) for h in logging.getLogger().handlers)


def test_debug_is_filtered_by_level(monkeypatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(logs, "_emitter", logs.LogEmitter(Settings.from_env({}), stream=stream))
    monkeypatch.setenv("TSOBS_LOG_LEVEL", "info")
    log = logs.get_logger("t")
    log.debug("hidden")
    log.info("shown")
    assert [r["event"] for r in lines(stream)] == ["shown"]


def test_shipper_does_not_block_and_counts_every_drop_while_fluentd_is_down() -> None:
    drops: dict = {}

    def count(reason: str, n: int) -> None:
        drops[reason] = drops.get(reason, 0) + n

    shipper = FluentShipper(
        "127.0.0.1", free_port(), "t", queue_size=50, buffer_bytes=2048, on_drop=count
    )
    started = time.perf_counter()
    for i in range(1000):
        shipper.ship({"request_id": f"r{i}", "padding": "x" * 100})
    elapsed = time.perf_counter() - started
    shipper.close()
    assert elapsed < 2.0  # a blocking sender would wait on every record
    assert sum(drops.values()) == 1000  # nothing reached Fluentd and every record is counted
    assert set(drops) <= {"queue_full", "send_failed", "shutdown"}


def test_shipper_delivers_records_unchanged() -> None:
    port = free_port()
    receiver = ForwardReceiver(port)
    drops: dict = {}
    shipper = FluentShipper(
        "127.0.0.1", port, "torchserve", 100, 1 << 20, lambda r, n: drops.update({r: n})
    )
    records = [
        {"request_id": f"r{i}", "duration_ms": 1.5, "nested": {"a": [1, 2]}} for i in range(30)
    ]
    for record in records:
        shipper.ship(record)
    shipper.close()
    wait_for(lambda: len(receiver.snapshot()) >= 30, 10, "the records at the test receiver")
    receiver.close()
    assert receiver.snapshot() == records and not drops
    assert set(receiver.tags) == {"torchserve"}


def test_bad_settings_are_refused_with_the_variable_named() -> None:
    import pytest

    from obs.settings import SettingsError

    with pytest.raises(SettingsError, match="TSOBS_FLUENT_PORT"):
        Settings.from_env({"TSOBS_FLUENT_PORT": "abc"})
    with pytest.raises(SettingsError, match="TSOBS_LOG_FIELDS"):
        Settings.from_env({"TSOBS_LOG_FIELDS": "splunk"})


SHUTDOWN_WORKER = """
import os, signal, sys, time
from pathlib import Path
from obs import logs
from obs.metrics import ProcessInstruments, use_multiprocess_dir
from obs.settings import Settings
use_multiprocess_dir(Path(sys.argv[1]), "w9000")
process = ProcessInstruments()
emitter = logs.configure(Settings.from_env(), on_drop=process.count_dropped, stream=open(os.devnull, "w"))
emitter.emit([{"event": "request_completed", "n": i} for i in range(40)])
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(10)
"""


def test_sigterm_flushes_the_queue_and_counts_what_fluentd_never_got(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from obs.exporter import MetricsSource
    from tests.support.traffic import parse_samples, total

    env = {**os.environ, "TSOBS_FLUENT_HOST": "127.0.0.1", "TSOBS_FLUENT_PORT": str(free_port())}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_WORKER, str(tmp_path)], env=env, timeout=30
    )
    assert result.returncode == -signal.SIGTERM  # it still dies of SIGTERM, as without us
    assert time.monotonic() - started < 8
    samples = parse_samples(MetricsSource(tmp_path).render("")[0].decode())
    assert total(samples, "tsobs_log_records_dropped_total") == 40


def test_huge_exceptions_are_cut_to_a_bounded_line(monkeypatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(logs, "_emitter", logs.LogEmitter(Settings.from_env({}), stream=stream))
    (stdlib_logger,) = logs.route_to_json(["tests.huge"])
    for log in (logs.get_logger("t"), stdlib_logger):
        try:
            raise ValueError("x" * 100_000 + " the end")
        except ValueError:
            log.exception("failed")
    for record in lines(stream):
        assert len(record["exception"]) <= logs.MAX_TRACEBACK_LENGTH + 20
        assert record["exception"].startswith("[truncated]") and record["exception"].endswith(
            "the end"
        )


@pytest.mark.parametrize("fields", ["otel", "ecs"])
def test_shared_fields_make_the_same_lines_as_whole_records(fields: str) -> None:
    settings = Settings.from_env({"TSOBS_LOG_FIELDS": fields})
    shared = {"timestamp": "t", "model_name": "m", "handle_ms": 0.5, "batch_size": 3}
    records = [{"batch_index": 0, "request_id": "a\n"}, {"batch_index": 1, "status": 200}, {}]
    once, whole = io.StringIO(), io.StringIO()
    logs.LogEmitter(settings, stream=once).emit(records, shared=shared)
    logs.LogEmitter(settings, stream=whole).emit([{**shared, **r} for r in records])
    assert once.getvalue() == whole.getvalue()
    assert len(lines(once)) == 3


def test_milliseconds_round_as_round_does() -> None:
    for micros in range(0, 2_000_000, 997):
        seconds = micros / 1e6 + 1e-9
        assert logs.milliseconds(seconds) == round(seconds * 1000, 3)
