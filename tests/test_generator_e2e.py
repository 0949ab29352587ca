"""End to end: real Prometheus servers scrape a real TorchServe and the exporter while traffic
(errors included) flows; every dashboard query returns finite data for every value of every
variable, in each scrape layout, and the error-ratio alert fires.

Three layouts, one Prometheus each, the same TorchServe and exporter:

- ``native``: both on 127.0.0.1, different ports (``torchserve-obs stack up``, a VM).
- ``compose``: the scrape jobs of ``compose/prometheus/prometheus.yml`` as they are, with the
  compose service names (``torchserve:8082``, ``exporter:8083``) kept as ``instance`` and
  only the address pointed at loopback: the exporter lives in a container of its own.
- ``pod``: a sidecar in one pod, both series labelled ``pod``; dashboards with
  ``host_label: pod``.

Then a rollout on the native layout: a canary version is registered, gets traffic and is
unregistered; the versions view shows both versions side by side and the annotations mark
it serving, then retired (once its last worker is gone).

The config shortens windows and ``for:`` so this takes about three minutes; the committed
defaults keep production values.
"""

from __future__ import annotations

import copy
import json
import math
import re
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Set, Tuple

import pytest
import yaml

from handler_mixins.example.build import MODEL_NAME, MODEL_VERSION, PLAIN_MODEL_NAME
from obs.generate import config, dashboards, panels, writers
from obs.services import Service, http_get, wait_until_http_ok
from obs.traffic import json_request, predict
from tests.support.paths import REPO
from tests.support.prometheus import start_prometheus
from tests.support.traffic import wait_for
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
GPU_PANELS = {"GPU memory in use", "GPU utilisation", "GPU memory by worker"}
"""Panels excepted from "returns data": the test machine has no GPU."""
POD = "tiny-7c9d5-x2x4q"
CANARY = "2.0"
"""The version the rollout registers beside MODEL_VERSION, then retires."""


QUERY_TIMEOUT_S = 30.0
"""Loopback queries take milliseconds; a loaded 2-core CI machine has been seen to need > 5 s."""


def _query(prometheus: str, expr: str) -> List[Dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.loads(http_get(url, timeout=QUERY_TIMEOUT_S))
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def _query_range(prometheus: str, expr: str, start: float) -> List[Dict[str, Any]]:
    """What Grafana asks for an annotation: the expression over the dashboard's range."""
    params = {"query": expr, "start": start, "end": time.time(), "step": 2}
    answer = json.loads(
        http_get(
            f"{prometheus}/api/v1/query_range?" + urllib.parse.urlencode(params),
            timeout=QUERY_TIMEOUT_S,
        )
    )
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def _finite(result: List[Dict[str, Any]]) -> bool:
    return bool(result) and all(math.isfinite(float(r["value"][1])) for r in result)


def _firing(prometheus: str) -> Set[str]:
    alerts = json.loads(http_get(f"{prometheus}/api/v1/alerts", timeout=QUERY_TIMEOUT_S))["data"][
        "alerts"
    ]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


class _Traffic(threading.Thread):
    """Valid, malformed (400) and failing (503) requests, until stopped; some to the model
    without the mixin, so TorchServe's per-model latencies have traffic for every model."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.stop = threading.Event()
        self.statuses: List[int] = []
        self.canary = threading.Event()
        """Set: every other valid request goes to the canary version too."""

    def run(self) -> None:
        bodies = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0], {"fail": "e2e"}, "not four numbers"]
        i = 0
        while not self.stop.is_set():
            self.statuses.append(
                predict(self.base_url, MODEL_NAME, json_request(bodies[i % 4])).status
            )
            if i % 4 == 0:
                predict(self.base_url, PLAIN_MODEL_NAME, json_request(bodies[0]))
            if i % 2 == 0 and self.canary.is_set():
                predict(self.base_url, f"{MODEL_NAME}/{CANARY}", json_request(bodies[0]))
            i += 1
            time.sleep(0.05)


class Layout(NamedTuple):
    name: str
    cfg: Dict[str, Any]
    jobs: List[Dict[str, Any]]


def _compose_jobs(torchserve: str, exporter: str) -> List[Dict[str, Any]]:
    """The compose file's two jobs, their labels and relabelling untouched, scraping loopback.

    Compose's DNS is emulated after the file's own rules: ``instance`` keeps the compose
    address (as Prometheus would set it), then ``__address__`` points at the real port.
    """
    compose = yaml.safe_load((REPO / "compose" / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: copy.deepcopy(j) for j in compose["scrape_configs"]}
    out = []
    for name, target in (("torchserve", torchserve), ("torchserve-obs", exporter)):
        job = jobs[name]
        job["relabel_configs"] = job.get("relabel_configs", []) + [
            {
                "source_labels": ["instance", "__address__"],
                "regex": ";(.*)",
                "target_label": "instance",
            },
            {"target_label": "__address__", "replacement": target},
        ]
        out.append(job)
    return out


def _layouts(torchserve: str, exporter: str) -> List[Layout]:
    def static(name: str, target: str, **labels: str) -> Dict[str, Any]:
        group: Dict[str, Any] = {"targets": [target]}
        if labels:
            group["labels"] = labels
        return {"job_name": name, "static_configs": [group]}

    pod = {"pod": POD, "namespace": "ml"}
    return [
        Layout(
            "native",
            TEST_CONFIG,
            [static("torchserve", torchserve), static("torchserve-obs", exporter)],
        ),
        Layout("compose", TEST_CONFIG, _compose_jobs(torchserve, exporter)),
        Layout(
            "pod",
            {**TEST_CONFIG, "host_label": "pod"},
            [static("torchserve", torchserve, **pod), static("torchserve-obs", exporter, **pod)],
        ),
    ]


def _start_prometheus(tmp: Path, layout: Layout) -> Tuple[Service, str, Dict[str, Any]]:
    cfg = config.resolve(layout.cfg)
    writers.write(tmp, writers.build(cfg))
    service, url = start_prometheus(tmp, layout.jobs, tmp / writers.RULES_FILE)
    return service, url, cfg


def _variable_values(prometheus: str, var: Mapping[str, Any], chosen: Dict[str, str]) -> List[str]:
    """The values Grafana would offer: ``label_values(selector, label)`` then the regex."""
    found = re.fullmatch(r"label_values\((.*), (\w+)\)", var["query"], re.S)
    assert found, var["query"]
    selector, label = substitute(found.group(1), chosen), found.group(2)
    url = f"{prometheus}/api/v1/label/{label}/values?" + urllib.parse.urlencode(
        {"match[]": selector}
    )
    values = json.loads(http_get(url))["data"]
    if var["regex"]:
        pattern = re.compile(var["regex"].strip("/"))
        values = [m.group(1) for m in map(pattern.match, values) if m]
    return sorted(set(values))


def _choices(
    prometheus: str, dash: Dict[str, Any]
) -> Tuple[List[Dict[str, str]], Dict[str, List[str]]]:
    """Every variable on "All" (or its first value), then each value of each variable alone."""
    base: Dict[str, str] = {}
    options: Dict[str, List[str]] = {}
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        values = _variable_values(prometheus, var, base)
        options[var["name"]] = values
        base[var["name"]] = var["allValue"] if var["multi"] and values else (values or [""])[0]
    choices = [base]
    for name, values in options.items():
        choices += [{**base, name: value} for value in values if value != base[name]]
    return choices, options


def _canary_archive(model_store: Path) -> str:
    """The example model's archive with version CANARY in its manifest: a new version."""
    name = f"{MODEL_NAME}-{CANARY}.mar"
    with (
        zipfile.ZipFile(model_store / f"{MODEL_NAME}.mar") as src,
        zipfile.ZipFile(model_store / name, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = CANARY
                data = json.dumps(manifest).encode()
            dst.writestr(item, data)
    return name


def _manage(torchserve: Any, method: str, path: str) -> None:
    request = urllib.request.Request(f"{torchserve.ports.management_url}{path}", method=method)
    with urllib.request.urlopen(request, timeout=180) as answer:
        assert answer.status == 200, answer.read()


def _versions_view(prometheus: str, cfg: Mapping[str, Any]) -> Dict[str, Dict[str, float]]:
    """The overview's versions bar gauges, by title then model version, every variable on All."""
    overview = dashboards.render(cfg, panels.dashboards(cfg)[0])
    view = {}
    for panel in overview["panels"]:
        if panel["type"] == "bargauge":
            expr = substitute(
                panel["targets"][0]["expr"], {"host": ".+", "model": MODEL_NAME, "version": ".+"}
            )
            view[panel["title"]] = {
                r["metric"]["model_version"]: float(r["value"][1]) for r in _query(prometheus, expr)
            }
    return view


def _rollouts(prometheus: str, cfg: Mapping[str, Any], started: float) -> Set[Tuple[str, str]]:
    """(version, change) pairs the rollout annotation marks since ``started``."""
    overview = dashboards.render(cfg, panels.dashboards(cfg)[0])
    (note,) = [a for a in overview["annotations"]["list"] if a["name"] == "Version rollouts"]
    expr = substitute(note["expr"], {"host": ".+", "model": MODEL_NAME, "version": ".+"})
    return {
        (r["metric"]["model_version"], r["metric"]["change"])
        for r in _query_range(prometheus, expr, started)
    }


def _roll_out_and_back(
    torchserve: Any, traffic: _Traffic, prometheus: str, cfg: Mapping[str, Any]
) -> None:
    """Register a canary version, send it traffic, unregister it: the versions view shows
    both side by side, and the annotations mark it serving, then retired."""
    started = time.time()
    archive = _canary_archive(torchserve.model_store)
    _manage(torchserve, "POST", f"/models?url={archive}&initial_workers=1&synchronous=true")
    try:
        traffic.canary.set()

        def both_serving() -> Dict[str, Dict[str, float]]:
            view = _versions_view(prometheus, cfg)
            share = view["Versions: traffic share"]
            ok = (
                set(view["Versions serving: live workers"]) >= {MODEL_VERSION, CANARY}
                and set(share) == {MODEL_VERSION, CANARY}
                and all(0 < v < 1 for v in share.values())
                and abs(sum(share.values()) - 1) < 1e-6
                and set(view["Versions: server error ratio"]) == {MODEL_VERSION, CANARY}
                and set(view["Versions: p99 handle latency"]) == {MODEL_VERSION, CANARY}
            )
            return view if ok else {}

        wait_for(both_serving, 120, "both versions in the versions view")
        wait_for(lambda: (CANARY, "serving") in _rollouts(prometheus, cfg, started), 60, "serving")
    finally:
        traffic.canary.clear()
        _manage(torchserve, "DELETE", f"/models/{MODEL_NAME}/{CANARY}")
    # The exporter drops a version's gauges once no live worker holds its ledger.
    wait_for(
        lambda: (CANARY, "retired") in _rollouts(prometheus, cfg, started), 150, "retired mark"
    )


def _host_values(prometheus: str, cfg: Mapping[str, Any]) -> List[str]:
    dash = dashboards.render(cfg, panels.dashboards(cfg)[0])
    host = {v["name"]: v for v in dash["templating"]["list"]}["host"]
    return _variable_values(prometheus, host, {})


def _problems(prometheus: str, cfg: Mapping[str, Any], started: float) -> List[str]:
    """Each panel query (and annotation) that returns nothing, or a non-finite number."""
    problems = []
    for spec in panels.dashboards(cfg):
        dash = dashboards.render(cfg, spec)
        choices, options = _choices(prometheus, dash)
        problems += [f"{spec.slug}: variable {n} has no value" for n, v in options.items() if not v]
        for chosen in choices:
            for panel in dash["panels"]:
                if panel["type"] == "row" or panel["title"] in GPU_PANELS:
                    continue
                for target in panel["targets"]:
                    expr = substitute(target["expr"], chosen)
                    if not _finite(_query(prometheus, expr)):
                        problems.append(f"{spec.slug} / {panel['title']} {chosen}: {expr}")
        for note in dash["annotations"]["list"]:
            if "expr" in note:
                expr = substitute(note["expr"], choices[0])
                if not _query_range(prometheus, expr, started):
                    problems.append(f"{spec.slug} / annotation {note['name']}: {expr}")
    return problems


def test_dashboards_show_data_in_every_layout_and_error_alert_fires(
    tmp_path: Path, torchserve: Any, exporter: Any
) -> None:
    ts_target = f"127.0.0.1:{torchserve.ports.metrics}"
    exporter_target = exporter.url.split("//")[1]
    layouts = _layouts(ts_target, exporter_target)
    servers: List[Tuple[Layout, Service, str, Dict[str, Any]]] = []
    traffic = _Traffic(torchserve.ports.inference_url)
    started = time.time()
    try:
        for layout in layouts:
            (tmp_path / layout.name).mkdir()
            servers.append((layout, *_start_prometheus(tmp_path / layout.name, layout)))
        for _, service, url, _ in servers:
            wait_until_http_ok(f"{url}/-/ready", 60, service.process)
        traffic.start()
        deadline = time.monotonic() + 240  # TorchServe samples host metrics once a minute
        problems = {layout.name: ["not checked yet"] for layout in layouts}
        while problems and time.monotonic() < deadline:
            for layout, _, url, cfg in servers:
                if layout.name not in problems:
                    continue  # passed once: proven
                found = _problems(url, cfg, started)
                if "TorchServeModelErrorRatioHigh" not in _firing(url):
                    found.append("TorchServeModelErrorRatioHigh is not firing")
                problems[layout.name] = found
                if not found:
                    del problems[layout.name]
            time.sleep(3)
        assert problems == {}, "\n\n".join(f"{k}:\n" + "\n".join(v) for k, v in problems.items())
        assert {200, 400, 503} <= set(traffic.statuses)
        # The single-host choice: one host per layout, the TorchServe container's in compose.
        expected_hosts = {"native": ["127.0.0.1"], "compose": ["torchserve"], "pod": [POD]}
        for layout, _, url, cfg in servers:
            assert _host_values(url, cfg) == expected_hosts[layout.name]
        ratio = _query(
            servers[0][2],
            f'model:tsobs_requests:server_error_ratio_rate{WINDOW}{{model_name="{MODEL_NAME}"}}',
        )
        assert 0.1 < float(ratio[0]["value"][1]) < 0.5  # one request in four fails
        _roll_out_and_back(torchserve, traffic, servers[0][2], servers[0][3])
    finally:
        traffic.stop.set()
        for _, service, _, _ in servers:
            service.stop()
    needs_gpu = {
        p.title
        for s in panels.dashboards(config.resolve(TEST_CONFIG))
        for r in s.rows
        for p in r.panels
        if p.needs == panels.GPU
    }
    assert needs_gpu == GPU_PANELS
