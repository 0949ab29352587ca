"""Every signal torchserve-obs emits: metric definitions and log field names.

This module is the single source of truth. The handler mixin creates its metrics from
these specs, and the dashboard and rule generator builds its queries from them, so a
metric is renamed here and nowhere else. It imports nothing but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

PREFIX = "tsobs_"
"""Common prefix, distinct from TorchServe's own ``ts_`` metrics."""


class Label:
    """Label names. Model labels match TorchServe's ``ts_*`` metrics so series join."""

    MODEL = "model_name"
    VERSION = "model_version"
    OUTCOME = "outcome"
    STAGE = "stage"
    EXCEPTION = "exception"
    HANDLER = "handler"
    TORCH_VERSION = "torch_version"
    TORCHSERVE_VERSION = "torchserve_version"
    PYTHON_VERSION = "python_version"
    DEVICE = "device"
    REASON = "reason"
    COMPONENT = "component"
    LOST_REASON = "reason"
    """On :attr:`Metrics.REQUESTS_LOST`: why a request got no answer from the handler."""
    WORKER = "pid"
    """Added by prometheus_client's multiprocess collector to per-worker gauges; its value
    is the stable worker identity (``w9000``), not an OS pid."""


class Outcome:
    """Values of the ``outcome`` label: bounded, whatever the handler does."""

    SUCCESS = "success"
    CLIENT_ERROR = "client_error"
    SERVER_ERROR = "server_error"
    ALL = (SUCCESS, CLIENT_ERROR, SERVER_ERROR)


class LostReason:
    """Values of ``reason`` on :attr:`Metrics.REQUESTS_LOST`: bounded."""

    WORKER_DIED = "worker_died"
    """The worker process ended (kill -9, OOM kill, segfault, TorchServe's response-timeout
    kill) while the request was in its batch; TorchServe answered "Worker died."."""
    ALL = (WORKER_DIED,)


class Stage:
    """Values of the ``stage`` label."""

    PREPROCESS = "preprocess"
    INFERENCE = "inference"
    POSTPROCESS = "postprocess"
    HANDLE = "handle"
    INITIALIZE = "initialize"
    TIMED = (PREPROCESS, INFERENCE, POSTPROCESS, HANDLE)


KNOWN_EXCEPTIONS = frozenset(
    {
        "AssertionError",
        "AttributeError",
        "FileNotFoundError",
        "ImportError",
        "IndexError",
        "KeyError",
        "MemoryError",
        "ModuleNotFoundError",
        "NotImplementedError",
        "OSError",
        "OutOfMemoryError",
        "PredictionException",
        "RuntimeError",
        "TimeoutError",
        "TypeError",
        "UnicodeDecodeError",
        "ValueError",
        "ZeroDivisionError",
    }
)
"""Exception class names kept as label values; any other becomes ``other``."""

OTHER = "other"


def exception_label(exc: BaseException) -> str:
    """Bounded label value for an exception: its class name if well known, else ``other``."""
    name = type(exc).__name__
    return name if name in KNOWN_EXCEPTIONS else OTHER


LATENCY_MANTISSAS = (1.0, 1.2, 1.4, 1.6, 1.8, 2.1, 2.5, 3.0, 3.5, 4.2, 5.0, 6.0, 7.0, 8.4)
"""Stage-latency bounds per decade: round numbers no more than 1.2x apart that keep 1, 2.5 and
5 (every bound of the earlier 2.5x buckets, so SLO thresholds such as 0.25 s or 0.5 s stay
bounds). Linear interpolation inside a bucket, which is what ``histogram_quantile`` does, is
then less than 20% from the true value anywhere from 1 ms to 10 s, whatever the latency
distribution (the worst case is every observation at one edge of a bucket and the estimate at
the other). Above 10 s the bounds are coarse."""

LATENCY_BUCKETS = tuple(
    round(mantissa * 10.0**exponent, 6)
    for exponent in (-3, -2, -1, 0)
    for mantissa in LATENCY_MANTISSAS
) + (10.0, 20.0, 30.0, 60.0)
"""60 bounds: 57 from 0.001 to 10.0, then 20, 30 and 60 s. Each stage of each model version
therefore costs 63 series (60 bounds, ``+Inf``, ``_sum``, ``_count``): 252 for the four
stages, before multiplying by Prometheus' per-target labels."""

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
FILL_RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
LOAD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

MODEL_LABELS = (Label.MODEL, Label.VERSION)


@dataclass(frozen=True)
class MetricSpec:
    """What a metric is: enough to create it, query it and document it."""

    name: str
    """Exposed name: counters end in ``_total``; histograms are the base of ``_bucket`` etc."""
    kind: str
    """``counter``, ``gauge`` or ``histogram``."""
    help: str
    labels: Tuple[str, ...] = MODEL_LABELS
    unit: str = ""
    """Base unit (``seconds``, ``bytes``, ``ratio``) or empty for plain counts."""
    buckets: Tuple[float, ...] = ()
    multiprocess_mode: str = ""
    """Gauges written by workers: how prometheus_client aggregates the per-worker files."""
    by_exporter: bool = False
    """Computed by the exporter at scrape time rather than written by the workers."""

    def series(self, suffix: str = "") -> str:
        """Name of one exposed series, e.g. ``series("bucket")`` of a histogram."""
        return f"{self.name}_{suffix}" if suffix else self.name


class Metrics:
    """Every metric the mixin emits. Generators iterate :func:`all_metrics`."""

    REQUESTS = MetricSpec(
        f"{PREFIX}requests_total",
        "counter",
        "Inference requests handled, by outcome (success, client_error, server_error).",
        MODEL_LABELS + (Label.OUTCOME,),
    )
    REQUESTS_LOST = MetricSpec(
        f"{PREFIX}requests_lost_total",
        "counter",
        "Requests handed to a worker that ended before answering them, by reason. Each is "
        "also counted in tsobs_requests_total as server_error.",
        MODEL_LABELS + (Label.LOST_REASON,),
    )
    STAGE_DURATION = MetricSpec(
        f"{PREFIX}stage_duration_seconds",
        "histogram",
        "Time a batch spent in each handler stage (preprocess, inference, postprocess, handle).",
        MODEL_LABELS + (Label.STAGE,),
        unit="seconds",
        buckets=LATENCY_BUCKETS,
    )
    BATCH_SIZE = MetricSpec(
        f"{PREFIX}batch_size",
        "histogram",
        "Requests per batch handed to the handler.",
        buckets=BATCH_SIZE_BUCKETS,
    )
    BATCH_FILL = MetricSpec(
        f"{PREFIX}batch_fill_ratio",
        "histogram",
        "Batch size divided by the model's configured batch_size.",
        unit="ratio",
        buckets=FILL_RATIO_BUCKETS,
    )
    ERRORS = MetricSpec(
        f"{PREFIX}errors_total",
        "counter",
        "Exceptions raised by the handler, by stage and exception class (bounded set).",
        MODEL_LABELS + (Label.STAGE, Label.EXCEPTION),
    )
    MODEL_LOAD_DURATION = MetricSpec(
        f"{PREFIX}model_load_duration_seconds",
        "histogram",
        "Time the handler's initialize() took, successful or not.",
        unit="seconds",
        buckets=LOAD_BUCKETS,
    )
    MODEL_LOADS = MetricSpec(
        f"{PREFIX}model_loads_total",
        "counter",
        "Handler initialize() calls, by outcome (success, server_error): one per worker start.",
        MODEL_LABELS + (Label.OUTCOME,),
    )
    MODEL_INFO = MetricSpec(
        f"{PREFIX}model_info",
        "gauge",
        "Always 1: the handler class and library versions serving a model version.",
        MODEL_LABELS
        + (Label.HANDLER, Label.TORCH_VERSION, Label.TORCHSERVE_VERSION, Label.PYTHON_VERSION),
        multiprocess_mode="max",
    )
    TORCH_VERSION_MISMATCH = MetricSpec(
        f"{PREFIX}torch_version_mismatch",
        "gauge",
        "1 when the model declares a torch version and the worker runs another, else 0.",
        multiprocess_mode="max",
    )
    GPU_MEMORY_ALLOCATED = MetricSpec(
        f"{PREFIX}gpu_memory_allocated_bytes",
        "gauge",
        "Bytes held by tensors on the worker's GPU (sampled on an interval).",
        MODEL_LABELS + (Label.DEVICE,),
        unit="bytes",
        multiprocess_mode="all",
    )
    GPU_MEMORY_RESERVED = MetricSpec(
        f"{PREFIX}gpu_memory_reserved_bytes",
        "gauge",
        "Bytes reserved by the worker's CUDA caching allocator (sampled on an interval).",
        MODEL_LABELS + (Label.DEVICE,),
        unit="bytes",
        multiprocess_mode="all",
    )
    GPU_MEMORY_PEAK = MetricSpec(
        f"{PREFIX}gpu_memory_peak_bytes",
        "gauge",
        "Peak bytes held by tensors on the worker's GPU since it started.",
        MODEL_LABELS + (Label.DEVICE,),
        unit="bytes",
        multiprocess_mode="all",
    )
    GPU_MEMORY_USED = MetricSpec(
        f"{PREFIX}gpu_memory_used_bytes",
        "gauge",
        "Bytes in use on the whole device, all processes (cudaMemGetInfo).",
        (Label.DEVICE,),
        unit="bytes",
        multiprocess_mode="mostrecent",
    )
    GPU_MEMORY_TOTAL = MetricSpec(
        f"{PREFIX}gpu_memory_total_bytes",
        "gauge",
        "Total bytes of memory on the device.",
        (Label.DEVICE,),
        unit="bytes",
        multiprocess_mode="max",
    )
    WORKER_STARTS = MetricSpec(
        f"{PREFIX}worker_starts_total",
        "counter",
        "Worker processes that started loading the model (restarts after a crash included).",
    )
    LOG_RECORDS_DROPPED = MetricSpec(
        f"{PREFIX}log_records_dropped_total",
        "counter",
        "Log records not shipped to Fluentd (queue_full, send_failed, shutdown).",
        (Label.REASON,),
    )
    INTERNAL_ERRORS = MetricSpec(
        f"{PREFIX}internal_errors_total",
        "counter",
        "Failures inside torchserve-obs itself, contained so the request is unaffected.",
        (Label.COMPONENT,),
    )
    WORKERS = MetricSpec(
        f"{PREFIX}workers",
        "gauge",
        "Worker processes alive (a live process holds their ledger) with the model loaded, "
        "counted by the exporter.",
        by_exporter=True,
    )
    EXPORTER_METRICS_FILES = MetricSpec(
        f"{PREFIX}exporter_metrics_files",
        "gauge",
        "Files in the multi-process metrics directory: one set per live worker plus the "
        "archive of retired ones, so a steady value means restarts and scale events do not "
        "grow it.",
        (),
        by_exporter=True,
    )
    EXPORTER_SCRAPE_DURATION = MetricSpec(
        f"{PREFIX}exporter_scrape_duration_seconds",
        "gauge",
        "Time the exporter took to aggregate the worker files for the previous scrape.",
        (),
        unit="seconds",
        by_exporter=True,
    )
    EXPORTER_TORCHSERVE_UP = MetricSpec(
        f"{PREFIX}exporter_torchserve_up",
        "gauge",
        "1 when this scrape carries TorchServe's own metrics, fetched from its metrics port "
        "(exporter --torchserve-metrics), 0 when fetching or parsing them failed.",
        (),
        by_exporter=True,
    )
    EXPORTER_TORCHSERVE_FETCH_DURATION = MetricSpec(
        f"{PREFIX}exporter_torchserve_fetch_duration_seconds",
        "gauge",
        "Time this scrape spent fetching TorchServe's own metrics (bounded by the timeout).",
        (),
        unit="seconds",
        by_exporter=True,
    )


def all_metrics() -> Tuple[MetricSpec, ...]:
    """Every metric spec, in definition order."""
    return tuple(v for v in vars(Metrics).values() if isinstance(v, MetricSpec))


class Field:
    """Log field names, as emitted by default (OpenTelemetry-style, flat)."""

    TIMESTAMP = "timestamp"
    LEVEL = "level"
    LOGGER = "logger"
    EVENT = "event"
    MODEL = Label.MODEL
    VERSION = Label.VERSION
    WORKER = "worker"
    BATCH_ID = "batch_id"
    BATCH_SIZE = "batch_size"
    BATCH_INDEX = "batch_index"
    REQUEST_ID = "request_id"
    """TorchServe's own request ID: the one it returns as ``x-request-id``."""
    REQUEST_IDS = "request_ids"
    CLIENT_REQUEST_ID = "client_request_id"
    """The client's ``X-Request-ID`` header, if sent."""
    TRACE_ID = "trace_id"
    SPAN_ID = "span_id"
    OUTCOME = Label.OUTCOME
    STATUS = "status"
    """HTTP status TorchServe answered. For a request lost with its worker (``reason``
    ``worker_died``) it is 500: TorchServe answers those "Worker died." with 500, or 507 when
    the frontend notices the death another way; the worker cannot tell which."""
    REASON = "reason"
    """Why a request got no answer from the handler: ``worker_died`` (see :class:`LostReason`)."""
    STAGE = Label.STAGE
    DURATION_MS = "duration_ms"
    PREPROCESS_MS = "preprocess_ms"
    INFERENCE_MS = "inference_ms"
    POSTPROCESS_MS = "postprocess_ms"
    ERROR_TYPE = "error_type"
    ERROR_MESSAGE = "error_message"
    EXCEPTION = "exception"
    """Formatted traceback, one string inside the JSON line."""


STAGE_FIELDS: Dict[str, str] = {
    Stage.PREPROCESS: Field.PREPROCESS_MS,
    Stage.INFERENCE: Field.INFERENCE_MS,
    Stage.POSTPROCESS: Field.POSTPROCESS_MS,
    Stage.HANDLE: Field.DURATION_MS,
}
"""Completion-line field carrying each stage's duration in milliseconds."""

ECS_FIELDS: Dict[str, str] = {
    Field.TIMESTAMP: "@timestamp",
    Field.LEVEL: "log.level",
    Field.LOGGER: "log.logger",
    Field.EVENT: "message",
    Field.MODEL: "service.name",
    Field.VERSION: "service.version",
    Field.REQUEST_ID: "torchserve.request_id",
    Field.REQUEST_IDS: "torchserve.request_ids",
    Field.CLIENT_REQUEST_ID: "http.request.id",
    Field.TRACE_ID: "trace.id",
    Field.SPAN_ID: "span.id",
    Field.OUTCOME: "torchserve.outcome",
    Field.STATUS: "http.response.status_code",
    Field.REASON: "event.reason",
    Field.WORKER: "torchserve.worker",
    Field.BATCH_ID: "torchserve.batch.id",
    Field.BATCH_SIZE: "torchserve.batch.size",
    Field.BATCH_INDEX: "torchserve.batch.index",
    Field.STAGE: "torchserve.stage",
    Field.DURATION_MS: "torchserve.duration_ms",
    Field.PREPROCESS_MS: "torchserve.preprocess_ms",
    Field.INFERENCE_MS: "torchserve.inference_ms",
    Field.POSTPROCESS_MS: "torchserve.postprocess_ms",
    Field.ERROR_TYPE: "error.type",
    Field.ERROR_MESSAGE: "error.message",
    Field.EXCEPTION: "error.stack_trace",
}
"""Elastic Common Schema names, used when ``TSOBS_LOG_FIELDS=ecs``. Flat dotted keys."""

ECS_EVENT_OUTCOME = "event.outcome"
"""ECS's outcome field, whose only allowed values are ``success``, ``failure`` and ``unknown``;
our three-way class stays in ``ECS_FIELDS[Field.OUTCOME]``."""

ECS_OUTCOMES: Dict[str, str] = {
    Outcome.SUCCESS: "success",
    Outcome.CLIENT_ERROR: "failure",
    Outcome.SERVER_ERROR: "failure",
}
"""``event.outcome`` for each of our outcomes; anything else is ``unknown``."""

DEFAULT_PORTS: Dict[str, int] = {
    "inference": 8080,
    "management": 8081,
    "torchserve_metrics": 8082,
    "exporter": 8083,
    "prometheus": 9090,
    "alertmanager": 9093,
    "grafana": 3000,
    "fluentd_forward": 24224,
    "elasticsearch": 9200,
    "kibana": 5601,
}
"""The usual ports, next to TorchServe's 8080-8082; the exporter takes 8083."""
