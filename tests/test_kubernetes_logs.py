"""The pod log collector's config, run by the real Fluentd on CRI-formatted container logs.

Fluentd 1.16.5 (``FLUENTD``: path to its bin/fluentd) reads files named and formatted as the
kubelet writes them under /var/log/containers and ships through the real Elasticsearch output
to a stand-in that records the ``_bulk`` requests.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List

import pytest

from obs.services import Service
from tests.support.es_standin import ElasticsearchStandin
from tests.support.paths import REPO
from tests.support.traffic import wait_for

CONF = REPO / "kubernetes" / "logging" / "fluent.conf"
CONTAINER_ID = "3f" * 32
OTHER_ID = "ab" * 32
POD = "torchserve-5d8f9c7b6-x2k4q"
MIXIN_LINE = {
    "timestamp": "2026-11-27T10:00:00.119000Z",
    "level": "info",
    "logger": "torchserve_obs",
    "event": "request_completed",
    "model_name": "tiny",
    "model_version": "1.0",
    "request_id": "8c1e7a5e-8f6c-4a8e-9d0b-6d5b3a1f2e90",
    "duration_ms": 3.2,
    "outcome": "success",
}


def _cri(time: str, stream: str, line: str, tag: str = "F") -> str:
    return f"2026-11-27T10:00:{time}.123456789Z {stream} {tag} {line}\n"


@pytest.fixture
def fluentd_binary() -> str:
    path = os.environ.get("FLUENTD")
    if not path:
        pytest.skip(
            "FLUENTD is not set (path to a Fluentd 1.16 bin/fluentd, e.g. ../shared/tools/fluentd)"
        )
    if not Path(path).exists() and not shutil.which(path):
        pytest.skip(f"FLUENTD={path} does not exist")
    return path


def _by_pod_container(records: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {}
    for record in records:
        out.setdefault(record.get("k8s.container.name", "?"), []).append(record)
    return out


def test_cri_lines_become_records_with_fields_and_pod_metadata(
    fluentd_binary: str, tmp_path: Path
) -> None:
    logs = tmp_path / "containers"
    logs.mkdir()
    log4j = "2026-11-27T10:00:00,120 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - "
    (logs / f"{POD}_torchserve_torchserve-{CONTAINER_ID}.log").write_text(
        _cri("00", "stdout", log4j + json.dumps(MIXIN_LINE))
        + _cri(
            "01",
            "stdout",
            "2026-11-27T10:00:01,000 [INFO ] main org.pytorch.serve.ModelServer - Torchserve version: 0.12.0",
        )
        + _cri("02", "stderr", "Traceback (most recent call last):")
        + _cri("03", "stdout", '{"event": "first part of a long li', tag="P")
        + _cri("03", "stdout", 'ne"}')
    )
    (logs / f"{POD}_torchserve_tsobs-exporter-{OTHER_ID}.log").write_text(
        _cri("04", "stdout", "torchserve-obs exporter: serving /home/model-server/metrics")
    )
    (logs / f"coredns-abc_kube-system_coredns-{OTHER_ID}.log").write_text(
        _cri("05", "stdout", "[INFO] not ours")
    )
    state = tmp_path / "state"
    state.mkdir()
    es = ElasticsearchStandin()
    env = {
        **os.environ,
        "TSOBS_LOG_DIR": str(logs),
        "TSOBS_STATE_DIR": str(state),
        "TSOBS_FLUSH_INTERVAL": "1s",
        "ELASTICSEARCH_URL": f"http://127.0.0.1:{es.port}",
    }
    fluentd = Service(
        "fluentd",
        [fluentd_binary, "-c", str(CONF), "--no-supervisor"],
        tmp_path / "fluentd.out",
        env=env,
    ).start()
    try:
        wait_for(
            lambda: len(es.actions) >= 6 or not fluentd.running(),
            timeout=120,
            what="six records shipped",
        )
        assert fluentd.running(), fluentd.log_tail()
    finally:
        fluentd.stop()
        es.close()
    assert {op for op, _index, _id in es.actions} == {"create"}, "data streams take create"
    assert {index for _op, index, _id in es.actions} == {"tsobs-logs-otel"}
    assert all(doc_id for _op, _index, doc_id in es.actions), "an _id for every record"
    records = es.snapshot()
    assert all("_hash" not in r and "log" not in r for r in records)
    assert all(
        r["k8s.namespace.name"] == "torchserve" and r["k8s.pod.name"] == POD for r in records
    )
    containers = _by_pod_container(records)
    assert sorted(containers) == ["torchserve", "tsobs-exporter"]  # kube-system not read

    (mixin,) = [r for r in containers["torchserve"] if r.get("event") == "request_completed"]
    for key, value in MIXIN_LINE.items():
        assert mixin[key] == value, key
    assert mixin["@timestamp"].startswith("2026-11-27T10:00:00.119")
    assert mixin["logger"] == "torchserve_obs" and mixin["thread"] == "W-9000-tiny_1.0-stdout"
    assert "message" not in mixin and mixin["container.id"] == CONTAINER_ID

    (frontend,) = [
        r for r in containers["torchserve"] if r.get("logger") == "org.pytorch.serve.ModelServer"
    ]
    assert frontend["message"] == "Torchserve version: 0.12.0" and frontend["level"] == "info"
    assert frontend["@timestamp"].startswith("2026-11-27T10:00:01.123")  # the runtime's time
    (traceback,) = [r for r in containers["torchserve"] if r["stream"] == "stderr"]
    assert (
        traceback["message"] == "Traceback (most recent call last):"
        and traceback["level"] == "warn"
    )
    parts = [
        r["message"]
        for r in containers["torchserve"]
        if r.get("message", "").startswith(('{"event"', 'ne"'))
    ]
    assert parts == ['{"event": "first part of a long li', 'ne"}'], (
        "split lines pass through as text"
    )
    (exporter,) = containers["tsobs-exporter"]
    assert exporter["message"].startswith("torchserve-obs exporter: serving")
