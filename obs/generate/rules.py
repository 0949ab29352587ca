"""Recording rules and alerts, as data, and the Prometheus rule groups built from them.

Alerts are :class:`AlertSpec` values; the config's ``alerts`` section removes or overrides
any of them by name. Expressions come from :class:`~obs.generate.promql.Queries`, metric
names from :mod:`obs.signals` and :mod:`obs.generate.torchserve`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional

from obs.generate import torchserve as ts
from obs.generate.config import ConfigError, all_windows
from obs.generate.promql import TORCHSERVE, Queries, num, record_name
from obs.signals import Label, Metrics, Outcome

GROUP_RECORDING = "torchserve-obs.rules"
GROUP_SLO_RECORDING = "torchserve-obs.slo.rules"
GROUP_SERVICE = "torchserve-obs.service"
GROUP_WORKERS = "torchserve-obs.workers"
GROUP_RESOURCES = "torchserve-obs.resources"

HTTP_RECORD = "torchserve_http_responses"
"""Base name of the recorded frontend response rates (``instance:<this>:rate5m``)."""

RARE_EVENT_WINDOW = "15m"
"""Window over which rare events (load failures, log drops) are counted."""

CRASH_WINDOW = "5m"
"""Window over which worker starts are counted; the dashboards' worker-starts panel uses it."""

LOAD_WINDOW = "1h"
GPU_IDLE_WINDOW = "30m"
HOST_SMOOTHING = "10m"
"""TorchServe's host gauges are sampled once a minute and jump: alert on their average."""


def _base(name: str) -> str:
    """Metric name without the counter suffix, for recorded names."""
    return name[: -len("_total")] if name.endswith("_total") else name


def requests_rate(window: str) -> str:
    return record_name(_base(Metrics.REQUESTS.name), "rate", window)


def server_error_ratio(window: str) -> str:
    return record_name(_base(Metrics.REQUESTS.name), "server_error_ratio_rate", window)


def slow_ratio(window: str) -> str:
    return record_name(Metrics.STAGE_DURATION.name, "slow_ratio_rate", window)


def queue_latency_mean(window: str) -> str:
    return record_name(ts.QUEUE_LATENCY_US, "mean_seconds", window)


def http_rate(window: str) -> str:
    return f"instance:{HTTP_RECORD}:rate{window}"


def http_5xx_ratio(window: str) -> str:
    return f"instance:{HTTP_RECORD}:5xx_ratio_rate{window}"


def recording_rules(cfg: Mapping[str, Any]) -> Dict[str, List[Dict[str, str]]]:
    """Recording rules by group: what alerts and dashboards share."""
    q = Queries(cfg)
    latency = cfg["slo"]["latency"]
    rw = cfg["rate_window"]
    service = [
        {"record": http_rate(rw), "expr": q.http_responses(q.instance_by, rw)},
        {"record": http_5xx_ratio(rw), "expr": q.http_5xx_ratio(q.instance_by, rw)},
        {
            "record": queue_latency_mean(rw),
            "expr": q.mean_ts_latency(ts.QUEUE_LATENCY_US, q.model_by, rw),
        },
    ]
    slo: List[Dict[str, str]] = []
    for w in all_windows(cfg):
        slo.append(
            {"record": requests_rate(w), "expr": q.sum_rate(q.exp(Metrics.REQUESTS), q.model_by, w)}
        )
        slo.append({"record": server_error_ratio(w), "expr": q.server_error_ratio(q.model_by, w)})
        slo.append(
            {
                "record": slow_ratio(w),
                "expr": q.slow_ratio(q.model_by, latency["stage"], latency["threshold_seconds"], w),
            }
        )
    return {GROUP_RECORDING: service, GROUP_SLO_RECORDING: slo}


@dataclass(frozen=True)
class AlertSpec:
    """One alert: the expression is a function of its (overridable) threshold."""

    name: str
    group: str
    severity: str
    summary: str
    description: str
    expr: Callable[[Optional[float]], str]
    for_: str = ""
    threshold: Optional[float] = None
    runbook_url: str = ""
    """Set only when the alert has its own runbook; otherwise the config's pattern applies."""


def _burn(cfg: Mapping[str, Any], ratio: Callable[[str], str], objective: float, speed: str) -> str:
    """Multi-window multi-burn-rate condition (SRE workbook), guarded by minimum traffic."""
    budget = 1.0 - objective
    pairs = []
    for pair in cfg["slo"]["burn_windows"][speed]:
        limit = num(pair["factor"] * budget)
        pairs.append(
            f"(\n  {ratio(pair['long'])} > {limit}\n  and\n  {ratio(pair['short'])} > {limit}\n"
            f"  and\n  {requests_rate(pair['long'])} >= {num(cfg['min_request_rate'])}\n)"
        )
    return "\nor\n".join(pairs)


def builtin_alerts(cfg: Mapping[str, Any]) -> List[AlertSpec]:
    """Every alert the generator knows, with production defaults."""
    q = Queries(cfg)
    rw = cfg["rate_window"]
    min_rate = num(cfg["min_request_rate"])
    slo = cfg["slo"]
    availability = f"{num(slo['availability'] * 100)}%"
    latency_objective = f"{num(slo['latency']['objective'] * 100)}%"
    latency_bound = f"{num(slo['latency']['threshold_seconds'])}s"
    model = "model {{ $labels.model_name }} version {{ $labels.model_version }}"
    inference = q.sel(ts.INFERENCE_REQUESTS, TORCHSERVE)
    model_instance = q.model_by + ("instance",)

    def burn(kind: str, speed: str) -> AlertSpec:
        fast = speed == "fast"
        if kind == "availability":
            ratio, objective, what = (
                server_error_ratio,
                slo["availability"],
                (f"requests answered without a server error ({availability} objective)"),
            )
        else:
            ratio, objective, what = (
                slow_ratio,
                slo["latency"]["objective"],
                (
                    f"{slo['latency']['stage']} batches faster than {latency_bound} "
                    f"({latency_objective} objective)"
                ),
            )
        noun = "Error" if kind == "availability" else "Latency"
        return AlertSpec(
            name=f"TorchServeModel{noun}BudgetBurn{'Fast' if fast else 'Slow'}",
            group=GROUP_SERVICE,
            severity="critical" if fast else "warning",
            for_="2m" if fast else "1h",
            summary=f"A model is burning its {kind} error budget {'fast' if fast else 'steadily'}.",
            description=(
                f"M{model[1:]} is spending its {slo['window']} error budget for {what} "
                "too fast: {{ $value | humanizePercentage }} of them failed over the long window."
            ),
            expr=lambda _t: _burn(cfg, ratio, objective, speed),
        )

    return [
        AlertSpec(
            name="TorchServeTargetDown",
            group=GROUP_SERVICE,
            severity="critical",
            for_="5m",
            summary="Prometheus cannot scrape TorchServe's metrics endpoint.",
            description=(
                "Target {{ $labels.instance }} of job {{ $labels.job }} has been down for 5 "
                "minutes: TorchServe is not running or metrics_mode is not prometheus."
            ),
            expr=lambda _t: f"up{{{cfg['torchserve_selector']}}} == 0",
        ),
        AlertSpec(
            name="TorchServeObsExporterDown",
            group=GROUP_SERVICE,
            severity="warning",
            for_="5m",
            summary="Prometheus cannot scrape the torchserve-obs exporter.",
            description=(
                "Target {{ $labels.instance }} of job {{ $labels.job }} has been down for 5 "
                "minutes: handler metrics, and the alerts built on them, are blind."
            ),
            expr=lambda _t: f"up{{{cfg['exporter_selector']}}} == 0",
        ),
        AlertSpec(
            name="TorchServeModelErrorRatioHigh",
            group=GROUP_SERVICE,
            severity="warning",
            for_="10m",
            threshold=0.05,
            summary="A model answers too many requests with a server error.",
            description=(
                "{{ $value | humanizePercentage }} of the requests to " + model + " failed "
                f"with a server error over the last {rw}."
            ),
            expr=lambda t: (
                f"{server_error_ratio(rw)} > {num(t or 0)}\nand\n{requests_rate(rw)} >= {min_rate}"
            ),
        ),
        AlertSpec(
            name="TorchServeHTTPErrorRatioHigh",
            group=GROUP_SERVICE,
            severity="warning",
            for_="10m",
            threshold=0.05,
            summary="TorchServe answers too many HTTP requests with a 5xx status.",
            description=(
                "{{ $value | humanizePercentage }} of the HTTP responses of TorchServe "
                "{{ $labels.instance }} had a 5xx status over the last " + rw + ", including "
                "failures that never reached a handler (no worker, worker died, timeout)."
            ),
            expr=lambda t: (
                f"{http_5xx_ratio(rw)} > {num(t or 0)}\nand on ({', '.join(q.instance_by)})\n"
                f"{q.sum_rate(inference, q.instance_by, rw)} >= {min_rate}"
            ),
        ),
        burn("availability", "fast"),
        burn("availability", "slow"),
        burn("latency", "fast"),
        burn("latency", "slow"),
        AlertSpec(
            name="TorchServeModelQueueLatencyHigh",
            group=GROUP_WORKERS,
            severity="warning",
            for_="10m",
            threshold=1.0,
            summary="Requests wait too long in TorchServe's queue for a worker.",
            description=(
                "Requests to " + model + " waited {{ $value | humanizeDuration }} on average "
                f"in the queue over the last {rw}: the model needs more workers or larger batches."
            ),
            expr=lambda t: f"{queue_latency_mean(rw)} > {num(t or 0)}",
        ),
        AlertSpec(
            name="TorchServeWorkerCrashLooping",
            group=GROUP_WORKERS,
            severity="warning",
            for_="15m",
            threshold=1.0,
            summary="Worker processes of a model keep restarting.",
            description=(
                "{{ $value | humanize }} worker processes of " + model + " started on "
                "{{ $labels.instance }} in the last 5 minutes, for 15 minutes on end: workers "
                "are crashing (out of memory, segfault) and TorchServe restarts them."
            ),
            expr=lambda t: (
                f"sum {q.by(model_instance)} "
                f"(increase({q.exp(Metrics.WORKER_STARTS)}[{CRASH_WINDOW}])) > {num(t or 0)}"
            ),
        ),
        AlertSpec(
            name="TorchServeModelNoHealthyWorker",
            group=GROUP_WORKERS,
            severity="critical",
            for_="5m",
            summary="Requests reach a model but no worker handles them.",
            description=(
                "TorchServe receives requests for model {{ $labels.model_name }} but its "
                "handler has processed none for 5 minutes: no worker is up, or all are stuck."
            ),
            expr=lambda _t: (
                f"{q.sum_rate(inference, q.model_name_by, rw)} > 0\n"
                f"unless on ({', '.join(q.model_name_by)})\n"
                f"{q.sum_rate(q.exp(Metrics.REQUESTS), q.model_name_by, rw)} > 0"
            ),
        ),
        AlertSpec(
            name="TorchServeModelLoadFailing",
            group=GROUP_WORKERS,
            severity="warning",
            threshold=0.0,
            summary="A model fails to load in its workers.",
            description=(
                "{{ $value | humanize }} loads of " + model + " failed on {{ $labels.instance }} "
                f"in the last {RARE_EVENT_WINDOW}: the handler's initialize() raised."
            ),
            expr=lambda t: (
                f"sum {q.by(model_instance)} ("
                + q.window_increase(
                    q.exp(Metrics.MODEL_LOADS, extra=f'{Label.OUTCOME}="{Outcome.SERVER_ERROR}"'),
                    RARE_EVENT_WINDOW,
                )
                + f") > {num(t or 0)}"
            ),
        ),
        AlertSpec(
            name="TorchServeModelLoadSlow",
            group=GROUP_WORKERS,
            severity="warning",
            threshold=120.0,
            summary="A model takes too long to load in its workers.",
            description=(
                "Loading "
                + model
                + " on {{ $labels.instance }} took {{ $value | humanizeDuration }} "
                f"on average over the last {LOAD_WINDOW}: workers come up slowly after a restart "
                "or scale-up."
            ),
            expr=lambda t: (
                f"sum {q.by(model_instance)} ("
                + q.window_increase(q.exp(Metrics.MODEL_LOAD_DURATION, "sum"), LOAD_WINDOW)
                + f")\n/\nsum {q.by(model_instance)} ("
                + q.window_increase(q.exp(Metrics.MODEL_LOAD_DURATION, "count"), LOAD_WINDOW)
                + f")\n> {num(t or 0)}"
            ),
        ),
        AlertSpec(
            name="TorchServeGPUMemoryNearFull",
            group=GROUP_RESOURCES,
            severity="warning",
            for_="15m",
            threshold=0.9,
            summary="A GPU's memory is nearly full.",
            description=(
                "GPU {{ $labels.device }} on {{ $labels.instance }} has "
                "{{ $value | humanizePercentage }} of its memory in use: the next large batch "
                "may fail with CUDA out of memory."
            ),
            expr=lambda t: (
                f"max {q.by(q.instance_by + (Label.DEVICE,))} "
                f"({q.exp(Metrics.GPU_MEMORY_USED, per_model=False)})\n/\n"
                f"max {q.by(q.instance_by + (Label.DEVICE,))} "
                f"({q.exp(Metrics.GPU_MEMORY_TOTAL, per_model=False)})\n> {num(t or 0)}"
            ),
        ),
        AlertSpec(
            name="TorchServeGPUUnderutilized",
            group=GROUP_RESOURCES,
            severity="info",
            for_="30m",
            threshold=10.0,
            summary="GPUs sit mostly idle while a TorchServe host serves traffic.",
            description=(
                "The GPUs of TorchServe {{ $labels.instance }} averaged {{ $value | humanize }}% "
                f"utilisation over {GPU_IDLE_WINDOW} while requests flowed: larger batches or "
                "fewer GPUs would do."
            ),
            expr=lambda t: (
                f"avg {q.by(q.instance_by)} (avg_over_time("
                f"{q.sel(ts.GPU_UTILIZATION, TORCHSERVE, per_model=False)}[{GPU_IDLE_WINDOW}]))"
                f" < {num(t or 0)}\nand on ({', '.join(q.instance_by)})\n"
                f"{q.sum_rate(inference, q.instance_by, GPU_IDLE_WINDOW)} >= {min_rate}"
            ),
        ),
        AlertSpec(
            name="TorchServeHostMemoryPressure",
            group=GROUP_RESOURCES,
            severity="warning",
            for_="15m",
            threshold=90.0,
            summary="A TorchServe host is running out of memory.",
            description=(
                "Memory utilisation of TorchServe host {{ $labels.instance }} averaged "
                "{{ $value | humanize }}% over " + HOST_SMOOTHING + ": workers risk being "
                "killed by the OOM killer."
            ),
            expr=lambda t: (
                f"avg {q.by(q.instance_by)} (avg_over_time("
                f"{q.sel(ts.MEMORY_UTILIZATION, TORCHSERVE, per_model=False)}[{HOST_SMOOTHING}]))"
                f" > {num(t or 0)}"
            ),
        ),
        AlertSpec(
            name="TorchServeHostDiskPressure",
            group=GROUP_RESOURCES,
            severity="warning",
            for_="15m",
            threshold=90.0,
            summary="A TorchServe host is running out of disk space.",
            description=(
                "Disk utilisation of TorchServe host {{ $labels.instance }} averaged "
                "{{ $value | humanize }}% over " + HOST_SMOOTHING + ": logs and model archives "
                "will soon fail to write."
            ),
            expr=lambda t: (
                f"avg {q.by(q.instance_by)} (avg_over_time("
                f"{q.sel(ts.DISK_UTILIZATION, TORCHSERVE, per_model=False)}[{HOST_SMOOTHING}]))"
                f" > {num(t or 0)}"
            ),
        ),
        AlertSpec(
            name="TorchServeObsLogRecordsDropped",
            group=GROUP_RESOURCES,
            severity="warning",
            threshold=0.0,
            summary="The log pipeline drops records.",
            description=(
                "{{ $value | humanize }} log records were dropped on {{ $labels.instance }} "
                f"(reason {{{{ $labels.reason }}}}) in the last {RARE_EVENT_WINDOW}: "
                "Fluentd is slow or unreachable."
            ),
            expr=lambda t: (
                f"sum {q.by(q.instance_by + (Label.REASON,))} ("
                + q.window_increase(
                    q.exp(Metrics.LOG_RECORDS_DROPPED, per_model=False), RARE_EVENT_WINDOW
                )
                + f") > {num(t or 0)}"
            ),
        ),
        AlertSpec(
            name="TorchServeTorchVersionMismatch",
            group=GROUP_RESOURCES,
            severity="warning",
            for_="5m",
            summary="A model runs on another torch version than the one it declares.",
            description=(
                "Workers of " + model + " on {{ $labels.instance }} run a torch version other "
                "than the one the model declares: outputs and performance may differ."
            ),
            expr=lambda _t: (
                f"max {q.by(model_instance)} ({q.exp(Metrics.TORCH_VERSION_MISMATCH)}) > 0"
            ),
        ),
    ]


def _apply(spec: AlertSpec, override: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The rule for ``spec`` after the config's override; None when it is disabled."""
    if not override.get("enabled", True):
        return None
    if "threshold" in override and spec.threshold is None:
        raise ConfigError(f"alerts.{spec.name}.threshold: this alert has no threshold")
    if "threshold" in override and "expr" in override:
        raise ConfigError(f"alerts.{spec.name}: set threshold or expr, not both")
    spec = replace(
        spec,
        severity=override.get("severity", spec.severity),
        for_=override.get("for", spec.for_),
        threshold=override.get("threshold", spec.threshold),
    )
    rule: Dict[str, Any] = {
        "alert": spec.name,
        "expr": override.get("expr") or spec.expr(spec.threshold),
    }
    if spec.for_:
        rule["for"] = spec.for_
    rule["labels"] = {**override.get("labels", {}), "severity": spec.severity}
    annotations = {"summary": spec.summary, "description": spec.description}
    if spec.runbook_url:
        annotations["runbook_url"] = spec.runbook_url
    rule["annotations"] = {**annotations, **override.get("annotations", {})}
    return rule


def alert_rules(cfg: Mapping[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    """Alerting rules by group, after overrides, each with a ``runbook_url``."""
    specs = builtin_alerts(cfg)
    known = {s.name for s in specs}
    unknown = sorted(set(cfg["alerts"]) - known)
    if unknown:
        raise ConfigError(f"alerts.{unknown[0]}: no such alert (known: {', '.join(sorted(known))})")
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for spec in specs:
        rule = _apply(spec, cfg["alerts"].get(spec.name, {}))
        if rule is None:
            continue
        rule["annotations"].setdefault(
            "runbook_url",
            cfg["runbook_url_pattern"].format(alert=spec.name, alert_lower=spec.name.lower()),
        )
        groups.setdefault(spec.group, []).append(rule)
    return groups


def rule_groups(cfg: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The ``groups`` of a Prometheus rule file: recording rules first, then alerts."""
    by_group = {**recording_rules(cfg), **alert_rules(cfg)}
    return [{"name": name, "rules": rules} for name, rules in by_group.items() if rules]
