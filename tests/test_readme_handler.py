"""The README's "Add it to a handler" steps, run as a user with an existing handler runs them.

Each block marked ``<!-- handler-test: NAME -->`` in the README is read from there and run
with bash in a fresh directory holding a user-style handler and its TorchScript model.
Only paths and ports are substituted, so that the test runs beside other TorchServes;
the user's ``config.properties`` is where those ports go, as a user's own would hold them.
The install step runs as pip's dry run (the test environment already holds what it
installs): it must resolve, and bring PyYAML.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest

from obs.services import free_port
from tests.support.paths import REPO

pytestmark = pytest.mark.torchserve

BLOCK = re.compile(r"<!-- handler-test: (\S+) -->\n```\w+\n(.*?)```", re.S)
SECTION = "## Add it to a handler"

USER_HANDLER = '''"""A user's handler, as it was before torchserve-obs: JSON rows in, a class index out."""

import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class MyHandler(BaseHandler):
    def preprocess(self, data):
        rows = []
        for item in data:
            body = item.get("data") or item.get("body")
            rows.append(json.loads(body) if isinstance(body, (bytes, bytearray)) else body)
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, output):
        return output.argmax(dim=1).tolist()
'''


def readme_blocks() -> Dict[str, str]:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    section = text[start : text.index("\n## ", start + len(SECTION))]
    return dict(BLOCK.findall(section))


def test_the_section_marks_every_step() -> None:
    assert list(readme_blocks()) == [
        "install",
        "my_handler_observed.py",
        "archive",
        "start",
        "exporter",
        "requests",
        "check",
        "stop",
    ]


class User:
    """A shell in the user's directory, with the blocks' paths and ports substituted."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.ports = {p: free_port() for p in (8080, 8081, 8082, 8083)}
        self.paths = {
            "/path/to/torchserve-obs": str(REPO),
            "/var/lib/torchserve-obs/metrics": str(home / "metrics"),
        }
        (home / "tmp").mkdir()
        self.env = {
            **os.environ,
            # The environment TorchServe runs in: the one these tests run in.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            # TorchServe refuses to start while another instance's pid file is in its temp dir.
            "TMPDIR": str(home / "tmp"),
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def substituted(self, block: str) -> str:
        for old, new in self.paths.items():
            block = block.replace(old, new)
        for old, new in self.ports.items():
            block = re.sub(rf"(?<=[: ]){old}\b", str(new), block)
        return block

    def run(self, block: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Output goes to files, not pipes: ``torchserve --start`` leaves a daemon holding them."""
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            returncode = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", self.substituted(block)],
                cwd=self.home,
                env=self.env,
                stdout=out,
                stderr=err,
                timeout=timeout,
                check=False,
            ).returncode
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(block, returncode, out.read(), err.read())

    def must_run(self, block: str, timeout: float = 300) -> str:
        result = self.run(block, timeout)
        assert result.returncode == 0, (
            f"{block}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
        return result.stdout

    def until_ok(self, block: str, deadline_s: float) -> str:
        """Run ``block`` until it succeeds: the workers load after the frontend answers."""
        deadline = time.monotonic() + deadline_s
        while True:
            result = self.run(block, timeout=60)
            if result.returncode == 0:
                return result.stdout
            if time.monotonic() > deadline:
                log = self.home / "logs" / "model_log.log"
                tail = log.read_text()[-3000:] if log.exists() else "(no model_log.log)"
                pytest.fail(f"{block}\n{result.stdout}{result.stderr}\nmodel log:\n{tail}")
            time.sleep(1.0)


def _user_project(home: Path) -> None:
    """What the user had before: a handler, its TorchScript model, an input and a config."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    torch.jit.script(model).save(str(home / "model.pt"))
    (home / "my_handler.py").write_text(USER_HANDLER)
    (home / "input.json").write_text("[1, 2, 3, 4]")


def _config(user: User) -> str:
    grpc = (free_port(), free_port())
    return (
        f"inference_address=http://127.0.0.1:{user.ports[8080]}\n"
        f"management_address=http://127.0.0.1:{user.ports[8081]}\n"
        f"metrics_address=http://127.0.0.1:{user.ports[8082]}\n"
        f"grpc_inference_port={grpc[0]}\n"
        f"grpc_management_port={grpc[1]}\n"
        # Worker sockets are /tmp/.ts.sock.PORT whatever TMPDIR says: one number per instance.
        f"initial_worker_port={free_port()}\n"
    )


@pytest.fixture
def user(tmp_path: Path) -> Iterator[User]:
    you = User(tmp_path)
    _user_project(tmp_path)
    (tmp_path / "config.properties").write_text(_config(you))
    yield you
    you.run(readme_blocks()["stop"], timeout=120)


def test_the_handler_section_works_as_written(user: User) -> None:
    blocks = readme_blocks()

    install = shlex.split(user.substituted(blocks["install"]))
    assert install[:2] == ["pip", "install"]
    report = user.home / "pip-report.json"
    dry_run = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
    user.must_run(shlex.join([*dry_run, "--quiet", "--report", str(report), *install[2:]]))
    resolved = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert {"torchserve-obs", "pyyaml", "torchserve"} <= resolved

    (user.home / "my_handler_observed.py").write_text(blocks["my_handler_observed.py"])
    user.must_run(blocks["archive"])
    assert (user.home / "model-store" / "my.mar").is_file()
    user.must_run(blocks["start"])
    exporter = subprocess.Popen(
        ["bash", "-c", f"exec {user.substituted(blocks['exporter'])}"],
        cwd=user.home,
        env=user.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        answers = user.until_ok(blocks["requests"], deadline_s=240)
        assert json.loads(answers[: answers.index("}") + 1]) == {"status": "Healthy"}
        assert re.fullmatch(r"[012]", answers[answers.index("}") + 1 :].strip()), answers

        unauthorised = user.run(
            "curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/ping"
        ).stdout
        assert unauthorised == "400", "token authorization is off: the README's step 5 is moot"

        checked = user.until_ok(blocks["check"], deadline_s=60)
        assert re.search(
            r'^tsobs_requests_total\{model_name="my",model_version="1.0",outcome="success"\} 1.0$',
            checked,
            re.M,
        ), checked
        assert re.search(r'^ts_inference_requests_total\{.*model_name="my".*\} 1.0$', checked, re.M)
        line = checked.strip().splitlines()[-1]
        record = json.loads(line.split(" MODEL_LOG - ", 1)[1])
        assert record["event"] == "request_completed" and record["outcome"] == "success"
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)
    user.must_run(blocks["stop"], timeout=120)
    _wait_until_stopped(user, deadline_s=60)


def _wait_until_stopped(user: User, deadline_s: float) -> None:
    """``torchserve --stop`` returns before the frontend has gone."""
    deadline = time.monotonic() + deadline_s
    probe = "curl -s -o /dev/null http://127.0.0.1:8082/metrics"
    while user.run(probe, timeout=30).returncode == 0:
        assert time.monotonic() < deadline, "TorchServe still answers after torchserve --stop"
        time.sleep(0.5)
