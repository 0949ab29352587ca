"""``torchserve-obs stack``: the monitoring stack without Docker (native runner)."""

from __future__ import annotations

import argparse

from obs.cli import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("stack", help="run the monitoring stack natively (no Docker)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    for name in ("up", "down", "status"):
        actions.add_parser(name).set_defaults(func=_not_ready)


def _not_ready(args: argparse.Namespace) -> int:
    raise UsageError("the native stack runner is being written; use compose/ for now")
