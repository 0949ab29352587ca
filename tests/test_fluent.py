"""Shipping to Fluentd: never slows or fails a request; every lost record is counted.

This TorchServe also writes the JSON lines to a file of their own (``TSOBS_LOG_FILE``)
rather than stdout, so the same run checks that sink.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from handler_mixins.example.build import MODEL_NAME
from obs.services import free_port
from obs.traffic import json_log_lines, json_request, send_all
from tests.conftest import start_exporter, start_torchserve
from tests.support.forward_receiver import ForwardReceiver
from tests.support.traffic import completions, scrape, total, wait_for


def json_lines(path: Path) -> List[Dict[str, Any]]:
    """Every line of a JSON-lines file, each of which must be one whole object."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


pytestmark = pytest.mark.torchserve
BUFFER_BYTES = 4096


def test_fluentd_down_then_up(tmp_path, model_store) -> None:
    fluent_port = free_port()  # nothing listens here until the receiver starts
    log_file = tmp_path / "jsonl" / "tsobs.jsonl"
    server = start_torchserve(
        tmp_path / "ts",
        model_store,
        first_worker_port=9400,
        models=(MODEL_NAME,),
        TSOBS_FLUENT_HOST="127.0.0.1",
        TSOBS_FLUENT_PORT=str(fluent_port),
        TSOBS_FLUENT_BUFFER_BYTES=str(BUFFER_BYTES),
        TSOBS_LOG_FILE=str(log_file),
    )
    exporter = start_exporter(tmp_path, tmp_path / "ts" / "metrics")
    receiver = None
    try:
        url = server.ports.inference_url
        down = send_all(
            url, MODEL_NAME, [json_request([1, 2, 3, i]) for i in range(150)], concurrency=8
        )
        assert {r.status for r in down} == {200}
        latencies = sorted(r.seconds for r in down)
        assert (
            latencies[int(len(latencies) * 0.95)] < 1.0
        )  # a blocking sender would wait 3 s per line

        emitted = len(
            wait_for(
                lambda: (
                    len(completions(json_lines(log_file), MODEL_NAME)) >= 150
                    and json_lines(log_file)
                ),
                what="all completion lines",
            )
        )
        dropped = wait_for(
            lambda: total(
                scrape(exporter.metrics_url),
                "tsobs_log_records_dropped_total",
                reason="send_failed",
            ),
            what="drops to be counted",
        )
        # Each worker may still hold less than BUFFER_BYTES of unsent records (~400 B each).
        assert emitted - 2 * BUFFER_BYTES // 300 <= dropped <= emitted

        receiver = ForwardReceiver(fluent_port)
        up = send_all(
            url, MODEL_NAME, [json_request([4, 3, 2, i]) for i in range(20)], concurrency=4
        )
        wanted = {r.request_id for r in up}

        def shipped() -> dict:
            got = {
                r.get("request_id"): r for r in receiver.snapshot() if r.get("request_id") in wanted
            }
            return got if len(got) == len(wanted) else {}

        received = wait_for(shipped, what="the records to reach the test receiver")
        logged = {r["request_id"]: r for r in completions(json_lines(log_file), MODEL_NAME)}
        for request_id, record in received.items():
            assert record == logged[request_id]
        assert set(receiver.tags) == {"torchserve"}
        # The file took every line, the frontend's model log none of them.
        assert len(completions(json_lines(log_file), MODEL_NAME)) == 170
        assert not completions(json_log_lines(server.json_log), MODEL_NAME)
    finally:
        if receiver is not None:
            receiver.close()
        exporter.service.stop()
        server.stop()
