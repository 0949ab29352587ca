"""docs/runbooks.md: a section per alert, each with what an on-call engineer needs."""

from __future__ import annotations

import re
from typing import Dict, List

import promql_parser
import yaml

from obs.generate import config, rules, writers
from tests.support.paths import REPO

RUNBOOKS = REPO / "docs" / "runbooks.md"
PARTS = ("**Meaning.**", "**Impact.**", "**Diagnosis.**", "**Causes.**", "**Mitigation.**")


def _sections() -> Dict[str, str]:
    """Level-2 sections by heading."""
    chunks = re.split(r"^## ", RUNBOOKS.read_text(), flags=re.M)[1:]
    return {chunk.split("\n", 1)[0].strip(): chunk for chunk in chunks}


def _alert_names() -> List[str]:
    groups = yaml.safe_load((REPO / writers.RULES_FILE).read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_section_and_every_section_an_alert() -> None:
    assert set(_sections()) == set(_alert_names())


def test_every_section_has_each_part_and_promql_to_paste() -> None:
    for name, text in _sections().items():
        missing = [part for part in PARTS if part not in text]
        assert missing == [], f"{name} lacks {missing}"
        queries = re.findall(r"```promql\n(.*?)```", text, flags=re.S)
        assert queries, f"{name} has no PromQL to paste"
        for block in queries:
            for line in block.splitlines():
                expr = line.split("  #")[0].strip()
                if expr:
                    promql_parser.parse(expr)


def test_default_runbook_urls_point_at_their_section() -> None:
    """GitHub's anchor for ``## TorchServeX`` is ``#torchservex``; the URL names this file."""
    cfg = config.resolve({})
    groups = yaml.safe_load((REPO / writers.RULES_FILE).read_text())["groups"]
    anchors = {heading.lower() for heading in _sections()}
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        url = rule["annotations"]["runbook_url"]
        assert url == rules.runbook_url(cfg, rule["alert"])
        path, _, anchor = url.partition("#")
        assert path.endswith("/blob/main/docs/runbooks.md") and anchor in anchors, url


def test_runbook_url_follows_the_configured_pattern() -> None:
    cfg = config.resolve({"runbook_url_pattern": "https://wiki.example/{alert}"})
    assert rules.runbook_url(cfg, "TorchServeTargetDown") == (
        "https://wiki.example/TorchServeTargetDown"
    )
