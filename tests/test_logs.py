"""JSON lines: one object per line, shared field names, and Fluentd shipping that never blocks."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from pathlib import Path
from typing import Dict, Tuple

import pytest

from obs import logs
from obs.context import bind_batch, reset_batch
from obs.fluent import FluentShipper
from obs.services import free_port
from obs.settings import Settings
from tests.support.forward_receiver import ForwardReceiver
from tests.support.traffic import parse_samples, total, wait_for


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


def _shipper_to_receiver() -> Tuple[FluentShipper, ForwardReceiver, Dict[str, int]]:
    """A shipper (tag ``torchserve``) to a fresh test receiver, and the drops it reports."""
    port = free_port()
    receiver = ForwardReceiver(port)
    drops: Dict[str, int] = {}
    shipper = FluentShipper(
        "127.0.0.1", port, "torchserve", 100, 1 << 20, lambda r, n: drops.update({r: n})
    )
    return shipper, receiver, drops


def test_shipper_delivers_records_unchanged() -> None:
    shipper, receiver, drops = _shipper_to_receiver()
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


def test_a_bad_setting_disables_only_what_it_configures(capsys, tmp_path, monkeypatch) -> None:
    (tmp_path / "a-file").write_text("")  # a file where the log file's folder should be
    settings = Settings.from_env(
        {
            "TSOBS_FLUENT_HOST": "127.0.0.1",
            "TSOBS_FLUENT_PORT": "abc",
            "TSOBS_LOG_FIELDS": "splunk",
            "TSOBS_GPU_SAMPLE_INTERVAL_S": "-1",
            "TSOBS_LOG_FILE": str(tmp_path / "a-file" / "x.log"),
        }
    )
    assert settings.fluent_host is None and settings.gpu_sample_interval_s is None
    assert settings.log_fields == "otel" and settings.log_file is None
    messages = [p.message() for p in settings.problems]
    assert len(messages) == 4
    for variable, value, disabled in (
        ("TSOBS_FLUENT_PORT", "'abc'", "Fluentd shipping is off"),
        ("TSOBS_LOG_FIELDS", "'splunk'", "field names are otel"),
        ("TSOBS_GPU_SAMPLE_INTERVAL_S", "'-1'", "GPU memory is not sampled"),
        ("TSOBS_LOG_FILE", "a-file", "JSON lines go to stdout"),
    ):
        (message,) = [m for m in messages if m.startswith(f"torchserve-obs: {variable}=")]
        assert value in message and disabled in message
    from obs.settings import report

    report(settings.problems)
    report(Settings.from_env({"TSOBS_FLUENT_PORT": "abc"}).problems)
    said = capsys.readouterr().err
    assert said.count("TSOBS_FLUENT_PORT") == 1  # once per process
    monkeypatch.setenv("TSOBS_FLUENT_PORT", "abc")
    monkeypatch.setenv("TSOBS_GPU_SAMPLE_INTERVAL_S", "-1")
    monkeypatch.setenv("TSOBS_LOG_LEVEL", "loud")
    logs.get_logger("user").info("still logging")  # never raises into the handler


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


BUSY_WORKER = """
import os, sys
from pathlib import Path
from obs import logs
from obs.metrics import ModelInstruments, ProcessInstruments, use_multiprocess_dir
from obs.settings import Settings
use_multiprocess_dir(Path(sys.argv[1]), "w9000")
process = ProcessInstruments()
metrics = ModelInstruments("m", "1")
emitter = logs.configure(Settings.from_env(), on_drop=process.count_dropped, stream=open(sys.argv[2], "w"))
print("busy", flush=True)
n = 0
while True:  # a worker in inference: metric writes hold prometheus_client's lock all the time
    for _ in range(50):
        metrics.stage_seconds["inference"].observe(0.01)
        process.count_dropped("queue_full", 0)
    n += 1
    emitter.emit([{"event": "request_completed", "n": n}])
"""


def _dropped_records(directory: Path) -> float:
    """``tsobs_log_records_dropped_total`` as the exporter serves it from ``directory``."""
    from obs.exporter import MetricsSource
    from obs.signals import Metrics

    exposition = MetricsSource(directory).render("")[0].decode()
    return total(parse_samples(exposition), Metrics.LOG_RECORDS_DROPPED.name)


def _settled_count(receiver: ForwardReceiver) -> int:
    """Records received once the dead worker's connection has been read to its end: the
    count stops changing (checked for 0.5 s, at most 10 s: a loaded machine reads slowly)."""
    count, stable_since, deadline = -1, time.monotonic(), time.monotonic() + 10
    while time.monotonic() < deadline:
        now = len(receiver.snapshot())
        if now != count:
            count, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 0.5:
            break
        time.sleep(0.05)
    return count


def test_sigterm_never_hangs_a_busy_worker_and_counts_every_record_it_ships(tmp_path) -> None:
    """20 rounds: SIGTERM lands anywhere in a worker busy writing metrics and lines; each
    exits of SIGTERM within 3 s (the handler used to deadlock on prometheus_client's lock,
    and the flush thread used to starve behind the busy main thread). Every line it wrote
    reached Fluentd or is counted as dropped, with Fluentd up (even rounds) or down (odd),
    except the one record a kill can catch between its line and its shipping."""
    import os
    import random
    import signal
    import subprocess
    import sys

    rng = random.Random(6)
    for round_ in range(20):
        port = free_port()
        receiver = ForwardReceiver(port) if round_ % 2 == 0 else None
        metrics_dir, lines_file = tmp_path / str(round_), tmp_path / f"{round_}.jsonl"
        metrics_dir.mkdir()
        worker = subprocess.Popen(
            [sys.executable, "-c", BUSY_WORKER, str(metrics_dir), str(lines_file)],
            env={**os.environ, "TSOBS_FLUENT_HOST": "127.0.0.1", "TSOBS_FLUENT_PORT": str(port)},
            stdout=subprocess.PIPE,
        )
        try:
            assert worker.stdout is not None and worker.stdout.readline() == b"busy\n"
            time.sleep(rng.uniform(0.05, 0.4))
            worker.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            try:
                code = worker.wait(timeout=3)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"round {round_}: still alive 3 s after SIGTERM") from None
        finally:
            if worker.poll() is None:  # never leave a busy process behind
                worker.kill()
                worker.wait()
        assert code == -signal.SIGTERM, (round_, code)
        assert time.monotonic() - signalled < 3
        written = len(lines_file.read_bytes().splitlines())
        dropped = _dropped_records(metrics_dir)
        delivered = 0
        if receiver is not None:
            delivered = _settled_count(receiver)
            receiver.close()
        assert written > 0
        assert written - 1 <= delivered + dropped <= written, (round_, written, delivered, dropped)


SIGALRM_WORKER = """
import os, signal, sys, time
from obs import logs
from obs.metrics import ProcessInstruments, use_multiprocess_dir
from obs.settings import Settings
from pathlib import Path
use_multiprocess_dir(Path(sys.argv[1]), "w9001")
def mine(signum, frame):
    pass
def on_term(signum, frame):
    print("alarm handler kept:", signal.getsignal(signal.SIGALRM) is mine, flush=True)
    signal.setitimer(signal.ITIMER_REAL, 0)  # else SIGALRM's default ends the shutdown
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)  # the worker's own handlers, before the mixin's
signal.signal(signal.SIGALRM, mine)
signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
logs.configure(Settings.from_env(), on_drop=ProcessInstruments().count_dropped, stream=open(os.devnull, "w"))
print("ready", flush=True)
while True:
    time.sleep(0.001)
"""


def test_sigterm_leaves_a_sigalrm_the_worker_uses_alone(tmp_path) -> None:
    """The give-way timer needs SIGALRM: a worker that uses it keeps its handler, and its own
    SIGTERM handler still runs after the flush."""
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "TSOBS_FLUENT_HOST": "127.0.0.1", "TSOBS_FLUENT_PORT": str(free_port())}
    worker = subprocess.Popen(
        [sys.executable, "-c", SIGALRM_WORKER, str(tmp_path)], env=env, stdout=subprocess.PIPE
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline() == b"ready\n"
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=3)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0 and out == b"alarm handler kept: True\n", (worker.returncode, out)


def test_ecs_outcome_takes_only_the_values_ecs_allows() -> None:
    stream = io.StringIO()
    emitter = logs.LogEmitter(Settings.from_env({"TSOBS_LOG_FIELDS": "ecs"}), stream=stream)
    emitter.emit(
        [{"level": "info", "outcome": o} for o in ("success", "client_error", "server_error")]
        + [{"level": "info", "event": "no outcome here"}]
    )
    got = lines(stream)
    assert [r.get("event.outcome") for r in got] == ["success", "failure", "failure", None]
    assert [r.get("torchserve.outcome") for r in got] == [
        "success",
        "client_error",
        "server_error",
        None,
    ]
    assert all("outcome" not in r and "level" not in r for r in got)


def test_values_msgpack_cannot_pack_are_shipped_as_the_json_line_has_them() -> None:
    import datetime
    import uuid

    shipper, receiver, drops = _shipper_to_receiver()
    when = datetime.datetime(2026, 11, 27, 12, 0, 1, 123456, tzinfo=datetime.timezone.utc)
    record = {"event": "user line", "when": when, "id": uuid.UUID(int=7), "obj": object}
    shipper.ship(record)
    shipper.close()
    (received,) = wait_for(receiver.snapshot, 10, "the record at the test receiver")
    receiver.close()
    assert received == json.loads(logs.render(record)) and not drops
    assert received["when"] == "2026-11-27T12:00:01.123456+00:00"


def _all_lines(path) -> list:
    files = [path, *sorted(path.parent.glob(path.name + ".*[0-9]"))]
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_log_file_rotates_by_size_across_writers_without_losing_a_line(
    tmp_path, monkeypatch
) -> None:
    from obs import logfile

    monkeypatch.setattr(logfile, "CHECK_INTERVAL_S", 0.0)  # check at every write
    path = tmp_path / "tsobs.jsonl"
    workers = [logfile.LogFile(path, max_bytes=4000, backups=100) for _ in range(2)]
    for n in range(600):
        workers[n % 2].write(logs.render({"n": n, "pad": "x" * 40}) + b"\n")
    backups = sorted(tmp_path.glob("tsobs.jsonl.*[0-9]"))
    assert len(backups) >= 5  # rotated, and more than once
    assert sorted(r["n"] for r in _all_lines(path)) == list(range(600))
    # A writer can add at most one batch past the limit before it rotates.
    assert all(f.stat().st_size < 4000 + 100 for f in [path, *backups])


def test_log_file_keeps_the_last_backups_and_follows_an_outside_rotation(
    tmp_path, monkeypatch
) -> None:
    from obs import logfile

    monkeypatch.setattr(logfile, "CHECK_INTERVAL_S", 0.0)
    path = tmp_path / "tsobs.jsonl"
    writer = logfile.LogFile(path, max_bytes=500, backups=2)
    for n in range(100):
        writer.write(logs.render({"n": n, "pad": "x" * 40}) + b"\n")
    rotated = logfile.rotated_files(path)
    assert len(rotated) == 2
    assert all(re.fullmatch(r"tsobs\.jsonl\.\d{8}T\d{12}", p.name) for p in rotated)
    kept = sorted(r["n"] for r in _all_lines(path))
    assert kept[-1] == 99 and kept[0] > 0  # the newest lines kept, the oldest deleted
    assert kept == list(range(kept[0], 100))
    # logrotate with "create": the file is renamed away; the next write goes to a new one.
    unbounded = logfile.LogFile(path, max_bytes=0, backups=1)
    path.rename(tmp_path / "rotated-by-logrotate")
    unbounded.write(b'{"n": "after"}\n')
    assert json.loads(path.read_text()) == {"n": "after"}


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
