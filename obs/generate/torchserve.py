"""TorchServe 0.12's own Prometheus metrics (``metrics_mode=prometheus``), as the generator uses them.

These are TorchServe's names, not ours, so they live here rather than in
:mod:`obs.signals`; ``tests/test_generate.py`` checks every one against the
``ts/configs/metrics.yaml`` that TorchServe ships. Quirks the queries must respect:

- ``Requests2XX/4XX/5XX`` carry no ``_total`` suffix, count every HTTP response (``/ping``
  and ``/metrics`` scrapes included) and ``Requests5XX`` has no series until the first 5xx.
- ``ts_inference_latency_microseconds`` and ``ts_queue_latency_microseconds`` are cumulative
  microsecond counters: a mean is a ratio of rates over ``ts_inference_requests_total``.
- Frontend gauges label the host ``Hostname`` while the ``ts_*`` counters use ``hostname``:
  joins go through ``instance``, never through the host label.
- ``CPUUtilization`` (and the GPU gauges) are sampled by a fresh process every minute and
  often read 0 or 100: smooth with ``avg_over_time``.
"""

from __future__ import annotations

REQUESTS_BY_CLASS = {"2xx": "Requests2XX", "4xx": "Requests4XX", "5xx": "Requests5XX"}
"""HTTP responses by status class; host-level, no model label."""

INFERENCE_REQUESTS = "ts_inference_requests_total"
INFERENCE_LATENCY_US = "ts_inference_latency_microseconds"
QUEUE_LATENCY_US = "ts_queue_latency_microseconds"

CPU_UTILIZATION = "CPUUtilization"
MEMORY_USED_MB = "MemoryUsed"
MEMORY_UTILIZATION = "MemoryUtilization"
DISK_UTILIZATION = "DiskUtilization"
DISK_AVAILABLE_GB = "DiskAvailable"
GPU_UTILIZATION = "GPUUtilization"
GPU_MEMORY_UTILIZATION = "GPUMemoryUtilization"
GPU_MEMORY_USED_MB = "GPUMemoryUsed"
WORKER_LOAD_TIME_MS = "WorkerLoadTime"

ALL = (
    *REQUESTS_BY_CLASS.values(),
    INFERENCE_REQUESTS,
    INFERENCE_LATENCY_US,
    QUEUE_LATENCY_US,
    CPU_UTILIZATION,
    MEMORY_USED_MB,
    MEMORY_UTILIZATION,
    DISK_UTILIZATION,
    DISK_AVAILABLE_GB,
    GPU_UTILIZATION,
    GPU_MEMORY_UTILIZATION,
    GPU_MEMORY_USED_MB,
    WORKER_LOAD_TIME_MS,
)
"""Every TorchServe metric the generated queries use."""

UNITS = {
    INFERENCE_LATENCY_US: "microseconds",
    QUEUE_LATENCY_US: "microseconds",
    CPU_UTILIZATION: "percent",
    MEMORY_USED_MB: "mebibytes",
    MEMORY_UTILIZATION: "percent",
    DISK_UTILIZATION: "percent",
    DISK_AVAILABLE_GB: "gibibytes",
    GPU_UTILIZATION: "percent",
    GPU_MEMORY_UTILIZATION: "percent",
    GPU_MEMORY_USED_MB: "mebibytes",
    WORKER_LOAD_TIME_MS: "milliseconds",
}
"""Units of TorchServe's metrics that have one (``metrics.yaml``: MemoryUsed is in MB of
2^20 bytes, as psutil reports it); the rest are counts."""
