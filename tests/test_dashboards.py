"""The generated Grafana dashboards: current schema, conventions, PromQL that parses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List

import jsonschema
import promql_parser
import pytest

from obs.generate import config, dashboards, panels
from obs.generate import torchserve as ts
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
    assert names[:1] == ["datasource"] and {"instance", "model", "version"} <= set(names)
    kinds = set()
    for panel in _panels(dash):
        kinds.add(panel["type"])
        assert panel["type"] in {"timeseries", "stat", "heatmap", "table"}, panel["title"]
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
    return exprs


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_query_parses_once_macros_are_substituted(path: Path) -> None:
    dash = json.loads(path.read_text())
    values = {"model": "m", "version": ".+", "instance": ".+", "cluster": ".+"}
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
    cpu = [e for e in exprs if ts.CPU_UTILIZATION in e]
    assert cpu and all("avg_over_time" in e for e in cpu)
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
    assert "GPU utilisation" in gpu and "GPU memory by worker" in gpu


def test_uids_are_stable_and_follow_the_config() -> None:
    cfg = config.resolve({"dashboards": {"uid_prefix": "acme"}})
    uids = [dashboards.render(cfg, spec)["uid"] for spec in panels.dashboards(cfg)]
    assert uids == ["acme-overview", "acme-model"]
