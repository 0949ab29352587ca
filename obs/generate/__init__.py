"""``torchserve-obs generate``: Grafana dashboards and Prometheus rules from one config.

Only the argument parser lives here; grafanalib and PyYAML are imported when the command
runs, so ``torchserve-obs --help`` works without the ``generate`` extra installed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="write Grafana dashboards and Prometheus alert/recording rules",
        description="Write Grafana dashboards, Prometheus rules and Kubernetes manifests "
        "(TorchServe with the exporter, PodMonitors, PrometheusRule, dashboard ConfigMap, "
        "KServe, log collector) from one config.",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML config (default: built-in defaults)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="directory to write dashboards/, alerts/ and kubernetes/ into",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obs.errors import UsageError, install_hint
    from obs.generate.config import ConfigError

    try:
        from obs.generate import config, writers

        files = writers.build(config.load(args.config))
    except ConfigError as err:
        raise UsageError(str(err)) from err
    except ImportError as err:
        raise UsageError(f"{err.name} is missing: {install_hint('generate')}") from err
    writers.write(args.out, files)
    for rel in files:
        print(args.out / rel)
    return 0
