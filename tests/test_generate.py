"""The generator's config, CLI, committed outputs and Kubernetes wrappers."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import jsonschema
import pytest
import tomllib
import yaml

from obs.errors import UsageError, install_hint
from obs.generate import config, register, run, torchserve, writers
from tests.support.paths import REPO, SCHEMAS


def _generate(tmp_path: Path, cfg_text: str = "") -> Path:
    cfg_path = None
    if cfg_text:
        cfg_path = tmp_path / "obs.yaml"
        cfg_path.write_text(cfg_text)
    out = tmp_path / "out"
    run(argparse.Namespace(config=cfg_path, out=out))
    return out


def test_committed_outputs_are_fresh(tmp_path: Path) -> None:
    """CI fails when dashboards/, alerts/ or kubernetes/ differ from what the defaults generate."""
    out = _generate(tmp_path)
    generated = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(REPO)
        for d in ("dashboards", "alerts", "kubernetes")
        for p in (REPO / d).rglob("*")
        if p.is_file() and "tests" not in p.relative_to(REPO).parts
    )
    assert generated == committed, "run: torchserve-obs generate --out ."
    for rel in generated:
        assert (out / rel).read_text() == (REPO / rel).read_text(), (
            f"{rel} is stale: run `torchserve-obs generate --out .` and commit"
        )


def test_example_config_is_valid_and_documents_every_key() -> None:
    text = (REPO / "obs.example.yaml").read_text()
    cfg = config.load(REPO / "obs.example.yaml")
    assert cfg["slo"]["availability"] == config.DEFAULTS["slo"]["availability"]
    for key in config.DEFAULTS:
        assert re.search(rf"^#? ?{key}:", text, re.M), f"obs.example.yaml does not document {key}"


@pytest.mark.parametrize(
    ("cfg_text", "key"),
    [
        ("slo: {availability: 1.5}", "slo.availability"),
        ("rate_window: five minutes", "rate_window"),
        ("torchserve_selector: 'job=torchserve'", "torchserve_selector"),
        ("cluster_label: 'my-cluster'", "cluster_label"),
        ("host_label: 'pod name'", "host_label"),
        ("dashboards: {kibana_url: 'kibana:5601'}", "dashboards.kibana_url"),
        ("dashboards: {log_fields: json}", "dashboards.log_fields"),
        ("colour: blue", "colour"),
        ("slo: {latency: {threshold_seconds: 0.33}}", "slo.latency.threshold_seconds"),
        (
            "alerts: {TorchServeTargetDown: {severity: page}}",
            "alerts.TorchServeTargetDown.severity",
        ),
        ("alerts: {TorchServeTargetDown: {for: soon}}", "alerts.TorchServeTargetDown.for"),
        ("alerts: {NoSuchAlert: {enabled: false}}", "alerts.NoSuchAlert"),
        ("alerts: {TorchServeTargetDown: {threshold: 3}}", "alerts.TorchServeTargetDown.threshold"),
        ("runbook_url_pattern: 'https://x/{name}'", "runbook_url_pattern"),
        ("slo: {burn_windows: {fast: []}}", "slo.burn_windows"),
        ("min_request_rate: yes", "min_request_rate"),
        ("- a list", "mapping"),
    ],
)
def test_bad_config_is_refused_naming_the_key_and_writes_nothing(
    tmp_path: Path, cfg_text: str, key: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(key)):
        _generate(tmp_path, cfg_text)
    assert not (tmp_path / "out").exists()


def test_every_config_problem_is_reported_in_one_run_with_its_value(tmp_path: Path) -> None:
    """Eleven mistakes, alert overrides among them, one run: each names its key and the value
    found there."""
    cfg_text = """
colour: blue
rate_window: five minutes
min_request_rate: -1
slo:
  availability: 1.5
  latency: {threshold_seconds: 0.33}
dashboards: {uid_prefix: Has Spaces}
alerts:
  TorchServeModelErrorRatioHigh: {threshold: high, severity: page}
  NoSuchAlert: {enabled: false}
  TorchServeTargetDown: {threshold: 3}
  TorchServeModelLoadSlow: {threshold: 60, expr: 'up == 0'}
"""
    with pytest.raises(UsageError) as refused:
        _generate(tmp_path, cfg_text)
    message = str(refused.value)
    assert message.startswith("11 problems in the config:")
    for key, value in [
        ("colour", "unknown key"),
        ("rate_window", "'five minutes'"),
        ("min_request_rate", "-1"),
        ("slo.availability", "1.5"),
        ("slo.latency.threshold_seconds", "0.33"),
        ("dashboards.uid_prefix", "'Has Spaces'"),
        ("alerts.TorchServeModelErrorRatioHigh.threshold", "'high'"),
        ("alerts.TorchServeModelErrorRatioHigh.severity", "'page'"),
        ("alerts.NoSuchAlert", "no such alert"),
        ("alerts.TorchServeTargetDown.threshold", "no threshold (found 3)"),
        ("alerts.TorchServeModelLoadSlow", "not both"),
    ]:
        assert re.search(rf"^  {re.escape(key)}: .*{re.escape(value)}", message, re.M), (
            key,
            message,
        )
    assert not (tmp_path / "out").exists()


def test_register_adds_the_generate_command() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["generate", "--out", "x", "--config", "c.yaml"])
    assert args.func is run and args.out == Path("x") and args.config == Path("c.yaml")


def test_missing_extra_hint_names_installable_requirements(tmp_path: Path) -> None:
    """After ``pip install .`` the hint must not send pip looking for torchserve-obs on an index."""
    blocked = (
        "import sys; sys.modules['grafanalib'] = None; from obs.cli import main; "
        f"sys.exit(main(['generate', '--out', {str(tmp_path / 'out')!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 2, result.stderr
    hint = result.stderr.split("grafanalib is missing: ", 1)[1].strip()
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = declared["optional-dependencies"]["generate"]
    assert shlex.split(hint)[:2] == ["pip", "install"] and "torchserve-obs[" not in hint
    assert {_normalise(r) for r in shlex.split(hint)[2:]} == {_normalise(r) for r in wanted}


def _normalise(requirement: str) -> str:
    """A requirement with its version clauses sorted, as metadata may reorder them."""
    name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", requirement.replace(" ", "")).groups()  # type: ignore[union-attr]
    return name.lower() + ",".join(sorted(spec.split(",")))


def test_missing_extra_hint_from_an_uninstalled_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "requires", not_installed)
    assert install_hint("generate") == "pip install '.[generate]' (in the torchserve-obs checkout)"


def test_overrides_remove_and_change_alerts(tmp_path: Path) -> None:
    out = _generate(
        tmp_path,
        """
alerts:
  TorchServeGPUUnderutilized: {enabled: false}
  TorchServeModelErrorRatioHigh:
    threshold: 0.2
    for: 1m
    severity: critical
    labels: {team: ml}
    annotations: {runbook_url: https://wiki/errors}
  TorchServeTargetDown: {expr: 'up{job="ts"} < 1'}
""",
    )
    rules = _alerts(out / writers.RULES_FILE)
    assert "TorchServeGPUUnderutilized" not in rules
    ratio = rules["TorchServeModelErrorRatioHigh"]
    assert "> 0.2\n" in ratio["expr"] and ratio["for"] == "1m"
    assert ratio["labels"] == {"team": "ml", "severity": "critical"}
    assert ratio["annotations"]["runbook_url"] == "https://wiki/errors"
    assert rules["TorchServeTargetDown"]["expr"] == 'up{job="ts"} < 1'
    assert rules["TorchServeTargetDown"]["annotations"]["runbook_url"].endswith(
        "#torchservetargetdown"
    )


def test_cluster_label_joins_every_aggregation(tmp_path: Path) -> None:
    out = _generate(tmp_path, "cluster_label: cluster")
    text = (out / writers.RULES_FILE).read_text()
    aggregations = re.findall(r"\b(?:sum|max|avg) by \(([^)]*)\)", text)
    assert aggregations
    assert all(group.split(", ")[0] == "cluster" for group in aggregations)
    for rel in ("dashboards/torchserve-obs-overview.json", "dashboards/torchserve-obs-model.json"):
        dash = json.loads((out / rel).read_text())
        assert "cluster" in [v["name"] for v in dash["templating"]["list"]]
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        assert all('cluster=~"$cluster"' in e for e in exprs)


def _alerts(path: Path) -> Dict[str, Any]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_torchserve_metric_names_match_the_installed_torchserve() -> None:
    ts_configs = pytest.importorskip("ts").__file__
    metrics_yaml = Path(ts_configs).parent / "configs" / "metrics.yaml"
    declared = yaml.safe_load(metrics_yaml.read_text())["ts_metrics"]
    names = {m["name"] for kind in declared.values() for m in kind}
    assert set(torchserve.ALL) <= names
    counters = {m["name"]: m["dimensions"] for m in declared["counter"]}
    assert "model_name" in counters[torchserve.INFERENCE_REQUESTS]


def test_prometheusrule_validates_against_the_operator_crd() -> None:
    crd = yaml.safe_load(
        (SCHEMAS / "prometheus-operator-crd-monitoring.coreos.com_prometheusrules.yaml").read_text()
    )
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # The schema's partial_response_strategy pattern is Go-only ((?i)); we never set it.
    props = schema["properties"]["spec"]["properties"]["groups"]["items"]["properties"]
    props["partial_response_strategy"].pop("pattern", None)
    doc = yaml.safe_load((REPO / writers.PROMETHEUS_RULE_FILE).read_text())
    errors = list(jsonschema.Draft4Validator(schema).iter_errors(doc))
    assert errors == []
    assert doc["kind"] == crd["spec"]["names"]["kind"]
    assert (
        doc["spec"]["groups"] == yaml.safe_load((REPO / writers.RULES_FILE).read_text())["groups"]
    )
    bad = {**doc, "spec": {"groups": [{"name": 1, "rules": "x"}]}}
    assert list(jsonschema.Draft4Validator(schema).iter_errors(bad))


def test_configmap_carries_every_dashboard_for_the_grafana_sidecar() -> None:
    cm = yaml.safe_load((REPO / writers.CONFIGMAP_FILE).read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["labels"] == {"grafana_dashboard": "1"}
    dashboards = sorted(p.name for p in (REPO / "dashboards").glob("*.json"))
    assert sorted(cm["data"]) == dashboards
    for name in dashboards:
        assert json.loads(cm["data"][name]) == json.loads((REPO / "dashboards" / name).read_text())
