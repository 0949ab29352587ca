"""The shipped Alertmanager inhibitions name real alerts and labels those alerts carry.

An inhibit rule whose ``equal`` label is missing from the target silences it everywhere (a
label absent on both sides counts as equal); one naming an alert that does not exist, or
pairing severities no alert has, never matches. The live check is in test_stack_alerts.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Set

import pytest
import yaml

from tests.support.paths import REPO

COMPOSE = REPO / "compose" / "alertmanager"
FILES = [COMPOSE / "alertmanager.yml", *sorted((COMPOSE / "examples").glob("*.yml"))]


def _rules(path: Path) -> List[Dict[str, Any]]:
    return list(yaml.safe_load(path.read_text())["inhibit_rules"])


def _names(matchers: List[str]) -> Set[str]:
    """Alert names an ``alertname`` matcher selects (``=`` or an ``=~`` alternation)."""
    (matcher,) = [m for m in matchers if m.startswith("alertname")]
    return set(matcher.split("=", 1)[1].lstrip("~").strip('"').split("|"))


def _tested_labels() -> Dict[str, Set[str]]:
    """Labels each alert carries, as its promtool firing tests prove."""
    cases = yaml.safe_load((REPO / "alerts" / "tests" / "alerts.test.yml").read_text())["tests"]
    labels: Dict[str, Set[str]] = {}
    for case in cases:
        for check in case.get("alert_rule_test", []):
            for alert in check.get("exp_alerts", []):
                labels.setdefault(check["alertname"], set()).update(alert["exp_labels"])
    return labels


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_alertmanager_file_ships_the_same_inhibitions(path: Path) -> None:
    assert _rules(path) == _rules(FILES[0])


def test_inhibitions_match_alerts_that_exist_and_carry_the_equal_labels() -> None:
    carried = _tested_labels()
    rules = _rules(FILES[0])
    assert rules
    for rule in rules:
        for name in _names(rule["source_matchers"]) | _names(rule["target_matchers"]):
            assert name in carried, f"{name}: no such alert, or never shown firing"
            missing = set(rule["equal"]) - carried[name]
            assert not missing, f"{name} lacks {missing}, so the inhibition cannot tell apart"
