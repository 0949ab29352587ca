"""End to end: a real Prometheus scrapes a real TorchServe and the exporter while traffic
(errors included) flows; every dashboard query returns data and the error-ratio alert fires.

The config shortens windows and ``for:`` so this takes about a minute; the committed
defaults keep production values.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest
import yaml

from handler_mixins.example.build import MODEL_NAME, MODEL_VERSION
from obs.generate import config, dashboards, panels, writers
from obs.services import Service, free_port, http_get, wait_until_http_ok
from obs.traffic import json_request, predict
from tests.test_dashboards import substitute

pytestmark = [pytest.mark.torchserve, pytest.mark.prometheus]

WINDOW = "10s"
TEST_CONFIG = {
    "rate_window": WINDOW,
    "min_request_rate": 0.1,
    "slo": {
        # A 1-hour SLO window: 12% of its budget in 30 s is the workbook's 14.4x burn.
        "window": "1h",
        "burn_windows": {
            "fast": [{"long": "30s", "short": WINDOW, "budget": 0.12}],
            "slow": [{"long": "1m", "short": "20s", "budget": 0.0167}],
        },
    },
    "alerts": {"TorchServeModelErrorRatioHigh": {"for": "5s"}},
}
GPU_PANELS = {"GPU memory used / total", "GPU utilisation", "GPU memory by worker"}
"""Panels excepted from "returns data": the test machine has no GPU."""


def _query(prometheus: str, expr: str) -> List[Dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.loads(http_get(url))
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def _firing(prometheus: str) -> Set[str]:
    alerts = json.loads(http_get(f"{prometheus}/api/v1/alerts"))["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


class _Traffic(threading.Thread):
    """Valid, malformed (400) and failing (503) requests to the example model, until stopped."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.stop = threading.Event()
        self.statuses: List[int] = []

    def run(self) -> None:
        bodies = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0], {"fail": "e2e"}, "not four numbers"]
        i = 0
        while not self.stop.is_set():
            self.statuses.append(
                predict(self.base_url, MODEL_NAME, json_request(bodies[i % 4])).status
            )
            i += 1
            time.sleep(0.05)


def test_dashboards_show_data_and_error_alert_fires(
    tmp_path: Path, torchserve: Any, exporter: Any
) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (Debian: apt-get install prometheus)"
    cfg = config.resolve(TEST_CONFIG)
    files = writers.build(cfg)
    writers.write(tmp_path, files)
    port = free_port()
    prom_config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / writers.RULES_FILE)],
        "scrape_configs": [
            {
                "job_name": "torchserve",
                "static_configs": [{"targets": [f"127.0.0.1:{torchserve.ports.metrics}"]}],
            },
            {
                "job_name": "torchserve-obs",
                "static_configs": [{"targets": [exporter.url.split("//")[1]]}],
            },
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
    prometheus = Service(
        "prometheus",
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path / "prometheus.log",
    ).start()
    url = f"http://127.0.0.1:{port}"
    traffic = _Traffic(torchserve.ports.inference_url)
    try:
        wait_until_http_ok(f"{url}/-/ready", 60, prometheus.process)
        traffic.start()
        queries = [
            (
                spec.title,
                panel.title,
                substitute(
                    query.expr, {"model": MODEL_NAME, "version": MODEL_VERSION, "instance": ".+"}
                ),
            )
            for spec in panels.dashboards(cfg)
            for row in spec.rows
            for panel in row.panels
            if panel.title not in GPU_PANELS
            for query in panel.queries
        ]
        assert len(queries) > 30
        deadline = time.monotonic() + 150  # TorchServe samples host metrics once a minute
        empty: List[str] = []
        while time.monotonic() < deadline:
            empty = [f"{d} / {p}: {e}" for d, p, e in queries if not _query(url, e)]
            if not empty and "TorchServeModelErrorRatioHigh" in _firing(url):
                break
            time.sleep(3)
        assert empty == [], "\n\n".join(empty)
        assert "TorchServeModelErrorRatioHigh" in _firing(url)
        assert {200, 400, 503} <= set(traffic.statuses)
        ratio = _query(
            url,
            f'model:tsobs_requests:server_error_ratio_rate{WINDOW}{{model_name="{MODEL_NAME}"}}',
        )
        assert 0.1 < float(ratio[0]["value"][1]) < 0.5  # one request in four fails
    finally:
        traffic.stop.set()
        prometheus.stop()
    needs_gpu = {
        p.title
        for s in panels.dashboards(cfg)
        for r in s.rows
        for p in r.panels
        if p.needs == panels.GPU
    }
    assert needs_gpu == GPU_PANELS
    assert [dashboards.uid(cfg, s) for s in panels.dashboards(cfg)] == [
        "torchserve-obs-overview",
        "torchserve-obs-model",
    ]
