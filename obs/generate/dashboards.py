"""Render a :class:`~obs.generate.panels.DashboardSpec` to current Grafana dashboard JSON.

grafanalib builds the panels; its output is then normalised to the current dashboard
schema (grafanalib 0.7.1 writes schemaVersion 12 with legacy keys that the schema refuses).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping

from obs.generate.panels import DashboardSpec, PanelSpec, Query
from obs.generate.promql import Queries
from obs.signals import Label, Metrics

SCHEMA_VERSION = 39
GRID_WIDTH = 24
PANEL_HEIGHT = 8
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

PANEL_KEYS = frozenset(
    {
        "datasource",
        "description",
        "fieldConfig",
        "gridPos",
        "id",
        "interval",
        "links",
        "options",
        "targets",
        "title",
        "transformations",
        "type",
    }
)
"""Keys kept from grafanalib's panel JSON: current ones (the schema refuses the rest)."""
TARGET_KEYS = frozenset({"expr", "legendFormat", "refId", "format", "instant", "range"})


def uid(cfg: Mapping[str, Any], spec: DashboardSpec) -> str:
    """Stable UID, so a re-import replaces the dashboard instead of duplicating it."""
    return f"{cfg['dashboards']['uid_prefix']}-{spec.slug}"


def _prune(value: Any) -> Any:
    """Drop ``None`` values, which grafanalib writes for every unset option."""
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def _target(query: Query, ref: str) -> Any:
    from grafanalib import core as G

    return G.Target(
        expr=query.expr,
        legendFormat=query.legend,
        refId=ref,
        instant=query.instant,
        format="heatmap" if query.heatmap else ("table" if query.instant else "time_series"),
    )


def _grafanalib_panel(panel: PanelSpec, grid: Any) -> Any:
    from grafanalib import core as G

    common = dict(
        title=panel.title,
        description=panel.description or None,
        dataSource="${datasource}",
        targets=[_target(query, chr(ord("A") + i)) for i, query in enumerate(panel.queries)],
        gridPos=grid,
    )
    if panel.kind == "timeseries":
        return G.TimeSeries(unit=panel.unit, **common)
    if panel.kind == "stat":
        return G.Stat(format=panel.unit, reduceCalc="lastNotNull", **common)
    if panel.kind == "heatmap":
        return G.Heatmap(**common)
    if panel.kind == "table":
        return G.Table(unit=panel.unit, **common)
    raise ValueError(f"unknown panel kind {panel.kind!r}")


def _normalise_panel(raw: Dict[str, Any], panel: PanelSpec) -> Dict[str, Any]:
    """Current-schema panel: datasource references, units, modern heatmap options."""
    out = {k: v for k, v in _prune(raw).items() if k in PANEL_KEYS}
    out["datasource"] = dict(DATASOURCE)
    out["targets"] = [
        {**{k: v for k, v in t.items() if k in TARGET_KEYS}, "datasource": dict(DATASOURCE)}
        for t in out["targets"]
    ]
    defaults = out.setdefault("fieldConfig", {}).setdefault("defaults", {})
    out["fieldConfig"].setdefault("overrides", [])
    defaults["unit"] = panel.unit
    defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green", "value": None}]}
    if panel.kind == "heatmap":
        out["options"] = {
            "calculate": False,
            "cellGap": 1,
            "color": {
                "mode": "scheme",
                "scheme": "Oranges",
                "steps": 64,
                "exponent": 0.5,
                "fill": "dark-orange",
            },
            "rowsFrame": {"layout": "auto"},
            "yAxis": {"axisPlacement": "left", "unit": panel.unit},
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
        }
    if panel.kind == "table":
        out["transformations"] = [{"id": "labelsToFields", "options": {}}]
    return out


def _variables(cfg: Mapping[str, Any], spec: DashboardSpec) -> List[Dict[str, Any]]:
    """``datasource``, optional cluster, ``instance``, ``model``, ``version``."""
    q = Queries(cfg)
    cluster = cfg["cluster_label"]
    scope = f'{cluster}=~"$cluster", ' if cluster else ""
    by_instance = q.exp(Metrics.REQUESTS, extra=f'{scope}instance=~"$instance(:[0-9]+)?"')
    by_model = q.exp(Metrics.REQUESTS, extra=f'{scope}{Label.MODEL}=~"$model"')

    def query_var(
        name: str, label: str, query: str, multi: bool, regex: str = ""
    ) -> Dict[str, Any]:
        var: Dict[str, Any] = {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": dict(DATASOURCE),
            "query": query,
            "refresh": 2,
            "sort": 1,
            "multi": multi,
            "includeAll": multi,
            "regex": regex,
        }
        if multi:
            var["allValue"] = ".+"
        return var

    variables: List[Dict[str, Any]] = [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {"text": cfg["datasource"], "value": cfg["datasource"]},
        }
    ]
    if cluster:
        variables.append(
            query_var(
                "cluster",
                cluster,
                f"label_values(up{{{cfg['exporter_selector']}}}, {cluster})",
                False,
            )
        )
    variables += [
        query_var(
            "instance",
            "Host",
            f"label_values(up{{{scope}{cfg['exporter_selector']}}}, instance)",
            True,
            regex="/^([^:]+)/",
        ),
        query_var(
            "model",
            "Model",
            f"label_values({by_instance}, {Label.MODEL})",
            not spec.single_model,
        ),
        query_var(
            "version",
            "Version",
            f"label_values({by_model}, {Label.VERSION})",
            True,
        ),
    ]
    return variables


def render(cfg: Mapping[str, Any], spec: DashboardSpec) -> Dict[str, Any]:
    """Grafana dashboard JSON for ``spec``, valid against the current dashboard schema."""
    from grafanalib import core as G
    from grafanalib._gen import DashboardEncoder

    panels: List[Dict[str, Any]] = []
    y = 0
    for row in spec.rows:
        panels.append(
            {
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "id": len(panels) + 1,
                "panels": [],
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
            }
        )
        y += 1
        x = 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y = 0, y + PANEL_HEIGHT
            grid = G.GridPos(h=PANEL_HEIGHT, w=panel.width, x=x, y=y)
            raw = json.loads(
                json.dumps(_grafanalib_panel(panel, grid).to_json_data(), cls=DashboardEncoder)
            )
            rendered = _normalise_panel(raw, panel)
            rendered["id"] = len(panels) + 1
            panels.append(rendered)
            x += panel.width
        y += PANEL_HEIGHT
    dash = cfg["dashboards"]
    return {
        "uid": uid(cfg, spec),
        "title": f"{dash['title_prefix']} / {spec.title}",
        "description": spec.description,
        "tags": list(dash["tags"]),
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": dash["time_from"], "to": "now"},
        "refresh": dash["refresh"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "links": [],
        "panels": panels,
        "templating": {"list": _variables(cfg, spec)},
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
    }
