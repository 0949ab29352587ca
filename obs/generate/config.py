"""The generator's one config: defaults, loading and validation.

Every output (dashboards, recording rules, alerts, Kubernetes wrappers) is a function of
this config, so users customise by overriding values here, never by editing generated
files. Validation is complete before anything is written: every bad value is reported at
once, each with the dotted path of the key that holds it and the value found there.
"""

from __future__ import annotations

import copy
import re
import string
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from obs import kibana
from obs.signals import LATENCY_BUCKETS, Stage

SEVERITIES = ("critical", "warning", "info")

DURATION_RE = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
"""Prometheus duration syntax (``5m``, ``1h30m``)."""

LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
"""Kubernetes object names and dashboard UID prefixes."""

LOG_FIELDS = ("otel", "ecs")
"""Values of ``dashboards.log_fields``: the field names the logs carry (``TSOBS_LOG_FIELDS``)."""

RUNBOOK_FIELDS = ("alert", "alert_lower")
"""Placeholders ``runbook_url_pattern`` may use."""

DEFAULTS: Dict[str, Any] = {
    "torchserve_selector": 'job="torchserve"',
    "exporter_selector": 'job="torchserve-obs"',
    "cluster_label": "",
    "host_label": "instance",
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
        "kibana_url": "",
        "kibana_data_view": kibana.DATA_VIEW,
        "log_fields": "otel",
    },
    "kubernetes": {
        "namespace": "monitoring",
        "prometheusrule_name": "torchserve-obs",
        "prometheusrule_labels": {"release": "kube-prometheus-stack"},
        "configmap_name": "torchserve-obs-dashboards",
        "configmap_labels": {"grafana_dashboard": "1"},
        "grafana_folder": "TorchServe",
        "workload_namespace": "torchserve",
        "monitor_labels": {"release": "kube-prometheus-stack"},
    },
    "alerts": {},
}
"""Production defaults; ``obs.example.yaml`` documents each key."""

ALERT_KEYS = ("enabled", "severity", "for", "threshold", "expr", "labels", "annotations")
"""What ``alerts.<Name>`` may set to override or remove a built-in alert."""


class ConfigError(ValueError):
    """Config values the user must fix; each problem names its key and the bad value.

    Validation collects every problem before raising, so a file with several mistakes is
    fixed in one round instead of one run per mistake.
    """

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        if len(problems) == 1:
            message = problems[0]
        else:
            message = f"{len(problems)} problems in the config:\n" + "\n".join(
                f"  {problem}" for problem in problems
            )
        super().__init__(message)


class _Problems:
    """Collects failed checks; ``require`` returns whether the check passed, so callers can
    skip checks that would only repeat a problem already reported."""

    def __init__(self) -> None:
        self.found: List[str] = []

    def require(self, condition: bool, path: str, message: str) -> bool:
        if not condition:
            self.found.append(f"{path}: {message}")
        return condition

    def raise_any(self) -> None:
        if self.found:
            raise ConfigError(*self.found)


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
    problems = _Problems()
    merged = _merge(DEFAULTS, user, "", problems)
    _validate(merged, problems)
    problems.raise_any()
    return merged


def _merge(
    default: Mapping[str, Any], user: Mapping[str, Any], where: str, problems: _Problems
) -> Dict[str, Any]:
    """Deep-merge ``user`` into ``default``, reporting unknown keys and wrong types.

    A refused value leaves the default in place, so later checks do not report it twice.
    """
    out = copy.deepcopy(dict(default))
    for key, value in user.items():
        path = f"{where}{key}"
        if not problems.require(
            key in default, path, f"unknown key (known: {', '.join(sorted(default))})"
        ):
            continue
        if path in (
            "alerts",
            "kubernetes.prometheusrule_labels",
            "kubernetes.configmap_labels",
            "kubernetes.monitor_labels",
        ):
            if problems.require(
                isinstance(value, Mapping), path, f"must be a mapping, not {value!r}"
            ):
                out[key] = copy.deepcopy(dict(value))
        elif isinstance(default[key], Mapping) and path != "slo.burn_windows":
            if problems.require(
                isinstance(value, Mapping), path, f"must be a mapping, not {value!r}"
            ):
                out[key] = _merge(default[key], value, f"{path}.", problems)
        elif _has_type_of(default[key], value, path, problems):
            out[key] = float(value) if isinstance(default[key], float) else copy.deepcopy(value)
    return out


def _has_type_of(default: Any, value: Any, path: str, problems: _Problems) -> bool:
    """Whether ``value`` has the type of ``default`` (ints accepted for floats)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = _is_number(value)
    else:
        ok = isinstance(value, type(default))
    return problems.require(ok, path, f"must be a {type(default).__name__}, not {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _duration(value: Any, path: str, problems: _Problems) -> None:
    problems.require(
        isinstance(value, str) and bool(DURATION_RE.match(value)),
        path,
        f"must be a Prometheus duration such as 5m or 1h, not {value!r}",
    )


def _ratio(value: float, path: str, problems: _Problems) -> None:
    problems.require(0.0 < value < 1.0, path, f"must be between 0 and 1 (exclusive), not {value}")


def _selector(value: str, path: str, problems: _Problems) -> None:
    """A comma-separated list of label matchers, as it goes inside ``{...}``."""
    matcher = r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*'
    problems.require(
        bool(re.fullmatch(f"{matcher}(,{matcher})*", value)),
        path,
        f'must be label matchers such as job="torchserve", not {value!r}',
    )


def _labels(value: Mapping[str, Any], path: str, problems: _Problems) -> None:
    for name, label_value in value.items():
        item = f"{path}.{name}"
        problems.require(bool(LABEL_NAME_RE.match(str(name))), item, "is not a label name")
        problems.require(
            isinstance(label_value, str), item, f"must be a string, not {label_value!r}"
        )


def _validate(cfg: Dict[str, Any], problems: _Problems) -> None:
    """Checks beyond types: syntax of selectors and durations, ranges, names."""
    _selector(cfg["torchserve_selector"], "torchserve_selector", problems)
    _selector(cfg["exporter_selector"], "exporter_selector", problems)
    cluster = cfg["cluster_label"]
    problems.require(
        cluster == "" or bool(LABEL_NAME_RE.match(cluster)),
        "cluster_label",
        f"must be empty or a label name, not {cluster!r}",
    )
    problems.require(
        bool(LABEL_NAME_RE.match(cfg["host_label"])),
        "host_label",
        f"must be a label name, not {cfg['host_label']!r}",
    )
    problems.require(bool(cfg["datasource"].strip()), "datasource", "must not be empty")
    _duration(cfg["rate_window"], "rate_window", problems)
    problems.require(
        cfg["min_request_rate"] >= 0,
        "min_request_rate",
        f"must not be negative, not {cfg['min_request_rate']}",
    )
    _runbook(cfg["runbook_url_pattern"], problems)
    _slo(cfg["slo"], problems)
    dash = cfg["dashboards"]
    problems.require(
        bool(METRIC_NAME_RE.match(dash["uid_prefix"])) and len(dash["uid_prefix"]) <= 24,
        "dashboards.uid_prefix",
        f"must be lowercase letters, digits and dashes, at most 24 characters, not {dash['uid_prefix']!r}",
    )
    for tag in dash["tags"]:
        problems.require(isinstance(tag, str), "dashboards.tags", f"must be strings, not {tag!r}")
    problems.require(
        dash["kibana_url"] == "" or bool(re.match(r"^https?://[^\s'\"]+$", dash["kibana_url"])),
        "dashboards.kibana_url",
        f"must be empty or an http(s) URL, not {dash['kibana_url']!r}",
    )
    problems.require(
        dash["log_fields"] in LOG_FIELDS,
        "dashboards.log_fields",
        f"must be one of {LOG_FIELDS} (as TSOBS_LOG_FIELDS), not {dash['log_fields']!r}",
    )
    kube = cfg["kubernetes"]
    for key in ("namespace", "prometheusrule_name", "configmap_name", "workload_namespace"):
        problems.require(
            bool(METRIC_NAME_RE.match(kube[key])),
            f"kubernetes.{key}",
            f"is not a Kubernetes name: {kube[key]!r}",
        )
    _labels(kube["prometheusrule_labels"], "kubernetes.prometheusrule_labels", problems)
    _labels(kube["configmap_labels"], "kubernetes.configmap_labels", problems)
    _labels(kube["monitor_labels"], "kubernetes.monitor_labels", problems)
    from obs.generate.rules import builtin_thresholds

    thresholds = builtin_thresholds()
    for name, override in cfg["alerts"].items():
        _alert_override(str(name), override, thresholds, problems)


def _runbook(pattern: str, problems: _Problems) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as err:
        problems.require(False, "runbook_url_pattern", f"{err}: {pattern!r}")
        return
    unknown = sorted(set(fields) - set(RUNBOOK_FIELDS))
    problems.require(
        not unknown,
        "runbook_url_pattern",
        f"unknown placeholder(s) {unknown}; use {{alert}} or {{alert_lower}}",
    )


def _slo(slo: Dict[str, Any], problems: _Problems) -> None:
    _duration(slo["window"], "slo.window", problems)
    _ratio(slo["availability"], "slo.availability", problems)
    latency = slo["latency"]
    _ratio(latency["objective"], "slo.latency.objective", problems)
    problems.require(
        latency["threshold_seconds"] in LATENCY_BUCKETS,
        "slo.latency.threshold_seconds",
        f"must be a histogram bucket bound {LATENCY_BUCKETS}, not {latency['threshold_seconds']}",
    )
    problems.require(
        latency["stage"] in Stage.TIMED,
        "slo.latency.stage",
        f"must be one of {Stage.TIMED}, not {latency['stage']!r}",
    )
    windows = slo["burn_windows"]
    if not problems.require(
        isinstance(windows, Mapping) and sorted(windows) == ["fast", "slow"],
        "slo.burn_windows",
        f"must have exactly the keys fast and slow, not {sorted(windows)}",
    ):
        return
    for speed, pairs in windows.items():
        path = f"slo.burn_windows.{speed}"
        if not problems.require(
            isinstance(pairs, list) and len(pairs) > 0,
            path,
            f"must be a non-empty list, not {pairs!r}",
        ):
            continue
        for i, pair in enumerate(pairs):
            item = f"{path}[{i}]"
            if not problems.require(
                isinstance(pair, Mapping) and sorted(pair) == ["budget", "long", "short"],
                item,
                f"must have exactly the keys long, short and budget, not {pair!r}",
            ):
                continue
            _duration(pair["long"], f"{item}.long", problems)
            _duration(pair["short"], f"{item}.short", problems)
            budget = pair["budget"]
            problems.require(
                _is_number(budget) and 0 < budget <= 1,
                f"{item}.budget",
                f"must be a share of the error budget, above 0 and at most 1, not {budget!r}",
            )


def _alert_override(
    name: str, override: Any, thresholds: Mapping[str, Optional[float]], problems: _Problems
) -> None:
    """``alerts.<name>`` against the built-in alerts (``thresholds``: each name and its default
    threshold, None where the alert takes none), checked here so its problems are reported
    with every other one."""
    path = f"alerts.{name}"
    if not problems.require(
        name in thresholds, path, f"no such alert (known: {', '.join(sorted(thresholds))})"
    ) or not problems.require(
        isinstance(override, Mapping), path, f"must be a mapping, not {override!r}"
    ):
        return
    problems.require(
        not ("threshold" in override and "expr" in override),
        path,
        "set threshold or expr, not both",
    )
    for key, value in override.items():
        item = f"{path}.{key}"
        if not problems.require(
            key in ALERT_KEYS, item, f"unknown key (known: {', '.join(ALERT_KEYS)})"
        ):
            continue
        if key == "enabled":
            problems.require(isinstance(value, bool), item, f"must be true or false, not {value!r}")
        elif key == "severity":
            problems.require(
                value in SEVERITIES, item, f"must be one of {SEVERITIES}, not {value!r}"
            )
        elif key == "for":
            _duration(value, item, problems)
        elif key == "threshold":
            if problems.require(
                thresholds[name] is not None,
                item,
                f"this alert has no threshold (found {value!r}); override its expr instead",
            ):
                problems.require(_is_number(value), item, f"must be a number, not {value!r}")
        elif key == "expr":
            problems.require(
                isinstance(value, str) and bool(value.strip()),
                item,
                f"must be a PromQL string, not {value!r}",
            )
        elif problems.require(
            isinstance(value, Mapping), item, f"must be a mapping, not {value!r}"
        ):
            _labels(value, item, problems)


def durations_seconds(value: str) -> int:
    """Seconds in a Prometheus duration, to order windows and check test configs."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return int(sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", value)))


def all_windows(cfg: Mapping[str, Any]) -> List[str]:
    """Every distinct rate window the rules record, shortest first."""
    pairs = [p for speed in ("fast", "slow") for p in cfg["slo"]["burn_windows"][speed]]
    windows = {cfg["rate_window"]} | {p["long"] for p in pairs} | {p["short"] for p in pairs}
    return sorted(windows, key=durations_seconds)
