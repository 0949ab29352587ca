"""The native stack's log leg: ``stack up`` starts Fluentd, which ships every request line.

A real ``torchserve-obs stack up`` (TorchServe, the exporter, Prometheus, Alertmanager) with
a real Fluentd (``FLUENTD``), and no Elasticsearch: Fluentd writes local JSON-lines files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import pytest

from handler_mixins.example.build import MODEL_NAME
from obs import stack
from obs.traffic import json_request, send_all
from tests.support.cli import run_cli
from tests.support.fluentd import BINARY, requires_fluentd
from tests.support.traffic import wait_for

pytestmark = [pytest.mark.torchserve, pytest.mark.prometheus, requires_fluentd]


def shipped(out: Path) -> List[Dict]:
    return [
        json.loads(line)
        for path in sorted(out.glob("*.log"))
        for line in path.read_text().splitlines()
    ]


def test_stack_up_ships_every_request_line_to_local_files(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    up = run_cli("stack", "up", "--state-dir", str(state_dir), "--free-ports", "--fluentd", BINARY)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = stack.load_state(state_dir)
        assert state is not None and "fluentd" in state.services
        out = state_dir / "fluentd" / "out"
        assert (
            f"Fluentd ships TorchServe's and the mixin's logs to JSON-lines files in {out.resolve()}"
            in up.stdout
        )
        url = f"http://127.0.0.1:{state.ports['inference']}"
        responses = send_all(url, MODEL_NAME, [json_request([1, 2, 3, i]) for i in range(30)], 6)
        wanted = sorted(r.request_id for r in responses)

        def lines_of_requests() -> List[str]:
            ids = [
                r["request_id"]
                for r in shipped(out)
                if r.get("event") == "request_completed" and r.get("request_id") in wanted
            ]
            return ids if len(set(ids)) == len(wanted) else []

        assert (
            sorted(wait_for(lines_of_requests, 240, "the request lines in Fluentd's files"))
            == wanted
        )
        # TorchServe's own text lines travel too, parsed: from another file, which Fluentd
        # tails on its own schedule (seen arriving after the request lines).
        wait_for(
            lambda: any(
                r.get("logger") == "ACCESS_LOG" and r.get("status") == 200 for r in shipped(out)
            ),
            60,
            "TorchServe's access lines in Fluentd's files",
        )
    finally:
        down = run_cli("stack", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0 and "fluentd: stopped" in down.stdout, down.stdout + down.stderr
