"""Logs that reach Elasticsearch: TorchServe -> the shipped Fluentd config -> ``_bulk``.

A real TorchServe, a real Fluentd 1.16 with fluent-plugin-elasticsearch (``FLUENTD``; skipped
where it is not set), ``compose/fluentd/fluent.conf`` as shipped (hosts, ports and paths from
the environment), and at the end an Elasticsearch-shaped stand-in that records what the
output sends (not Elasticsearch). Every request's ``request_completed`` line must be indexed
exactly once, with its own time, in a shape the shipped index template accepts, across a
Fluentd stop, file rotations and an Elasticsearch outage.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from handler_mixins.example.build import MODEL_NAME
from obs.signals import ECS_FIELDS, Field
from obs.torchserve import TorchServe
from obs.traffic import Request, Response, json_request, predict, send_all
from tests.conftest import start_torchserve
from tests.support.es_standin import ElasticsearchStandin, mapping_errors
from tests.support.fluentd import ROOT, Fluentd, requires_fluentd
from tests.support.traffic import wait_for

pytestmark = [pytest.mark.torchserve, requires_fluentd]

TEMPLATES = {
    mode: json.loads(
        (ROOT / "compose" / "elasticsearch" / f"index-template-{mode}.json").read_text()
    )
    for mode in ("otel", "ecs")
}
NAMES = {"otel": {}, "ecs": ECS_FIELDS}
COMPLETED = "request_completed"
KNOWN_WARNINGS = ("LoadError",)
"""Fluentd's one warning at every start on Debian's Ruby (no Oj gem): harmless."""


def name(mode: str, field: str) -> str:
    return NAMES[mode].get(field, field)


def mixed_requests(count: int, tag: str, failing: bool = True) -> List[Request]:
    """Good ones, malformed ones (400), some with X-Request-ID or traceparent, one failing batch."""
    requests = []
    for i in range(count):
        headers: Dict[str, str] = {}
        if i % 5 == 1:
            headers["X-Request-ID"] = f"{tag}-{i}"
        if i % 7 == 2:
            headers["traceparent"] = f"00-{i + 1:032x}-{i + 1:016x}-01"
        if failing and i == count // 2:
            payload: Any = {"fail": "on purpose"}
        elif i % 10 == 3:
            payload = "not a list"
        else:
            payload = [1, 2, 3, i]
        requests.append(json_request(payload, headers))
    return requests


def completed(es: ElasticsearchStandin, mode: str) -> Dict[str, List[Dict[str, Any]]]:
    """``request_completed`` documents by request ID (a list: duplicates must show)."""
    found: Dict[str, List[Dict[str, Any]]] = {}
    for _key, doc in es.items():
        if doc.get(name(mode, Field.EVENT)) == COMPLETED:
            found.setdefault(doc[name(mode, Field.REQUEST_ID)], []).append(doc)
    return found


def all_arrived(es: ElasticsearchStandin, mode: str, request_ids: List[str]) -> bool:
    found = completed(es, mode)
    return all(r in found for r in request_ids)


EPOCH_TEXT = re.compile(r"^(.{19})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")


def epoch_ns(text: str) -> int:
    """Nanoseconds since the epoch of an ISO-8601 UTC time, whatever its precision."""
    head, fraction, zone = EPOCH_TEXT.match(text).groups()
    assert zone in ("Z", "+00:00"), text
    seconds = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 10**9 + int((fraction or "0").ljust(9, "0"))


def lines_in(folder: Path, pattern: str) -> List[Dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(folder.glob(pattern))
        for line in path.read_text().splitlines()
        if line.startswith("{")
    ]


def fluentd_warnings(fluentd: Fluentd) -> List[str]:
    return [w for w in fluentd.warnings() if not any(k in w for k in KNOWN_WARNINGS)]


def copies_written(server: TorchServe, request_id: str) -> int:
    """How many times a request's completion line was written: console and every log file."""
    files = [server.service.log_path, *server.log_dir.iterdir()]
    return sum(
        1
        for path in files
        if path.is_file()
        for line in path.read_text(errors="replace").splitlines()
        if request_id in line and COMPLETED in line
    )


# --- 1, 3. Delivered: every request once, its own time, the template's types, one line ----


@pytest.mark.parametrize(
    "mode, sink, first_worker",
    [("otel", "stdout", 9910), ("ecs", "TSOBS_LOG_FILE", 9920)],
)
def test_every_request_is_indexed_exactly_once_with_its_own_time(
    tmp_path: Path, model_store: Path, mode: str, sink: str, first_worker: int
) -> None:
    env = {"TSOBS_LOG_FIELDS": mode}
    if sink == "TSOBS_LOG_FILE":
        env["TSOBS_LOG_FILE"] = str(tmp_path / "ts" / "logs" / "tsobs.jsonl")
    server = start_torchserve(
        tmp_path / "ts", model_store, first_worker_port=first_worker, models=(MODEL_NAME,), **env
    )
    es = ElasticsearchStandin()
    fluentd = Fluentd(tmp_path / "fluentd", server.log_dir, es.port, mode)
    try:
        fluentd.start()
        responses = send_all(
            server.ports.inference_url, MODEL_NAME, mixed_requests(200, mode), concurrency=8
        )
        statuses = Counter(r.status for r in responses)
        assert statuses[200] and statuses[400] and statuses[503], statuses
        request_ids = [r.request_id for r in responses]
        assert len(set(request_ids)) == 200
        wait_for(lambda: all_arrived(es, mode, request_ids), 180, "every request indexed")
        wait_for(fluentd.settled, 90, "Fluentd to read every file and drain its buffer")

        found = completed(es, mode)
        assert sorted(found) == sorted(request_ids)  # nothing lost, nothing extra
        # Our log4j config: each line written once (not on the console, not in ts_log.log).
        assert {copies_written(server, r) for r in request_ids} == {1}
        assert all(len(docs) == 1 for docs in found.values())  # no duplicate documents
        # ... and each document went into the _bulk bodies once.
        sent = Counter(doc_id for _op, _index, doc_id in es.actions)
        ids = {doc_id for (_index, doc_id), doc in es.items() if doc in sum(found.values(), [])}
        assert {sent[i] for i in ids} == {1}
        assert {op for op, _i, _d in es.actions} == {"create"}
        assert {index for _op, index, _d in es.actions} == {f"tsobs-logs-{mode}"}

        # Each document is the line the worker wrote, plus @timestamp from its own time.
        written = {
            r[name(mode, Field.REQUEST_ID)]: r
            for r in lines_in(server.log_dir, "*.jsonl")
            if r.get(name(mode, Field.EVENT)) == COMPLETED
        }
        for request_id, (doc,) in found.items():
            line = written[request_id]
            assert {k: v for k, v in doc.items() if k != "@timestamp"} == {
                k: v for k, v in line.items() if k != "@timestamp"
            }
            own_time = line[name(mode, Field.TIMESTAMP)]
            assert epoch_ns(doc["@timestamp"]) == epoch_ns(own_time)  # to the microsecond
        by_status = Counter(d[name(mode, Field.STATUS)] for (d,) in found.values())
        assert by_status == Counter(r.status for r in responses)

        # Every document, TorchServe's own lines included, fits the shipped template.
        for _key, doc in es.items():
            assert mapping_errors(doc, TEMPLATES[mode]) == [], doc
        if mode == "ecs":
            outcomes = {d.get("event.outcome") for _k, d in es.items()}
            assert outcomes <= {None, "success", "failure", "unknown"}, outcomes
            assert not any("level" in d or "logger" in d for _k, d in es.items())

        # The failing batch's traceback (TorchServe logs it line by line) is one document.
        message = name(mode, "message")
        tracebacks = [d for _k, d in es.items() if "Traceback (most recent" in d.get(message, "")]
        assert len(tracebacks) == 1, [d[message][:80] for d in tracebacks]
        assert tracebacks[0][message].rstrip().endswith("RuntimeError: asked to fail: on purpose")
        # Access lines carry fields: one per prediction request.
        access = [d for _k, d in es.items() if d.get("url_path") == f"/predictions/{MODEL_NAME}"]
        assert sorted(d["status"] for d in access) == sorted(r.status for r in responses)
        assert fluentd_warnings(fluentd) == []
    finally:
        fluentd.stop()
        es.close()
        server.stop()


# --- 3. One document per event: TorchServe's stock log4j config, for comparison -----------


def test_stock_log4j_config_writes_each_line_three_times_and_indexes_it_twice(
    tmp_path: Path, model_store: Path
) -> None:
    """The figure to compare with ours (one line, one document: the delivery test above)."""
    server = start_torchserve(
        tmp_path / "ts", model_store, first_worker_port=9940, models=(MODEL_NAME,), log_config=None
    )
    es = ElasticsearchStandin()
    fluentd = Fluentd(tmp_path / "fluentd", server.log_dir, es.port)
    try:
        fluentd.start()
        responses = send_all(
            # No failing batch: with the stock config, TorchServe's traceback lines and the
            # request lines share ts_log.log, and a request line written between two lines of
            # a traceback is taken into the traceback's event (seen once in two runs).
            server.ports.inference_url,
            MODEL_NAME,
            mixed_requests(50, "stock", failing=False),
            concurrency=8,
        )
        request_ids = [r.request_id for r in responses]
        wait_for(lambda: all_arrived(es, "otel", request_ids), 180, "every request indexed")
        wait_for(fluentd.settled, 90, "Fluentd to read every file and drain its buffer")
        # Console, model_log.log and ts_log.log; the shipped Fluentd config tails the last two.
        assert Counter(copies_written(server, r) for r in request_ids) == {3: 50}
        assert Counter(len(completed(es, "otel")[r]) for r in request_ids) == {2: 50}
    finally:
        fluentd.stop()
        es.close()
        server.stop()


# --- 5. Tracebacks, access lines, the last line of a file, level names ------------------

TEXT_LINES = """\
2026-11-27T11:37:24,127 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - Torch worker started.
2026-11-27T11:37:24,232 [INFO ] W-9000-tiny_1.0 ACCESS_LOG - /127.0.0.1:37836 "POST /predictions/tiny HTTP/1.1" 503 43
2026-11-27T11:37:24,301 [WARN ] W-9000-tiny_1.0-stderr MODEL_LOG - some warning
2026-11-27T11:37:24,628 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - Invoking custom service failed.
2026-11-27T11:37:24,628 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - Traceback (most recent call last):
2026-11-27T11:37:24,628 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG -   File "/x/ts/service.py", line 135, in predict
2026-11-27T11:37:24,628 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG -     ret = self._entry_point(input_batch, self.context)
2026-11-27T11:37:24,629 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - KeyError: 'x'
2026-11-27T11:37:24,629 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - <empty>
2026-11-27T11:37:24,629 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - During handling of the above exception, another exception occurred:
2026-11-27T11:37:24,629 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - <empty>
2026-11-27T11:37:24,629 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - Traceback (most recent call last):
2026-11-27T11:37:24,630 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG -   File "/x/handler.py", line 9, in handle
2026-11-27T11:37:24,639 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - ts.utils.util.PredictionException: asked to fail
""".replace("<empty>", "")  # log4j writes "MODEL_LOG - " and the empty message


@pytest.mark.parametrize("mode", ["otel", "ecs"])
def test_text_lines_tracebacks_whole_access_lines_parsed_last_line_not_held(
    tmp_path: Path, mode: str
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    # The file ends in a traceback: nothing follows to push it out but the flush interval.
    (logs / "model_log.log").write_text(TEXT_LINES)
    es = ElasticsearchStandin()
    fluentd = Fluentd(tmp_path / "fluentd", logs, es.port, mode)
    level, logger, message = (name(mode, f) for f in (Field.LEVEL, Field.LOGGER, "message"))
    if mode == "ecs":
        level, logger = "log.level", "log.logger"
    try:
        fluentd.start()
        docs = wait_for(lambda: len(es.snapshot()) >= 4 and es.snapshot(), 60, "four documents")
        wait_for(fluentd.settled, 90, "Fluentd to read every file and drain its buffer")
        docs = sorted(es.snapshot(), key=lambda d: d["@timestamp"])
        assert [d[message].split("\n")[0] for d in docs] == [
            "Torch worker started.",
            '/127.0.0.1:37836 "POST /predictions/tiny HTTP/1.1" 503 43',
            "some warning",
            "Invoking custom service failed.",
        ]
        started, access, warning, failure = docs
        assert {k: access[k] for k in ("client_address", "http_method", "url_path", "status")} == {
            "client_address": "127.0.0.1:37836",
            "http_method": "POST",
            "url_path": "/predictions/tiny",
            "status": 503,
        }
        assert access["duration_ms"] == 43
        assert warning[level] == "warning" and started[level] == "info"
        assert failure[logger] == "MODEL_LOG"
        # One document, without the log4j prefixes of its continuation lines.
        assert failure[message].endswith("PredictionException: asked to fail")
        assert "During handling of the above exception" in failure[message]
        assert " MODEL_LOG - " not in failure[message]
        assert failure["@timestamp"].startswith("2026-11-27T11:37:24.628")
        for doc in docs:
            assert mapping_errors(doc, TEMPLATES[mode]) == [], doc
        assert fluentd_warnings(fluentd) == []
    finally:
        fluentd.stop()
        es.close()


# --- 2, 4, 7. A Fluentd stop, rotations, an Elasticsearch outage: nothing lost ----------


class Traffic:
    """Requests at a steady rate from a background thread until stopped."""

    def __init__(self, url: str, per_second: float) -> None:
        self._url = url
        self._interval = 1.0 / per_second
        self._pool = ThreadPoolExecutor(8)
        self._futures: List[Future] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        requests = mixed_requests(20, "steady")
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            request = requests[n % len(requests)]
            self._futures.append(self._pool.submit(predict, self._url, MODEL_NAME, request))
            n += 1
            next_at += self._interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> List[Response]:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        return [f.result() for f in self._futures]


STOP_S = float(os.environ.get("TSOBS_TEST_FLUENTD_STOP_S", "20"))
"""How long Fluentd stays stopped under traffic. The issue measured 60 s; the property (lines
written while it is down, and rotated away meanwhile) is the same at 20 s, for a third of the
wall time. TSOBS_TEST_FLUENTD_STOP_S=60 runs the issue's figure."""
OUTAGE_S = 15.0
OUTAGE_WARNING = re.compile(
    r"\[warn\]: (failed to flush the buffer|retry succeeded|restoring buffer file|/.*\.rb:\d+:in )"
)
"""Fluentd's warnings about the outage: refused flushes (with their Ruby backtraces), the
file buffer restored at the restart, the retry that succeeded after it."""


def test_nothing_lost_across_a_fluentd_stop_rotations_and_an_elasticsearch_outage(
    tmp_path: Path, model_store: Path
) -> None:
    log_file = tmp_path / "ts" / "logs" / "tsobs.jsonl"
    server = start_torchserve(
        tmp_path / "ts",
        model_store,
        first_worker_port=9950,
        models=(MODEL_NAME,),
        TSOBS_LOG_FILE=str(log_file),
        TSOBS_LOG_FILE_MAX_BYTES="65536",  # a rotation every ~150 requests
        TSOBS_LOG_FILE_BACKUPS="50",
    )
    es = ElasticsearchStandin()
    fluentd = Fluentd(tmp_path / "fluentd", server.log_dir, es.port)
    traffic: Optional[Traffic] = None
    try:
        fluentd.start()
        traffic = Traffic(server.ports.inference_url, per_second=20)
        wait_for(lambda: len(completed(es, "otel")) >= 100, 120, "the first requests indexed")

        # Fluentd stopped under traffic; the file rotates meanwhile.
        fluentd.stop()
        inode_at_stop = log_file.stat().st_ino
        stopped_at = time.monotonic()
        wait_for(lambda: time.monotonic() - stopped_at >= STOP_S, STOP_S + 5, "the stop")
        assert log_file.stat().st_ino != inode_at_stop, "no rotation while Fluentd was down"
        fluentd.start()

        # Elasticsearch answers 503; Fluentd is restarted with chunks in its file buffer.
        es.down()
        failing_since = len(es.actions)
        outage_at = time.monotonic()
        wait_for(
            lambda: es.refused_requests and fluentd.holding(),
            60,
            "chunks held in Fluentd's buffer",
        )
        wait_for(lambda: time.monotonic() - outage_at >= OUTAGE_S, OUTAGE_S + 5, "the outage")
        assert len(es.actions) == failing_since  # nothing accepted while down
        fluentd.stop()
        buffered = list((fluentd.state / "buffer" / "elasticsearch").glob("*.log"))
        assert buffered, "Fluentd stopped with an empty buffer: the restart proves nothing"
        fluentd.start()
        es.up()

        responses = traffic.stop()
        traffic = None
        request_ids = [r.request_id for r in responses]
        assert len(request_ids) >= 20 * (STOP_S + OUTAGE_S) * 0.8
        wait_for(lambda: all_arrived(es, "otel", request_ids), 240, "every request indexed")
        wait_for(fluentd.settled, 90, "Fluentd to read every file and drain its buffer")

        found = completed(es, "otel")
        lost = [r for r in request_ids if r not in found]
        duplicated = [r for r in request_ids if len(found.get(r, [])) > 1]
        assert (lost, duplicated) == ([], [])
        assert sorted(found) == sorted(request_ids)
        rotated = list(log_file.parent.glob("tsobs.jsonl.[0-9]*"))
        assert len(rotated) >= 3  # rotations happened while Fluentd ran, too
        # Fluentd's only complaints are about the outage.
        assert any("restoring buffer file" in w for w in fluentd.warnings())
        assert [w for w in fluentd_warnings(fluentd) if not OUTAGE_WARNING.search(w)] == []
        record_figures(
            tmp_path,
            requests=len(request_ids),
            indexed=len(found),
            resent_refused_as_duplicates=es.conflicts,
            rotations=len(rotated),
            fluentd_stop_s=STOP_S,
        )
    finally:
        if traffic is not None:
            traffic.stop()
        fluentd.stop()
        es.close()
        server.stop()


def record_figures(tmp_path: Path, **figures: float) -> None:
    """The run's figures, printed for ``pytest -s`` and kept beside the test's files."""
    (tmp_path / "figures.json").write_text(json.dumps(figures))
    print(f"\nfluentd pipeline figures: {figures}")
