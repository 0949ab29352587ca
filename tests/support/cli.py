"""Running ``torchserve-obs`` as a user would, in a subprocess of this interpreter."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``torchserve-obs ARGS`` with its output captured; the caller checks the return code."""
    return subprocess.run(
        [sys.executable, "-m", "obs.cli", *args], capture_output=True, text=True, timeout=300
    )
