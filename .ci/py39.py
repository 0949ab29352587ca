"""The Python 3.9 check, with or without a 3.9 interpreter on the machine.

Python 3.9 is what the official TorchServe 0.12 images run, so the package must install and
work there. With a 3.9 interpreter, the package is installed into a fresh 3.9 venv (pip's real
resolver refuses any release whose Requires-Python excludes 3.9) and the tests that need
neither TorchServe nor torch run there. Without one (Debian 12 ships none), what matters is
still checked: pip's resolver, told it installs for 3.9, must find wheels of every dependency;
every Python file must parse as 3.9 syntax; and vermin must find no use of a module,
function or argument newer than 3.9 in the code the 3.9 tests cover.

    python .ci/py39.py --python "$PYTHON39" --extras torchserve,generate --tests tests/test_x.py
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List, Sequence

import tomllib

TARGET = (3, 9)
SKIPPED_DIRS = {"build", "dist", "node_modules", "__pycache__", "work-dirs"}
"""Directories never holding our code; hidden ones (venvs, the demo's) too, but ``.ci``."""


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="", help="a Python 3.9 interpreter (empty: none)")
    parser.add_argument("--project", type=Path, default=Path("."), help="the project root")
    parser.add_argument("--extras", default="", help="comma-separated extras that must resolve")
    parser.add_argument("--tests", nargs="*", default=[], help="test files that run on 3.9")
    args = parser.parse_args(argv)
    project = args.project.resolve()
    if args.python:
        return with_interpreter(args.python, project, args.tests)
    print(
        "py39: no Python 3.9 interpreter (set PYTHON39=/path/to/python3.9 to run the 3.9 "
        "tests); checking the 3.9 resolver, syntax and standard-library use instead",
        flush=True,
    )
    ok = resolves_for_39(project, [e for e in args.extras.split(",") if e])
    ok = parses_as_39(project) and ok
    ok = vermin_finds_nothing_newer(project, args.tests) and ok
    print(f"py39: {'passed' if ok else 'FAILED'} (without an interpreter)", flush=True)
    return 0 if ok else 1


def with_interpreter(python: str, project: Path, tests: Sequence[str]) -> int:
    """Install the package into a fresh 3.9 venv and run ``tests`` there."""
    found = shutil.which(python)
    version = _version(found) if found else ""
    if version[:4] != "3.9.":
        print(f"py39: PYTHON39={python} is not a Python 3.9 interpreter ({version or 'not found'})")
        return 1
    print(
        f"py39: Python {version} at {found}: installing the package and running {len(tests)} test files",
        flush=True,
    )
    venv = project / ".venv39"
    shutil.rmtree(venv, ignore_errors=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    steps = [
        [found, "-m", "venv", str(venv)],
        [*pip, "install", "--progress-bar", "off", "--upgrade", "pip"],
        [*pip, "install", "--progress-bar", "off", str(project), "pytest>=7"],
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
    ]
    for step in steps:
        if subprocess.run(step, cwd=project, check=False).returncode != 0:
            print(f"py39: FAILED: {' '.join(step)}")
            return 1
    return 0


def _version(python: str) -> str:
    result = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def requirements(project: Path, extras: Sequence[str]) -> List[str]:
    """The project's dependencies, those of ``extras`` and pytest (the 3.9 tests need it)."""
    declared = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = declared.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"py39: pyproject.toml declares no extra {unknown}")
    wanted = list(declared.get("dependencies", []))
    for extra in extras:
        wanted += [r for r in optional[extra] if r not in wanted]
    return [*wanted, "pytest>=7"]


def resolves_for_39(project: Path, extras: Sequence[str]) -> bool:
    """Whether pip, resolving for 3.9, finds a wheel of every dependency."""
    wanted = requirements(project, extras)
    print(f"py39: resolving {len(wanted)} requirements for Python 3.9 (wheels only)", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        result = subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                "--quiet", "--python-version", ".".join(map(str, TARGET)),
                "--only-binary=:all:", "--report", str(report), *wanted,
            ],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            print(f"py39: pip finds no 3.9 install:\n{result.stderr.strip()}", flush=True)
            return False
        chosen = json.loads(report.read_text())["install"]
    names = ", ".join(f"{i['metadata']['name']} {i['metadata']['version']}" for i in chosen)
    print(f"py39: resolver ok: {names}", flush=True)
    return True


def python_files(project: Path) -> Iterator[Path]:
    for path in sorted(project.rglob("*.py")):
        parts = path.relative_to(project).parts[:-1]
        if not any(p in SKIPPED_DIRS or (p.startswith(".") and p != ".ci") for p in parts):
            yield path


def parses_as_39(project: Path) -> bool:
    """Whether every Python file parses with 3.9's grammar."""
    problems = []
    files = list(python_files(project))
    for path in files:
        try:
            ast.parse(path.read_bytes(), str(path), feature_version=TARGET)
        except SyntaxError as err:
            problems.append(f"{path.relative_to(project)}:{err.lineno}: {err.msg}")
    for problem in problems:
        print(f"py39: not 3.9 syntax: {problem}", flush=True)
    if not problems:
        print(f"py39: syntax ok: {len(files)} files parse as Python 3.9", flush=True)
    return not problems


def vermin_finds_nothing_newer(project: Path, tests: Sequence[str]) -> bool:
    """Whether the installed package's code and the 3.9 tests use nothing newer than 3.9."""
    include = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = include["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({p.rstrip("*.") for p in patterns if (project / p.rstrip("*.")).is_dir()})
    vermin = Path(sys.executable).parent / "vermin"
    target = f"--target={'.'.join(map(str, TARGET))}-"
    result = subprocess.run(
        [str(vermin), target, "--violations", "--no-tips", "--quiet", *packages, *tests],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        print(f"py39: vermin finds code newer than 3.9:\n{result.stdout.strip()}", flush=True)
        return False
    print(
        f"py39: standard library ok: vermin finds nothing newer than 3.9 in {packages} and the 3.9 tests",
        flush=True,
    )
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
