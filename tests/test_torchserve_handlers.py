"""Handler shapes TorchServe 0.12 supports, each observed in a real TorchServe: an
``async def handle`` run by the async worker, and TorchServe's own micro-batching."""

from __future__ import annotations

from typing import Iterator

import pytest

from handler_mixins.example.build import build_archives
from obs.torchserve import TorchServe
from obs.traffic import json_log_lines, json_request, send_all
from tests.conftest import start_exporter, start_torchserve
from tests.support.paths import REPO
from tests.support.traffic import completions, scrape, total, wait_for

pytestmark = pytest.mark.torchserve

HANDLERS = REPO / "tests" / "support" / "handlers"
ASYNC, MICRO = "async_tiny", "micro_tiny"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    store = tmp_path_factory.mktemp("handler-store")
    build_archives(
        store,
        handlers={ASYNC: HANDLERS / "async_tiny.py"},
        extra_config="asyncCommunication: true\n",
    )
    build_archives(store, handlers={MICRO: HANDLERS / "micro_tiny.py"})
    workdir = tmp_path_factory.mktemp("handlers-torchserve")
    server = start_torchserve(workdir, store, 9600, models=(ASYNC, MICRO))
    exporter = start_exporter(workdir, workdir / "metrics")
    yield server, exporter
    exporter.service.stop()
    server.stop()


def completion_lines(server: TorchServe, model: str, ids: set) -> dict:
    lines = {}
    for record in completions(json_log_lines(server.json_log), model):
        if record.get("request_id") in ids:
            lines.setdefault(record["request_id"], []).append(record)
    return lines if len(lines) == len(ids) else {}


def test_async_handle_is_timed_counted_and_logged(served: tuple) -> None:
    server, exporter = served
    good = [json_request([1, 2, 3, i]) for i in range(20)]
    # One at a time: TorchServe 0.12's async frontend kills its workers under concurrent
    # requests (ConcurrentModificationException in AsyncBatchAggregator.getRequest).
    responses = send_all(server.ports.inference_url, ASYNC, good, 1)
    responses += send_all(server.ports.inference_url, ASYNC, [json_request({"fail": "x"})], 1)
    assert [r.status for r in responses] == [200] * 20 + [503]
    samples = scrape(exporter.metrics_url)
    assert total(samples, "tsobs_requests_total", model_name=ASYNC, outcome="success") == 20
    assert total(samples, "tsobs_requests_total", model_name=ASYNC, outcome="server_error") == 1
    handle = {"model_name": ASYNC, "stage": "handle"}
    assert total(samples, "tsobs_stage_duration_seconds_count", **handle) == 21
    assert total(samples, "tsobs_stage_duration_seconds_sum", **handle) >= 21 * 0.05
    ids = {r.request_id for r in responses}
    lines = wait_for(lambda: completion_lines(server, ASYNC, ids), what="async completion lines")
    for response in responses:
        (line,) = lines[response.request_id]
        assert line["status"] == response.status
        assert line["duration_ms"] >= 50
    assert all(line[0]["preprocess_ms"] > 0 for line in lines.values())


def test_torchserves_micro_batching_is_observed(served: tuple) -> None:
    server, exporter = served
    requests = [json_request([1, 2, 3, i]) for i in range(24)]
    responses = send_all(server.ports.inference_url, MICRO, requests, 12)
    assert [r.status for r in responses] == [200] * 24
    samples = scrape(exporter.metrics_url)
    assert total(samples, "tsobs_requests_total", model_name=MICRO, outcome="success") == 24
    batches = total(samples, "tsobs_batch_size_count", model_name=MICRO)
    assert total(samples, "tsobs_batch_size_sum", model_name=MICRO) == 24
    for stage in ("preprocess", "inference", "postprocess", "handle"):
        labels = {"model_name": MICRO, "stage": stage}
        assert total(samples, "tsobs_stage_duration_seconds_count", **labels) == batches
        assert total(samples, "tsobs_stage_duration_seconds_sum", **labels) > 0
    ids = {r.request_id for r in responses}
    lines = wait_for(lambda: completion_lines(server, MICRO, ids), what="micro-batch lines")
    assert all(len(found) == 1 and found[0]["status"] == 200 for found in lines.values())
    # The handler's own lines, logged in MicroBatching's stage threads, carry their batch.
    batch_of = {request_id: found[0]["batch_id"] for request_id, found in lines.items()}
    user_lines = [
        r
        for r in json_log_lines(server.json_log)
        if str(r.get("event", "")).startswith("micro_preprocess") and r.get("model_name") == MICRO
    ]
    assert len(user_lines) >= 12  # 24 requests in micro-batches of 2
    for line in user_lines:
        assert line["request_ids"] and {batch_of[i] for i in line["request_ids"]} == {
            line["batch_id"]
        }, line
    assert set(batch_of) == {i for line in user_lines for i in line["request_ids"]}
