"""The native runner's pieces that need no server: rendering, binary checks, safe stopping."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from obs import stack
from obs.cli import build_parser
from obs.errors import UsageError
from obs.signals import DEFAULT_PORTS

COMPOSE = Path(__file__).resolve().parents[1] / "compose"
PORTS = {name: port + 10000 for name, port in DEFAULT_PORTS.items()}


def _compose_yaml(*parts: str) -> dict:
    return yaml.safe_load(COMPOSE.joinpath(*parts).read_text())


def test_prometheus_targets_are_rendered_to_loopback_ports() -> None:
    rendered = stack.render_prometheus(
        _compose_yaml("prometheus", "prometheus.yml"), PORTS, Path("/rules"), "1s"
    )
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in rendered["scrape_configs"]
    }
    assert targets["torchserve"] == [f"127.0.0.1:{PORTS['torchserve_metrics']}"]
    assert targets["torchserve-obs"] == [f"127.0.0.1:{PORTS['exporter']}"]
    alertmanagers = rendered["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == [f"127.0.0.1:{PORTS['alertmanager']}"]
    assert rendered["rule_files"] == ["/rules/*.rules.yml"]
    assert (
        rendered["global"]["scrape_interval"] == rendered["global"]["evaluation_interval"] == "1s"
    )


def test_a_target_outside_the_stack_is_refused() -> None:
    config = {"scrape_configs": [{"job_name": "x", "static_configs": [{"targets": ["db:5432"]}]}]}
    with pytest.raises(UsageError, match="db:5432"):
        stack.render_prometheus(config, PORTS, Path("/rules"), None)


def test_alertmanager_gets_the_webhook_and_timings(tmp_path: Path) -> None:
    source = _compose_yaml("alertmanager", "alertmanager.yml")
    rendered = stack.render_alertmanager(
        source,
        "http://127.0.0.1:5001/hook",
        {"group_wait": "1s", "group_interval": "2s", "repeat_interval": None},
    )
    for receiver in rendered["receivers"]:
        assert receiver["webhook_configs"] == [
            {"url": "http://127.0.0.1:5001/hook", "send_resolved": True}
        ]
    route = rendered["route"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        "1s",
        "2s",
        "4h",
    )
    assert [r["group_wait"] for r in route["routes"]] == ["1s"]
    assert source["receivers"] == [{"name": "local"}], "the source document is left as it was"
    amtool = shutil.which("amtool")
    if amtool:
        path = tmp_path / "alertmanager.yml"
        path.write_text(yaml.safe_dump(rendered))
        result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_loopback_and_the_dashboards(tmp_path: Path) -> None:
    stack.render_grafana_provisioning(
        COMPOSE / "grafana" / "provisioning",
        tmp_path,
        "http://127.0.0.1:19090",
        Path("/repo/dashboards"),
    )
    datasource = yaml.safe_load((tmp_path / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ][0]
    assert datasource["url"] == "http://127.0.0.1:19090"
    provider = yaml.safe_load((tmp_path / "dashboards" / "torchserve-obs.yml").read_text())[
        "providers"
    ][0]
    assert provider["options"]["path"] == "/repo/dashboards"


def test_torchserve_settings_come_from_the_compose_config_properties() -> None:
    settings = stack.read_properties(COMPOSE / "torchserve" / "config.properties")
    assert settings["metrics_mode"] == "prometheus"
    assert settings["inference_address"] == "http://0.0.0.0:8080"
    assert set(stack.TORCHSERVE_OWN_KEYS) <= set(settings)


def _up_args(tmp_path: Path) -> list:
    return ["stack", "up", "--state-dir", str(tmp_path / "state"), "--free-ports"]


def test_missing_prometheus_is_named_with_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    args = build_parser().parse_args(_up_args(tmp_path))
    with pytest.raises(UsageError, match=r"prometheus not found .*apt-get install prometheus"):
        args.func(args)
    assert not (tmp_path / "state").exists(), "nothing is started or written before the checks pass"


def test_up_refuses_taken_ports_and_names_them() -> None:
    with stack.socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        original = stack.DEFAULT_PORTS["prometheus"]
        stack.DEFAULT_PORTS["prometheus"] = taken
        try:
            with pytest.raises(UsageError, match=rf"{taken} \(prometheus\).*--free-ports"):
                stack.choose_ports(free=False)
        finally:
            stack.DEFAULT_PORTS["prometheus"] = original


def test_down_stops_what_up_started_and_nothing_else(tmp_path: Path) -> None:
    ours = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        state = stack.State(ports={}, tmp_dir=str(tmp_path / "tmp"))
        ours_time = stack.process_start_time(ours.pid)
        other_time = stack.process_start_time(other.pid)
        assert ours_time is not None and other_time is not None
        state.services["ours"] = stack.Started(ours.pid, ours_time, "log", "url")
        # A recorded PID that now names another process (same PID, other start time).
        state.services["reused"] = stack.Started(other.pid, other_time + 1, "log", "url")
        state.save(tmp_path)
        down = build_parser().parse_args(["stack", "down", "--state-dir", str(tmp_path)])
        assert down.func(down) == 0
        assert ours.wait(timeout=10) is not None
        assert other.poll() is None, "a process up did not start was stopped"
        assert stack.load_state(tmp_path) is None
        with pytest.raises(UsageError, match="nothing to stop"):
            down.func(down)
    finally:
        for process in (ours, other):
            process.kill()
            process.wait()


def test_status_without_a_stack_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert stack.status(argparse.Namespace(state_dir=str(tmp_path))) == 1
    assert "no stack started" in capsys.readouterr().out
