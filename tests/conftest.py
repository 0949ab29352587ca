"""Shared fixtures: the example model store and one real TorchServe with the exporter.

The TorchServe session serves ``tiny`` (the example handler with the mixin) and
``tiny_plain`` (the same handler without it), two workers each, batch size 8, metrics in
Prometheus mode, every port a free loopback port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence

import pytest

from handler_mixins.example.build import MODEL_NAME, PLAIN_MODEL_NAME, build_archives
from obs.exporter import exporter_service
from obs.services import Service, free_port, wait_until_http_ok
from obs.torchserve import LOG4J_CONFIG, TorchServe, TorchServePorts


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("model-store")
    build_archives(store, workers=2, batch_size=8, max_batch_delay_ms=20)
    return store


def start_torchserve(
    workdir: Path,
    model_store: Path,
    first_worker_port: int,
    models: Sequence[str] = (MODEL_NAME, PLAIN_MODEL_NAME),
    log_config: Optional[Path] = LOG4J_CONFIG,
    **env: str,
) -> TorchServe:
    """A TorchServe serving the example models; its workers' metrics go to ``workdir/metrics``.

    ``log_config`` None: TorchServe's stock log4j2 config instead of ours."""
    server = TorchServe(
        workdir=workdir,
        model_store=model_store,
        ports=TorchServePorts.free(first_worker_port),
        load_models=",".join(f"{name}={name}.mar" for name in models),
        env={"PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"), **env},
        log_config=log_config,
        # Tests register and unregister model versions (a rollout) through the management API.
        extra_config={"enable_model_api": "true"},
    )
    server.start()
    try:
        server.wait_ready(list(models), workers=2)
    except BaseException:
        server.stop()
        raise
    return server


class Exporter(NamedTuple):
    service: Service
    url: str

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"


def start_exporter(
    workdir: Path, metrics_dir: Path, fold_after_s: Optional[float] = None
) -> Exporter:
    port = free_port()
    service = exporter_service(
        metrics_dir, port, workdir / "exporter.out", fold_after_s=fold_after_s
    )
    service.start()
    exporter = Exporter(service, f"http://127.0.0.1:{port}")
    wait_until_http_ok(f"{exporter.url}/-/healthy", 30, service.process)
    return exporter


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[TorchServe]:
    server = start_torchserve(
        tmp_path_factory.mktemp("torchserve"), model_store, first_worker_port=9300
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def exporter(torchserve: TorchServe) -> Iterator[Exporter]:
    running = start_exporter(torchserve.workdir, torchserve.workdir / "metrics")
    yield running
    running.service.stop()
