"""Kibana Discover links: one builder for the dashboards' log links and ``torchserve-obs logs``."""

from __future__ import annotations

import urllib.parse

DATA_VIEW = "tsobs-logs"
"""The data view id of compose/kibana/saved-objects.ndjson."""


def rison_string(text: str) -> str:
    """``text`` as a Rison string, the encoding of Kibana's URL state."""
    return "'" + text.replace("!", "!!").replace("'", "!'") + "'"


def discover_url(
    kibana_url: str,
    kql: str,
    data_view: str = DATA_VIEW,
    time_from: str = "now-7d",
    time_to: str = "now",
    oldest_first: bool = False,
) -> str:
    """A Kibana 8 Discover link showing the lines ``kql`` matches over a time range.

    Grafana's ``${...}`` templates in the arguments stay unencoded, for Grafana to fill.
    """
    global_state = f"(time:(from:{rison_string(time_from)},to:{rison_string(time_to)}))"
    sort = ",sort:!(!('@timestamp',asc))" if oldest_first else ""
    app_state = (
        f"(index:{rison_string(data_view)},query:(language:kuery,query:{rison_string(kql)}){sort})"
    )

    def quote(state: str) -> str:
        return urllib.parse.quote(state, safe="(),:!'*${}")

    return f"{kibana_url.rstrip('/')}/app/discover#/?_g={quote(global_state)}&_a={quote(app_state)}"
