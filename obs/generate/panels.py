"""The dashboards as data: a small panel spec, and the two dashboards built from it.

Rendering lives in :mod:`obs.generate.dashboards`; this module only says what to show.
Panel factories take the labels to group by, so the overview (per model and version) and
the drill-down (per version of one model) share every query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Tuple

from obs.generate import rules
from obs.generate import torchserve as ts
from obs.generate.promql import RECORDED, TORCHSERVE, Queries
from obs.signals import Label, Metrics, Stage

GPU = "gpu"
"""``PanelSpec.needs``: the panel shows data only on hosts with an NVIDIA GPU."""

HOST_SMOOTHING = "5m"
"""TorchServe samples host gauges once a minute with a fresh process: average them."""


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
    description: str = ""
    width: int = 8
    needs: str = ""
    """Hardware the panel needs to show data (``gpu``), empty when none."""


@dataclass(frozen=True)
class Row:
    title: str
    panels: Tuple[PanelSpec, ...]


@dataclass(frozen=True)
class DashboardSpec:
    slug: str
    """Suffix of the UID and file name: stable, so re-imports update in place."""
    title: str
    description: str
    rows: Tuple[Row, ...]
    single_model: bool = False
    """The drill-down selects one model and compares its versions."""


def _legend(labels: Sequence[str]) -> str:
    return " ".join(f"{{{{{label}}}}}" for label in labels)


class _Panels:
    """Panel factories for one config, grouping by ``by`` (model and/or version labels)."""

    def __init__(self, cfg: Mapping[str, Any], by: Tuple[str, ...]) -> None:
        self.cfg = cfg
        self.q = Queries(cfg, dashboard=True)
        self.by = by

    def timeseries(self, title: str, unit: str, *queries: Query, **kw: Any) -> PanelSpec:
        return PanelSpec(title, "timeseries", unit, tuple(queries), **kw)

    def traffic(self) -> Tuple[PanelSpec, ...]:
        q, by = self.q, self.by
        return (
            self.timeseries(
                "Inference requests by outcome",
                "reqps",
                Query(
                    q.sum_rate(q.exp(Metrics.REQUESTS), by + (Label.OUTCOME,)),
                    _legend(by + (Label.OUTCOME,)),
                ),
                description="Requests the handler answered, counted per request by the mixin.",
            ),
            self.timeseries(
                "Requests received by TorchServe",
                "reqps",
                Query(q.sum_rate(q.sel(ts.INFERENCE_REQUESTS, TORCHSERVE), by), _legend(by)),
                description="Counted by the frontend, including requests that never reached a worker.",
            ),
        )

    def errors(self) -> Tuple[PanelSpec, ...]:
        q, by = self.q, self.by
        exc = by + (Label.STAGE, Label.EXCEPTION)
        return (
            self.timeseries(
                "Server error ratio",
                "percentunit",
                Query(q.server_error_ratio(by), _legend(by)),
                description="Share of requests answered with a server error; 0 before the first error.",
            ),
            self.timeseries(
                "Handler exceptions by stage",
                "ops",
                Query(q.sum_rate(q.exp(Metrics.ERRORS), exc), _legend(exc)),
            ),
        )

    def latency(self) -> Tuple[PanelSpec, ...]:
        q, by = self.q, self.by
        stage_by = by + (Label.STAGE,)
        return (
            self.timeseries(
                "Handler stage latency p50 / p95 / p99",
                "s",
                *(
                    Query(
                        q.quantile(quant, Metrics.STAGE_DURATION, stage_by),
                        f"p{int(quant * 100)} {_legend(stage_by)}",
                    )
                    for quant in (0.5, 0.95, 0.99)
                ),
                description="Per batch, from the mixin's histogram (one observation per batch).",
                width=12,
            ),
            PanelSpec(
                "Handle latency distribution",
                "heatmap",
                "s",
                (
                    Query(
                        q.sum_rate(
                            q.exp(
                                Metrics.STAGE_DURATION,
                                "bucket",
                                extra=f'{Label.STAGE}="{Stage.HANDLE}"',
                            ),
                            ("le",),
                        ),
                        "{{le}}",
                        heatmap=True,
                    ),
                ),
                width=12,
            ),
            self.timeseries(
                "TorchServe mean inference latency",
                "s",
                Query(q.mean_ts_latency(ts.INFERENCE_LATENCY_US, by), _legend(by)),
                description="Ratio of the rates of TorchServe's cumulative microsecond counter and its request counter.",
                width=12,
            ),
            self.timeseries(
                "TorchServe mean queue latency",
                "s",
                Query(q.mean_ts_latency(ts.QUEUE_LATENCY_US, by), _legend(by)),
                description="Time requests wait for a worker; it grows first when a model saturates.",
                width=12,
            ),
        )

    def batching(self) -> Tuple[PanelSpec, ...]:
        q, by = self.q, self.by
        return (
            self.timeseries(
                "Mean batch size",
                "short",
                Query(q.histogram_mean(Metrics.BATCH_SIZE, by), _legend(by)),
            ),
            self.timeseries(
                "Mean batch fill ratio",
                "percentunit",
                Query(q.histogram_mean(Metrics.BATCH_FILL, by), _legend(by)),
                description="Batch size over the configured batch_size: low means max_batch_delay expires first.",
            ),
            PanelSpec(
                "Batch size distribution",
                "heatmap",
                "short",
                (
                    Query(
                        q.sum_rate(q.exp(Metrics.BATCH_SIZE, "bucket"), ("le",)),
                        "{{le}}",
                        heatmap=True,
                    ),
                ),
            ),
        )

    def workers(self) -> Tuple[PanelSpec, ...]:
        q, by = self.q, self.by
        return (
            self.timeseries(
                "Worker process starts",
                "short",
                Query(
                    f"sum {q.by(by)} (increase({q.exp(Metrics.WORKER_STARTS)}[$__rate_interval]))",
                    _legend(by),
                ),
                description="Starts of worker processes; after the initial load, each one is a restart.",
            ),
            self.timeseries(
                "Live workers",
                "short",
                Query(f"sum {q.by(by)} ({q.exp(Metrics.WORKERS)})", _legend(by)),
                description="Workers whose heartbeat the exporter saw in the last 45 s.",
            ),
            self.timeseries(
                "Model loads by outcome",
                "short",
                Query(
                    f"sum {q.by(by + (Label.OUTCOME,))} (increase({q.exp(Metrics.MODEL_LOADS)}[$__rate_interval]))",
                    _legend(by + (Label.OUTCOME,)),
                ),
            ),
            self.timeseries(
                "Mean model load duration since start",
                "s",
                Query(
                    f"sum {q.by(by)} ({q.exp(Metrics.MODEL_LOAD_DURATION, 'sum')})\n/\n"
                    f"sum {q.by(by)} ({q.exp(Metrics.MODEL_LOAD_DURATION, 'count')})",
                    _legend(by),
                ),
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
                width=12,
                needs=GPU,
            ),
        )

    def slo(self) -> Tuple[PanelSpec, ...]:
        q, by = self.q, self.by
        slo = self.cfg["slo"]
        longs = [p["long"] for speed in ("fast", "slow") for p in slo["burn_windows"][speed]]

        def burn(title: str, ratio: Any, objective: float) -> PanelSpec:
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
                    "Error-budget burn rate: 1 spends the budget exactly over "
                    f"{slo['window']}; the alerts fire above the factors of the SLO windows."
                ),
                width=12,
            )

        return (
            burn("Availability budget burn rate", rules.server_error_ratio, slo["availability"]),
            burn("Latency budget burn rate", rules.slow_ratio, slo["latency"]["objective"]),
        )


def _host(cfg: Mapping[str, Any]) -> Tuple[PanelSpec, ...]:
    """Host and GPU resources, from TorchServe's gauges and the exporter's device gauges."""
    q = Queries(cfg, dashboard=True)
    inst = ("instance",)

    def smoothed(metric: str, by: Tuple[str, ...]) -> str:
        return (
            f"avg {q.by(by)} (avg_over_time("
            f"{q.sel(metric, TORCHSERVE, per_model=False)}[{HOST_SMOOTHING}]))"
        )

    def gauge(metric: str) -> str:
        return f"max {q.by(inst)} ({q.sel(metric, TORCHSERVE, per_model=False)})"

    device = inst + (Label.DEVICE,)
    return (
        PanelSpec(
            "CPU utilisation",
            "timeseries",
            "percent",
            (Query(smoothed(ts.CPU_UTILIZATION, inst), "{{instance}}"),),
            description=f"TorchServe samples it once a minute and often reads 0 or 100: averaged over {HOST_SMOOTHING}.",
        ),
        PanelSpec(
            "Host memory",
            "timeseries",
            "percent",
            (Query(smoothed(ts.MEMORY_UTILIZATION, inst), "{{instance}}"),),
        ),
        PanelSpec(
            "Host memory used",
            "timeseries",
            "decmbytes",
            (Query(gauge(ts.MEMORY_USED_MB), "{{instance}}"),),
        ),
        PanelSpec(
            "Disk utilisation",
            "timeseries",
            "percent",
            (Query(smoothed(ts.DISK_UTILIZATION, inst), "{{instance}}"),),
        ),
        PanelSpec(
            "GPU memory used / total",
            "timeseries",
            "bytes",
            (
                Query(
                    f"max {q.by(device)} ({q.exp(Metrics.GPU_MEMORY_USED, per_model=False)})",
                    "used {{instance}} {{device}}",
                ),
                Query(
                    f"max {q.by(device)} ({q.exp(Metrics.GPU_MEMORY_TOTAL, per_model=False)})",
                    "total {{instance}} {{device}}",
                ),
            ),
            needs=GPU,
        ),
        PanelSpec(
            "GPU utilisation",
            "timeseries",
            "percent",
            (
                Query(
                    smoothed(ts.GPU_UTILIZATION, inst + ("DeviceId",)),
                    "{{instance}} GPU {{DeviceId}}",
                ),
            ),
            needs=GPU,
        ),
    )


def _pipeline(cfg: Mapping[str, Any]) -> Tuple[PanelSpec, ...]:
    """The observability pipeline itself: HTTP traffic, dropped logs, internal errors."""
    q = Queries(cfg, dashboard=True)
    inst = ("instance",)
    exporters = f"sum {q.by(inst)} ({q.sel('up', 'exporter', per_model=False)})"

    def counted(spec: Any, label: str) -> Query:
        rated = q.sum_rate(q.exp(spec, per_model=False), inst + (label,))
        return Query(q.or_zero(rated, exporters, on=inst), f"{{{{instance}}}} {{{{{label}}}}}")

    return (
        PanelSpec(
            "HTTP responses by status class",
            "timeseries",
            "reqps",
            (Query(q.http_responses(inst), "{{instance}} {{code}}"),),
            description="Every HTTP response, /ping and /metrics scrapes included: not the inference rate.",
        ),
        PanelSpec(
            "HTTP 5xx ratio",
            "timeseries",
            "percentunit",
            (Query(q.http_5xx_ratio(inst), "{{instance}}"),),
            description="0 before the first 5xx, when TorchServe has no Requests5XX series yet.",
        ),
        PanelSpec(
            "Log records dropped",
            "timeseries",
            "ops",
            (counted(Metrics.LOG_RECORDS_DROPPED, Label.REASON),),
        ),
        PanelSpec(
            "torchserve-obs internal errors",
            "timeseries",
            "ops",
            (counted(Metrics.INTERNAL_ERRORS, Label.COMPONENT),),
        ),
    )


def dashboards(cfg: Mapping[str, Any]) -> Tuple[DashboardSpec, ...]:
    """The overview and the per-model drill-down."""
    overview = _Panels(cfg, (Label.MODEL, Label.VERSION))
    model = _Panels(cfg, (Label.VERSION,))
    q = model.q
    info_labels = (
        Label.VERSION,
        Label.HANDLER,
        Label.TORCH_VERSION,
        Label.TORCHSERVE_VERSION,
        Label.PYTHON_VERSION,
        "instance",
    )
    return (
        DashboardSpec(
            slug="overview",
            title="Overview",
            description="TorchServe models: traffic, errors, latency, batching, workers, resources, SLOs.",
            rows=(
                Row("Traffic and errors", overview.traffic() + overview.errors()),
                Row("Latency", overview.latency()),
                Row("Batching", overview.batching()),
                Row("Workers", overview.workers()),
                Row("Resources", _host(cfg) + overview.gpu_workers()),
                Row("Observability pipeline", _pipeline(cfg)),
                Row("SLO", overview.slo()),
            ),
        ),
        DashboardSpec(
            slug="model",
            title="Model",
            description="One model, its versions side by side: compare them during a rollout.",
            single_model=True,
            rows=(
                Row(
                    "Versions",
                    (
                        PanelSpec(
                            "Versions serving",
                            "table",
                            "none",
                            (
                                Query(
                                    f"max {q.by(info_labels)} ({q.exp(Metrics.MODEL_INFO)})",
                                    instant=True,
                                ),
                            ),
                            width=16,
                        ),
                        PanelSpec(
                            "Torch version mismatch",
                            "stat",
                            "bool",
                            (
                                Query(
                                    f"max {q.by((Label.VERSION,))} ({q.exp(Metrics.TORCH_VERSION_MISMATCH)})",
                                    "{{model_version}}",
                                ),
                            ),
                        ),
                    ),
                ),
                Row("Traffic and errors", model.traffic() + model.errors()),
                Row("Latency", model.latency()),
                Row("Batching and workers", model.batching() + model.workers()),
                Row("GPU", model.gpu_workers()),
                Row("SLO", model.slo()),
            ),
        ),
    )
