"""Runtime settings of the mixin and the exporter, read from the environment.

TorchServe workers inherit the frontend's environment, so environment variables are the
one channel that reaches every worker without touching the handler code.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Tuple

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def default_metrics_dir() -> Path:
    """Where workers and the exporter meet when ``PROMETHEUS_MULTIPROC_DIR`` is unset."""
    return Path(tempfile.gettempdir()) / "torchserve-obs-metrics"


def metrics_dir_from_env(env: Optional[Mapping[str, str]] = None) -> Path:
    """The multi-process metrics directory shared by the workers and the exporter."""
    env = os.environ if env is None else env
    return Path(env.get(MULTIPROC_DIR_ENV) or default_metrics_dir())


class SettingsError(ValueError):
    """An environment variable holds a value we cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    metrics_dir: Path
    log_fields: str = "otel"
    """``otel`` (flat snake_case names) or ``ecs`` (Elastic Common Schema names)."""
    log_level: str = "info"
    log_file: Optional[Path] = None
    """Append JSON lines to this file instead of stdout. TorchServe's frontend re-logs every
    stdout line through log4j, which costs throughput; a file also suits a log shipper."""
    log_file_max_bytes: int = 100 * 1024 * 1024
    """Rotate ``log_file`` past this size (checked once a second); 0: never (logrotate may)."""
    log_file_backups: int = 5
    """Rotated files kept beside ``log_file`` (``.1`` the newest)."""
    fluent_host: Optional[str] = None
    """Fluentd forward endpoint; shipping is off while unset."""
    fluent_port: int = 24224
    fluent_tag: str = "torchserve"
    fluent_queue_size: int = 10000
    """Records waiting for the sender thread; beyond it the oldest is dropped and counted."""
    fluent_buffer_bytes: int = 1024 * 1024
    """Unsent bytes kept while Fluentd is unreachable; beyond it they are dropped and counted."""
    gpu_sample_interval_s: float = 15.0
    json_loggers: Tuple[str, ...] = ()
    """Extra stdlib logger names whose records are rendered as JSON lines."""

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> Settings:
        env = os.environ if env is None else env
        log_fields = env.get("TSOBS_LOG_FIELDS", "otel").strip().lower()
        if log_fields not in ("otel", "ecs"):
            raise SettingsError(f"TSOBS_LOG_FIELDS must be 'otel' or 'ecs', got {log_fields!r}")
        log_level = env.get("TSOBS_LOG_LEVEL", "info").strip().lower()
        if log_level not in ("debug", "info", "warning", "error", "critical"):
            raise SettingsError(
                f"TSOBS_LOG_LEVEL must be debug, info, warning, error or critical, got {log_level!r}"
            )
        return cls(
            metrics_dir=metrics_dir_from_env(env),
            log_fields=log_fields,
            log_level=log_level,
            log_file=Path(env["TSOBS_LOG_FILE"]) if env.get("TSOBS_LOG_FILE") else None,
            log_file_max_bytes=_int(env, "TSOBS_LOG_FILE_MAX_BYTES", 100 * 1024 * 1024, 0, 1 << 50),
            log_file_backups=_int(env, "TSOBS_LOG_FILE_BACKUPS", 5, 1, 1000),
            fluent_host=env.get("TSOBS_FLUENT_HOST") or None,
            fluent_port=_int(env, "TSOBS_FLUENT_PORT", 24224, 1, 65535),
            fluent_tag=env.get("TSOBS_FLUENT_TAG", "torchserve"),
            fluent_queue_size=_int(env, "TSOBS_FLUENT_QUEUE_SIZE", 10000, 1, 10_000_000),
            fluent_buffer_bytes=_int(env, "TSOBS_FLUENT_BUFFER_BYTES", 1024 * 1024, 1024, 1 << 30),
            gpu_sample_interval_s=float(_int(env, "TSOBS_GPU_SAMPLE_INTERVAL_S", 15, 1, 3600)),
            json_loggers=tuple(
                name.strip()
                for name in env.get("TSOBS_JSON_LOGGERS", "").split(",")
                if name.strip()
            ),
        )


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value
