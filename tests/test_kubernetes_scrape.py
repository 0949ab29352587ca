"""The PodMonitors' relabelling, run by a real Prometheus: dashboards and rules see both layouts.

No cluster runs here, so the test builds the scrape config prometheus-operator generates from
a PodMonitor endpoint (its default relabelling: ``namespace``, ``container``, ``pod``,
``endpoint``, ``job=<namespace>/<name>``; then the endpoint's ``relabelings`` and
``metricRelabelings``) with static targets carrying the ``__meta_kubernetes_*`` labels that pod
discovery would. A real TorchServe and real exporters are scraped as in a pod: the sidecar
layout (two ports) and the KServe layout (one merged port). Every dashboard query, filtered on
each pod as the dashboards' Host variable would, must return data, and the recording rules
must produce series for both.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from handler_mixins.example.build import MODEL_NAME
from obs.exporter import HEALTH_PATH
from obs.generate import config, panels, rules, writers
from obs.services import Service, free_port, wait_until_http_ok
from tests.support.prometheus import start_prometheus
from tests.support.traffic import wait_for
from tests.test_dashboards import substitute
from tests.test_generator_e2e import GPU_PANELS, TEST_CONFIG, WINDOW, _query, _Traffic

pytestmark = [pytest.mark.torchserve, pytest.mark.prometheus]

SIDECAR_POD = "torchserve-5d8f9c7b6-x2k4q"
KSERVE_POD = "tiny-predictor-7c9d5f-abcde"
_SNAKE = {
    "sourceLabels": "source_labels",
    "targetLabel": "target_label",
    "replacement": "replacement",
    "regex": "regex",
    "action": "action",
    "separator": "separator",
}


def _snake(rules: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [{_SNAKE[k]: v for k, v in rule.items()} for rule in rules]


def operator_scrape_configs(
    monitor: Dict[str, Any], namespace: str, pod: str, targets: Dict[str, str]
) -> List[Dict[str, Any]]:
    """What prometheus-operator makes of ``monitor``'s endpoints, for one pod.

    ``targets`` maps a container port name to the address it is reachable at here.
    """
    containers = {"ts-metrics": "torchserve", "tsobs-metrics": "tsobs-exporter"}
    out = []
    for index, endpoint in enumerate(monitor["spec"]["podMetricsEndpoints"]):
        port = endpoint["port"]
        meta = {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_container_name": containers[port],
        }
        defaults = [
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {
                "source_labels": ["__meta_kubernetes_pod_container_name"],
                "target_label": "container",
            },
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "endpoint", "replacement": port},
            {"target_label": "job", "replacement": f"{namespace}/{monitor['metadata']['name']}"},
        ]
        out.append(
            {
                "job_name": f"podMonitor/{namespace}/{monitor['metadata']['name']}/{index}",
                "metrics_path": endpoint["path"],
                "static_configs": [{"targets": [targets[port]], "labels": meta}],
                "relabel_configs": defaults + _snake(endpoint["relabelings"]),
                "metric_relabel_configs": _snake(endpoint.get("metricRelabelings", [])),
            }
        )
    return out


def _monitor(files: Dict[str, str], directory: str) -> Dict[str, Any]:
    return dict(yaml.safe_load(files[f"kubernetes/{directory}/podmonitor.yaml"]))


def test_both_layouts_feed_every_dashboard_query_and_the_rules(
    tmp_path: Path, torchserve: Any, exporter: Any
) -> None:
    cfg = config.resolve(TEST_CONFIG)
    files = writers.build(cfg)
    writers.write(tmp_path, files)
    merged_port = free_port()
    merged = Service(
        "exporter-merged",
        [
            sys.executable,
            *("-m", "obs.cli", "exporter", "--port", str(merged_port)),
            *("--metrics-dir", str(torchserve.workdir / "metrics")),
            *("--torchserve-metrics", f"http://127.0.0.1:{torchserve.ports.metrics}/metrics"),
        ],
        tmp_path / "exporter-merged.out",
    ).start()
    scrape_configs = operator_scrape_configs(
        _monitor(files, "torchserve"),
        "torchserve",
        SIDECAR_POD,
        {
            "ts-metrics": f"127.0.0.1:{torchserve.ports.metrics}",
            "tsobs-metrics": exporter.url.split("//")[1],
        },
    ) + operator_scrape_configs(
        _monitor(files, "kserve"),
        "models",
        KSERVE_POD,
        {"tsobs-metrics": f"127.0.0.1:{merged_port}"},
    )
    prometheus, url = start_prometheus(tmp_path, scrape_configs, tmp_path / writers.RULES_FILE)
    traffic = _Traffic(torchserve.ports.inference_url)
    try:
        wait_until_http_ok(f"http://127.0.0.1:{merged_port}{HEALTH_PATH}", 60, merged.process)
        wait_until_http_ok(f"{url}/-/ready", 60, prometheus.process)
        traffic.start()
        queries = [
            (
                pod,
                panel.title,
                substitute(query.expr, {"model": MODEL_NAME, "version": ".+", "host": pod}),
            )
            for pod in (SIDECAR_POD, KSERVE_POD)
            for spec in panels.dashboards(cfg)
            for row in spec.rows
            for panel in row.panels
            if panel.title not in GPU_PANELS
            for query in panel.queries
            if "$host" in query.expr
        ]
        assert len(queries) > 30
        deadline = time.monotonic() + 150  # TorchServe samples host metrics once a minute
        empty: List[str] = []
        while time.monotonic() < deadline:
            empty = [
                f"{pod} / {title}: {expr}" for pod, title, expr in queries if not _query(url, expr)
            ]
            if not empty:
                break
            time.sleep(3)
        assert empty == [], "\n\n".join(empty)
        hosts = {
            r["metric"]["instance"] for r in _query(url, f"up{{{cfg['torchserve_selector']}}}")
        }
        assert hosts == {SIDECAR_POD, KSERVE_POD}, "the dashboards' Host variable lists the pods"
        for pod, namespace in ((SIDECAR_POD, "torchserve"), (KSERVE_POD, "models")):
            for metric, job in (
                ("ts_inference_requests_total", "torchserve"),
                ("tsobs_requests_total", "torchserve-obs"),
            ):
                series = _query(url, f'{metric}{{instance="{pod}"}}')
                assert series, (metric, pod)
                assert {
                    (s["metric"]["job"], s["metric"]["pod"], s["metric"]["namespace"])
                    for s in series
                } == {(job, pod, namespace)}
        for job in ("torchserve", "torchserve-obs"):  # one port, one up{} per job
            assert _query(url, f'up{{job="{job}", instance="{KSERVE_POD}"}} == 1'), job
        # A recording rule that aggregates by instance sees each pod's TorchServe.
        wait_for(
            lambda: (
                {SIDECAR_POD, KSERVE_POD}
                <= {r["metric"]["instance"] for r in _query(url, rules.http_rate(WINDOW))}
            ),
            timeout=60,
            what="the recorded HTTP rates of both pods",
        )
    finally:
        traffic.stop.set()
        prometheus.stop()
        merged.stop()
