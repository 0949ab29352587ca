"""End to end: the native stack turns a fault into a delivered alert, and its resolution.

Starts ``torchserve-obs stack up`` (TorchServe with the example model, the exporter,
Prometheus, Alertmanager) on free loopback ports with rules generated for the test (short
``for:``), freezes the exporter with SIGSTOP (a stopped target), and follows
TorchServeObsExporterDown from pending to firing in Prometheus, into Alertmanager, and to a
webhook receiver run here; then SIGCONT and the resolved notification.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import yaml

from handler_mixins.example.build import MODEL_NAME
from obs import stack
from obs.services import http_get
from obs.traffic import json_request, predict
from tests.support.traffic import wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.torchserve]

ALERT = "TorchServeObsExporterDown"
ERRORS_ALERT = "TorchServeModelErrorRatioHigh"
FOR = "4s"
RATE_WINDOW = "15s"


class Webhook:
    """Alertmanager's webhook receiver: keeps every notification it is sent."""

    def __init__(self) -> None:
        self.notifications: List[Dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "obs.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generated")
    config = out / "obs.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "rate_window": RATE_WINDOW,
                "alerts": {ALERT: {"for": FOR}, ERRORS_ALERT: {"for": FOR}},
            }
        )
    )
    result = _run_cli("generate", "--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((out / "alerts" / "torchserve-obs.rules.yml").read_text())
    fors = {r["alert"]: r.get("for") for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert fors[ALERT] == FOR
    return out / "alerts"


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def native_stack(
    tmp_path_factory: pytest.TempPathFactory, rules_dir: Path, webhook: Webhook
) -> Iterator[stack.State]:
    state_dir = tmp_path_factory.mktemp("stack")
    up = _run_cli(
        "stack",
        "up",
        "--state-dir",
        str(state_dir),
        "--free-ports",
        "--rules-dir",
        str(rules_dir),
        "--scrape-interval",
        "1s",
        "--webhook-url",
        webhook.url,
        "--group-wait",
        "1s",
        "--group-interval",
        "2s",
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = stack.load_state(state_dir)
        assert state is not None
        yield state
    finally:
        down = _run_cli("stack", "down", "--state-dir", str(state_dir))
        assert down.returncode == 0 or "nothing to stop" in down.stderr, down.stderr
    for name, started in state.services.items():
        assert not stack.is_running(started), f"{name} still runs after stack down"


def _prometheus(state: stack.State, path: str) -> Any:
    return json.loads(http_get(f"http://127.0.0.1:{state.ports['prometheus']}{path}"))["data"]


def _alert_state(state: stack.State, alert: str = ALERT) -> Optional[str]:
    alerts = [
        a
        for a in _prometheus(state, "/api/v1/alerts")["alerts"]
        if a["labels"]["alertname"] == alert
    ]
    return alerts[0]["state"] if alerts else None


def _notification(
    webhook: Webhook, alert: str, status: str
) -> Callable[[], Optional[Dict[str, Any]]]:
    """A probe for the first webhook notification of ``alert`` in ``status``."""

    def find() -> Optional[Dict[str, Any]]:
        for note in webhook.notifications:
            if note["status"] == status and note["commonLabels"].get("alertname") == alert:
                return dict(note)
        return None

    return find


def test_every_target_is_scraped(native_stack: stack.State) -> None:
    def healthy() -> Optional[Dict[str, str]]:
        targets = _prometheus(native_stack, "/api/v1/targets")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        return health if health and all(h == "up" for h in health.values()) else None

    health = wait_for(healthy, 30, "all targets up")
    assert set(health) == {"torchserve", "torchserve-obs", "prometheus", "alertmanager"}


def test_a_stopped_exporter_alerts_end_to_end(native_stack: stack.State, webhook: Webhook) -> None:
    exporter = native_stack.services["exporter"].pid
    wait_for(lambda: _alert_state(native_stack) is None, 30, "the exporter alert to be inactive")
    os.kill(exporter, signal.SIGSTOP)
    try:
        seen = []

        def firing() -> bool:
            current = _alert_state(native_stack)
            if current and (not seen or seen[-1] != current):
                seen.append(current)
            return current == "firing"

        wait_for(firing, 60, f"{ALERT} to fire")
        assert seen[0] == "pending", f"went {seen}: 'for: {FOR}' must hold it pending first"

        def in_alertmanager() -> List[Dict[str, Any]]:
            url = f"http://127.0.0.1:{native_stack.ports['alertmanager']}/api/v2/alerts?filter=alertname%3D%22{ALERT}%22"
            return [a for a in json.loads(http_get(url)) if a["status"]["state"] == "active"]

        assert (
            wait_for(in_alertmanager, 30, "the alert in Alertmanager")[0]["labels"]["job"]
            == "torchserve-obs"
        )

        note = wait_for(
            _notification(webhook, ALERT, "firing"), 30, "the firing notification at the webhook"
        )
        labels, annotations = note["alerts"][0]["labels"], note["alerts"][0]["annotations"]
        assert labels["severity"] == "warning" and labels["job"] == "torchserve-obs"
        assert labels["instance"] == f"127.0.0.1:{native_stack.ports['exporter']}"
        assert annotations["summary"] == "Prometheus cannot scrape the torchserve-obs exporter."
        assert labels["instance"] in annotations["description"]
        assert annotations["runbook_url"].endswith("#" + ALERT.lower())
        assert note["receiver"] == "local"
    finally:
        os.kill(exporter, signal.SIGCONT)

    resolved = wait_for(_notification(webhook, ALERT, "resolved"), 60, "the resolved notification")
    assert resolved["alerts"][0]["labels"]["alertname"] == ALERT
    assert resolved["alerts"][0]["endsAt"] > resolved["alerts"][0]["startsAt"]
    assert _alert_state(native_stack) is None


def test_injected_errors_alert_end_to_end_and_clear(
    native_stack: stack.State, webhook: Webhook
) -> None:
    """Failing requests fire the error-ratio alert through to the webhook; healthy ones clear it."""
    url = f"http://127.0.0.1:{native_stack.ports['inference']}"
    failing = threading.Event()
    failing.set()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            body = {"fail": "injected"} if failing.is_set() else [1, 2, 3, 4]
            predict(url, MODEL_NAME, json_request(body))
            time.sleep(0.05)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        note = wait_for(
            _notification(webhook, ERRORS_ALERT, "firing"), 120, "the error-ratio notification"
        )
        labels = note["alerts"][0]["labels"]
        assert labels["severity"] == "warning" and labels["model_name"] == MODEL_NAME
        assert MODEL_NAME in note["alerts"][0]["annotations"]["description"]
        failing.clear()
        wait_for(
            _notification(webhook, ERRORS_ALERT, "resolved"),
            120,
            "the error-ratio alert to resolve",
        )
        assert _alert_state(native_stack, ERRORS_ALERT) is None
    finally:
        stop.set()
        sender.join(10)
