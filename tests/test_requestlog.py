"""``torchserve-obs logs``: a request's story found by any of its IDs, from the real lines."""

from __future__ import annotations

import io
import json
import urllib.parse
from contextlib import redirect_stdout
from pathlib import Path
from typing import List, Tuple

import pytest

from handler_mixins.example.build import MODEL_NAME
from obs import logs
from obs.cli import main
from obs.kibana import discover_url
from obs.requestlog import kibana_query
from obs.settings import Settings
from obs.torchserve import TorchServe
from obs.traffic import json_request, send_all
from tests.support.traffic import completions, wait_for


def run_logs(*argv: str) -> Tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["logs", *argv])
    return code, out.getvalue()


@pytest.mark.torchserve
def test_a_failed_request_story_by_each_of_its_ids(torchserve: TorchServe) -> None:
    from obs.traffic import json_log_lines

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    requests = [json_request([1, 2, 3, i], {"X-Request-ID": f"story-{i}"}) for i in range(5)]
    requests.append(
        json_request(
            {"fail": "for the story"},
            {"X-Request-ID": "story-failing", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )
    )
    responses = send_all(torchserve.ports.inference_url, MODEL_NAME, requests, concurrency=6)
    failed = responses[-1]
    assert failed.status == 503
    wait_for(
        lambda: (
            failed.request_id
            in {
                r["request_id"]
                for r in completions(json_log_lines(torchserve.json_log), MODEL_NAME)
            }
        ),
        30,
        "the failed request's line",
    )
    stories = [
        run_logs(wanted, "--logs", str(torchserve.log_dir), "--kibana-url", "http://kb:5601/")
        for wanted in (failed.request_id, "story-failing", trace_id)
    ]
    for code, story in stories:
        assert code == 0, story
        assert f"request {failed.request_id} (client X-Request-ID story-failing)" in story
        assert "status 503, outcome server_error" in story
        assert (
            "batch_failed" in story and "error RuntimeError: asked to fail: for the story" in story
        )
        assert "| Traceback (most recent call last):" in story  # the traceback, line by line
        assert "this request: " + failed.request_id in story
        assert "\nKibana: http://kb:5601/app/discover#/" in story
    # The requests that shared its batch are listed as neighbours.
    (batch_line,) = [line for line in stories[0][1].splitlines() if line.startswith("  batch ")]
    batch_size = int(batch_line.rsplit(" of ", 1)[1])
    assert stories[0][1].count("  neighbour: ") == batch_size - 1


def test_unknown_ids_and_missing_files_are_said(tmp_path: Path) -> None:
    (tmp_path / "tsobs.jsonl").write_text('{"event": "request_completed", "request_id": "a"}\n')
    code, out = run_logs("nope", "--logs", str(tmp_path))
    assert code == 1 and "no line names nope" in out
    assert main(["logs", "x", "--logs", str(tmp_path / "empty")]) == 2


def emit(path: Path, fields: str, records: List[dict]) -> None:
    writer = logs.LogEmitter(
        Settings.from_env({"TSOBS_LOG_FIELDS": fields}),
        log_file=logs.LogFile(path, max_bytes=0, backups=1),
    )
    writer.emit(records)


def test_ecs_lines_rotated_files_and_log4j_lines_are_all_read(tmp_path: Path) -> None:
    batch = {"batch_id": "w9000-4", "model_name": "m", "timestamp": "2026-11-27T12:00:00.000001Z"}
    emit(
        tmp_path / "tsobs.jsonl.1",
        "ecs",
        [
            {
                **batch,
                "event": "request_completed",
                "request_id": "r1",
                "status": 200,
                "outcome": "success",
                "batch_index": 0,
                "batch_size": 2,
            },
        ],
    )
    emit(
        tmp_path / "tsobs.jsonl",
        "ecs",
        [
            {
                **batch,
                "event": "request_completed",
                "request_id": "r2",
                "status": 200,
                "outcome": "success",
                "client_request_id": "mine",
                "batch_index": 1,
                "batch_size": 2,
            }
        ],
    )
    line = json.dumps({**batch, "event": "resized", "level": "info", "request_ids": ["r1", "r2"]})
    (tmp_path / "model_log.log").write_text(
        f"2026-11-27T12:00:00,001 [INFO ] W-9000-m_1.0-stdout MODEL_LOG - {line}\n"
        "2026-11-27T12:00:00,002 [INFO ] W-9000-m_1.0-stdout MODEL_LOG - not json\n"
    )
    code, story = run_logs("mine", "--logs", str(tmp_path))
    assert code == 0, story
    assert "request r2 (client X-Request-ID mine)" in story
    assert "batch w9000-4 (3 lines)" in story
    assert "neighbour: r1 status 200" in story and "resized" in story


def test_a_request_lost_with_its_worker_says_why(tmp_path: Path) -> None:
    # Written by whoever settles a request lost with its worker (the restarted worker or the
    # exporter): no stages, server_error, and the reason.
    emit(
        tmp_path / "tsobs.jsonl",
        "otel",
        [
            {
                "event": "request_completed",
                "request_id": "lost-1",
                "batch_id": "w9001-3",
                "status": 500,
                "outcome": "server_error",
                "reason": "worker_died",
            }
        ],
    )
    code, story = run_logs("lost-1", "--logs", str(tmp_path))
    assert code == 0 and "status 500, outcome server_error, reason worker_died" in story


def test_kibana_link_carries_the_query_for_both_field_sets() -> None:
    url = discover_url("https://kibana.example:5601", kibana_query('id "with" quotes'))
    assert url.startswith("https://kibana.example:5601/app/discover#/?_g=")
    app_state = urllib.parse.unquote(url.split("&_a=", 1)[1])
    assert "index:'tsobs-logs'" in app_state and "language:kuery" in app_state
    for field in ("request_id", "client_request_id", "trace_id", "http.request.id", "trace.id"):
        assert f'{field} : "id \\"with\\" quotes"' in app_state
