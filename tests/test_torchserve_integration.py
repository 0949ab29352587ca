"""The mixin inside a real TorchServe 0.12: outputs, exact counts, log lines, worker crashes.

``tiny`` is the example handler with the mixin and ``tiny_plain`` the same handler without
it, served by one TorchServe with two workers each and batch size 8.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from handler_mixins.example.build import MODEL_NAME, PLAIN_MODEL_NAME
from obs import ledger
from obs.traffic import Request, Response, json_log_lines, json_request, predict, send_all
from tests.conftest import start_exporter, start_torchserve
from tests.support.traffic import completions, growth, scrape, total, wait_for

pytestmark = pytest.mark.torchserve

REQUESTS = "tsobs_requests_total"
OUTCOME_OF_STATUS = {200: "success", 400: "client_error", 503: "server_error"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def mixed_traffic(count: int, seed: int) -> Tuple[List[Request], Dict[int, Dict[str, str]]]:
    """Valid and malformed requests, some with X-Request-ID and traceparent in odd cases.

    Returns the requests and, by position, the IDs the completion line must carry.
    """
    rng = random.Random(seed)
    requests, expected = [], {}
    for index in range(count):
        kind = rng.random()
        headers: Dict[str, str] = {}
        ids: Dict[str, str] = {}
        if index % 3 == 0:
            name = ("X-Request-ID", "x-request-id", "X-REQUEST-ID")[index % 9 // 3]
            headers[name] = ids["client_request_id"] = f"client-{seed}-{index}"
        if index % 4 == 0:
            span = f"{index + 1:016x}"
            headers["Traceparent" if index % 8 else "traceparent"] = f"00-{TRACE_ID}-{span}-01"
            ids["trace_id"], ids["span_id"] = TRACE_ID, span
        elif index % 4 == 1:
            headers["traceparent"] = f"00-{TRACE_ID.upper()}-{index:016x}-01"  # upper case: invalid
        if kind < 0.75:
            payload = [round(rng.uniform(-3, 3), 3) for _ in range(4)]
            requests.append(json_request(payload, headers))
        else:
            malformed = (b"not json", b"[1, 2]", b'{"x": 1}', b'["a", "b", "c", "d"]')[index % 4]
            requests.append(Request(malformed, headers))
        expected[index] = ids
    return requests, expected


def test_outputs_counts_and_completion_lines(torchserve, exporter) -> None:
    requests, expected_ids = mixed_traffic(300, seed=7)
    before = scrape(exporter.metrics_url)

    observed = send_all(torchserve.ports.inference_url, MODEL_NAME, requests)
    plain = send_all(torchserve.ports.inference_url, PLAIN_MODEL_NAME, requests)
    # A failing request fails its whole batch: send those one at a time to both.
    failing = [json_request({"fail": f"case {i}"}) for i in range(5)]
    observed += [predict(torchserve.ports.inference_url, MODEL_NAME, r) for r in failing]
    plain += [predict(torchserve.ports.inference_url, PLAIN_MODEL_NAME, r) for r in failing]

    # (a) what the handler without the mixin answers. Byte for byte for the same batch is
    # checked in-process (tests/test_mixin.py); here the two models batch the same requests
    # differently, and torch's batched arithmetic may move the sixth decimal.
    assert [r.status for r in observed] == [r.status for r in plain]
    for mine, theirs in zip(observed, plain):
        if mine.body != theirs.body:
            mine_json, theirs_json = json.loads(mine.body), json.loads(theirs.body)
            assert mine_json["label"] == theirs_json["label"]
            assert mine_json["probabilities"] == pytest.approx(
                theirs_json["probabilities"], abs=2e-6
            )
    statuses = Counter(r.status for r in observed)
    assert set(statuses) == {200, 400, 503} and statuses[503] == 5

    # (b) exact counts per outcome
    after = scrape(exporter.metrics_url)
    for status, outcome in OUTCOME_OF_STATUS.items():
        sent = statuses[status]
        counted = growth(before, after, REQUESTS, model_name=MODEL_NAME, outcome=outcome)
        assert counted == sent, f"{outcome}: counted {counted}, sent {sent}"
    failed = {"model_name": MODEL_NAME, "stage": "preprocess", "exception": "RuntimeError"}
    assert growth(before, after, "tsobs_errors_total", **failed) == 5

    # (c) one completion line per response, with the IDs the client sent
    ids = {r.request_id for r in observed}
    assert len(ids) == len(observed)

    def lines_for_all() -> Dict[str, List[dict]]:
        by_id: Dict[str, List[dict]] = {}
        for record in completions(json_log_lines(torchserve.json_log), MODEL_NAME):
            if record.get("request_id") in ids:
                by_id.setdefault(record["request_id"], []).append(record)
        return by_id if len(by_id) == len(ids) else {}

    by_id = wait_for(lines_for_all, what="a completion line for every response")
    for position, response in enumerate(observed):
        (line,) = by_id[response.request_id]
        assert line["status"] == response.status
        assert line["outcome"] == OUTCOME_OF_STATUS[response.status]
        assert line["model_version"] == "1.0" and line["worker"].startswith("w")
        assert 0 <= line["batch_index"] < line["batch_size"] <= 8
        assert line["duration_ms"] >= line.get("inference_ms", 0) >= 0
        wanted = expected_ids.get(position, {})
        for field in ("client_request_id", "trace_id", "span_id"):
            assert line.get(field) == wanted.get(field), (field, line)
    failed_batches = [
        r for r in json_log_lines(torchserve.json_log) if r.get("event") == "batch_failed"
    ]
    failing_ids = {r.request_id for r in observed[-5:]}
    logged_failures = [r for r in failed_batches if set(r["request_ids"]) & failing_ids]
    assert len(logged_failures) == 5
    assert all(
        "Traceback" in r["exception"] and r["error_type"] == "RuntimeError" for r in logged_failures
    )


def _worker_died(response: Response) -> bool:
    """TorchServe's answer for a request lost with its worker: 500 or 507, seen both ways."""
    return response.status in (500, 507) and b"Worker died." in response.body


def all_completions(torchserve, exporter_log: Path) -> List[dict]:
    """Completion lines of ``tiny`` from the workers (their JSON log) and from the exporter, which
    writes the lines of the requests it settles for dead workers to its stdout."""
    records = json_log_lines(torchserve.json_log)
    if exporter_log.exists():
        for line in exporter_log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
    return completions(records, MODEL_NAME)


def test_worker_kill_counts_every_request_once_and_bounds_the_metrics_directory(
    torchserve, exporter
) -> None:
    """Requests lost with a killed worker are counted (server_error, and lost) and logged
    once each, by whoever settles the dead worker's ledger first."""
    metrics_dir = torchserve.workdir / "metrics"
    files_before = sorted(os.listdir(metrics_dir))
    start = scrape(exporter.metrics_url)
    sent: List[Response] = []
    previous = start
    for round_ in range(2):
        killed = torchserve.worker_pids(MODEL_NAME)[0]
        slow = json_request({"sleep": 3.0, "features": [1, 2, 3, 4]})
        fast = [json_request([round_, 1, 2, 3]) for _ in range(40)]
        url = torchserve.ports.inference_url
        with ThreadPoolExecutor(3) as pool:
            # One slow request per worker, sent apart so they land on different workers.
            first = pool.submit(predict, url, MODEL_NAME, slow)
            time.sleep(0.3)
            second = pool.submit(predict, url, MODEL_NAME, slow)
            time.sleep(0.3)
            rest = pool.submit(send_all, url, MODEL_NAME, fast, 8)
            time.sleep(0.3)
            os.kill(killed, signal.SIGKILL)  # both workers are inside inference now
            responses = [first.result(60), second.result(60), *rest.result(120)]
        sent += responses
        assert any(_worker_died(r) for r in responses), (
            "the kill did not hit a request in flight: "
            f"{Counter((r.status, r.body[:120]) for r in responses)}"
        )
        wait_for(
            lambda killed=killed: (
                torchserve.ready_workers(MODEL_NAME) == 2
                and killed not in torchserve.worker_pids(MODEL_NAME)
            ),
            timeout=60,
            what="TorchServe to restart the killed worker",
        )
        now = scrape(exporter.metrics_url)
        for outcome in OUTCOME_OF_STATUS.values():
            assert total(now, REQUESTS, model_name=MODEL_NAME, outcome=outcome) >= total(
                previous, REQUESTS, model_name=MODEL_NAME, outcome=outcome
            ), "a counter went backwards after a worker restart"
        previous = now

    died = [r for r in sent if _worker_died(r)]
    end = scrape(exporter.metrics_url)

    def delta(name: str, **labels: str) -> float:
        return growth(start, end, name, model_name=MODEL_NAME, **labels)

    statuses = Counter(r.status for r in sent if not _worker_died(r))
    print(
        f"\nsent {len(sent)}: {dict(statuses)} + {len(died)} Worker died.; counted "
        f"success {delta(REQUESTS, outcome='success'):.0f}, server_error "
        f"{delta(REQUESTS, outcome='server_error'):.0f} (lost "
        f"{delta('tsobs_requests_lost_total'):.0f})"
    )
    assert delta(REQUESTS) == len(sent)
    assert delta(REQUESTS, outcome="success") == statuses[200]
    assert delta(REQUESTS, outcome="server_error") == len(died) + statuses[503]
    assert delta("tsobs_requests_lost_total", reason="worker_died") == len(died)
    assert delta("tsobs_worker_starts_total") == 2
    assert delta("tsobs_model_loads_total", outcome="success") == 2

    ids = {r.request_id for r in sent}
    assert None not in ids and len(ids) == len(sent)

    def lines_by_id() -> Dict[str, List[dict]]:
        by_id: Dict[str, List[dict]] = {}
        for record in all_completions(torchserve, torchserve.workdir / "exporter.out"):
            if record.get("request_id") in ids:
                by_id.setdefault(record["request_id"], []).append(record)
        return by_id if len(by_id) == len(ids) else {}

    by_id = wait_for(lines_by_id, what="a completion line for every request, lost ones too")
    joined = sum(1 for r in sent if len(by_id.get(r.request_id, ())) == 1)
    print(f"log join: {joined}/{len(sent)} responses have exactly one completion line")
    for response in sent:
        (line,) = by_id[response.request_id]
        if _worker_died(response):
            assert (line["outcome"], line["status"], line["reason"]) == (
                "server_error",
                500,
                "worker_died",
            )
        else:
            assert line["status"] == response.status and "reason" not in line

    assert sorted(os.listdir(metrics_dir)) == files_before
    assert total(end, "tsobs_workers", model_name=MODEL_NAME) == 2
    assert total(end, "tsobs_exporter_metrics_files") == len(files_before)


def test_a_worker_killed_while_loading_counts_as_a_start_and_a_failed_load(
    tmp_path: Path, model_store: Path
) -> None:
    """The OOM-at-load crash loop: a worker that dies inside ``initialize`` is a start and a
    failed load, not nothing."""
    server = start_torchserve(
        tmp_path, model_store, 9450, models=(MODEL_NAME,), TINY_INITIALIZE_SLEEP_S="4"
    )
    exporter = start_exporter(tmp_path, tmp_path / "metrics")
    try:
        start = scrape(exporter.metrics_url)
        ready = set(server.worker_pids(MODEL_NAME))
        os.kill(sorted(ready)[0], signal.SIGKILL)

        def loading_worker() -> int:
            """The PID of a restarted worker once it is inside ``initialize``."""
            for path in (tmp_path / "metrics").glob("ledger_*"):
                state = ledger.read_file(path)
                if state and state.get("loading") and state.get("pid") not in ready:
                    return state["pid"]
            return 0

        os.kill(
            wait_for(loading_worker, timeout=60, what="a restarted worker loading"), signal.SIGKILL
        )
        wait_for(lambda: server.ready_workers(MODEL_NAME) == 2, timeout=120, what="2 ready workers")
        end = wait_for(
            lambda: (
                lambda s: (
                    s
                    if total(s, "tsobs_model_loads_total", outcome="server_error")
                    > total(start, "tsobs_model_loads_total", outcome="server_error")
                    else None
                )
            )(scrape(exporter.metrics_url)),
            what="the failed load to be settled",
        )

        def delta(name: str, **labels: str) -> float:
            return growth(start, end, name, model_name=MODEL_NAME, **labels)

        assert delta("tsobs_worker_starts_total") == 2  # the one killed loading, and the next
        assert delta("tsobs_model_loads_total", outcome="server_error") == 1
        assert delta("tsobs_model_loads_total", outcome="success") == 1
    finally:
        exporter.service.stop()
        server.stop()


@pytest.mark.parametrize("unusable_dir", [False, True], ids=["bad-values", "unusable-metrics-dir"])
def test_bad_settings_never_reach_a_request(
    tmp_path: Path, model_store: Path, unusable_dir: bool
) -> None:
    """Bad values disable only what they configure, are said once per worker on stderr, and
    are counted where a metric can still be written."""
    env = {"TSOBS_FLUENT_HOST": "127.0.0.1", "TSOBS_FLUENT_PORT": "abc"}
    env["TSOBS_GPU_SAMPLE_INTERVAL_S"] = "-1"
    if unusable_dir:
        (tmp_path / "a-file").write_text("")
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "a-file" / "metrics")
    server = start_torchserve(tmp_path, model_store, 9500, models=(MODEL_NAME,), **env)
    try:
        responses = send_all(
            server.ports.inference_url, MODEL_NAME, [json_request([1, 2, 3, 4])] * 12
        )
        assert [r.status for r in responses] == [200] * 12
        ids = {r.request_id for r in responses}
        wait_for(
            lambda: (
                ids
                <= {
                    r.get("request_id")
                    for r in completions(json_log_lines(server.json_log), MODEL_NAME)
                }
            ),
            what="completion lines: logs stay on",
        )
        said = server.model_log.read_text()
        assert said.count("TSOBS_FLUENT_PORT='abc' is not an integer; Fluentd shipping is off") == 2
        assert said.count("TSOBS_GPU_SAMPLE_INTERVAL_S='-1'") == 2  # once per worker
        if unusable_dir:
            assert said.count("PROMETHEUS_MULTIPROC_DIR=") == 2
            assert "metrics and request counts are off; logs are still written" in said
        else:
            exporter = start_exporter(tmp_path, tmp_path / "metrics")
            try:
                samples = scrape(exporter.metrics_url)
                assert total(samples, "tsobs_internal_errors_total", component="settings") == 4
                assert total(samples, REQUESTS, model_name=MODEL_NAME, outcome="success") == 12
            finally:
                exporter.service.stop()
    finally:
        server.stop()
