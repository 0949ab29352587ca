"""Starting, probing and stopping local server processes.

Shared by the native stack runner, the demo and the tests, so every server (TorchServe,
the exporter, Prometheus, Alertmanager) is started, awaited and stopped the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the kernel picks it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> List[int]:
    """``count`` distinct free ports for one server: all are held until all are picked, since
    the kernel may hand a just-released port out again (seen: gRPC given the inference port)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def http_get(url: str, timeout: float = 5.0, headers: Optional[Dict[str, str]] = None) -> bytes:
    """Body of a GET that must answer 2xx; raises ``urllib.error.URLError`` otherwise."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return bytes(response.read())


def wait_until_http_ok(
    url: str,
    timeout: float,
    process: Optional[subprocess.Popen] = None,
    headers: Optional[Dict[str, str]] = None,
) -> None:
    """Poll ``url`` until it answers 2xx; fail early if ``process`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            http_get(url, timeout=2.0, headers=headers)
            return
        except (urllib.error.URLError, OSError) as err:
            last_error = err
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s (last error: {last_error})")


@dataclass
class Service:
    """A server process started by us, its output going to ``log_path``."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Optional[Dict[str, str]] = None
    cwd: Optional[Path] = None
    process: Optional[subprocess.Popen] = field(default=None, init=False)

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            list(self.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout``."""
        if self.process is None:
            return
        stop_process_group(self.process.pid, timeout)
        try:
            self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_process_group(pid: int, timeout: float = 15.0) -> None:
    """Stop a process started with ``start_new_session`` and every child it left behind."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            _reap(pid)
            time.sleep(0.1)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def child_pids(parent_pid: int) -> List[int]:
    """Direct children of a process, from /proc (Linux)."""
    children: List[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent PID; the command name (field 2) may contain spaces.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent_pid:
            children.append(int(entry.name))
    return children
