"""``torchserve-obs``: the command-line entry point.

Each subcommand lives in its own module, which exposes ``register(subparsers)`` and sets
``func`` on its parser; this module only assembles them, so adding a command never touches
another's code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from obs import __version__
from obs.errors import UsageError

__all__ = ["UsageError", "build_parser", "main"]

COMMAND_MODULES = (
    "obs.exporter",
    "obs.generate",
    "obs.stack",
    "obs.demo",
    "obs.requestlog",
    "obs.torchserve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchserve-obs",
        description="Observability for TorchServe: metrics exporter, dashboard and alert "
        "generator, and a local monitoring stack.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"torchserve-obs {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
