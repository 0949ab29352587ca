"""A real Prometheus for the tests: loopback, a free port, 1 s scrapes and evaluations."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from obs.services import Service, free_port


def start_prometheus(
    workdir: Path, scrape_configs: List[Dict[str, Any]], rule_file: Path
) -> Tuple[Service, str]:
    """Prometheus scraping ``scrape_configs`` with ``rule_file`` loaded; its URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (Debian: apt-get install prometheus)"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rule_file)],
        "scrape_configs": scrape_configs,
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    service = Service(
        "prometheus",
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        workdir / "prometheus.log",
    ).start()
    return service, f"http://127.0.0.1:{port}"
