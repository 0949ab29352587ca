"""The generated rules: promtool checks, unit tests for every alert, mixin conventions."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Set

import jsonschema
import promql_parser
import pytest
import yaml

from obs.generate import config, rules, writers
from tests.support.paths import REPO, SCHEMAS

RULES = REPO / writers.RULES_FILE
TESTS = REPO / "alerts" / "tests"
MAX_GROUP_SIZE = 30
CAMEL_CASE = re.compile(r"^(?:[A-Z][a-z0-9]*|[A-Z]+(?=[A-Z][a-z]|$))+$")


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is not installed (Debian: apt-get install prometheus)"
    return path


def _groups() -> List[Dict[str, Any]]:
    return list(yaml.safe_load(RULES.read_text())["groups"])


def _alerts() -> List[Dict[str, Any]]:
    return [r for g in _groups() for r in g["rules"] if "alert" in r]


@pytest.mark.prometheus
def test_promtool_check_rules_passes_on_every_generated_rule_file(tmp_path: Path) -> None:
    crd = yaml.safe_load((REPO / writers.PROMETHEUS_RULE_FILE).read_text())
    from_crd = tmp_path / "from-prometheusrule.yml"
    from_crd.write_text(yaml.safe_dump({"groups": crd["spec"]["groups"]}))
    for path in (RULES, from_crd):
        result = subprocess.run(
            [_promtool(), "check", "rules", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    """alerts.test.yml checks labels against an annotation-free copy; annotations.test.yml the file."""
    stripped = yaml.safe_load(RULES.read_text())
    for group in stripped["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(stripped))
    shutil.copy(TESTS / "alerts.test.yml", tmp_path)
    for cwd, name in ((tmp_path, "alerts.test.yml"), (TESTS, "annotations.test.yml")):
        result = subprocess.run(
            [_promtool(), "test", "rules", name], cwd=cwd, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    cases = yaml.safe_load((TESTS / "alerts.test.yml").read_text())["tests"]
    fired: Set[str] = set()
    silent: Set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert fired | silent <= names, "a unit test names an alert that does not exist"
    assert names - fired == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"


def test_unit_tests_validate_against_the_promtool_test_schema() -> None:
    import json

    schema = json.loads((SCHEMAS / "schemastore-prometheus.rules.test.json").read_text())
    for path in TESTS.glob("*.yml"):
        assert (
            list(jsonschema.Draft7Validator(schema).iter_errors(yaml.safe_load(path.read_text())))
            == []
        )


def test_rule_file_validates_against_the_schemastore_schema() -> None:
    import json

    schema = json.loads((SCHEMAS / "schemastore-prometheus.rules.json").read_text())
    assert (
        list(jsonschema.Draft7Validator(schema).iter_errors(yaml.safe_load(RULES.read_text())))
        == []
    )


def test_every_expression_parses() -> None:
    exprs = [r["expr"] for g in _groups() for r in g["rules"]]
    assert len(exprs) > 20
    for expr in exprs:
        promql_parser.parse(expr)


def _lint_alert(alert: Dict[str, Any]) -> List[str]:
    """Mixin conventions: CamelCase name, known severity, static summary, templated description."""
    name, ann = alert["alert"], alert.get("annotations", {})
    problems = []
    if not CAMEL_CASE.match(name):
        problems.append("name is not CamelCase")
    if alert.get("labels", {}).get("severity") not in config.SEVERITIES:
        problems.append("severity is not critical, warning or info")
    summary = ann.get("summary", "")
    if not summary or "{{" in summary or not summary.endswith("."):
        problems.append("summary must be a static sentence ending with a period")
    if "{{" not in ann.get("description", ""):
        problems.append("description has no template")
    if not ann.get("runbook_url", "").startswith("https://"):
        problems.append("runbook_url missing")
    if "for" in alert and not config.DURATION_RE.match(alert["for"]):
        problems.append("for is not a duration")
    return problems


def test_mixin_conventions() -> None:
    alerts = _alerts()
    assert len({a["alert"] for a in alerts}) == len(alerts), "alert names must be unique"
    for alert in alerts:
        assert _lint_alert(alert) == [], alert["alert"]
    for group in _groups():
        assert 0 < len(group["rules"]) <= MAX_GROUP_SIZE, group["name"]
        for rule in group["rules"]:
            if "record" in rule:
                assert re.match(r"^[a-z_]+:[a-zA-Z0-9_]+:[a-z0-9_]+$", rule["record"]), rule[
                    "record"
                ]


def test_lint_catches_broken_alerts() -> None:
    broken = {
        "alert": "torchserve_down",
        "labels": {"severity": "page"},
        "annotations": {
            "summary": "Model {{ $labels.model_name }} is down",
            "description": "Down.",
        },
    }
    assert len(_lint_alert(broken)) == 5


def test_queries_respect_torchserve_quirks() -> None:
    text = "\n".join(r["expr"] for g in _groups() for r in g["rules"])
    # Mean latencies are ratios of rates, never the raw microsecond counter.
    assert not re.search(
        r"(?<!rate\()ts_(queue|inference)_latency_microseconds\{[^}]*\}(?!\[)", text
    )
    # The 5xx ratio has a zero fallback for the absent Requests5XX, with label_replace for the sum.
    assert "label_replace(rate(Requests5XX" in text and "or\n  0 * sum by (instance)" in text
    assert "__name__" not in text


def test_committed_rules_use_production_windows() -> None:
    cfg = config.resolve({})
    assert cfg["rate_window"] == "5m"
    assert [p["factor"] for p in cfg["slo"]["burn_windows"]["fast"]] == [14.4, 6.0]
    assert "model:tsobs_requests:server_error_ratio_rate3d" in RULES.read_text()
    assert rules.server_error_ratio("3d") == "model:tsobs_requests:server_error_ratio_rate3d"
