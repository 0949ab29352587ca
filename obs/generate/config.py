"""The generator's one config: defaults, loading and validation.

Every output (dashboards, recording rules, alerts, Kubernetes wrappers) is a function of
this config, so users customise by overriding values here, never by editing generated
files. Validation is complete before anything is written: a bad value is refused with the
dotted path of the key that holds it.
"""

from __future__ import annotations

import copy
import re
import string
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from obs.signals import LATENCY_BUCKETS, Stage

SEVERITIES = ("critical", "warning", "info")

DURATION_RE = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
"""Prometheus duration syntax (``5m``, ``1h30m``)."""

LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
"""Kubernetes object names and dashboard UID prefixes."""

RUNBOOK_FIELDS = ("alert", "alert_lower")
"""Placeholders ``runbook_url_pattern`` may use."""

DEFAULTS: Dict[str, Any] = {
    "torchserve_selector": 'job="torchserve"',
    "exporter_selector": 'job="torchserve-obs"',
    "cluster_label": "",
    "datasource": "Prometheus",
    "rate_window": "5m",
    "min_request_rate": 0.1,
    "runbook_url_pattern": (
        "https://github.com/torchserve-obs/torchserve-obs/blob/main/docs/runbooks.md#{alert_lower}"
    ),
    "slo": {
        "window": "30d",
        "availability": 0.995,
        "latency": {"objective": 0.99, "threshold_seconds": 1.0, "stage": Stage.HANDLE},
        "burn_windows": {
            "fast": [
                {"long": "1h", "short": "5m", "budget": 0.02},
                {"long": "6h", "short": "30m", "budget": 0.05},
            ],
            "slow": [
                {"long": "1d", "short": "2h", "budget": 0.1},
                {"long": "3d", "short": "6h", "budget": 0.1},
            ],
        },
    },
    "dashboards": {
        "uid_prefix": "torchserve-obs",
        "title_prefix": "TorchServe",
        "tags": ["torchserve", "torchserve-obs"],
        "refresh": "30s",
        "time_from": "now-3h",
    },
    "kubernetes": {
        "namespace": "monitoring",
        "prometheusrule_name": "torchserve-obs",
        "prometheusrule_labels": {"release": "kube-prometheus-stack"},
        "configmap_name": "torchserve-obs-dashboards",
        "configmap_labels": {"grafana_dashboard": "1"},
        "grafana_folder": "TorchServe",
    },
    "alerts": {},
}
"""Production defaults; ``obs.example.yaml`` documents each key."""

ALERT_KEYS = ("enabled", "severity", "for", "threshold", "expr", "labels", "annotations")
"""What ``alerts.<Name>`` may set to override or remove a built-in alert."""


class ConfigError(ValueError):
    """A config value the user must fix; the message names the key."""


def load(path: Optional[Path]) -> Dict[str, Any]:
    """Defaults overlaid with the YAML file at ``path`` (if any), fully validated."""
    user: Any = {}
    if path is not None:
        import yaml

        try:
            user = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
        if user is None:
            user = {}
    return resolve(user)


def resolve(user: Any) -> Dict[str, Any]:
    """Defaults overlaid with ``user`` (a mapping), fully validated."""
    if not isinstance(user, Mapping):
        raise ConfigError("the config must be a mapping of keys to values")
    merged = _merge(DEFAULTS, user, "")
    _validate(merged)
    return merged


def _merge(default: Mapping[str, Any], user: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """Deep-merge ``user`` into ``default``, refusing unknown keys and wrong types."""
    out = copy.deepcopy(dict(default))
    for key, value in user.items():
        path = f"{where}{key}"
        if key not in default:
            raise ConfigError(f"{path}: unknown key (known: {', '.join(sorted(default))})")
        if path in ("alerts", "kubernetes.prometheusrule_labels", "kubernetes.configmap_labels"):
            _require(isinstance(value, Mapping), path, "must be a mapping")
            out[key] = copy.deepcopy(dict(value))
        elif isinstance(default[key], Mapping) and path != "slo.burn_windows":
            _require(isinstance(value, Mapping), path, "must be a mapping")
            out[key] = _merge(default[key], value, f"{path}.")
        else:
            out[key] = _typed(default[key], value, path)
    return out


def _typed(default: Any, value: Any, path: str) -> Any:
    """``value`` if it has the type of ``default`` (ints accepted for floats)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    _require(ok, path, f"must be a {type(default).__name__}, not {value!r}")
    return copy.deepcopy(value)


def _require(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{path}: {message}")


def _duration(value: Any, path: str) -> None:
    _require(
        isinstance(value, str) and bool(DURATION_RE.match(value)),
        path,
        f"must be a Prometheus duration such as 5m or 1h, not {value!r}",
    )


def _ratio(value: float, path: str) -> None:
    _require(0.0 < value < 1.0, path, f"must be between 0 and 1 (exclusive), not {value}")


def _selector(value: str, path: str) -> None:
    """A comma-separated list of label matchers, as it goes inside ``{...}``."""
    matcher = r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*'
    _require(
        bool(re.fullmatch(f"{matcher}(,{matcher})*", value)),
        path,
        f'must be label matchers such as job="torchserve", not {value!r}',
    )


def _labels(value: Mapping[str, Any], path: str) -> None:
    for name, label_value in value.items():
        _require(bool(LABEL_NAME_RE.match(str(name))), f"{path}.{name}", "is not a label name")
        _require(isinstance(label_value, str), f"{path}.{name}", "must be a string")


def _validate(cfg: Dict[str, Any]) -> None:
    """Checks beyond types: syntax of selectors and durations, ranges, names."""
    _selector(cfg["torchserve_selector"], "torchserve_selector")
    _selector(cfg["exporter_selector"], "exporter_selector")
    cluster = cfg["cluster_label"]
    _require(
        cluster == "" or bool(LABEL_NAME_RE.match(cluster)),
        "cluster_label",
        f"must be empty or a label name, not {cluster!r}",
    )
    _require(bool(cfg["datasource"].strip()), "datasource", "must not be empty")
    _duration(cfg["rate_window"], "rate_window")
    _require(cfg["min_request_rate"] >= 0, "min_request_rate", "must not be negative")
    _runbook(cfg["runbook_url_pattern"])
    _slo(cfg["slo"])
    dash = cfg["dashboards"]
    _require(
        bool(METRIC_NAME_RE.match(dash["uid_prefix"])) and len(dash["uid_prefix"]) <= 24,
        "dashboards.uid_prefix",
        "must be lowercase letters, digits and dashes, at most 24 characters",
    )
    _require(all(isinstance(t, str) for t in dash["tags"]), "dashboards.tags", "must be strings")
    kube = cfg["kubernetes"]
    for key in ("namespace", "prometheusrule_name", "configmap_name"):
        _require(
            bool(METRIC_NAME_RE.match(kube[key])), f"kubernetes.{key}", "is not a Kubernetes name"
        )
    _labels(kube["prometheusrule_labels"], "kubernetes.prometheusrule_labels")
    _labels(kube["configmap_labels"], "kubernetes.configmap_labels")
    for name, override in cfg["alerts"].items():
        _alert_override(str(name), override)


def _runbook(pattern: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as err:
        raise ConfigError(f"runbook_url_pattern: {err}") from err
    unknown = sorted(set(fields) - set(RUNBOOK_FIELDS))
    _require(
        not unknown,
        "runbook_url_pattern",
        f"unknown placeholder(s) {unknown}; use {{alert}} or {{alert_lower}}",
    )


def _slo(slo: Dict[str, Any]) -> None:
    _duration(slo["window"], "slo.window")
    _ratio(slo["availability"], "slo.availability")
    latency = slo["latency"]
    _ratio(latency["objective"], "slo.latency.objective")
    _require(
        latency["threshold_seconds"] in LATENCY_BUCKETS,
        "slo.latency.threshold_seconds",
        f"must be a histogram bucket bound {LATENCY_BUCKETS}, not {latency['threshold_seconds']}",
    )
    _require(
        latency["stage"] in Stage.TIMED,
        "slo.latency.stage",
        f"must be one of {Stage.TIMED}, not {latency['stage']!r}",
    )
    windows = slo["burn_windows"]
    _require(
        isinstance(windows, Mapping) and sorted(windows) == ["fast", "slow"],
        "slo.burn_windows",
        "must have exactly the keys fast and slow",
    )
    for speed, pairs in windows.items():
        path = f"slo.burn_windows.{speed}"
        _require(isinstance(pairs, list) and len(pairs) > 0, path, "must be a non-empty list")
        for i, pair in enumerate(pairs):
            item = f"{path}[{i}]"
            _require(
                isinstance(pair, Mapping) and sorted(pair) == ["budget", "long", "short"],
                item,
                "must have exactly the keys long, short and budget",
            )
            _duration(pair["long"], f"{item}.long")
            _duration(pair["short"], f"{item}.short")
            budget = pair["budget"]
            _require(
                isinstance(budget, (int, float))
                and not isinstance(budget, bool)
                and 0 < budget <= 1,
                f"{item}.budget",
                "must be a share of the error budget, above 0 and at most 1",
            )


def _alert_override(name: str, override: Any) -> None:
    """Shape of ``alerts.<name>``; whether the alert exists is checked by the rules module."""
    path = f"alerts.{name}"
    _require(isinstance(override, Mapping), path, "must be a mapping")
    for key, value in override.items():
        item = f"{path}.{key}"
        _require(key in ALERT_KEYS, item, f"unknown key (known: {', '.join(ALERT_KEYS)})")
        if key == "enabled":
            _require(isinstance(value, bool), item, "must be true or false")
        elif key == "severity":
            _require(value in SEVERITIES, item, f"must be one of {SEVERITIES}, not {value!r}")
        elif key == "for":
            _duration(value, item)
        elif key == "threshold":
            _require(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                item,
                "must be a number",
            )
        elif key == "expr":
            _require(
                isinstance(value, str) and bool(value.strip()), item, "must be a PromQL string"
            )
        else:
            _require(isinstance(value, Mapping), item, "must be a mapping")
            _labels(value, item)


def durations_seconds(value: str) -> int:
    """Seconds in a Prometheus duration, to order windows and check test configs."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return int(sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", value)))


def all_windows(cfg: Mapping[str, Any]) -> List[str]:
    """Every distinct rate window the rules record, shortest first."""
    pairs = [p for speed in ("fast", "slow") for p in cfg["slo"]["burn_windows"][speed]]
    windows = {cfg["rate_window"]} | {p["long"] for p in pairs} | {p["short"] for p in pairs}
    return sorted(windows, key=durations_seconds)
