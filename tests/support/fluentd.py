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
import re
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pytest

from obs.services import Service, free_port, http_get, wait_until_http_ok

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "compose" / "fluentd" / "fluent.conf"
BINARY = os.environ.get("FLUENTD", "")

TAILED = re.compile(r"^(ts_log\.log|model_log\.log|.*\.jsonl(\.\d+)?)$")
"""The files the shipped config tails in the log folder."""
QUIET_S = 4.0

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
        self.log_dir = log_dir
        self.service: Optional[Service] = None
        self.starts = 0
        self._last_state: Tuple[bool, int] = (False, -1)
        self._quiet_since = 0.0

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

    def _output(self) -> Optional[Dict[str, Any]]:
        """The Elasticsearch output's monitor figures; None while Fluentd is too busy to say."""
        url = f"http://127.0.0.1:{self.monitor_port}/api/plugins.json"
        try:
            plugins = json.loads(http_get(url, timeout=15.0))["plugins"]
        except OSError:
            return None
        (output,) = [p for p in plugins if p["type"] == "elasticsearch"]
        return output

    def drained(self) -> bool:
        """True when the Elasticsearch output holds nothing: every chunk was written."""
        output = self._output()
        return output is not None and output["buffer_total_queued_size"] == 0

    def holding(self) -> bool:
        """True when the Elasticsearch output holds records it could not write yet."""
        output = self._output()
        return output is not None and output["buffer_total_queued_size"] > 0

    def caught_up(self) -> bool:
        """True when every file Fluentd tails has been read to its end (its position files)."""
        positions = {}
        for pos_file in (self.state / "buffer").glob("*.pos"):
            for line in pos_file.read_text().splitlines():
                fields = line.split("\t")
                if len(fields) == 3:  # not a line Fluentd is rewriting right now
                    positions[int(fields[2], 16)] = int(fields[1], 16)
        tailed = [p.stat() for p in self.log_dir.iterdir() if TAILED.match(p.name)]
        return all(positions.get(stat.st_ino) == stat.st_size for stat in tailed)

    def settled(self) -> bool:
        """True once every file is read, every record written, and none came for QUIET_S
        (a multiline event is held up to its flush interval after the file's last line)."""
        output = self._output()
        done = output is not None and output["buffer_total_queued_size"] == 0
        state = (done and self.caught_up(), output["emit_records"] if output else -1)
        now = time.monotonic()
        if not state[0] or state != self._last_state:
            self._last_state, self._quiet_since = state, now
            return False
        return now - self._quiet_since >= QUIET_S

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.state.glob("*.out")))

    def warnings(self) -> list:
        """Fluentd's own warnings and errors, across every start."""
        return [
            line for line in self.log().splitlines() if " [warn]: " in line or " [error]: " in line
        ]
