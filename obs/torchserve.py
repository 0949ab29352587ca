"""Running a TorchServe 0.12 frontend on loopback ports, for the native stack, demo and tests.

Every port TorchServe opens is set explicitly (gRPC and the first worker port included),
so several instances can run side by side, and metrics are served in ``prometheus`` mode
(TorchServe's default ``log`` mode answers ``/metrics`` with an empty body).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from obs.errors import install_hint
from obs.services import Service, free_ports, http_get, wait_until_http_ok

LOOPBACK = "127.0.0.1"

LOG4J_CONFIG = Path(__file__).resolve().parent / "data" / "log4j2.xml"
"""Our log4j2 config: the mixin's JSON lines written once, raw, to ``logs/model_log.jsonl``
(TorchServe's stock config writes each worker line to the console, model_log.log and
ts_log.log). Users add it with ``vmargs=-Dlog4j.configurationFile=file://<this path>``."""


@dataclass(frozen=True)
class TorchServePorts:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int
    first_worker: int

    @classmethod
    def free(cls, first_worker: int = 9000) -> TorchServePorts:
        return cls(*free_ports(5), first_worker)

    @property
    def inference_url(self) -> str:
        return f"http://{LOOPBACK}:{self.inference}"

    @property
    def management_url(self) -> str:
        return f"http://{LOOPBACK}:{self.management}"


def config_properties(
    ports: TorchServePorts,
    model_store: Path,
    load_models: str,
    extra: Optional[Mapping[str, str]] = None,
) -> str:
    """The text of a config.properties for a loopback TorchServe with Prometheus metrics."""
    properties: Dict[str, str] = {
        "inference_address": f"http://{LOOPBACK}:{ports.inference}",
        "management_address": f"http://{LOOPBACK}:{ports.management}",
        "metrics_address": f"http://{LOOPBACK}:{ports.metrics}",
        "grpc_inference_address": LOOPBACK,
        "grpc_management_address": LOOPBACK,
        "grpc_inference_port": str(ports.grpc_inference),
        "grpc_management_port": str(ports.grpc_management),
        "initial_worker_port": str(ports.first_worker),
        "metrics_mode": "prometheus",
        "model_store": str(model_store),
        "load_models": load_models,
        "disable_token_authorization": "true",
        "install_py_dep_per_model": "false",
    }
    properties.update(extra or {})
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def torchserve_binary() -> str:
    """The ``torchserve`` script beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "torchserve"
    found = str(beside) if beside.exists() else shutil.which("torchserve")
    if not found:
        raise FileNotFoundError(f"torchserve is not installed: {install_hint('torchserve')}")
    return found


@dataclass
class TorchServe:
    """A TorchServe frontend (and its workers) started in ``workdir``."""

    workdir: Path
    model_store: Path
    ports: TorchServePorts
    load_models: str = "all"
    env: Mapping[str, str] = field(default_factory=dict)
    extra_config: Mapping[str, str] = field(default_factory=dict)
    log_config: Optional[Path] = LOG4J_CONFIG
    """The log4j2 config; None keeps TorchServe's stock one."""
    service: Optional[Service] = None

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def model_log(self) -> Path:
        """Where worker stdout lines land, prefixed by log4j (with our config, all but JSON)."""
        return self.log_dir / "model_log.log"

    @property
    def json_log(self) -> Path:
        """Where the worker's JSON lines land: raw in model_log.jsonl with our log4j config."""
        return self.log_dir / "model_log.jsonl" if self.log_config else self.model_log

    def start(self) -> TorchServe:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.properties"
        config.write_text(
            config_properties(self.ports, self.model_store, self.load_models, self.extra_config)
        )
        # TorchServe keeps its pid file in the temp dir and refuses to start while another
        # instance's is there: a temp dir of its own lets instances run side by side.
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
            "TMPDIR": str(tmp),
            **self.env,
        }
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        argv = [
            torchserve_binary(),
            "--start",
            "--foreground",
            "--ncs",
            "--model-store",
            str(self.model_store),
            "--ts-config",
            str(config),
        ]
        if self.log_config is not None:
            argv += ["--log-config", str(self.log_config)]
        self.service = Service(
            "torchserve", argv, self.workdir / "torchserve.out", env=env, cwd=self.workdir
        )
        self.service.start()
        return self

    def wait_ready(self, models: List[str], workers: int, timeout: float = 180.0) -> None:
        """Wait until /ping answers and each model has ``workers`` workers in READY state."""
        assert self.service is not None and self.service.process is not None
        wait_until_http_ok(f"{self.ports.inference_url}/ping", timeout, self.service.process)
        deadline = time.monotonic() + timeout
        for model in models:
            while self.ready_workers(model) < workers:
                if time.monotonic() > deadline or not self.service.running():
                    raise TimeoutError(
                        f"model {model} has no {workers} ready workers; log tail:\n{self.service.log_tail()}"
                    )
                time.sleep(0.5)

    def describe(self, model: str) -> List[dict]:
        """The management API's description of a model (one entry per version)."""
        return list(json.loads(http_get(f"{self.ports.management_url}/models/{model}")))

    def ready_workers(self, model: str) -> int:
        try:
            description = self.describe(model)
        except (urllib.error.URLError, OSError, ValueError):
            return 0
        return sum(1 for w in description[0].get("workers", []) if w.get("status") == "READY")

    def worker_pids(self, model: str) -> List[int]:
        """PIDs of a model's live workers, as the management API reports them."""
        return [
            int(w["pid"])
            for w in self.describe(model)[0].get("workers", [])
            if w.get("pid", -1) > 0
        ]

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "log4j-config",
        help="print the path of our log4j2 config for TorchServe",
        description="Print the path of the log4j2 config that writes the mixin's JSON lines "
        "once, raw, to logs/model_log.jsonl. Use it in config.properties: "
        "vmargs=-Dlog4j.configurationFile=file://PATH, or torchserve --log-config PATH.",
    )
    parser.set_defaults(func=lambda _args: print(LOG4J_CONFIG))
