"""``torchserve-obs stack``: the compose stack's core run natively, without Docker.

For hosts where Docker is not available (HPC nodes, locked-down GPU hosts): TorchServe with
the example model, the exporter, Prometheus and Alertmanager run from the host's binaries on
loopback ports, configured from the same files as the compose stack (``compose/``), rendered
for loopback. Grafana runs when its binary is found. Fluentd runs when one is found
(``--fluentd``, ``$FLUENTD`` or ``fluentd`` on PATH) with the compose stack's config: it tails
TorchServe's logs and writes to the Elasticsearch given with ``--elasticsearch-url``, else to
JSON-lines files in ``<state>/fluentd/out``. Elasticsearch itself is not run.

``up`` records every process it starts (PID and kernel start time) in the state dir, so
``down`` stops exactly those processes, and nothing else if a PID was reused meanwhile.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional
from urllib.parse import urlsplit

from obs.errors import UsageError
from obs.exporter import exporter_service
from obs.services import Service, free_ports, stop_process_group, wait_until_http_ok
from obs.signals import DEFAULT_PORTS
from obs.torchserve import LOOPBACK, TorchServe, TorchServePorts, torchserve_binary

REPO = Path(__file__).resolve().parents[1]
STATE_FILE = "state.json"
DEFAULT_STATE_DIR = ".torchserve-obs"

TORCHSERVE_EXTRA_PORTS = {"grpc_inference": 7070, "grpc_management": 7071, "first_worker": 9000}
"""TorchServe's other ports (gRPC, first worker): fixed so that they are predictable."""

NATIVE_SERVICES = (
    "inference",
    "management",
    "torchserve_metrics",
    "exporter",
    "prometheus",
    "alertmanager",
    "grafana",
)
"""Keys of :data:`DEFAULT_PORTS` the native stack listens on."""

FLUENTD_PORTS = {"fluentd_forward": DEFAULT_PORTS["fluentd_forward"], "fluentd_monitor": 24220}
"""Fluentd's forward input and its monitor agent (readiness), when the stack runs Fluentd."""

TORCHSERVE_OWN_KEYS = ("inference_address", "management_address", "metrics_address", "model_store")
"""config.properties keys the native runner sets itself (loopback addresses, its model store)."""

INSTALL_HINTS = {
    "prometheus": "apt-get install prometheus (Debian/Ubuntu), or put the release binary from "
    "https://prometheus.io/download/ on PATH",
    "alertmanager": "apt-get install prometheus-alertmanager (Debian/Ubuntu), or put the release "
    "binary from https://prometheus.io/download/ on PATH",
    "java": "TorchServe 0.12 needs a Java 17 runtime: apt-get install openjdk-17-jre-headless, "
    "or set JAVA_HOME",
    "fluentd": "optional: a Fluentd 1.16 with fluent-plugin-elasticsearch 5.4 (--fluentd PATH, "
    "FLUENTD=PATH, or fluentd on PATH); until then the mixin's JSON lines are in",
    "grafana": "optional: install Grafana (https://grafana.com/grafana/download) and set "
    "GRAFANA_ADMIN_PASSWORD; until then import dashboards/*.json into any Grafana",
}


@dataclass
class Started:
    """One process ``up`` started: enough for ``down`` to recognise it."""

    pid: int
    start_time: int
    log: str
    url: str


@dataclass
class State:
    ports: Dict[str, int]
    tmp_dir: str
    services: Dict[str, Started] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def save(self, state_dir: Path) -> None:
        (state_dir / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def load_state(state_dir: Path) -> Optional[State]:
    """The state ``up`` left in ``state_dir``, or None if no stack was started there."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    raw["services"] = {name: Started(**s) for name, s in raw["services"].items()}
    return State(**raw)


def process_start_time(pid: int) -> Optional[int]:
    """Kernel start time of a live process (clock ticks since boot), None if it is gone.

    A PID and its start time together name one process: PIDs are reused, start times not.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def is_running(started: Started) -> bool:
    return process_start_time(started.pid) == started.start_time


# --- Rendering the compose files for loopback ---------------------------------------------


def render_prometheus(
    config: Mapping[str, Any], ports: Mapping[str, int], rules_dir: Path, interval: Optional[str]
) -> Dict[str, Any]:
    """prometheus.yml with each ``service:port`` target on loopback and rules from ``rules_dir``.

    A target's port names its service (:data:`DEFAULT_PORTS`), so the compose file needs no
    native twin; a target that is none of the stack's services is refused.
    """
    service_by_port = {str(port): name for name, port in DEFAULT_PORTS.items()}
    rendered = copy.deepcopy(dict(config))

    def local(target: str) -> str:
        name = service_by_port.get(target.rpartition(":")[2])
        if name not in ports:
            raise UsageError(f"prometheus.yml: target {target!r} is not a service of the stack")
        return f"{LOOPBACK}:{ports[name]}"

    groups = [
        s for job in rendered.get("scrape_configs", []) for s in job.get("static_configs", [])
    ]
    for alertmanagers in rendered.get("alerting", {}).get("alertmanagers", []):
        groups.extend(alertmanagers.get("static_configs", []))
    for group in groups:
        group["targets"] = [local(t) for t in group["targets"]]
    rendered["rule_files"] = [str(rules_dir / Path(p).name) for p in rendered.get("rule_files", [])]
    if interval:
        rendered["global"] = {
            **rendered.get("global", {}),
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        }
    return rendered


def render_alertmanager(
    config: Mapping[str, Any], webhook_url: Optional[str], timing: Mapping[str, Optional[str]]
) -> Dict[str, Any]:
    """alertmanager.yml with an extra webhook on every receiver and route timings overridden.

    ``timing`` maps ``group_wait``/``group_interval``/``repeat_interval`` to a duration (or None
    to keep the file's); it applies to the root route and to every route that sets its own.
    """
    rendered = copy.deepcopy(dict(config))
    if webhook_url:
        for receiver in rendered.get("receivers", []):
            receiver.setdefault("webhook_configs", []).append(
                {"url": webhook_url, "send_resolved": True}
            )
    overrides = {key: value for key, value in timing.items() if value}

    def retime(route: Dict[str, Any], root: bool) -> None:
        for key, value in overrides.items():
            if root or key in route:
                route[key] = value
        for child in route.get("routes", []):
            retime(child, False)

    retime(rendered["route"], True)
    return rendered


def render_grafana_provisioning(
    source: Path, target: Path, prometheus_url: str, dashboards_dir: Path
) -> None:
    """Grafana's provisioning folder with the datasource on loopback and the repo's dashboards."""
    import yaml  # from the torchserve or generate extra: the exporter runs without it

    for path in source.rglob("*.yml"):
        document = yaml.safe_load(path.read_text())
        for datasource in document.get("datasources", []):
            if datasource.get("type") == "prometheus":
                datasource["url"] = prometheus_url
        for provider in document.get("providers", []):
            provider["options"]["path"] = str(dashboards_dir)
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(document, sort_keys=False))


def read_properties(path: Path) -> Dict[str, str]:
    """A Java .properties file as TorchServe reads it (``key=value`` lines, ``#`` comments)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines())
    return {
        key.strip(): value.strip()
        for key, *rest in pairs
        for value in rest
        if not key.lstrip().startswith("#")
    }


# --- Finding what the host has ------------------------------------------------------------


def find_binary(names: List[str]) -> Optional[str]:
    return next((found for found in map(shutil.which, names) if found), None)


def require_binary(component: str, names: List[str]) -> str:
    found = find_binary(names)
    if found is None:
        raise UsageError(
            f"{component} not found ({' or '.join(names)} on PATH): {INSTALL_HINTS[component]}"
        )
    return found


def check_java() -> None:
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and Path(java_home, "bin", "java").exists()) and not shutil.which("java"):
        raise UsageError(f"java not found: {INSTALL_HINTS['java']}")


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def choose_ports(free: bool, extra: Optional[Mapping[str, int]] = None) -> Dict[str, int]:
    """The usual ports (refused if taken, naming the service), or free ones if asked.

    ``extra``: the usual ports of the optional services that will run."""
    wanted = {
        **{name: DEFAULT_PORTS[name] for name in NATIVE_SERVICES},
        **TORCHSERVE_EXTRA_PORTS,
        **(extra or {}),
    }
    if free:
        return dict(zip(wanted, free_ports(len(wanted))))
    taken = [f"{port} ({name})" for name, port in wanted.items() if not port_is_free(port)]
    if taken:
        raise UsageError(
            f"ports in use on {LOOPBACK}: {', '.join(taken)}; stop what uses them "
            "(`torchserve-obs stack down` if it is an earlier stack) or pass --free-ports"
        )
    return wanted


# --- up / down / status -------------------------------------------------------------------


class Stack:
    """Starts the services one by one, recording each in the state file as it goes."""

    def __init__(self, args: argparse.Namespace, state_dir: Path, state: State) -> None:
        self.args = args
        self.state_dir = state_dir
        self.state = state

    def record(self, name: str, service: Service, url: str) -> None:
        start_time = process_start_time(service.pid)
        assert start_time is not None, f"{name} exited at once; see {service.log_path}"
        self.state.services[name] = Started(service.pid, start_time, str(service.log_path), url)
        self.state.save(self.state_dir)

    def url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.state.ports[name]}"

    def wait(self, name: str, path: str, service: Service, timeout: float = 60.0) -> None:
        try:
            wait_until_http_ok(self.url(name) + path, timeout, service.process)
        except (RuntimeError, TimeoutError) as err:
            raise UsageError(f"{name} did not start: {err}\n{service.log_tail()}") from None

    def start_torchserve(self, compose: Path) -> None:
        ports = self.state.ports
        settings = read_properties(compose / "torchserve" / "config.properties")
        extra = {key: value for key, value in settings.items() if key not in TORCHSERVE_OWN_KEYS}
        torchserve = TorchServe(
            workdir=self.state_dir / "torchserve",
            model_store=self.model_store(),
            ports=TorchServePorts(
                ports["inference"],
                ports["management"],
                ports["torchserve_metrics"],
                ports["grpc_inference"],
                ports["grpc_management"],
                ports["first_worker"],
            ),
            load_models=settings.get("load_models", "all"),
            # TorchServe's pid file and worker sockets go to the temp dir: a private one lets
            # this stack run beside another TorchServe.
            env={
                "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir()),
                "TMPDIR": self.state.tmp_dir,
                "TEMP": self.state.tmp_dir,
            },
            extra_config=extra,
        ).start()
        assert torchserve.service is not None
        self.record("torchserve", torchserve.service, self.url("inference"))
        self.wait("inference", "/ping", torchserve.service, timeout=180.0)

    def model_store(self) -> Path:
        if self.args.model_store:
            return Path(self.args.model_store).resolve()
        store = self.state_dir / "model-store"
        if not list(store.glob("*.mar")):
            print("building the example model archives ...", flush=True)
            subprocess.run(
                [sys.executable, "-m", "handler_mixins.example.build", "--out", str(store)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        return store.resolve()

    def metrics_dir(self) -> Path:
        directory = self.state_dir / "metrics"
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return directory.resolve()

    def start(self, service: Service, ready_path: str) -> None:
        service.start()
        self.record(service.name, service, self.url(service.name))
        self.wait(service.name, ready_path, service)

    def start_exporter(self) -> None:
        log = self.state_dir / "logs" / "exporter.log"
        self.start(
            exporter_service(self.metrics_dir(), self.state.ports["exporter"], log), "/-/healthy"
        )

    def start_alertmanager(self, binary: str, compose: Path) -> None:
        import yaml  # from the torchserve or generate extra: the exporter runs without it

        config = render_alertmanager(
            yaml.safe_load((compose / "alertmanager" / "alertmanager.yml").read_text()),
            self.args.webhook_url,
            {
                "group_wait": self.args.group_wait,
                "group_interval": self.args.group_interval,
                "repeat_interval": self.args.repeat_interval,
            },
        )
        path = self._write_yaml("alertmanager.yml", config)
        self.start(
            Service(
                "alertmanager",
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.path={self.state_dir / 'alertmanager-data'}",
                    f"--web.listen-address={LOOPBACK}:{self.state.ports['alertmanager']}",
                    # One instance: no gossip listener (it would bind :9094 on every interface).
                    "--cluster.listen-address=",
                ],
                self._log("alertmanager"),
            ),
            "/-/ready",
        )

    def start_prometheus(self, binary: str, compose: Path) -> None:
        import yaml  # from the torchserve or generate extra: the exporter runs without it

        config = render_prometheus(
            yaml.safe_load((compose / "prometheus" / "prometheus.yml").read_text()),
            self.state.ports,
            Path(self.args.rules_dir).resolve(),
            self.args.scrape_interval,
        )
        path = self._write_yaml("prometheus.yml", config)
        self.start(
            Service(
                "prometheus",
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={self.state_dir / 'prometheus-data'}",
                    f"--web.listen-address={LOOPBACK}:{self.state.ports['prometheus']}",
                ],
                self._log("prometheus"),
            ),
            "/-/ready",
        )

    def start_grafana(self, compose: Path) -> None:
        binary = find_binary(["grafana", "grafana-server"])
        password = os.environ.get("GRAFANA_ADMIN_PASSWORD")
        if binary is None or not password:
            missing = "GRAFANA_ADMIN_PASSWORD is unset" if binary else "grafana not found"
            self.state.notes.append(f"Grafana not started ({missing}): {INSTALL_HINTS['grafana']}")
            return
        grafana_dir = (self.state_dir / "grafana").resolve()
        render_grafana_provisioning(
            compose / "grafana" / "provisioning",
            grafana_dir / "provisioning",
            self.url("prometheus"),
            Path(self.args.dashboards_dir).resolve(),
        )
        home = os.environ.get("GRAFANA_HOME") or next(
            (
                str(p)
                for p in (Path("/usr/share/grafana"), Path(binary).resolve().parents[1])
                if (p / "conf" / "defaults.ini").exists()
            ),
            None,
        )
        if home is None:
            self.state.notes.append("Grafana not started: set GRAFANA_HOME to its install folder")
            return
        argv = [binary, "server"] if Path(binary).name == "grafana" else [binary]
        env = {
            **os.environ,
            "GF_SERVER_HTTP_ADDR": LOOPBACK,
            "GF_SERVER_HTTP_PORT": str(self.state.ports["grafana"]),
            "GF_PATHS_DATA": str(grafana_dir / "data"),
            "GF_PATHS_LOGS": str(grafana_dir / "logs"),
            "GF_PATHS_PROVISIONING": str(grafana_dir / "provisioning"),
            "GF_SECURITY_ADMIN_PASSWORD": password,
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
        }
        self.start(
            Service("grafana", [*argv, f"--homepath={home}"], self._log("grafana"), env=env),
            "/api/health",
        )

    def start_fluentd(self, binary: str, compose: Path) -> None:
        """Fluentd with compose/fluentd/fluent.conf, tailing this stack's TorchServe logs."""
        directory = (self.state_dir / "fluentd").resolve()
        env = {
            **os.environ,
            "TSOBS_LOG_DIR": str((self.state_dir / "torchserve" / "logs").resolve()),
            "TSOBS_LOG_FIELDS": os.environ.get("TSOBS_LOG_FIELDS", "otel"),
            "FLUENTD_BUFFER_DIR": str(directory / "buffer"),
            "FLUENTD_FORWARD_BIND": LOOPBACK,
            "FLUENTD_FORWARD_PORT": str(self.state.ports["fluentd_forward"]),
            "FLUENTD_MONITOR_PORT": str(self.state.ports["fluentd_monitor"]),
        }
        if self.args.elasticsearch_url:
            target = urlsplit(self.args.elasticsearch_url)
            env.update(
                TSOBS_ES_HOST=target.hostname or LOOPBACK, TSOBS_ES_PORT=str(target.port or 9200)
            )
        else:
            env.update(
                FLUENTD_OUTPUT="output-file.conf", FLUENTD_FILE_OUTPUT_DIR=str(directory / "out")
            )
        (directory / "buffer").mkdir(parents=True, exist_ok=True)
        service = Service(
            "fluentd",
            [binary, "-c", str(compose / "fluentd" / "fluent.conf"), "--no-supervisor"],
            self._log("fluentd"),
            env=env,
        )
        service.start()
        self.record("fluentd", service, self.url("fluentd_monitor"))
        self.wait("fluentd_monitor", "/api/plugins.json", service, timeout=120.0)
        where = self.args.elasticsearch_url or f"JSON-lines files in {directory / 'out'}"
        self.state.notes.append(f"Fluentd ships TorchServe's and the mixin's logs to {where}")

    def _log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _write_yaml(self, name: str, document: Mapping[str, Any]) -> Path:
        import yaml  # from the torchserve or generate extra: the exporter runs without it

        path = (self.state_dir / name).resolve()
        path.write_text(yaml.safe_dump(dict(document), sort_keys=False))
        return path


def up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    previous = load_state(state_dir)
    if previous is not None and any(is_running(s) for s in previous.services.values()):
        raise UsageError(
            f"a stack is already running from {state_dir}: `torchserve-obs stack down` first"
        )
    compose = Path(args.compose_dir).resolve()
    if not (compose / "prometheus" / "prometheus.yml").exists():
        raise UsageError(
            f"{compose} is not the compose/ folder of torchserve-obs: pass --compose-dir"
        )
    if not Path(args.rules_dir).is_dir():
        raise UsageError(
            f"rules folder {args.rules_dir} not found: pass --rules-dir (generate it with "
            "`torchserve-obs generate`)"
        )
    # Everything required is checked before anything starts.
    prometheus = require_binary("prometheus", ["prometheus"])
    alertmanager = require_binary("alertmanager", ["alertmanager", "prometheus-alertmanager"])
    check_java()
    try:
        torchserve_binary()
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None

    state_dir.mkdir(parents=True, exist_ok=True)
    fluentd = args.fluentd or os.environ.get("FLUENTD") or find_binary(["fluentd"])
    if args.fluentd and not Path(args.fluentd).is_file():
        raise UsageError(f"--fluentd {args.fluentd}: no such file")
    state = State(
        ports=choose_ports(args.free_ports, FLUENTD_PORTS if fluentd else None),
        tmp_dir=tempfile.mkdtemp(prefix="tsobs-"),
    )
    if not fluentd:
        state.notes.append(
            f"Fluentd not started: {INSTALL_HINTS['fluentd']} "
            f"{state_dir / 'torchserve' / 'logs' / 'model_log.jsonl'}"
        )
    state.save(state_dir)
    stack = Stack(args, state_dir, state)
    steps: List[Callable[[], None]] = [
        stack.start_exporter,
        lambda: stack.start_torchserve(compose),
        lambda: stack.start_alertmanager(alertmanager, compose),
        lambda: stack.start_prometheus(prometheus, compose),
        lambda: stack.start_grafana(compose),
    ]
    if fluentd:
        steps.insert(2, lambda: stack.start_fluentd(fluentd, compose))
    try:
        for step in steps:
            step()
    except BaseException:
        stop(state_dir, quiet=True)
        raise
    state.save(state_dir)
    print_status(state)
    print(f"stop with: torchserve-obs stack down --state-dir {state_dir}")
    return 0


def stop(state_dir: Path, quiet: bool = False) -> List[str]:
    """Stop the processes recorded in ``state_dir`` that are still the ones we started."""
    state = load_state(state_dir)
    if state is None:
        return []
    stopped = []
    for name, started in reversed(list(state.services.items())):
        if is_running(started):
            stop_process_group(started.pid)
            stopped.append(name)
        elif not quiet:
            print(f"{name}: not running (pid {started.pid} is gone or is another process now)")
    shutil.rmtree(state.tmp_dir, ignore_errors=True)
    (state_dir / STATE_FILE).unlink()
    return stopped


def down(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    if load_state(state_dir) is None:
        raise UsageError(f"no stack state in {state_dir}: nothing to stop")
    for name in stop(state_dir):
        print(f"{name}: stopped")
    return 0


def print_status(state: State) -> bool:
    """Print each service and its URL; True if all are running."""
    all_up = True
    for name, started in state.services.items():
        running = is_running(started)
        all_up &= running
        print(
            f"{name:<13} {'running' if running else 'STOPPED':<8} {started.url:<28} log: {started.log}"
        )
    for note in state.notes:
        print(f"note: {note}")
    return all_up


def status(args: argparse.Namespace) -> int:
    state = load_state(Path(args.state_dir).resolve())
    if state is None:
        print(f"no stack started from {Path(args.state_dir).resolve()}")
        return 1
    return 0 if print_status(state) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stack",
        help="run the monitoring stack natively, without Docker",
        description="TorchServe with the example model, the exporter, Prometheus and Alertmanager "
        "(and Grafana if installed) on loopback, from the compose/ config files.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"where pids, ports, configs and logs are kept (default: {DEFAULT_STATE_DIR})",
    )

    start = actions.add_parser(
        "up",
        parents=[common],
        help="start the stack",
        description="Start TorchServe with the example model (or your .mar files), the exporter, "
        "Prometheus with the generated rules, Alertmanager and Grafana (if installed), all on "
        "127.0.0.1, in the background; `stack status` lists them, `stack down` stops them. "
        "Configs come from compose/, so the stack matches the Docker one.",
    )
    start.add_argument(
        "--compose-dir",
        default=str(REPO / "compose"),
        metavar="DIR",
        help="the compose/ folder whose configs are used (default: %(default)s)",
    )
    start.add_argument(
        "--rules-dir",
        default=str(REPO / "alerts"),
        metavar="DIR",
        help="Prometheus rule files (default: %(default)s)",
    )
    start.add_argument(
        "--dashboards-dir",
        default=str(REPO / "dashboards"),
        metavar="DIR",
        help="Grafana dashboards (default: %(default)s)",
    )
    start.add_argument(
        "--model-store",
        metavar="DIR",
        help="serve the .mar files in DIR (default: the example model, built on the fly)",
    )
    start.add_argument(
        "--free-ports",
        action="store_true",
        help="pick free ports instead of the usual ones (8080-8083, 9090, 9093, 3000)",
    )
    start.add_argument(
        "--fluentd",
        metavar="PATH",
        help="the fluentd command to ship logs with (default: $FLUENTD, else fluentd on PATH)",
    )
    start.add_argument(
        "--elasticsearch-url",
        metavar="URL",
        help="Fluentd writes to this Elasticsearch, http://HOST:PORT (default: local files)",
    )
    start.add_argument(
        "--scrape-interval",
        metavar="DURATION",
        help="Prometheus scrape and rule evaluation interval (default: prometheus.yml's)",
    )
    start.add_argument(
        "--webhook-url", metavar="URL", help="also send every alert to this webhook (default: none)"
    )
    for timing in ("group-wait", "group-interval", "repeat-interval"):
        key = timing.replace("-", "_")
        start.add_argument(
            f"--{timing}",
            metavar="DURATION",
            help=f"override Alertmanager's {key} (default: alertmanager.yml's)",
        )
    start.set_defaults(func=up)

    actions.add_parser(
        "down",
        parents=[common],
        help="stop what `up` started",
        description="Stop every process `stack up` started from this state directory.",
    ).set_defaults(func=down)
    actions.add_parser(
        "status",
        parents=[common],
        help="show what runs",
        description="List the stack's processes, whether each runs, and their URLs.",
    ).set_defaults(func=status)
