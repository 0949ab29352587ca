"""Runtime settings of the mixin and the exporter, read from the environment.

TorchServe workers inherit the frontend's environment, so environment variables are the
one channel that reaches every worker without touching the handler code.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Set, Tuple

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def default_metrics_dir() -> Path:
    """Where workers and the exporter meet when ``PROMETHEUS_MULTIPROC_DIR`` is unset."""
    return Path(tempfile.gettempdir()) / "torchserve-obs-metrics"


def metrics_dir_from_env(env: Optional[Mapping[str, str]] = None) -> Path:
    """The multi-process metrics directory shared by the workers and the exporter."""
    env = os.environ if env is None else env
    return Path(env.get(MULTIPROC_DIR_ENV) or default_metrics_dir())


@dataclass(frozen=True)
class Problem:
    """A setting we cannot use: it disables only what it configures, and says so."""

    variable: str
    value: str
    why: str
    disabled: str
    """What runs without it, e.g. "Fluentd shipping is off"."""

    def message(self) -> str:
        return f"torchserve-obs: {self.variable}={self.value!r} {self.why}; {self.disabled}"


_reported: Set[Problem] = set()


def report(problems: Sequence[Problem]) -> List[Problem]:
    """Say each problem once per process on stderr; returns those said for the first time."""
    new = [p for p in problems if p not in _reported]
    for problem in new:
        _reported.add(problem)
        print(problem.message(), file=sys.stderr, flush=True)
    return new


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
    """Fluentd forward endpoint; shipping is off while unset (or while a Fluentd setting is bad)."""
    fluent_port: int = 24224
    fluent_tag: str = "torchserve"
    fluent_queue_size: int = 10000
    """Records waiting for the sender thread; beyond it the oldest is dropped and counted."""
    fluent_buffer_bytes: int = 1024 * 1024
    """Unsent bytes kept while Fluentd is unreachable; beyond it they are dropped and counted."""
    gpu_sample_interval_s: Optional[float] = 15.0
    """None: GPU sampling is off (a bad ``TSOBS_GPU_SAMPLE_INTERVAL_S``)."""
    json_loggers: Tuple[str, ...] = ()
    """Extra stdlib logger names whose records are rendered as JSON lines."""
    problems: Tuple[Problem, ...] = ()
    """Settings that could not be used, each with what it disabled. Never raised: a bad
    setting must not reach a request."""

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> Settings:
        env = os.environ if env is None else env
        problems: List[Problem] = []
        log_fields = _choice(
            env, "TSOBS_LOG_FIELDS", "otel", ("otel", "ecs"), "field names are otel", problems
        )
        log_level = _choice(
            env,
            "TSOBS_LOG_LEVEL",
            "info",
            ("debug", "info", "warning", "error", "critical"),
            "the level is info",
            problems,
        )
        fluent_host = env.get("TSOBS_FLUENT_HOST") or None
        fluent_off = "Fluentd shipping is off"
        before = len(problems)
        fluent_port = _int(env, "TSOBS_FLUENT_PORT", 24224, 1, 65535, fluent_off, problems)
        queue = _int(env, "TSOBS_FLUENT_QUEUE_SIZE", 10000, 1, 10_000_000, fluent_off, problems)
        buffer = _int(
            env, "TSOBS_FLUENT_BUFFER_BYTES", 1024 * 1024, 1024, 1 << 30, fluent_off, problems
        )
        if len(problems) > before:
            fluent_host = None
        interval = _int(
            env, "TSOBS_GPU_SAMPLE_INTERVAL_S", 15, 1, 3600, "GPU memory is not sampled", problems
        )
        rotation = "the log file is rotated at the defaults (100 MiB, 5 kept)"
        max_bytes = _int(
            env, "TSOBS_LOG_FILE_MAX_BYTES", 100 * 1024 * 1024, 0, 1 << 50, rotation, problems
        )
        backups = _int(env, "TSOBS_LOG_FILE_BACKUPS", 5, 1, 1000, rotation, problems)
        return cls(
            metrics_dir=metrics_dir_from_env(env),
            log_fields=log_fields,
            log_level=log_level,
            log_file=_log_file(env, problems),
            log_file_max_bytes=_default(max_bytes, 100 * 1024 * 1024),
            log_file_backups=_default(backups, 5),
            fluent_host=fluent_host,
            fluent_port=fluent_port or 24224,
            fluent_tag=env.get("TSOBS_FLUENT_TAG", "torchserve"),
            fluent_queue_size=queue or 10000,
            fluent_buffer_bytes=buffer or 1024 * 1024,
            gpu_sample_interval_s=None if interval is None else float(interval),
            json_loggers=tuple(
                name.strip()
                for name in env.get("TSOBS_JSON_LOGGERS", "").split(",")
                if name.strip()
            ),
            problems=tuple(problems),
        )


def _choice(
    env: Mapping[str, str],
    name: str,
    default: str,
    allowed: Sequence[str],
    instead: str,
    problems: List[Problem],
) -> str:
    raw = env.get(name, default)
    value = raw.strip().lower()
    if value in allowed:
        return value
    problems.append(Problem(name, raw, f"is not one of {', '.join(allowed)}", instead))
    return default


def _int(
    env: Mapping[str, str],
    name: str,
    default: int,
    low: int,
    high: int,
    disabled: str,
    problems: List[Problem],
) -> Any:
    """The value, the default when unset, or None (and a problem) when unusable."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(Problem(name, raw, "is not an integer", disabled))
        return None
    if not low <= value <= high:
        problems.append(Problem(name, raw, f"is not between {low} and {high}", disabled))
        return None
    return value


def _default(value: Optional[int], default: int) -> int:
    return default if value is None else value


def _log_file(env: Mapping[str, str], problems: List[Problem]) -> Optional[Path]:
    raw = env.get("TSOBS_LOG_FILE")
    if not raw:
        return None
    path = Path(raw)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as err:
        why = f"cannot be written ({err.strerror or err})"
        problems.append(Problem("TSOBS_LOG_FILE", raw, why, "JSON lines go to stdout"))
        return None
    return path
