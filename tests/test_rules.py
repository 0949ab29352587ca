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
def test_shipped_unit_tests_pass_as_a_user_runs_them() -> None:
    """``promtool test rules alerts/tests/*.yml`` from the root, annotations included."""
    files = sorted(str(p.relative_to(REPO)) for p in TESTS.glob("*.yml"))
    assert files, "no promtool unit tests shipped"
    result = subprocess.run(
        [_promtool(), "test", "rules", *files], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_firing_case_checks_annotations() -> None:
    cases = yaml.safe_load((TESTS / "alerts.test.yml").read_text())["tests"]
    for case in cases:
        for check in case.get("alert_rule_test", []):
            for alert in check.get("exp_alerts", []):
                assert set(alert.get("exp_annotations", {})) == {
                    "summary",
                    "description",
                    "runbook_url",
                }, (case["name"], check["alertname"])


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
    factors = [rules.burn_factor(cfg, p) for p in cfg["slo"]["burn_windows"]["fast"]]
    assert [round(f, 6) for f in factors] == [14.4, 6.0]
    assert "model:tsobs_requests:server_error_ratio_rate3d" in RULES.read_text()
    assert rules.server_error_ratio("3d") == "model:tsobs_requests:server_error_ratio_rate3d"


def _expr(cfg: Dict[str, Any], alert: str) -> str:
    return next(
        r["expr"] for g in rules.alert_rules(cfg).values() for r in g if r["alert"] == alert
    )


def test_slo_window_sets_the_burn_limits() -> None:
    """2% of a 30-day budget in an hour is a 14.4x burn; of a 7-day budget, 3.36x."""
    month = _expr(config.resolve({}), "TorchServeModelErrorBudgetBurnFast")
    week = _expr(config.resolve({"slo": {"window": "7d"}}), "TorchServeModelErrorBudgetBurnFast")
    assert "server_error_ratio_rate1h > 0.072\n" in month  # 14.4 x 0.5% budget
    assert "server_error_ratio_rate1h > 0.0168\n" in week  # 3.36 x 0.5% budget


def test_each_window_reads_raw_requests_once() -> None:
    """Totals and ratios come from the recorded per-outcome rate, not from raw samples again."""
    for window in config.all_windows(config.resolve({})):
        raw = [
            r
            for g in _groups()
            for r in g["rules"]
            if "record" in r and "tsobs_requests_total{" in r["expr"] and f"[{window}]" in r["expr"]
        ]
        expected = {rules.requests_by_outcome_rate(window)}
        if window == "5m":  # the name-level join series of the rate window
            expected |= {rules.handled_rate(window), rules.answered_rate(window)}
        assert {r.get("record") for r in raw} == expected, window


@pytest.mark.prometheus
def test_no_healthy_worker_joins_hosts_by_host_label(tmp_path: Path) -> None:
    """With ``host_label: pod``, TorchServe and its exporter meet on ``pod``, whatever their
    addresses: only the pod whose workers are gone alerts."""
    groups = rules.rule_groups(config.resolve({"host_label": "pod"}))
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    series = []
    for pod, ts_ip, exporter_ip, live in (
        ("a", "10.0.0.1", "10.0.1.1", 2),
        ("b", "10.0.0.2", "10.0.1.2", 0),
    ):
        ts = f'job="torchserve", instance="{ts_ip}:8082", pod="{pod}"'
        exp = f'job="torchserve-obs", instance="{exporter_ip}:8083", pod="{pod}"'
        model = 'model_name="m", model_version="1.0"'
        series += [
            {"series": f"up{{{exp}}}", "values": "1x30"},
            {
                "series": f'ts_inference_requests_total{{{ts}, model_name="m", model_version="default"}}',
                "values": "0+60x30",
            },
            {"series": f"tsobs_worker_starts_total{{{exp}, {model}}}", "values": "2x30"},
            {"series": f"tsobs_workers{{{exp}, {model}}}", "values": f"{live}x30"},
        ]
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "TorchServeModelNoHealthyWorker",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "model_name": "m",
                                    "instance": "10.0.0.2:8082",
                                    "pod": "b",
                                    "host": "b",
                                },
                                "exp_annotations": {
                                    "summary": "Requests reach a model but no worker handles them.",
                                    "description": "TorchServe 10.0.0.2:8082 receives requests "
                                    "for model m, which the exporter on that host has seen served "
                                    "by instrumented workers, but none of them is alive now.",
                                    "runbook_url": rules.runbook_url(
                                        config.resolve({}), "TorchServeModelNoHealthyWorker"
                                    ),
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    result = subprocess.run(
        [_promtool(), "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
