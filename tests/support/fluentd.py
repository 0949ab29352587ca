"""Running the shipped ``compose/fluentd/fluent.conf`` in a real Fluentd on loopback.

The Fluentd binary comes from the ``FLUENTD`` environment variable (``.ci/run`` points it at
``../shared/tools/fluentd/bin/fluentd`` when that exists); tests that need it are skipped,
saying why, where it is not set. Only hosts, ports and paths differ from the compose stack,
through the environment variables the config reads, plus a short flush interval and retry
cap so that a test does not wait minutes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional

import pytest

from obs.services import Service, free_port, http_get, wait_until_http_ok

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "compose" / "fluentd" / "fluent.conf"
BINARY = os.environ.get("FLUENTD", "")

requires_fluentd = pytest.mark.skipif(
    not (BINARY and Path(BINARY).is_file()),
    reason="set FLUENTD to a Fluentd 1.16 with fluent-plugin-elasticsearch 5.4 "
    "(.ci/run sets it from ../shared/tools/fluentd when that exists)",
)


class Fluentd:
    """One Fluentd, restartable with the same position files and buffer (its ``state`` dir)."""

    def __init__(self, state: Path, log_dir: Path, es_port: int, log_fields: str = "otel") -> None:
        self.state = state
        self.forward_port = free_port()
        self.monitor_port = free_port()
        self.env: Dict[str, str] = {
            **os.environ,
            "TSOBS_LOG_DIR": str(log_dir),
            "TSOBS_LOG_FIELDS": log_fields,
            "TSOBS_ES_HOST": "127.0.0.1",
            "TSOBS_ES_PORT": str(es_port),
            "FLUENTD_BUFFER_DIR": str(state / "buffer"),
            "FLUENTD_FORWARD_BIND": "127.0.0.1",
            "FLUENTD_FORWARD_PORT": str(self.forward_port),
            "FLUENTD_MONITOR_PORT": str(self.monitor_port),
            "FLUENTD_FLUSH_INTERVAL": "1s",
            "FLUENTD_RETRY_MAX_INTERVAL": "2s",
        }
        self.service: Optional[Service] = None
        self.starts = 0

    def start(self) -> Fluentd:
        self.starts += 1
        (self.state / "buffer").mkdir(parents=True, exist_ok=True)
        self.service = Service(
            "fluentd",
            [BINARY, "-c", str(CONFIG), "--no-supervisor"],
            self.state / f"fluentd-{self.starts}.out",
            env=self.env,
        ).start()
        wait_until_http_ok(
            f"http://127.0.0.1:{self.monitor_port}/api/plugins.json", 90, self.service.process
        )
        return self

    def stop(self) -> None:
        """SIGTERM: Fluentd writes its position files and keeps its file buffer for the next start."""
        if self.service is not None:
            self.service.stop(timeout=60)
            self.service = None

    def drained(self) -> bool:
        """True when the Elasticsearch output holds nothing: every chunk was written."""
        plugins = json.loads(http_get(f"http://127.0.0.1:{self.monitor_port}/api/plugins.json"))[
            "plugins"
        ]
        (output,) = [p for p in plugins if p["type"] == "elasticsearch"]
        return output["buffer_total_queued_size"] == 0 and output["buffer_stage_length"] == 0

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.state.glob("*.out")))

    def warnings(self) -> list:
        """Fluentd's own warnings and errors, across every start."""
        return [
            line for line in self.log().splitlines() if " [warn]: " in line or " [error]: " in line
        ]
