"""Where a dashboard leads: the per-model drill-down, the matching logs, back to the overview.

Links are Grafana URL templates: Grafana fills ``${__url_time_range}``, ``${__from:date:iso}``,
``${var:queryparam}`` and ``${__field.labels.x}`` (the label of the series clicked) when the
user follows them, so the time range and the selected model travel with the click.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from obs import kibana
from obs.signals import ECS_FIELDS, Field, Label

SERIES_MODEL = f"${{__field.labels.{Label.MODEL}}}"
SERIES_VERSION = f"${{__field.labels.{Label.VERSION}}}"
"""The model and version of the series a user clicked (Grafana data-link variables)."""


def link(
    title: str, url: str, tooltip: str, external: bool = False, carry: bool = False
) -> Dict[str, Any]:
    """A panel, data or dashboard link in the shape the dashboard schema requires.

    ``carry``: Grafana appends the time range and every variable (dashboard links only).
    """
    return {
        "title": title,
        "type": "link",
        "icon": "external link" if external else "dashboard",
        "tooltip": tooltip,
        "url": url,
        "tags": [],
        "asDropdown": False,
        "targetBlank": external,
        "includeVars": carry,
        "keepTime": carry,
    }


def dashboard_url(uid: str, cfg: Mapping[str, Any], model: str, version: str) -> str:
    """``/d/<uid>`` for one model version, keeping the time range, data source and host
    (and cluster) selection; ``model``/``version`` are values or Grafana templates."""
    params = ["${__url_time_range}", "${datasource:queryparam}", "${host:queryparam}"]
    if cfg["cluster_label"]:
        params.append("${cluster:queryparam}")
    params += [f"var-model={model}", f"var-version={version}"]
    return f"/d/{uid}/?{'&'.join(params)}"


def kibana_discover_url(cfg: Mapping[str, Any], model: str, version: str = "") -> Optional[str]:
    """Kibana Discover on the model's log lines over the dashboard's time range.

    None when no ``dashboards.kibana_url`` is configured. The field names follow
    ``dashboards.log_fields`` (what ``TSOBS_LOG_FIELDS`` makes the handler emit).
    """
    dash = cfg["dashboards"]
    if not dash["kibana_url"]:
        return None
    ecs = dash["log_fields"] == "ecs"

    def name(field: str) -> str:
        return ECS_FIELDS[field] if ecs else field

    kql = f'{name(Field.MODEL)}:"{model}"'
    if version:
        kql += f' and {name(Field.VERSION)}:"{version}"'
    return kibana.discover_url(
        dash["kibana_url"], kql, dash["kibana_data_view"], "${__from:date:iso}", "${__to:date:iso}"
    )
