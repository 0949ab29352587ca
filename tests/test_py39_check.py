"""The Python 3.9 check must pass on a machine without a 3.9 interpreter, and still catch
what 3.9 cannot install or run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

from tests.support.paths import REPO

SCRIPT = REPO / ".ci" / "py39.py"


def _py39(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_make_py39_without_an_interpreter_checks_resolver_syntax_and_stdlib() -> None:
    """What CI runs on a machine with no Python 3.9 (Debian 12): `make test` with PYTHON39 empty."""
    result = subprocess.run(
        ["make", "--no-print-directory", "py39", "PYTHON39="],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "py39: no Python 3.9 interpreter" in out
    assert "py39: resolver ok: " in out and "torchserve 0.12.0" in out
    assert "py39: syntax ok" in out and "py39: standard library ok" in out
    assert "py39: passed (without an interpreter)" in out


def _project(tmp_path: Path, dependencies: List[str], code: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        "[project]\n"
        'name = "p"\n'
        f"dependencies = {dependencies!r}\n"
        "[project.optional-dependencies]\n"
        'extra = ["PyYAML>=6"]\n'
        "[tool.setuptools.packages.find]\n"
        'include = ["pkg*"]\n'
    )
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text(code)
    return tmp_path


def test_without_an_interpreter_a_release_that_needs_3_10_fails(tmp_path: Path) -> None:
    """python-json-logger 4.1+ requires Python >= 3.10: the 3.9 resolver finds nothing."""
    project = _project(tmp_path, ["python-json-logger>=4.1"], "x = 1\n")
    result = _py39("--python", "", "--project", str(project), "--extras", "extra")
    assert result.returncode == 1
    assert "pip finds no 3.9 install" in result.stdout and "python-json-logger" in result.stdout
    assert "py39: FAILED (without an interpreter)" in result.stdout


def test_without_an_interpreter_3_10_syntax_and_stdlib_fail(tmp_path: Path) -> None:
    code = "import tomllib\n\ndef f(x):\n    match x:\n        case 1:\n            return 2\n"
    project = _project(tmp_path, ["PyYAML>=6"], code)
    result = _py39("--python", "", "--project", str(project))
    assert result.returncode == 1, result.stdout
    assert "resolver ok" in result.stdout
    assert "not 3.9 syntax: pkg/__init__.py:" in result.stdout
    assert "Pattern matching is only supported in Python 3.10" in result.stdout
    (project / "pkg" / "__init__.py").write_text("import tomllib\n")
    result = _py39("--python", "", "--project", str(project))
    assert result.returncode == 1 and "'tomllib' module requires" in result.stdout


def test_an_interpreter_that_is_not_3_9_is_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "python3.9")
    result = _py39("--python", missing)
    assert result.returncode == 1
    assert f"PYTHON39={missing} is not a Python 3.9 interpreter (not found)" in result.stdout
    result = _py39("--python", sys.executable)
    assert result.returncode == 1
    assert f"is not a Python 3.9 interpreter ({sys.version.split()[0]})" in result.stdout
