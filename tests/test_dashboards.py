"""The generated Grafana dashboards: current schema, conventions, PromQL that parses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List

import jsonschema
import promql_parser
import pytest
import yaml

from obs.generate import config, dashboards, panels, rules
from obs.generate import torchserve as ts
from obs.signals import Label, Metrics, all_metrics
from tests.support.paths import REPO, SCHEMAS

SCHEMA = json.loads((SCHEMAS / "grafana-dashboard.jsonschema.json").read_text())
FILES = sorted((REPO / "dashboards").glob("*.json"))
MACROS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def substitute(expr: str, variables: Dict[str, str]) -> str:
    """Grafana macros and variables replaced by values, as Grafana does before querying."""
    for name, value in {**MACROS, **{f"${k}": v for k, v in variables.items()}}.items():
        expr = expr.replace(name, value)
    return expr


def _panels(dash: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    return (p for p in dash["panels"] if p["type"] != "row")


def test_both_dashboards_are_committed() -> None:
    assert [f.name for f in FILES] == ["torchserve-obs-model.json", "torchserve-obs-overview.json"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_validates_against_the_current_grafana_schema(path: Path) -> None:
    errors = list(jsonschema.Draft7Validator(SCHEMA).iter_errors(json.loads(path.read_text())))
    assert errors == []


def test_the_schema_check_is_not_vacuous() -> None:
    """Raw grafanalib output (legacy keys) fails the same validator."""
    from grafanalib import core as G
    from grafanalib._gen import DashboardEncoder

    raw = json.loads(
        json.dumps(G.Dashboard(title="t", panels=[]).to_json_data(), cls=DashboardEncoder)
    )
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(raw))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_conventions(path: Path) -> None:
    dash = json.loads(path.read_text())
    assert dash["uid"] == path.stem and dash["schemaVersion"] >= 39
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names[:1] == ["datasource"] and {"host", "model", "version"} <= set(names)
    kinds = set()
    for panel in _panels(dash):
        kinds.add(panel["type"])
        assert panel["type"] in {"timeseries", "stat", "heatmap", "table", "bargauge"}, panel[
            "title"
        ]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            expr = target["expr"]
            assert "[5m]" not in expr or "avg_over_time" in expr, panel["title"]
            if "rate(" in expr or "increase(" in expr:
                assert "$__rate_interval" in expr or ":" in expr.split("{")[0], panel["title"]
        if panel["type"] == "heatmap":
            assert all(
                t["format"] == "heatmap" and "_bucket" in t["expr"] for t in panel["targets"]
            )
            assert panel["options"]["calculate"] is False
    assert {"timeseries", "heatmap"} <= kinds
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def _all_exprs(dash: Dict[str, Any]) -> List[str]:
    exprs = [t["expr"] for p in _panels(dash) for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    exprs += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    return exprs


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_query_parses_once_macros_are_substituted(path: Path) -> None:
    dash = json.loads(path.read_text())
    values = {"model": "m", "version": ".+", "host": ".+", "cluster": ".+"}
    for expr in _all_exprs(dash):
        label_values = re.fullmatch(r"label_values\((.*), \w+\)", expr, re.S)
        promql_parser.parse(substitute(label_values.group(1) if label_values else expr, values))


def test_torchserve_quirks_are_respected() -> None:
    exprs = [e for f in FILES for e in _all_exprs(json.loads(f.read_text()))]
    joined = "\n".join(exprs)
    for name in ts.REQUESTS_BY_CLASS.values():
        # Requests*XX only through label_replace(rate(...)) so their sum cannot collide.
        assert all(f"label_replace(rate({name}" in e for e in exprs if name + "{" in e)
    for counter in (ts.INFERENCE_LATENCY_US, ts.QUEUE_LATENCY_US):
        uses = [e for e in exprs if counter in e]
        assert uses and all(ts.INFERENCE_REQUESTS in e and "/ 1e6" in e for e in uses)
    # CPUUtilization reads 0 or 100 once a minute (a fresh process each time): no panel.
    assert ts.CPU_UTILIZATION not in joined
    assert "__name__" not in joined
    assert "Hostname" not in joined and "hostname" not in joined, (
        "join on instance, not host labels"
    )


def test_gpu_panels_are_marked() -> None:
    cfg = config.resolve({})
    gpu = [
        p.title
        for d in panels.dashboards(cfg)
        for r in d.rows
        for p in r.panels
        if p.needs == panels.GPU
    ]
    assert {"GPU utilisation", "GPU memory by worker", "GPU memory in use"} <= set(gpu)


def test_uids_are_stable_and_follow_the_config() -> None:
    cfg = config.resolve({"dashboards": {"uid_prefix": "acme"}})
    uids = [dashboards.render(cfg, spec)["uid"] for spec in panels.dashboards(cfg)]
    assert uids == ["acme-overview", "acme-model"]


# --- Lint: what an on-call engineer reads ------------------------------------------------

ALERT_RULES = {
    r["alert"]: r
    for g in yaml.safe_load((REPO / "alerts" / "torchserve-obs.rules.yml").read_text())["groups"]
    for r in g["rules"]
    if "alert" in r
}

PANEL_UNITS = {
    "seconds": {"s"},
    "microseconds": {"s"},
    "milliseconds": {"ms"},
    "bytes": {"bytes", "percentunit"},
    "mebibytes": {"mbytes"},
    "gibibytes": {"gbytes"},
    "percent": {"percent"},
    "ratio": {"percentunit"},
}
"""Grafana units a panel may use for a metric of each unit (a share of two byte counts is
a percentunit); the metric units come from obs.signals and TorchServe's metrics.yaml."""

COUNT_UNITS = {"reqps", "ops", "short", "percentunit", "bool", "none"}
"""Panels of plain counts: rates, multiples and shares of them."""


def _metric_units() -> Dict[str, str]:
    units = {m.name: m.unit for m in all_metrics() if m.unit}
    units.update(ts.UNITS)
    return units


def _units_in(exprs: List[str]) -> set:
    """Units of the metrics an expression reads (recorded ``a:b:c`` names excluded)."""
    found = set()
    for name, unit in _metric_units().items():
        pattern = rf"(?<![:\w]){re.escape(name)}(_bucket|_sum|_count)?(?=[{{\[\s)])"
        if any(re.search(pattern, e) for e in exprs):
            found.add(unit)
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_panel_unit_matches_its_metrics_unit(path: Path) -> None:
    for panel in _panels(json.loads(path.read_text())):
        unit = panel["fieldConfig"]["defaults"]["unit"]
        metric_units = _units_in([t["expr"] for t in panel["targets"]])
        for metric_unit in metric_units:
            assert unit in PANEL_UNITS[metric_unit], (panel["title"], metric_unit, unit)
        if not metric_units:
            assert unit in COUNT_UNITS, (panel["title"], unit)


def test_the_unit_check_catches_a_wrong_unit() -> None:
    memory = [f'max by (instance) ({ts.MEMORY_USED_MB}{{job="torchserve"}})']
    assert _units_in(memory) == {"mebibytes"}
    assert "decmbytes" not in PANEL_UNITS["mebibytes"]
    assert _units_in([f'rate({Metrics.STAGE_DURATION.series("bucket")}{{a="b"}}[1m])']) == {
        "seconds"
    }


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_panel_says_what_it_shows_its_unit_and_what_to_do(path: Path) -> None:
    for panel in _panels(json.loads(path.read_text())):
        text = panel.get("description", "")
        unit = panel["fieldConfig"]["defaults"]["unit"]
        assert f"Unit: {dashboards.UNIT_WORDS[unit]}." in text, panel["title"]
        assert re.search(r"If it looks wrong: \w", text), panel["title"]
        for link in panel["links"]:
            if link["title"].startswith("Runbook: "):
                alert = link["title"][len("Runbook: ") :]
                url = ALERT_RULES[alert]["annotations"]["runbook_url"]
                assert link["url"] == url and f"[runbook]({url})" in text, panel["title"]


def _by_title(dash: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {p["title"]: p for p in _panels(dash)}


def _runbooks(panel: Dict[str, Any]) -> set:
    return {link["title"] for link in panel["links"] if link["title"].startswith("Runbook: ")}


def test_panels_watched_by_an_alert_link_its_runbook() -> None:
    overview = _by_title(json.loads(FILES[1].read_text()))
    expected = {
        "Server error ratio": "TorchServeModelErrorRatioHigh",
        "TorchServe mean queue latency": "TorchServeModelQueueLatencyHigh",
        "Host memory": "TorchServeHostMemoryPressure",
        "Log records dropped": "TorchServeObsLogRecordsDropped",
        "Live workers": "TorchServeModelNoHealthyWorker",
        "HTTP 5xx ratio": "TorchServeHTTPErrorRatioHigh",
        "GPU memory in use": "TorchServeGPUMemoryNearFull",
    }
    for title, alert in expected.items():
        assert _runbooks(overview[title]) == {f"Runbook: {alert}"}, title
    linked = {t for p in overview.values() for t in _runbooks(p)}
    assert len(linked) >= 12


THRESHOLD_CONFIG = {
    "alerts": {
        "TorchServeModelErrorRatioHigh": {"threshold": 0.02},
        "TorchServeHTTPErrorRatioHigh": {"threshold": 0.07},
        "TorchServeModelQueueLatencyHigh": {"threshold": 2.5},
        "TorchServeGPUMemoryNearFull": {"threshold": 0.8},
        "TorchServeGPUUnderutilized": {"threshold": 20},
        "TorchServeHostMemoryPressure": {"threshold": 75},
        "TorchServeHostDiskPressure": {"threshold": 85},
        "TorchServeWorkerCrashLooping": {"threshold": 3},
        "TorchServeModelLoadSlow": {"threshold": 60},
    },
    "slo": {
        "latency": {"threshold_seconds": 0.5},
        # Half of a 20-hour budget in 1 h burns at 10x, in 5 h at 2x.
        "window": "20h",
        "burn_windows": {
            "fast": [{"long": "1h", "short": "5m", "budget": 0.5}],
            "slow": [{"long": "5h", "short": "1h", "budget": 0.5}],
        },
    },
}
EXPECTED_STEPS = {
    "Server error ratio": [(None, "green"), (0.02, "red")],
    "Versions: server error ratio": [(None, "green"), (0.02, "red")],
    "HTTP 5xx ratio": [(None, "green"), (0.07, "red")],
    "TorchServe mean queue latency": [(None, "green"), (2.5, "red")],
    "GPU memory in use": [(None, "green"), (0.8, "red")],
    "GPU utilisation": [(None, "blue"), (20, "green")],
    "Host memory": [(None, "green"), (75, "red")],
    "Disk utilisation": [(None, "green"), (85, "red")],
    "Worker process starts per 1h": [(None, "green"), (3, "red")],
    "Mean model load duration since start": [(None, "green"), (60, "red")],
    "Handler stage latency p50 / p95 / p99": [(None, "green"), (0.5, "red")],
    "Handler stage latency p99": [(None, "green"), (0.5, "red")],
    "Versions: p99 handle latency": [(None, "green"), (0.5, "red")],
    "Availability budget burn rate": [(None, "green"), (2, "orange"), (10, "red")],
    "Latency budget burn rate": [(None, "green"), (2, "orange"), (10, "red")],
    "Live workers": [(None, "red"), (1, "green")],
    "Versions serving: live workers": [(None, "red"), (1, "green")],
}


def _steps(panel: Dict[str, Any]) -> List[Any]:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [(s["value"], s["color"]) for s in steps]


def test_thresholds_are_the_alerts_thresholds_from_the_config() -> None:
    cfg = config.resolve(THRESHOLD_CONFIG)
    seen = set()
    for spec in panels.dashboards(cfg):
        for panel in _panels(dashboards.render(cfg, spec)):
            if panel["title"] in EXPECTED_STEPS:
                seen.add(panel["title"])
                assert _steps(panel) == EXPECTED_STEPS[panel["title"]], panel["title"]
                if panel["type"] == "timeseries":
                    style = panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]
                    assert style["mode"] != "off", panel["title"]
    assert seen == set(EXPECTED_STEPS)


def test_committed_thresholds_are_the_default_alert_thresholds() -> None:
    overview = _by_title(json.loads(FILES[1].read_text()))
    for title, alert in (
        ("Server error ratio", "TorchServeModelErrorRatioHigh"),
        ("TorchServe mean queue latency", "TorchServeModelQueueLatencyHigh"),
        ("Host memory", "TorchServeHostMemoryPressure"),
    ):
        threshold = re.search(r"> ([0-9.]+)", ALERT_RULES[alert]["expr"])
        assert threshold and _steps(overview[title])[1] == (float(threshold.group(1)), "red")


def test_counters_born_at_the_first_event_read_zero_not_no_data() -> None:
    """Handler exceptions, lost requests, dropped logs: 0 until the first one, not "No data"."""
    overview = _by_title(json.loads(FILES[1].read_text()))
    for title in (
        "Handler exceptions by stage",
        "Requests lost with their worker",
        "Log records dropped",
        "torchserve-obs internal errors",
    ):
        expr = overview[title]["targets"][0]["expr"]
        assert re.search(r"\bor on \([^)]*\)\s*0 \*", expr), title


def _data_links(panel: Dict[str, Any]) -> List[Dict[str, Any]]:
    return list(panel["fieldConfig"]["defaults"].get("links", []))


def test_overview_series_drill_down_to_their_model_and_back() -> None:
    overview, model = (json.loads(f.read_text()) for f in (FILES[1], FILES[0]))
    drilled = 0
    for panel in _panels(overview):
        legends = " ".join(t.get("legendFormat", "") for t in panel["targets"])
        if f"{{{{{Label.VERSION}}}}}" not in legends:
            continue
        # A series names its model by label; in the per-model row, the row's $model does.
        named = f"{{{{{Label.MODEL}}}}}" in legends
        urls = [link["url"] for link in _data_links(panel)]
        assert urls, panel["title"]
        url = urls[0]
        assert url.startswith(f"/d/{model['uid']}/?"), panel["title"]
        for part in (
            "${__url_time_range}",
            "${datasource:queryparam}",
            "${host:queryparam}",
            "var-model=${__field.labels.model_name}" if named else "var-model=${model}",
            "var-version=${__field.labels.model_version}",
        ):
            assert part in url, (panel["title"], part)
        drilled += 1
    assert drilled >= 20
    for dash, other in ((overview, model), (model, overview)):
        back = [link for link in dash["links"] if link["url"] == f"/d/{other['uid']}/"]
        assert back and back[0]["keepTime"] and back[0]["includeVars"]


def test_the_overview_repeats_a_row_per_model() -> None:
    overview = json.loads(FILES[1].read_text())
    rows = [p for p in overview["panels"] if p["type"] == "row"]
    repeated = [r for r in rows if r.get("repeat") == "model"]
    assert len(repeated) == 1 and "$model" in repeated[0]["title"]
    start = overview["panels"].index(repeated[0])
    end = overview["panels"].index(rows[rows.index(repeated[0]) + 1])
    inside = overview["panels"][start + 1 : end]
    assert len(inside) >= 4
    assert all('model_name=~"$model"' in t["expr"] for p in inside for t in p["targets"])


def test_logs_links_open_kibana_discover_for_the_model_and_time_range() -> None:
    for fields, model_field in (("otel", "model_name"), ("ecs", "service.name")):
        cfg = config.resolve(
            {"dashboards": {"kibana_url": "http://kibana.example:5601", "log_fields": fields}}
        )
        overview, model = (dashboards.render(cfg, spec) for spec in panels.dashboards(cfg))
        ratio = _by_title(overview)["Server error ratio"]
        logs = [link["url"] for link in _data_links(ratio) if "kibana" in link["url"]]
        assert len(logs) == 1
        assert logs[0].startswith("http://kibana.example:5601/app/discover#/?_g=(time:(from:")
        assert "${__from:date:iso}" in logs[0] and "${__to:date:iso}" in logs[0]
        assert f"{model_field}:%22${{__field.labels.model_name}}%22" in logs[0]
        assert "'))&_a=(index:'tsobs-logs',query:(language:kuery,query:'" in logs[0]
        on_model = [link["url"] for link in model["links"] if "kibana" in link["url"]]
        assert on_model and f"{model_field}:%22${{model}}%22" in on_model[0]
    plain = config.resolve({})
    for spec in panels.dashboards(plain):
        assert "discover" not in json.dumps(dashboards.render(plain, spec))


def test_annotations_show_rollouts_and_firing_alerts() -> None:
    for path in FILES:
        notes = {a["name"]: a for a in json.loads(path.read_text())["annotations"]["list"]}
        rollout = notes["Version rollouts"]
        assert Metrics.MODEL_INFO.name in rollout["expr"] and "offset" in rollout["expr"]
        assert rollout["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        firing = notes["Firing alerts"]["expr"]
        assert 'alertstate="firing"' in firing
        assert all(name in firing for name in ALERT_RULES)


def test_the_host_variable_follows_host_label() -> None:
    default = dashboards.render(config.resolve({}), panels.dashboards(config.resolve({}))[0])
    host = {v["name"]: v for v in default["templating"]["list"]}["host"]
    assert host["query"].endswith(", instance)") and host["regex"]
    assert 'job="torchserve"' in host["query"]
    cfg = config.resolve({"host_label": "pod"})
    pod = dashboards.render(cfg, panels.dashboards(cfg)[0])
    host = {v["name"]: v for v in pod["templating"]["list"]}["host"]
    assert host["query"].endswith(", pod)") and not host["regex"]
    exprs = [t["expr"] for p in _panels(pod) for t in p["targets"]]
    assert all("instance=~" not in e for e in exprs)
    assert sum('pod=~"$host"' in e for e in exprs) > 30


def test_no_alert_threshold_is_left_unread() -> None:
    """Every alert with a threshold colours at least one panel or links its runbook."""
    text = "\n".join(f.read_text() for f in FILES)
    for spec in rules.builtin_alerts(config.resolve({})):
        if spec.threshold is not None:
            assert f"Runbook: {spec.name}" in text, spec.name


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_variables_depend_only_on_earlier_variables(path: Path) -> None:
    """Grafana resolves variables in order: a query naming itself or a later one is empty."""
    variables = json.loads(path.read_text())["templating"]["list"]
    names = [v["name"] for v in variables]
    for i, var in enumerate(variables):
        used = set(re.findall(r"\$(\w+)", str(var.get("query", ""))))
        assert used <= set(names[:i]), (var["name"], used)
