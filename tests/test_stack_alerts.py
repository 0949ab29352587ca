"""End to end: the native stack turns a fault into a delivered alert, and its resolution.

Starts ``torchserve-obs stack up`` (TorchServe with the example model, the exporter,
Prometheus, Alertmanager) on free loopback ports with rules generated for the test (short
``for:``), freezes the exporter with SIGSTOP (a stopped target) under traffic, and follows
TorchServeObsExporterDown from pending to firing in Prometheus, into Alertmanager, and to a
webhook receiver run here, while nothing critical fires; then SIGCONT and the resolved
notification. Traffic to the model served without the mixin raises nothing, and the shipped
inhibitions keep their targets from every receiver.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import yaml

from handler_mixins.example.build import MODEL_NAME, PLAIN_MODEL_NAME
from obs import stack
from obs.generate import rules
from obs.services import http_get
from obs.traffic import json_request, predict
from tests.support.cli import run_cli
from tests.support.traffic import wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.torchserve]

ALERT = "TorchServeObsExporterDown"
ERRORS_ALERT = "TorchServeModelErrorRatioHigh"
FOR = "4s"
RATE_WINDOW = "15s"
QUICK_PAGES = (
    "TorchServeModelNoHealthyWorker",
    "TorchServeModelRequestsUnanswered",
    "TorchServeModelAllRequestsFailing",
)
"""Critical alerts fed by the handler's metrics, given a short ``for:`` here so that a wrong
page would fire within the test (TorchServeTargetDown keeps its 5m: on a loaded machine a
1-second scrape of TorchServe can time out)."""
QUICK_FOR = "2s"


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


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generated")
    config = out / "obs.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "rate_window": RATE_WINDOW,
                "alerts": {
                    ALERT: {"for": FOR},
                    ERRORS_ALERT: {"for": FOR},
                    **{name: {"for": QUICK_FOR} for name in QUICK_PAGES},
                },
            }
        )
    )
    result = run_cli("generate", "--config", str(config), "--out", str(out))
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
    up = run_cli(
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
        down = run_cli("stack", "down", "--state-dir", str(state_dir))
        assert down.returncode == 0 or "nothing to stop" in down.stderr, down.stderr
    for name, started in state.services.items():
        assert not stack.is_running(started), f"{name} still runs after stack down"


def _prometheus(state: stack.State, path: str) -> Any:
    url = f"http://127.0.0.1:{state.ports['prometheus']}{path}"
    return json.loads(http_get(url, timeout=60))["data"]


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


def _firing(state: stack.State) -> List[Dict[str, Any]]:
    return [a for a in _prometheus(state, "/api/v1/alerts")["alerts"] if a["state"] == "firing"]


def _query(state: stack.State, expr: str) -> List[Dict[str, Any]]:
    query = urllib.parse.urlencode({"query": expr})
    return list(_prometheus(state, f"/api/v1/query?{query}")["result"])


class Traffic:
    """Valid requests to the given models, one after another, until stopped."""

    def __init__(self, state: stack.State, *models: str) -> None:
        url = f"http://127.0.0.1:{state.ports['inference']}"
        self.stop = threading.Event()
        self.answers: Dict[str, List[int]] = {m: [] for m in models}

        def send() -> None:
            while not self.stop.is_set():
                for model in models:
                    try:
                        status = predict(url, model, json_request([1, 2, 3, 4])).status
                    except OSError:  # a client timeout on a loaded machine is no answer
                        continue
                    self.answers[model].append(status)
                time.sleep(0.05)

        self.thread = threading.Thread(target=send, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def _watch_quiet(
    state: stack.State, seen_traffic: str, bad: Callable[[Dict[str, Any]], bool]
) -> None:
    """Once Prometheus has evaluated ``seen_traffic`` to data, no alert matching ``bad`` may
    fire for as long as a quick page would need: rate window, ``for:`` and a margin."""
    wait_for(lambda: _query(state, seen_traffic), 60, f"{seen_traffic} to have data")
    deadline = time.monotonic() + 2 * _seconds(RATE_WINDOW) + _seconds(QUICK_FOR) + 10
    while time.monotonic() < deadline:
        wrong = [a["labels"] for a in _firing(state) if bad(a)]
        assert wrong == [], wrong
        time.sleep(1)


def _seconds(duration: str) -> int:
    return int(duration.rstrip("s"))


def test_every_target_is_scraped(native_stack: stack.State) -> None:
    def healthy() -> Optional[Dict[str, str]]:
        targets = _prometheus(native_stack, "/api/v1/targets")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        return health if health and all(h == "up" for h in health.values()) else None

    health = wait_for(healthy, 30, "all targets up")
    assert set(health) == {"torchserve", "torchserve-obs", "prometheus", "alertmanager"}


def test_a_stopped_exporter_alerts_end_to_end_and_pages_nothing(
    native_stack: stack.State, webhook: Webhook
) -> None:
    """Under traffic, a stopped exporter is a warning; nothing critical fires beside it."""
    exporter = native_stack.services["exporter"].pid
    wait_for(lambda: _alert_state(native_stack) is None, 30, "the exporter alert to be inactive")
    traffic = Traffic(native_stack, MODEL_NAME, PLAIN_MODEL_NAME)
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

        _watch_quiet(
            native_stack,
            f'{rules.received_rate(RATE_WINDOW)}{{model_name="{MODEL_NAME}"}} > 0',
            lambda a: a["labels"]["severity"] == "critical",
        )
        assert set(traffic.answers[MODEL_NAME]) == {200}, "the exporter's outage reached users"
        assert not [
            n for n in webhook.notifications if n["commonLabels"].get("severity") == "critical"
        ]
    finally:
        os.kill(exporter, signal.SIGCONT)
        traffic.close()

    resolved = wait_for(_notification(webhook, ALERT, "resolved"), 60, "the resolved notification")
    assert resolved["alerts"][0]["labels"]["alertname"] == ALERT
    assert resolved["alerts"][0]["endsAt"] > resolved["alerts"][0]["startsAt"]
    assert _alert_state(native_stack) is None


def test_a_model_without_the_mixin_under_traffic_raises_nothing(native_stack: stack.State) -> None:
    """Nothing fires, for the plain model or any other, while only it gets traffic."""
    traffic = Traffic(native_stack, PLAIN_MODEL_NAME)
    try:
        _watch_quiet(
            native_stack,
            f'{rules.received_rate(RATE_WINDOW)}{{model_name="{PLAIN_MODEL_NAME}"}} > 0',
            lambda _alert: True,
        )
        assert set(traffic.answers[PLAIN_MODEL_NAME]) == {200}
    finally:
        traffic.close()


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


def _inhibit_cases() -> List[Tuple[Dict[str, str], Dict[str, str], Dict[str, str]]]:
    """For each shipped inhibit rule: a source alert, a target it silences (same ``equal``
    labels) and a control target that differs in them, all with labels of their own."""
    import yaml as _yaml

    config = _yaml.safe_load(
        (stack.REPO / "compose" / "alertmanager" / "alertmanager.yml").read_text()
    )
    cases = []
    for i, rule in enumerate(config["inhibit_rules"]):
        source = dict(_matcher(m) for m in rule["source_matchers"])
        target = dict(_matcher(m) for m in rule["target_matchers"])
        same = {label: f"inhibit-{i}" for label in rule["equal"]}
        other = {label: f"other-{i}" for label in rule["equal"]}
        base = {"severity": "warning", "test_case": str(i)}
        cases.append(
            ({**base, **source, **same}, {**base, **target, **same}, {**base, **target, **other})
        )
    return cases


def _matcher(text: str) -> Tuple[str, str]:
    """``name="value"`` or ``name=~"a|b"`` (the first alternative) as a label pair."""
    name, _, value = text.partition("=")
    return name, value.lstrip("~").strip('"').split("|")[0]


def test_shipped_inhibitions_keep_their_targets_from_every_receiver(
    native_stack: stack.State, webhook: Webhook
) -> None:
    base = f"http://127.0.0.1:{native_stack.ports['alertmanager']}/api/v2/alerts"

    def post(alerts: List[Dict[str, str]]) -> None:
        body = json.dumps([{"labels": labels} for labels in alerts]).encode()
        request = urllib.request.Request(
            base, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 200

    cases = _inhibit_cases()
    assert len(cases) >= 4
    post([source for source, _, _ in cases])
    wait_for(
        lambda: (
            len([a for a in json.loads(http_get(base, timeout=60)) if "test_case" in a["labels"]])
            >= len(cases)
        ),
        30,
        "the source alerts in Alertmanager",
    )
    post([target for _, target, _ in cases] + [control for _, _, control in cases])

    def delivered(labels: Dict[str, str]) -> bool:
        return any(
            all(a["labels"].get(k) == v for k, v in labels.items())
            for note in webhook.notifications
            for a in note["alerts"]
        )

    for source, target, control in cases:
        wait_for(lambda c=control: delivered(c), 60, f"the control of {target['alertname']}")
        assert delivered(source), source
    for _, target, _ in cases:
        assert not delivered(target), f"{target} reached a receiver despite its inhibition"
        state = [
            a["status"]
            for a in json.loads(http_get(base + "?inhibited=true", timeout=60))
            if all(a["labels"].get(k) == v for k, v in target.items())
        ]
        assert state and state[0]["state"] == "suppressed" and state[0]["inhibitedBy"], target
