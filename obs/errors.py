"""Errors shared by the subcommands."""

from __future__ import annotations

import re
import shlex
from importlib import metadata
from typing import List

DISTRIBUTION = "torchserve-obs"


class UsageError(Exception):
    """A problem the user can fix (bad config, missing binary): printed without a traceback."""


def install_hint(extra: str) -> str:
    """The pip command that installs an optional extra's requirements, wherever we run from.

    ``pip install 'torchserve-obs[extra]'`` works only where pip can find torchserve-obs (an
    index, or the installed copy), so the hint names the extra's requirements themselves,
    read from the installed metadata; run from a checkout that was never installed, it
    names the checkout's extra instead.
    """
    requirements = extra_requirements(extra)
    if not requirements:
        return f"pip install '.[{extra}]' (in the torchserve-obs checkout)"
    return "pip install " + " ".join(shlex.quote(r) for r in requirements)


def extra_requirements(extra: str) -> List[str]:
    """The requirements the installed torchserve-obs declares for ``extra`` (none if absent)."""
    try:
        declared = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    marker = re.compile(rf"""\bextra\s*==\s*["']{re.escape(extra)}["']""")
    return [r.split(";")[0].strip() for r in declared if ";" in r and marker.search(r)]
