"""The dashboards as data: a small panel spec, and the two dashboards built from it.

Rendering lives in :mod:`obs.generate.dashboards`; this module only says what to show.
Panel factories take the labels to group by, so the overview (per model and version) and
the drill-down (per version of one model) share every query. Thresholds and runbook links
come from the alerts as configured (:class:`Alerts`), so a panel turns red where an alert
would fire.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Sequence, Tuple

from obs.generate import links, rules
from obs.generate import torchserve as ts
from obs.generate.config import durations_seconds
from obs.generate.promql import RECORDED, TORCHSERVE, Queries
from obs.signals import Label, Metrics, MetricSpec, Stage

GPU = "gpu"
"""``PanelSpec.needs``: the panel shows data only on hosts with an NVIDIA GPU."""

HOST_SMOOTHING = "5m"
"""TorchServe samples host gauges once a minute with a fresh process: average them."""

ROLLOUT_LOOKBACK = "2m"
"""A model version is annotated as new (or retired) while it differs from this long ago."""

Steps = Tuple[Tuple[Optional[float], str], ...]
"""Grafana threshold steps: ``(None, base colour)`` then ``(value, colour)`` from that value up."""

NO_STEPS: Steps = ((None, "green"),)


def above(value: float, color: str = "red") -> Steps:
    """Green, then ``color`` from ``value`` up (where the alert fires)."""
    return ((None, "green"), (value, color))


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    heatmap: bool = False
    instant: bool = False


@dataclass(frozen=True)
class PanelSpec:
    """One panel; ``kind`` is a modern Grafana panel type, ``unit`` a Grafana unit id."""

    title: str
    kind: str
    unit: str
    queries: Tuple[Query, ...]
    description: str
    """What the panel shows and how it is computed."""
    action: str
    """What to do when it looks wrong."""
    width: int = 8
    needs: str = ""
    """Hardware the panel needs to show data (``gpu``), empty when none."""
    steps: Steps = NO_STEPS
    alert: str = ""
    """The alert watching what this panel shows: its runbook is linked."""
    runbook: str = ""
    series_model: str = ""
    """How a series names its model (a label template, or ``${model}`` when the panel shows
    one model), for its drill-down and logs links; empty: no series links."""


@dataclass(frozen=True)
class Row:
    title: str
    panels: Tuple[PanelSpec, ...]
    repeat: str = ""
    """Grafana variable the row repeats for (one row per selected value)."""


@dataclass(frozen=True)
class Annotation:
    name: str
    expr: str
    title: str
    text: str
    color: str


@dataclass(frozen=True)
class DashboardSpec:
    slug: str
    """Suffix of the UID and file name: stable, so re-imports update in place."""
    title: str
    description: str
    rows: Tuple[Row, ...]
    annotations: Tuple[Annotation, ...]
    single_model: bool = False
    """The drill-down selects one model and compares its versions."""


def _legend(labels: Sequence[str]) -> str:
    return " ".join(f"{{{{{label}}}}}" for label in labels)


def _counted(
    q: Queries,
    spec: MetricSpec,
    by: Tuple[str, ...],
    labels: Tuple[str, ...],
    like: str,
    per_model: bool = True,
) -> Query:
    """Rate of one of our counters by ``by`` and ``labels``, 0 for each ``by`` group of
    ``like`` where it has no series yet: the panel reads 0, not No data, while nothing happened."""
    keys = by + labels
    rated = q.sum_rate(q.exp(spec, per_model=per_model), keys)
    return Query(q.or_zero(rated, like, on=by), _legend(keys))


class Alerts:
    """The alerts as configured: thresholds (after overrides) and runbook URLs."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.specs = {spec.name: spec for spec in rules.builtin_alerts(cfg)}
        self.rules = {r["alert"]: r for group in rules.alert_rules(cfg).values() for r in group}
        self.overrides: Mapping[str, Any] = cfg["alerts"]

    def threshold(self, name: str) -> float:
        override = self.overrides.get(name, {})
        return float(override.get("threshold", self.specs[name].threshold))

    def runbook(self, name: str) -> str:
        """The alert's ``runbook_url`` as the rules carry it; empty if the alert is disabled."""
        rule = self.rules.get(name)
        return str(rule["annotations"]["runbook_url"]) if rule else ""


class _Panels:
    """Panel factories for one config, grouping by ``by`` (model and/or version labels)."""

    def __init__(self, cfg: Mapping[str, Any], by: Tuple[str, ...]) -> None:
        self.cfg = cfg
        self.q = Queries(cfg, dashboard=True)
        self.alerts = Alerts(cfg)
        self.by = by
        self.series_model = (
            links.SERIES_MODEL if Label.MODEL in by else ("${model}" if Label.VERSION in by else "")
        )

    def panel(self, title: str, kind: str, unit: str, *queries: Query, **kw: Any) -> PanelSpec:
        alert = kw.get("alert", "")
        if alert:
            kw["runbook"] = self.alerts.runbook(alert)
        kw.setdefault("series_model", self.series_model)
        return PanelSpec(title, kind, unit, tuple(queries), **kw)

    def timeseries(self, title: str, unit: str, *queries: Query, **kw: Any) -> PanelSpec:
        return self.panel(title, "timeseries", unit, *queries, **kw)

    def heatmap(
        self, title: str, unit: str, spec: MetricSpec, extra: str = "", **kw: Any
    ) -> PanelSpec:
        """Observations per second by bucket of one of our histograms, all selected models
        together: the series carry only ``le``, so they link to no model."""
        rated = self.q.sum_rate(self.q.exp(spec, "bucket", extra=extra), ("le",))
        query = Query(rated, "{{le}}", heatmap=True)
        return self.panel(title, "heatmap", unit, query, series_model="", **kw)

    def alert_steps(self, name: str) -> Steps:
        return above(self.alerts.threshold(name))

    def requests(self) -> PanelSpec:
        q, by = self.q, self.by
        return self.timeseries(
            "Inference requests by outcome",
            "reqps",
            Query(
                q.sum_rate(q.exp(Metrics.REQUESTS), by + (Label.OUTCOME,)),
                _legend(by + (Label.OUTCOME,)),
            ),
            description="Requests the handler answered, counted per request by the mixin: "
            "success, client_error (4xx the handler chose) and server_error (including "
            "requests lost with their worker).",
            action="A drop to zero with traffic still arriving (next panel) means no worker "
            "answers: check Live workers and TorchServe's log.",
            alert="TorchServeModelAllRequestsFailing",
        )

    def traffic(self) -> Tuple[PanelSpec, ...]:
        q, by = self.q, self.by
        return (
            self.requests(),
            self.timeseries(
                "Requests received by TorchServe",
                "reqps",
                Query(q.sum_rate(q.sel(ts.INFERENCE_REQUESTS, TORCHSERVE), by), _legend(by)),
                description="ts_inference_requests_total, counted by the frontend when a "
                "request arrives, including requests later rejected, timed out or lost. "
                'Requests without a version in the URL count as version "default".',
                action="Higher than the handler's answers for long: requests queue or fail "
                "before a worker; see queue latency and HTTP 5xx.",
                alert="TorchServeModelRequestsUnanswered",
            ),
        )

    def error_ratio(self) -> PanelSpec:
        q, by = self.q, self.by
        name = "TorchServeModelErrorRatioHigh"
        return self.timeseries(
            "Server error ratio",
            "percentunit",
            Query(q.server_error_ratio(by), _legend(by)),
            description="Share of requests the handler answered with a server error (lost "
            "requests included); 0 before the first error. Red from the "
            f"{name} threshold.",
            action="Find the failing stage and exception in the next panels, then the "
            "batch_failed lines in the logs (panel link).",
            steps=self.alert_steps(name),
            alert=name,
        )

    def lost(self) -> PanelSpec:
        q, by = self.q, self.by
        total = q.sum_rate(q.exp(Metrics.REQUESTS), by)
        return self.timeseries(
            "Requests lost with their worker",
            "reqps",
            _counted(q, Metrics.REQUESTS_LOST, by, (Label.LOST_REASON,), total),
            description="Requests in a batch whose worker process died before answering "
            '(TorchServe answered "Worker died."); also counted as server errors. 0 when '
            "none were lost.",
            action="Workers are being killed (out of memory, segfault, response timeout): "
            "see Worker process starts and the host memory panels.",
            alert="TorchServeWorkerCrashLooping",
        )

    def exceptions(self) -> PanelSpec:
        q, by = self.q, self.by
        total = q.sum_rate(q.exp(Metrics.REQUESTS), by)
        return self.timeseries(
            "Handler exceptions by stage",
            "ops",
            _counted(q, Metrics.ERRORS, by, (Label.STAGE, Label.EXCEPTION), total),
            description="Exceptions raised by the handler per second, by stage and exception "
            "class (a bounded set, else other). 0 while nothing raises.",
            action="Open the logs for the model (panel link): batch_failed lines carry the "
            "traceback; a new exception right after a rollout points at the new version.",
        )

    def errors(self) -> Tuple[PanelSpec, ...]:
        return (self.error_ratio(), self.lost(), self.exceptions())

    def stage_latency(self, quantiles: Sequence[float] = (0.5, 0.95, 0.99)) -> PanelSpec:
        q, by = self.q, self.by
        stage_by = by + (Label.STAGE,)
        slo = self.cfg["slo"]["latency"]
        names = " / ".join(f"p{int(quant * 100)}" for quant in quantiles)
        return self.timeseries(
            f"Handler stage latency {names}",
            "s",
            *(
                Query(
                    q.quantile(quant, Metrics.STAGE_DURATION, stage_by),
                    f"p{int(quant * 100)} {_legend(stage_by)}",
                )
                for quant in quantiles
            ),
            description="Seconds per batch in each handler stage, from the mixin's histogram "
            "(one observation per batch). Red from the latency SLO's bound: "
            f"{slo['objective']:.2%} of {slo['stage']} batches must be faster than "
            f"{slo['threshold_seconds']:g} s.",
            action="The slowest stage is where to look: inference (model, device, batch "
            "size) or pre/postprocess (decoding, CPU). Compare versions after a rollout.",
            steps=above(slo["threshold_seconds"]),
            alert="TorchServeModelHandlerLatencyBudgetBurnFast",
            width=12,
        )

    def queue_latency(self) -> PanelSpec:
        q, by = self.q, self.by
        name = "TorchServeModelQueueLatencyHigh"
        return self.timeseries(
            "TorchServe mean queue latency",
            "s",
            Query(q.mean_ts_latency(ts.QUEUE_LATENCY_US, by), _legend(by)),
            description="Mean seconds answered requests waited for a worker (ratio of the "
            "rates of ts_queue_latency_microseconds and ts_inference_requests_total). "
            f"Red from the {name} threshold.",
            action="It grows first when a model saturates: add workers (scale the model), "
            "raise batch_size, or shed load.",
            steps=self.alert_steps(name),
            alert=name,
            width=12,
        )

    def latency(self) -> Tuple[PanelSpec, ...]:
        q, by = self.q, self.by
        return (
            self.stage_latency(),
            self.heatmap(
                "Handle latency distribution",
                "s",
                Metrics.STAGE_DURATION,
                f'{Label.STAGE}="{Stage.HANDLE}"',
                description="Batches per second by handle duration bucket (seconds), all "
                "selected models together.",
                action="Two bands mean two populations (a slow version, a slow input "
                "size, a cold worker): split by version on the model dashboard.",
                width=12,
            ),
            self.timeseries(
                "TorchServe mean inference latency",
                "s",
                Query(q.mean_ts_latency(ts.INFERENCE_LATENCY_US, by), _legend(by)),
                description="Mean seconds per answered request as the frontend measures it "
                "(ratio of the rates of TorchServe's cumulative microsecond counter and its "
                "request counter), queueing and handler included.",
                action="Much above the handler's handle latency: time goes to the queue or "
                "to the frontend; see queue latency.",
                width=12,
            ),
            self.queue_latency(),
        )

    def versions(self) -> Tuple[PanelSpec, ...]:
        """The rollout view: which versions serve, their share of traffic, errors, latency.

        Four bar gauges side by side, one bar per version in the same order, each coloured
        by the alert's threshold: what a canary or hot update (register v2, shift traffic,
        unregister v1) needs to compare at a glance.
        """
        q, by = self.q, self.by
        model = tuple(label for label in by if label != Label.VERSION)
        share = (
            f"{q.sum_rate(q.exp(Metrics.REQUESTS), by)}\n/ ignoring ({Label.VERSION}) group_left\n"
            f"{q.sum_rate(q.exp(Metrics.REQUESTS), model)}"
        )
        slo = self.cfg["slo"]["latency"]
        error_name = "TorchServeModelErrorRatioHigh"
        now = "now, over the last rate interval"

        def bars(title: str, unit: str, expr: str, **kw: Any) -> PanelSpec:
            return self.panel(
                title, "bargauge", unit, Query(expr, _legend(by), instant=True), width=6, **kw
            )

        return (
            bars(
                "Versions serving: live workers",
                "short",
                f"sum {q.by(by)} ({q.exp(Metrics.WORKERS)})",
                description="One bar per model version with live workers (a live process holds "
                "the worker's ledger): the versions serving now. Red at 0.",
                action="A version you registered is missing: its workers failed to load "
                "(see Model loads by outcome); one you unregistered still shows: it is "
                "still registered.",
                steps=((None, "red"), (1, "green")),
                alert="TorchServeModelNoHealthyWorker",
            ),
            bars(
                "Versions: traffic share",
                "percentunit",
                share,
                description=f"Share of each model's answered requests each version served, {now}.",
                action="Not the split you set: clients call another version, or the default "
                "version is not the one you think (set-default).",
            ),
            bars(
                "Versions: server error ratio",
                "percentunit",
                q.server_error_ratio(by),
                description=f"Share of each version's requests answered with a server error, "
                f"{now}. Red from the {error_name} threshold.",
                action="A new version worse than the old one: shift traffic back "
                "(set-default to the old version) and unregister it.",
                steps=self.alert_steps(error_name),
                alert=error_name,
            ),
            bars(
                f"Versions: p99 {slo['stage']} latency",
                "s",
                q.quantile(0.99, Metrics.STAGE_DURATION, by, f'{Label.STAGE}="{slo["stage"]}"'),
                description=f"99th percentile of each version's {slo['stage']} seconds per "
                f"batch, {now}. Red from the latency SLO's bound.",
                action="A new version slower than the old one: compare its stages on the model "
                "dashboard before shifting more traffic.",
                steps=above(slo["threshold_seconds"]),
                alert="TorchServeModelHandlerLatencyBudgetBurnFast",
            ),
            self.timeseries(
                "Traffic share by version",
                "percentunit",
                Query(share, _legend(by)),
                description="Share of each model's answered requests that each version "
                "served: the traffic shift of a rollout, as it happens.",
                action="A version at 0% that should serve: check it has workers and that "
                "clients call it (or that it is the default).",
                width=24,
            ),
        )

    def batching(self) -> Tuple[PanelSpec, ...]:
        q, by = self.q, self.by
        return (
            self.timeseries(
                "Mean batch size",
                "short",
                Query(q.histogram_mean(Metrics.BATCH_SIZE, by), _legend(by)),
                description="Requests per batch handed to the handler, averaged over the "
                "rate interval.",
                action="Stuck at 1 under load: batching is off or max_batch_delay is too "
                "short for the arrival rate.",
            ),
            self.timeseries(
                "Mean batch fill ratio",
                "percentunit",
                Query(q.histogram_mean(Metrics.BATCH_FILL, by), _legend(by)),
                description="Batch size over the model's configured batch_size.",
                action="Low while queue latency is high: workers are too many for the "
                "traffic; low and fast: max_batch_delay expires first, which is fine.",
            ),
            self.heatmap(
                "Batch size distribution",
                "short",
                Metrics.BATCH_SIZE,
                description="Batches per second by size bucket (requests per batch), all "
                "selected models together.",
                action="Compare with the configured batch_size: a band at the maximum means "
                "the model could use larger batches or more workers.",
            ),
        )

    def worker_starts(self) -> PanelSpec:
        q = self.q
        keys = self.by + q.host_by
        name = "TorchServeWorkerCrashLooping"
        window = rules.CRASH_WINDOW
        return self.timeseries(
            f"Worker process starts per {window}",
            "short",
            Query(
                f"sum {q.by(keys)} ({q.rate(q.exp(Metrics.WORKER_STARTS))}) * "
                f"{durations_seconds(window)}",
                _legend(keys),
            ),
            description=f"Worker processes that started loading the model, per {window} "
            "and host. After the initial load each one is a restart or scale-up. Red from "
            f"the {name} threshold.",
            action="Sustained starts mean workers crash: look for OOM kills, segfaults or "
            "load failures in the logs (panel link) and in Model loads by outcome.",
            steps=self.alert_steps(name),
            alert=name,
        )

    def live_workers(self) -> PanelSpec:
        q, by = self.q, self.by
        return self.timeseries(
            "Live workers",
            "short",
            Query(f"sum {q.by(by)} ({q.exp(Metrics.WORKERS)})", _legend(by)),
            description="Worker processes alive now: the exporter sees each live worker hold its ledger. "
            "Red at 0.",
            action="0 with traffic arriving: the model has no worker; check model loads, "
            "TorchServe's management API (GET /models/<name>) and its log.",
            steps=((None, "red"), (1, "green")),
            alert="TorchServeModelNoHealthyWorker",
        )

    def workers(self) -> Tuple[PanelSpec, ...]:
        q, by = self.q, self.by
        load_slow = "TorchServeModelLoadSlow"
        return (
            self.worker_starts(),
            self.live_workers(),
            self.timeseries(
                "Model loads by outcome",
                "short",
                Query(
                    f"sum {q.by(by + (Label.OUTCOME,))} "
                    f"(increase({q.exp(Metrics.MODEL_LOADS)}[$__rate_interval]))",
                    _legend(by + (Label.OUTCOME,)),
                ),
                description="Calls of the handler's initialize() per rate interval, by "
                "outcome; server_error means it raised.",
                action="Any server_error: the model cannot load; the worker's log has the "
                "traceback (panel link).",
                alert="TorchServeModelLoadFailing",
            ),
            self.timeseries(
                "Mean model load duration since start",
                "s",
                Query(
                    f"sum {q.by(by)} ({q.exp(Metrics.MODEL_LOAD_DURATION, 'sum')})\n/\n"
                    f"sum {q.by(by)} ({q.exp(Metrics.MODEL_LOAD_DURATION, 'count')})",
                    _legend(by),
                ),
                description="Seconds initialize() took on average since the exporter's "
                f"workers started. Red from the {load_slow} threshold.",
                action="Slow loads delay recovery after every crash and scale-up: cache the "
                "weights locally, or load fewer workers at once.",
                steps=self.alert_steps(load_slow),
                alert=load_slow,
            ),
        )

    def gpu_workers(self) -> Tuple[PanelSpec, ...]:
        q, by = self.q, self.by
        keys = by + (Label.WORKER, Label.DEVICE)
        return (
            self.timeseries(
                "GPU memory by worker",
                "bytes",
                *(
                    Query(f"sum {q.by(keys)} ({q.exp(spec)})", f"{kind} {_legend(keys)}")
                    for kind, spec in (
                        ("allocated", Metrics.GPU_MEMORY_ALLOCATED),
                        ("reserved", Metrics.GPU_MEMORY_RESERVED),
                        ("peak", Metrics.GPU_MEMORY_PEAK),
                    )
                ),
                description="Bytes each worker holds on its GPU: allocated by tensors, "
                "reserved by the caching allocator, and the peak since the worker started "
                "(sampled every TSOBS_GPU_SAMPLE_INTERVAL_S).",
                action="Peak near the device total: the next large batch may fail with CUDA "
                "out of memory; lower batch_size or workers per GPU.",
                alert="TorchServeGPUMemoryNearFull",
                needs=GPU,
                width=12,
            ),
        )

    def slo(self) -> Tuple[PanelSpec, ...]:
        q, by = self.q, self.by
        slo = self.cfg["slo"]
        windows = slo["burn_windows"]
        longs = [p["long"] for speed in ("fast", "slow") for p in windows[speed]]
        steps: Steps = (
            (None, "green"),
            (min(rules.burn_factor(self.cfg, p) for p in windows["slow"]), "orange"),
            (min(rules.burn_factor(self.cfg, p) for p in windows["fast"]), "red"),
        )

        def burn(title: str, ratio: Any, objective: float, alert: str) -> PanelSpec:
            budget = 1.0 - objective
            return self.timeseries(
                title,
                "short",
                *(
                    Query(
                        f"sum {q.by(by)} ({q.sel(ratio(w), RECORDED)}) / {budget:g}",
                        f"{w} {_legend(by)}",
                    )
                    for w in longs
                ),
                description=(
                    "Error-budget burn rate (a multiple, per long window of the SLO alerts): "
                    f"1 spends the budget exactly over {slo['window']}. Orange from the "
                    "smallest ticket factor, red from the smallest paging factor; an alert "
                    "fires when a long and its short window both exceed their factor."
                ),
                action="Red on the short windows: an incident now (see errors or latency); "
                "orange on the long ones: a slow leak to fix this week.",
                steps=steps,
                alert=alert,
                width=12,
            )

        return (
            burn(
                "Availability budget burn rate",
                rules.server_error_ratio,
                slo["availability"],
                "TorchServeModelErrorBudgetBurnFast",
            ),
            burn(
                "Latency budget burn rate",
                rules.slow_ratio,
                slo["latency"]["objective"],
                "TorchServeModelHandlerLatencyBudgetBurnFast",
            ),
        )

    def summary(self) -> Tuple[PanelSpec, ...]:
        """One model at a glance: the row repeated per model on the overview."""
        return tuple(
            replace(p, width=6)
            for p in (
                self.requests(),
                self.error_ratio(),
                self.stage_latency((0.99,)),
                self.queue_latency(),
            )
        )


def _host(cfg: Mapping[str, Any]) -> Tuple[PanelSpec, ...]:
    """Host and GPU resources, from TorchServe's gauges and the exporter's device gauges."""
    p = _Panels(cfg, ())
    q = p.q
    host = q.host_by
    legend = _legend(host)

    def gauge(metric: str) -> str:
        return f"max {q.by(host)} ({q.sel(metric, TORCHSERVE, per_model=False)})"

    memory, disk = "TorchServeHostMemoryPressure", "TorchServeHostDiskPressure"
    gpu_full, gpu_idle = "TorchServeGPUMemoryNearFull", "TorchServeGPUUnderutilized"
    return (
        p.timeseries(
            "Host memory",
            "percent",
            Query(q.host_average(ts.MEMORY_UTILIZATION, host, HOST_SMOOTHING), legend),
            description="Memory in use on each TorchServe host, in percent, as TorchServe "
            f"samples it once a minute, averaged over {HOST_SMOOTHING}. Red from the "
            f"{memory} threshold.",
            action="Near 100%: the OOM killer will take workers (see Requests lost); "
            "reduce workers or batch size, or move models to another host.",
            steps=p.alert_steps(memory),
            alert=memory,
        ),
        p.timeseries(
            "Host memory used",
            "mbytes",
            Query(gauge(ts.MEMORY_USED_MB), legend),
            description="Memory in use on each TorchServe host, in MiB (TorchServe's "
            "MemoryUsed, psutil's used / 2^20), sampled once a minute.",
            action="Steps up at each worker start: each worker holds a copy of its model. "
            "A steady climb without new workers is a leak in the handler.",
            alert=memory,
        ),
        p.timeseries(
            "Disk utilisation",
            "percent",
            Query(q.host_average(ts.DISK_UTILIZATION, host, HOST_SMOOTHING), legend),
            description="Disk in use on each TorchServe host's root file system, in "
            f"percent, averaged over {HOST_SMOOTHING}. Red from the {disk} threshold.",
            action="Logs and model archives fill it: rotate logs/ and clean the model store.",
            steps=p.alert_steps(disk),
            alert=disk,
        ),
        p.timeseries(
            "GPU memory in use",
            "percentunit",
            Query(q.gpu_memory_used_ratio(host), f"{legend} {{{{device}}}}"),
            description="Share of each GPU's memory in use by all processes "
            f"(cudaMemGetInfo). Red from the {gpu_full} threshold.",
            action="Near full: the next large batch may fail with CUDA out of memory; see GPU "
            "memory by worker for who holds it.",
            steps=p.alert_steps(gpu_full),
            alert=gpu_full,
            needs=GPU,
        ),
        p.timeseries(
            "GPU utilisation",
            "percent",
            Query(
                q.host_average(ts.GPU_UTILIZATION, host + ("DeviceId",), HOST_SMOOTHING),
                f"{legend} GPU {{{{DeviceId}}}}",
            ),
            description="Busy time of each GPU in percent, sampled by TorchServe once a "
            f"minute, averaged over {HOST_SMOOTHING}. Blue below the {gpu_idle} threshold.",
            action="Low while traffic flows: batches are too small or the model is "
            "CPU-bound in pre/postprocess; high with rising latency: add GPUs.",
            steps=((None, "blue"), (p.alerts.threshold(gpu_idle), "green")),
            alert=gpu_idle,
            needs=GPU,
        ),
    )


def _pipeline(cfg: Mapping[str, Any]) -> Tuple[PanelSpec, ...]:
    """The observability pipeline itself: HTTP traffic, dropped logs, internal errors."""
    p = _Panels(cfg, ())
    q = p.q
    host = q.host_by
    exporters = f"sum {q.by(host)} ({q.sel('up', 'exporter', per_model=False)})"

    def counted(spec: MetricSpec, label: str) -> Query:
        return _counted(q, spec, host, (label,), exporters, per_model=False)

    http_5xx = "TorchServeHTTPErrorRatioHigh"
    return (
        p.timeseries(
            "HTTP responses by status class",
            "reqps",
            Query(q.http_responses(host), f"{_legend(host)} {{{{code}}}}"),
            description="Every HTTP response of TorchServe per second by status class, "
            "/ping and /metrics scrapes included: not the inference rate.",
            action="5xx here but not in the handler's errors: requests fail before a "
            "worker (no worker, queue full, timeout).",
        ),
        p.timeseries(
            "HTTP 5xx ratio",
            "percentunit",
            Query(q.http_5xx_ratio(host), _legend(host)),
            description="Share of TorchServe's HTTP responses with a 5xx status; 0 before the "
            f"first 5xx (no Requests5XX series yet). Red from the {http_5xx} threshold.",
            action="Compare with the handler's server error ratio: failures outside the "
            "handler are in TorchServe's ts_log.log.",
            steps=p.alert_steps(http_5xx),
            alert=http_5xx,
        ),
        p.timeseries(
            "Log records dropped",
            "ops",
            counted(Metrics.LOG_RECORDS_DROPPED, Label.REASON),
            description="Log records per second the handler could not ship to Fluentd, by "
            "reason (queue_full, send_failed, shutdown); 0 while none are dropped.",
            action="Fluentd is slow or unreachable: check its container and buffer; the "
            "lines are still in TorchServe's model_log.log.",
            alert="TorchServeObsLogRecordsDropped",
        ),
        p.timeseries(
            "torchserve-obs internal errors",
            "ops",
            counted(Metrics.INTERNAL_ERRORS, Label.COMPONENT),
            description="Failures inside torchserve-obs per second, by component; contained, "
            "so requests are unaffected but the signals may be incomplete.",
            action="Anything above 0 is a bug to report, with the worker's stderr.",
        ),
    )


def _annotations(cfg: Mapping[str, Any]) -> Tuple[Annotation, ...]:
    """Version rollouts (from tsobs_model_info) and firing alerts, on the time axis."""
    q = Queries(cfg, dashboard=True)
    keys = q.by(q.cluster + (Label.MODEL, Label.VERSION))
    info = q.exp(Metrics.MODEL_INFO)
    now = f"group {keys} ({info})"
    before = f"group {keys} ({info} offset {ROLLOUT_LOOKBACK})"
    names = "|".join(sorted(Alerts(cfg).rules))
    return (
        Annotation(
            "Version rollouts",
            f'label_replace({now} unless {before}, "change", "serving", "", "")\nor\n'
            f'label_replace({before} unless {now}, "change", "retired", "", "")',
            f"{{{{{Label.MODEL}}}}} {{{{{Label.VERSION}}}}} {{{{change}}}}",
            f"Version {{{{{Label.VERSION}}}}} of {{{{{Label.MODEL}}}}} {{{{change}}}}",
            "blue",
        ),
        Annotation(
            "Firing alerts",
            f'ALERTS{{alertstate="firing", alertname=~"{names}", {Label.MODEL}=~"$model|"}}',
            "{{alertname}}",
            "{{severity}} {{model_name}} {{model_version}} {{instance}}",
            "red",
        ),
    )


def dashboards(cfg: Mapping[str, Any]) -> Tuple[DashboardSpec, ...]:
    """The overview and the per-model drill-down."""
    overview = _Panels(cfg, (Label.MODEL, Label.VERSION))
    model = _Panels(cfg, (Label.VERSION,))
    q = model.q
    annotations = _annotations(cfg)
    return (
        DashboardSpec(
            slug="overview",
            title="Overview",
            description="TorchServe models: one row per model, then traffic, errors, latency, "
            "versions, batching, workers, resources, the log pipeline and SLOs.",
            rows=(
                Row("Model $model", model.summary(), repeat="model"),
                Row("Traffic and errors", overview.traffic() + overview.errors()),
                Row("Latency", overview.latency()),
                Row("Versions", overview.versions()),
                Row("Batching", overview.batching()),
                Row("Workers", overview.workers()),
                Row("Resources", _host(cfg) + overview.gpu_workers()),
                Row("Observability pipeline", _pipeline(cfg)),
                Row("SLO", overview.slo()),
            ),
            annotations=annotations,
        ),
        DashboardSpec(
            slug="model",
            title="Model",
            description="One model, its versions side by side: compare them during a rollout.",
            single_model=True,
            rows=(
                Row(
                    "Versions",
                    model.versions()
                    + (
                        model.panel(
                            "Torch version mismatch",
                            "stat",
                            "bool",
                            Query(
                                f"max {q.by((Label.VERSION,))} "
                                f"({q.exp(Metrics.TORCH_VERSION_MISMATCH)})",
                                "{{model_version}}",
                            ),
                            description="1 when a version's workers run another torch than "
                            "the one its model-config.yaml declares, else 0.",
                            action="Rebuild the model for the running torch, or pin the "
                            "image's torch to the declared version.",
                            steps=((None, "green"), (1, "red")),
                            alert="TorchServeTorchVersionMismatch",
                        ),
                        _model_info(cfg),
                    ),
                ),
                Row("Traffic and errors", model.traffic() + model.errors()),
                Row("Latency", model.latency()),
                Row("Batching and workers", model.batching() + model.workers()),
                Row("GPU", model.gpu_workers()),
                Row("SLO", model.slo()),
            ),
            annotations=annotations,
        ),
    )


def _model_info(cfg: Mapping[str, Any]) -> PanelSpec:
    p = _Panels(cfg, (Label.VERSION,))
    labels = (
        Label.VERSION,
        Label.HANDLER,
        Label.TORCH_VERSION,
        Label.TORCHSERVE_VERSION,
        Label.PYTHON_VERSION,
    ) + p.q.host_by
    return p.panel(
        "Handler and library versions",
        "table",
        "none",
        Query(f"max {p.q.by(labels)} ({p.q.exp(Metrics.MODEL_INFO)})", instant=True),
        description="tsobs_model_info of live workers: handler class and the torch, "
        "TorchServe and Python versions each model version runs with, per host.",
        action="Two lines for one version: hosts run different images; align them.",
        width=16,
    )
