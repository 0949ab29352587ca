"""Recording rules and alerts, as data, and the Prometheus rule groups built from them.

Alerts are :class:`AlertSpec` values; the config's ``alerts`` section removes or overrides
any of them by name. Expressions come from :class:`~obs.generate.promql.Queries`, metric
names from :mod:`obs.signals` and :mod:`obs.generate.torchserve`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from obs.generate import torchserve as ts
from obs.generate.config import DEFAULTS, all_windows, durations_seconds
from obs.generate.promql import (
    HOST,
    NAME_PREFIX,
    OUTCOME_PREFIX,
    TORCHSERVE,
    Queries,
    num,
    record_name,
)
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

CRASH_WINDOW = "1h"
"""Window over which worker restarts are counted (a crash every 6 minutes is ten of them);
the dashboards' worker-starts panel uses it."""

LOAD_WINDOW = "1h"
GPU_IDLE_WINDOW = "30m"
HOST_SMOOTHING = "10m"
"""TorchServe's host gauges are sampled once a minute and jump: alert on their average."""

FAILING_WINDOW = "1h"
"""A model whose every request failed over this long, at any traffic, is down."""

ABSENT_FOR = "15m"
"""How long a scrape job may be missing from discovery before its absence alerts."""

QUEUE_WAIT = "ts_queue_latency"
"""Base of the recorded queue wait of answered requests (``model_name:<this>:mean_seconds5m``)."""


def _base(name: str) -> str:
    """Metric name without the counter suffix, for recorded names."""
    return name[: -len("_total")] if name.endswith("_total") else name


def requests_rate(window: str) -> str:
    return record_name(_base(Metrics.REQUESTS.name), "rate", window)


def requests_by_outcome_rate(window: str) -> str:
    return record_name(_base(Metrics.REQUESTS.name), "rate", window, OUTCOME_PREFIX)


def server_error_ratio(window: str) -> str:
    return record_name(_base(Metrics.REQUESTS.name), "server_error_ratio_rate", window)


def slow_ratio(window: str) -> str:
    return record_name(Metrics.STAGE_DURATION.name, "slow_ratio_rate", window)


def received_rate(window: str) -> str:
    """Requests TorchServe received per model name, rejected and lost ones included."""
    return record_name(_base(ts.INFERENCE_REQUESTS), "rate", window, NAME_PREFIX)


def handled_rate(window: str) -> str:
    """Requests that reached a handler, per model name (every version)."""
    return record_name(_base(Metrics.REQUESTS.name), "rate", window, NAME_PREFIX)


def answered_rate(window: str) -> str:
    """Requests the handler answered without a server error, per model name."""
    return record_name(_base(Metrics.REQUESTS.name), "answered_rate", window, NAME_PREFIX)


def unanswered_ratio(window: str) -> str:
    """Share of received requests no handler answered: rejected (503), timed out, lost."""
    return record_name(_base(ts.INFERENCE_REQUESTS), "unanswered_ratio_rate", window, NAME_PREFIX)


def queue_wait_mean(window: str) -> str:
    """Mean queue wait of the requests TorchServe answered, per model name."""
    return record_name(QUEUE_WAIT, "mean_seconds", window, NAME_PREFIX)


SERVED_VERSIONS = record_name(Metrics.MODEL_INFO.name, "max", "")
"""1 per model name and version a handler serves: joins name-level series to versions."""


def http_rate(window: str) -> str:
    return f"instance:{HTTP_RECORD}:rate{window}"


def http_5xx_ratio(window: str) -> str:
    return f"instance:{HTTP_RECORD}:5xx_ratio_rate{window}"


def runbook_url(cfg: Mapping[str, Any], alert: str) -> str:
    """The runbook section of ``alert`` (docs/runbooks.md by default): alerts and dashboards
    link the same place."""
    return str(cfg["runbook_url_pattern"]).format(alert=alert, alert_lower=alert.lower())


def _torchserve_join(cfg: Mapping[str, Any]) -> List[Dict[str, str]]:
    """Per-model-name series where TorchServe's counters meet the handler's.

    TorchServe labels requests to ``/predictions/NAME`` ``model_version="default"``, so its
    ``ts_*`` series join ours on ``model_name`` only; :data:`SERVED_VERSIONS` names the
    versions behind a name.
    """
    q = Queries(cfg)
    rw = cfg["rate_window"]
    by = q.model_name_by
    on = f"on ({', '.join(by)})"
    lost = q.sum_rate(q.exp(Metrics.REQUESTS_LOST), by, rw)
    not_error = f'{Label.OUTCOME}!="{Outcome.SERVER_ERROR}"'
    return [
        {
            "record": received_rate(rw),
            "expr": q.sum_rate(q.sel(ts.INFERENCE_REQUESTS, TORCHSERVE), by, rw),
        },
        {"record": handled_rate(rw), "expr": q.sum_rate(q.exp(Metrics.REQUESTS), by, rw)},
        {
            "record": answered_rate(rw),
            "expr": q.sum_rate(q.exp(Metrics.REQUESTS, extra=not_error), by, rw),
        },
        {
            # Handled minus lost: requests lost with a worker reached it but got no answer.
            "record": unanswered_ratio(rw),
            "expr": (
                f"clamp_min(\n  {received_rate(rw)}\n  - {on}\n  ({handled_rate(rw)} - {on} "
                f"{q.or_zero(lost, handled_rate(rw))}),\n  0\n)\n/ {on}\n{received_rate(rw)}"
            ),
        },
        {
            # TorchServe adds queue time only for answered requests: divide by those, not by
            # everything received, or the mean reads low exactly when it sheds load.
            "record": queue_wait_mean(rw),
            "expr": (
                f"{q.sum_rate(q.sel(ts.QUEUE_LATENCY_US, TORCHSERVE), by, rw)}\n/ {on}\n"
                f"({answered_rate(rw)} > 0 or {on} {received_rate(rw)})\n/ 1e6"
            ),
        },
        {
            "record": SERVED_VERSIONS,
            "expr": f"max {q.by(q.model_by)} ({q.exp(Metrics.MODEL_INFO)})",
        },
    ]


def recording_rules(cfg: Mapping[str, Any]) -> Dict[str, List[Dict[str, str]]]:
    """Recording rules by group: what alerts and dashboards share.

    Each window's request rate is computed once, by outcome; totals and ratios are sums of
    that recorded series, so a 3-day rate is read from raw samples once per evaluation.
    """
    q = Queries(cfg)
    latency = cfg["slo"]["latency"]
    rw = cfg["rate_window"]
    service = [
        {"record": http_rate(rw), "expr": q.http_responses(q.instance_by, rw)},
        {"record": http_5xx_ratio(rw), "expr": q.http_5xx_ratio(q.instance_by, rw)},
        *_torchserve_join(cfg),
    ]
    slo: List[Dict[str, str]] = []
    errors = f'{Label.OUTCOME}="{Outcome.SERVER_ERROR}"'
    for w in all_windows(cfg):
        by_outcome = requests_by_outcome_rate(w)
        slo.append(
            {
                "record": by_outcome,
                "expr": q.sum_rate(q.exp(Metrics.REQUESTS), q.model_by + (Label.OUTCOME,), w),
            }
        )
        slo.append({"record": requests_rate(w), "expr": f"sum {q.by(q.model_by)} ({by_outcome})"})
        failed = f"sum {q.by(q.model_by)} ({by_outcome}{{{errors}}})"
        slo.append(
            {
                "record": server_error_ratio(w),
                "expr": f"{q.or_zero(failed, requests_rate(w))}\n/\n{requests_rate(w)}",
            }
        )
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


def burn_factor(cfg: Mapping[str, Any], pair: Mapping[str, Any]) -> float:
    """Burn rate at which ``pair['budget']`` of the SLO window's error budget goes in ``long``.

    The SRE workbook's 14.4 is 2% of a 30-day budget in one hour: a 7-day SLO window gives
    3.36 for the same share, so ``slo.window`` changes what fires, not only the wording.
    """
    window = durations_seconds(cfg["slo"]["window"])
    return float(pair["budget"]) * window / durations_seconds(pair["long"])


def _burn(cfg: Mapping[str, Any], ratio: Callable[[str], str], objective: float, speed: str) -> str:
    """Multi-window multi-burn-rate condition (SRE workbook), guarded by minimum traffic."""
    budget = 1.0 - objective
    pairs = []
    for pair in cfg["slo"]["burn_windows"][speed]:
        limit = num(burn_factor(cfg, pair) * budget)
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
    host_model = q.cluster + (HOST, Label.MODEL)
    failed = q.exp(Metrics.REQUESTS, extra=f'{Label.OUTCOME}="{Outcome.SERVER_ERROR}"')
    answered = q.exp(Metrics.REQUESTS, extra=f'{Label.OUTCOME}!="{Outcome.SERVER_ERROR}"')

    def burn(kind: str, speed: str) -> AlertSpec:
        fast = speed == "fast"
        if kind == "availability":
            ratio, objective, noun, what = (
                server_error_ratio,
                slo["availability"],
                "Error",
                f"requests answered without a server error ({availability} objective)",
            )
        else:
            ratio, objective, noun, what = (
                slow_ratio,
                slo["latency"]["objective"],
                "HandlerLatency",
                (
                    f"{slo['latency']['stage']} batches faster than {latency_bound} "
                    f"({latency_objective} objective; time in TorchServe's queue is not in it)"
                ),
            )
        return AlertSpec(
            name=f"TorchServeModel{noun}BudgetBurn{'Fast' if fast else 'Slow'}",
            group=GROUP_SERVICE,
            severity="critical" if fast else "warning",
            for_="2m" if fast else "1h",
            summary=(
                f"A model is burning its {'handler latency' if noun != 'Error' else kind} "
                f"error budget {'fast' if fast else 'steadily'}."
            ),
            description=(
                f"M{model[1:]} is spending its {slo['window']} error budget for {what} "
                "too fast: {{ $value | humanizePercentage }} of them failed over the long window."
            ),
            expr=lambda _t: _burn(cfg, ratio, objective, speed),
        )

    def down(job: str, selector: str, severity: str, summary: str, effect: str) -> AlertSpec:
        return AlertSpec(
            name=f"{job}Down",
            group=GROUP_SERVICE,
            severity=severity,
            for_="5m",
            summary=summary,
            description=(
                "Target {{ $labels.instance }} of job {{ $labels.job }} has been down for 5 "
                f"minutes: {effect}."
            ),
            expr=lambda _t: f"up{{{selector}}} == 0",
        )

    def absent(job: str, selector: str, severity: str) -> AlertSpec:
        return AlertSpec(
            name=f"{job}Missing",
            group=GROUP_SERVICE,
            severity=severity,
            for_=ABSENT_FOR,
            summary=f"Prometheus has no {'TorchServe' if 'Obs' not in job else 'exporter'} target.",
            description=(
                "Prometheus has discovered no target of job {{ $labels.job }} for "
                f"{ABSENT_FOR}: the deployment was deleted, or service discovery or "
                "relabelling no longer finds it."
            ),
            expr=lambda _t: f"absent(up{{{selector}}})",
        )

    def pressure(resource: str, gauge: str, running_out_of: str, effect: str) -> AlertSpec:
        return AlertSpec(
            name=f"TorchServeHost{resource}Pressure",
            group=GROUP_RESOURCES,
            severity="warning",
            for_="15m",
            threshold=90.0,
            summary=f"A TorchServe host is running out of {running_out_of}.",
            description=(
                f"{resource} utilisation of TorchServe host {{{{ $labels.instance }}}} averaged "
                f"{{{{ $value | humanize }}}}% over {HOST_SMOOTHING}: {effect}."
            ),
            expr=lambda t: (
                q.host_average(gauge, q.instance_by, HOST_SMOOTHING) + f" > {num(t or 0)}"
            ),
        )

    return [
        down(
            "TorchServeTarget",
            cfg["torchserve_selector"],
            "critical",
            "Prometheus cannot scrape TorchServe's metrics endpoint.",
            "TorchServe is not running or metrics_mode is not prometheus",
        ),
        absent("TorchServeTarget", cfg["torchserve_selector"], "critical"),
        down(
            "TorchServeObsExporter",
            cfg["exporter_selector"],
            "warning",
            "Prometheus cannot scrape the torchserve-obs exporter.",
            "handler metrics, and the alerts built on them, are blind",
        ),
        absent("TorchServeObsExporter", cfg["exporter_selector"], "warning"),
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
            name="TorchServeModelAllRequestsFailing",
            group=GROUP_SERVICE,
            severity="critical",
            for_="5m",
            threshold=3.0,
            summary="Every request to a model fails.",
            description=(
                "{{ $value | humanize }} requests to " + model + " failed with a server error "
                f"in the last {FAILING_WINDOW} and none succeeded: the model is down, at "
                "whatever traffic it gets."
            ),
            expr=lambda t: (
                f"sum {q.by(q.model_by)} (increase({failed}[{FAILING_WINDOW}])) >= {num(t or 0)}\n"
                f"unless on ({', '.join(q.model_by)})\n"
                f"sum {q.by(q.model_by)} (increase({answered}[{FAILING_WINDOW}])) > 0"
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
        AlertSpec(
            name="TorchServeModelRequestsUnanswered",
            group=GROUP_SERVICE,
            severity="critical",
            for_="5m",
            threshold=0.1,
            summary="TorchServe rejects or loses many requests to a model.",
            description=(
                "{{ $value | humanizePercentage }} of the requests TorchServe received for model "
                "{{ $labels.model_name }} over the last " + rw + " got no answer from a handler: "
                "rejected with 503 (queue full, no worker), timed out, or lost with a worker."
            ),
            # After an exporter gap the handler's rate sees only the samples since, TorchServe's
            # the whole window: compare them only over windows every exporter was scraped in.
            expr=lambda t: (
                f"{unanswered_ratio(rw)} > {num(t or 0)}\nand\n{received_rate(rw)} >= {min_rate}"
                f"\nunless on ({', '.join(q.cluster)})\n"
                f"min_over_time(up{{{cfg['exporter_selector']}}}[{rw}]) == 0"
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
                "Requests to model {{ $labels.model_name }} that were answered had waited "
                "{{ $value | humanizeDuration }} on average in the queue over the last "
                f"{rw}: the model needs more workers or larger batches."
            ),
            expr=lambda t: f"{queue_wait_mean(rw)} > {num(t or 0)}",
        ),
        AlertSpec(
            name="TorchServeWorkerCrashLooping",
            group=GROUP_WORKERS,
            severity="warning",
            for_="10m",
            threshold=3.0,
            summary="Worker processes of a model keep restarting.",
            description=(
                "Workers of " + model + " on {{ $labels.instance }} restarted "
                '{{ printf "%.0f" $value }} times in the last ' + CRASH_WINDOW + ": they crash "
                "(out of memory, segfault, killed while loading) and TorchServe restarts them."
            ),
            expr=lambda t: _restarts(q, model_instance + q.host_extra) + f"\n>= {num(t or 0)}",
        ),
        AlertSpec(
            name="TorchServeModelNoHealthyWorker",
            group=GROUP_WORKERS,
            severity="critical",
            for_="5m",
            summary="Requests reach a model but no worker handles them.",
            description=(
                "TorchServe {{ $labels.instance }} receives requests for model "
                "{{ $labels.model_name }}, which the exporter on that host has seen served by "
                "instrumented workers, but none of them is alive now."
            ),
            # On one host: received, instrumented (the exporter up and the model's counters
            # on it), and no live worker. A model served without the mixin has no counters; an
            # exporter down has no series at all: neither fires.
            expr=lambda _t: (
                q.host(
                    f"sum {q.by(q.instance_by + q.host_extra + (Label.MODEL,))} ({q.rate(inference, rw)})"
                )
                + f" > 0\nand on ({', '.join(host_model)})\n"
                + q.host(
                    f"group {q.by(q.instance_by + q.host_extra + (Label.MODEL,))} ({q.exp(Metrics.WORKER_STARTS)})"
                )
                + f"\nand on ({', '.join(q.cluster + (HOST,))})\n"
                + q.host(f"up{{{cfg['exporter_selector']}}} == 1")
                + f"\nunless on ({', '.join(host_model)})\n"
                + q.host(
                    f"sum {q.by(q.instance_by + q.host_extra + (Label.MODEL,))} ({q.exp(Metrics.WORKERS)}) > 0"
                )
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
                f"sum {q.by(model_instance)} "
                + q.new_events(
                    q.exp(Metrics.MODEL_LOADS, extra=f'{Label.OUTCOME}="{Outcome.SERVER_ERROR}"'),
                    RARE_EVENT_WINDOW,
                )
                + f"\n> {num(t or 0)}"
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
                f"sum {q.by(model_instance)} "
                + q.new_events(q.exp(Metrics.MODEL_LOAD_DURATION, "sum"), LOAD_WINDOW)
                + f"\n/\nsum {q.by(model_instance)} "
                + q.new_events(q.exp(Metrics.MODEL_LOAD_DURATION, "count"), LOAD_WINDOW)
                + f"\n> {num(t or 0)}"
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
            expr=lambda t: f"{q.gpu_memory_used_ratio(q.instance_by)}\n> {num(t or 0)}",
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
                f"{q.host_average(ts.GPU_UTILIZATION, q.instance_by, GPU_IDLE_WINDOW)}"
                f" < {num(t or 0)}\nand on ({', '.join(q.instance_by)})\n"
                f"{q.sum_rate(inference, q.instance_by, GPU_IDLE_WINDOW)} >= {min_rate}"
            ),
        ),
        pressure(
            "Memory",
            ts.MEMORY_UTILIZATION,
            "memory",
            "workers risk being killed by the OOM killer",
        ),
        pressure(
            "Disk",
            ts.DISK_UTILIZATION,
            "disk space",
            "logs and model archives will soon fail to write",
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
                f"sum {q.by(q.instance_by + (Label.REASON,))} "
                + q.new_events(
                    q.exp(Metrics.LOG_RECORDS_DROPPED, per_model=False), RARE_EVENT_WINDOW
                )
                + f"\n> {num(t or 0)}"
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


def _restarts(q: Queries, labels: Tuple[str, ...]) -> str:
    """Worker restarts over :data:`CRASH_WINDOW`: starts that did not add a live worker.

    Starts also count scale-ups and TorchServe restarts. A scale-up raises the live-worker
    count (read as 0 while absent) from its low point in the window; a TorchServe restart
    resets its own ``Requests2XX`` counter (Prometheus scrapes it, so it always moves) and
    starts each worker once, so it accounts for up to the peak worker count.
    """
    on = f"on ({', '.join(labels)})"
    counter = q.exp(Metrics.WORKER_STARTS)
    starts = f"sum {q.by(labels)} (increase({counter}[{CRASH_WINDOW}]))"
    zero = f"0 * sum {q.by(labels)} ({counter})"
    workers = f"(sum {q.by(labels)} ({q.exp(Metrics.WORKERS)}) or {zero})"
    rise = f"{workers} - min_over_time({workers}[{CRASH_WINDOW}:1m])"
    frontend = q.sel(ts.REQUESTS_BY_CLASS["2xx"], TORCHSERVE, per_model=False)
    restarted = q.host(
        f"max {q.by(q.instance_by + q.host_extra)} (resets({frontend}[{CRASH_WINDOW}]))"
    )
    host_on = f"on ({', '.join(q.cluster + (HOST,))})"
    fresh = (
        f"{q.host(f'max_over_time({workers}[{CRASH_WINDOW}:1m])')}\n"
        f"  * {host_on} group_left ()\n  {restarted}"
    )
    return f"{starts}\n- {on}\n({rise})\n- {on}\n(\n  {fresh}\n  or {on}\n  {zero}\n)"


@functools.lru_cache(maxsize=1)
def builtin_thresholds() -> Dict[str, Optional[float]]:
    """Each built-in alert's name and default threshold (None: it takes none). Names and
    whether an alert has a threshold do not depend on the config, so the defaults tell."""
    return {spec.name: spec.threshold for spec in builtin_alerts(DEFAULTS)}


def _apply(spec: AlertSpec, override: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The rule for ``spec`` after the config's override; None when it is disabled."""
    if not override.get("enabled", True):
        return None
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
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for spec in builtin_alerts(cfg):
        rule = _apply(spec, cfg["alerts"].get(spec.name, {}))
        if rule is None:
            continue
        rule["annotations"].setdefault("runbook_url", runbook_url(cfg, spec.name))
        groups.setdefault(spec.group, []).append(rule)
    return groups


def rule_groups(cfg: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The ``groups`` of a Prometheus rule file: recording rules first, then alerts."""
    by_group = {**recording_rules(cfg), **alert_rules(cfg)}
    return [{"name": name, "rules": rules} for name, rules in by_group.items() if rules]
