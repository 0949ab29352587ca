"""Render a :class:`~obs.generate.panels.DashboardSpec` to current Grafana dashboard JSON.

grafanalib builds the panels; its output is then normalised to the current dashboard
schema (grafanalib 0.7.1 writes schemaVersion 12 with legacy keys that the schema refuses).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping

from obs.generate import links
from obs.generate.panels import Annotation, DashboardSpec, PanelSpec, Query, Row, Steps
from obs.generate.promql import Queries
from obs.signals import Label, Metrics

SCHEMA_VERSION = 39
GRID_WIDTH = 24
PANEL_HEIGHT = 8
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
HOST_REGEX = "/^([^:]+)/"
"""With ``host_label: instance``, the ``host`` variable lists hosts without their ports."""

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

UNIT_WORDS = {
    "s": "seconds",
    "reqps": "requests per second",
    "ops": "events per second",
    "percentunit": "percent (a share of 0 to 1)",
    "percent": "percent (0 to 100)",
    "short": "a plain number",
    "bytes": "bytes",
    "mbytes": "MiB",
    "bool": "0 or 1",
    "none": "text",
}
"""How a panel's description names its unit, by Grafana unit id."""


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
        description=_description(panel),
        dataSource="${datasource}",
        targets=[_target(query, chr(ord("A") + i)) for i, query in enumerate(panel.queries)],
        gridPos=grid,
    )
    if panel.kind == "timeseries":
        return G.TimeSeries(unit=panel.unit, **common)
    if panel.kind in ("stat", "bargauge"):
        return G.Stat(format=panel.unit, reduceCalc="lastNotNull", **common)
    if panel.kind == "heatmap":
        return G.Heatmap(**common)
    if panel.kind == "table":
        return G.Table(unit=panel.unit, **common)
    raise ValueError(f"unknown panel kind {panel.kind!r}")


def _description(panel: PanelSpec) -> str:
    """What the panel shows, its unit, what to do, and the runbook when an alert watches it."""
    text = f"{panel.description}\n\nUnit: {UNIT_WORDS[panel.unit]}.\n\nIf it looks wrong: {panel.action}"
    if panel.runbook:
        text += f"\n\nAlert {panel.alert}: [runbook]({panel.runbook})."
    return text


def _thresholds(steps: Steps) -> Dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


def _panel_links(cfg: Mapping[str, Any], panel: PanelSpec, single_model: bool) -> List[Any]:
    """Runbook and, on the drill-down, the model's logs (its model is ``$model``)."""
    out = []
    if panel.runbook:
        out.append(
            links.link(f"Runbook: {panel.alert}", panel.runbook, "What to do when it fires", True)
        )
    logs = links.kibana_discover_url(cfg, "${model}") if single_model else None
    if logs:
        out.append(links.link("Logs of this model", logs, "Kibana Discover, same time", True))
    return out


def _series_links(cfg: Mapping[str, Any], model: str, single_model: bool) -> List[Any]:
    """Data links of a series of ``model``: its drill-down (from the overview), its logs."""
    out = []
    if not single_model:
        target = f"{cfg['dashboards']['uid_prefix']}-model"
        out.append(
            links.link(
                f"Model {model} {links.SERIES_VERSION}",
                links.dashboard_url(target, cfg, model, links.SERIES_VERSION),
                "Drill down: this model and version, same time range and host",
            )
        )
    logs = links.kibana_discover_url(cfg, model, links.SERIES_VERSION)
    if logs:
        out.append(links.link("Logs of this model version", logs, "Kibana Discover", True))
    return out


def _normalise_panel(
    raw: Dict[str, Any], panel: PanelSpec, cfg: Mapping[str, Any], single_model: bool
) -> Dict[str, Any]:
    """Current-schema panel: datasource references, units, thresholds, links, heatmap options."""
    out = {k: v for k, v in _prune(raw).items() if k in PANEL_KEYS}
    out["datasource"] = dict(DATASOURCE)
    out["targets"] = [
        {**{k: v for k, v in t.items() if k in TARGET_KEYS}, "datasource": dict(DATASOURCE)}
        for t in out["targets"]
    ]
    defaults = out.setdefault("fieldConfig", {}).setdefault("defaults", {})
    out["fieldConfig"].setdefault("overrides", [])
    defaults["unit"] = panel.unit
    defaults["thresholds"] = _thresholds(panel.steps)
    if len(panel.steps) > 1 and panel.kind == "timeseries":
        defaults["custom"]["thresholdsStyle"] = {"mode": "line+area"}
    if panel.kind == "stat":
        out["options"]["colorMode"] = "background"
    out["links"] = _panel_links(cfg, panel, single_model)
    if panel.series_model:
        defaults["links"] = _series_links(cfg, panel.series_model, single_model)
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
        out["transformations"] = [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}},
        ]
    if panel.kind == "bargauge":
        out["type"] = "bargauge"
        out["options"] = {
            "displayMode": "basic",
            "orientation": "horizontal",
            "valueMode": "color",
            "showUnfilled": True,
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        }
        defaults["min"] = 0
    return out


def _variables(cfg: Mapping[str, Any], spec: DashboardSpec) -> List[Dict[str, Any]]:
    """``datasource``, optional cluster, ``host``, ``model``, ``version``."""
    q = Queries(cfg)
    cluster = cfg["cluster_label"]
    scope = f'{cluster}=~"$cluster", ' if cluster else ""
    by_host = q.exp(Metrics.REQUESTS, extra=f"{scope}{q.host_matcher()}")
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
                f"label_values(up{{{cfg['torchserve_selector']}}}, {cluster})",
                False,
            )
        )
    variables += [
        query_var(
            "host",
            "Host",
            f"label_values(up{{{scope}{cfg['torchserve_selector']}}}, {q.host_label})",
            True,
            regex=HOST_REGEX if q.host_label == "instance" else "",
        ),
        query_var(
            "model",
            "Model",
            f"label_values({by_host}, {Label.MODEL})",
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


def _row(row: Row, panel_id: int, y: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "type": "row",
        "title": row.title,
        "collapsed": False,
        "id": panel_id,
        "panels": [],
        "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
    }
    if row.repeat:
        out["repeat"] = row.repeat
    return out


def _annotation(item: Annotation) -> Dict[str, Any]:
    return {
        "name": item.name,
        "datasource": dict(DATASOURCE),
        "enable": True,
        "hide": False,
        "iconColor": item.color,
        "expr": item.expr,
        "titleFormat": item.title,
        "textFormat": item.text,
        "tagKeys": f"{Label.MODEL},{Label.VERSION}",
        "step": "1m",
    }


def _dashboard_links(cfg: Mapping[str, Any], spec: DashboardSpec) -> List[Dict[str, Any]]:
    """The other dashboard with the same time range and selection, and the logs."""
    other = "overview" if spec.single_model else "model"
    target = f"{cfg['dashboards']['uid_prefix']}-{other}"
    title = "Overview: every model" if spec.single_model else "Model drill-down"
    out = [links.link(title, f"/d/{target}/", "Same time range and selection", carry=True)]
    logs = links.kibana_discover_url(cfg, "${model}")
    if logs and spec.single_model:
        out.append(links.link("Logs (Kibana)", logs, "This model's log lines, same time", True))
    return out


def render(cfg: Mapping[str, Any], spec: DashboardSpec) -> Dict[str, Any]:
    """Grafana dashboard JSON for ``spec``, valid against the current dashboard schema."""
    from grafanalib import core as G
    from grafanalib._gen import DashboardEncoder

    panels: List[Dict[str, Any]] = []
    y = 0
    for row in spec.rows:
        panels.append(_row(row, len(panels) + 1, y))
        y += 1
        x = 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y = 0, y + PANEL_HEIGHT
            grid = G.GridPos(h=PANEL_HEIGHT, w=panel.width, x=x, y=y)
            raw = json.loads(
                json.dumps(_grafanalib_panel(panel, grid).to_json_data(), cls=DashboardEncoder)
            )
            rendered = _normalise_panel(raw, panel, cfg, spec.single_model)
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
        "links": _dashboard_links(cfg, spec),
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
            + [_annotation(a) for a in spec.annotations]
        },
    }
