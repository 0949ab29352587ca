"""The exporter aggregates workers exactly, survives restarts, and stays on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import urllib.error
from pathlib import Path
from typing import Iterator

import pytest

from obs.exporter import HEALTH_PATH, MetricsSource, exporter_service
from obs.services import free_port, http_get, wait_until_http_ok
from tests.support.traffic import parse_samples, total

WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from obs.metrics import ModelInstruments, use_multiprocess_dir
    use_multiprocess_dir(Path(sys.argv[1]), sys.argv[2])
    version = sys.argv[4] if len(sys.argv) > 4 else "1.0"
    metrics = ModelInstruments("m", version)
    from obs import ledger
    book = ledger.open_ledger(Path(sys.argv[1]), sys.argv[2], lambda batches: None)
    book.finish("b", ledger.model_key("m", version), [int(sys.argv[3]), 0, 0])
    metrics.stage_seconds["handle"].observe(0.02)
    if len(sys.argv) > 4:  # a worker that loaded its model
        book.start(ledger.model_key("m", version))
        book.loaded(ledger.model_key("m", version), True)
        metrics.set_info("h.H", "2.13.0", "0.12.0", "3.11.7")
    if len(sys.argv) > 5:  # stays alive until its stdin closes
        print("serving", flush=True)
        sys.stdin.read()
    """
)


def run_worker(directory: Path, identity: str, requests: int, version: str = "") -> None:
    """A separate process writing metrics, as one TorchServe worker does, then exiting."""
    argv = [sys.executable, "-c", WORKER, str(directory), identity, str(requests)]
    subprocess.run(argv + ([version] if version else []), check=True)


@contextlib.contextmanager
def live_worker(directory: Path, identity: str, requests: int, version: str) -> Iterator[None]:
    """A worker process that has loaded model ``m`` at ``version`` and stays alive."""
    argv = [sys.executable, "-c", WORKER, str(directory), identity, str(requests), version, "stay"]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline() == b"serving\n"
        yield
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def requests_total(directory: Path) -> float:
    return total(
        parse_samples(MetricsSource(directory).render("")[0].decode()), "tsobs_requests_total"
    )


def test_workers_add_up_and_a_restarted_worker_continues(tmp_path: Path) -> None:
    run_worker(tmp_path, "w9000", 5)
    run_worker(tmp_path, "w9001", 7)
    assert requests_total(tmp_path) == 12
    files = sorted(p.name for p in tmp_path.iterdir())
    for _ in range(3):  # the worker on port 9000 dies and comes back with a new PID
        run_worker(tmp_path, "w9000", 1)
    assert requests_total(tmp_path) == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    samples = parse_samples(MetricsSource(tmp_path).render("")[0].decode())
    assert total(samples, "tsobs_stage_duration_seconds_count", stage="handle") == 5
    assert total(samples, "tsobs_exporter_metrics_files") == len(files)


def listening_addresses(port: int) -> list:
    """IPv4 addresses with a socket listening on ``port``, from the kernel's table."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
            found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_http_endpoints_on_loopback(tmp_path: Path) -> None:
    run_worker(tmp_path / "metrics", "w9000", 3)
    port = free_port()
    service = exporter_service(tmp_path / "metrics", port, tmp_path / "exporter.out").start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_http_ok(base + HEALTH_PATH, 30, service.process)
        assert http_get(base + HEALTH_PATH) == b"OK\n"
        assert (
            total(parse_samples(http_get(base + "/metrics").decode()), "tsobs_requests_total") == 3
        )
        openmetrics = http_get(
            base + "/metrics", headers={"Accept": "application/openmetrics-text"}
        )
        assert openmetrics.endswith(b"# EOF\n") and openmetrics.count(b"# EOF") == 1
        with pytest.raises(urllib.error.HTTPError) as missing:
            http_get(base + "/nothing")
        assert missing.value.code == 404
        assert listening_addresses(port) == ["127.0.0.1"]
    finally:
        service.stop()


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "obs.cli",
                "exporter",
                "--port",
                str(port),
                "--metrics-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert (
        f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
    )


def model_info_versions(directory: Path) -> set:
    samples = parse_samples(MetricsSource(directory).render("")[0].decode())
    return {
        dict(labels)["model_version"] for (name, labels) in samples if name == "tsobs_model_info"
    }


def test_gauges_of_dead_workers_drop_out_and_live_workers_are_counted(tmp_path: Path) -> None:
    run_worker(tmp_path, "w9000", 2, version="1.0")  # retired after a rollout: it exited
    with live_worker(tmp_path, "w9002", 3, "2.0"), live_worker(tmp_path, "w9003", 4, "2.0"):
        samples = parse_samples(MetricsSource(tmp_path).render("")[0].decode())
        assert model_info_versions(tmp_path) == {"2.0"}
        assert total(samples, "tsobs_workers", model_name="m", model_version="2.0") == 2
        assert total(samples, "tsobs_workers", model_version="1.0") == 0
        assert total(samples, "tsobs_requests_total") == 9  # counters keep the retired worker's
    # the moment a worker process is gone its gauges are, whatever way it ended
    assert model_info_versions(tmp_path) == set()


def test_a_restart_reusing_the_directory_resurrects_no_gauge(tmp_path: Path) -> None:
    """TorchServe restarted with the same directory: port 9000 now serves version 2.0."""
    with live_worker(tmp_path, "w9000", 5, "1.0"):
        assert model_info_versions(tmp_path) == {"1.0"}
    with live_worker(tmp_path, "w9000", 1, "2.0"):
        assert model_info_versions(tmp_path) == {"2.0"}
        samples = parse_samples(MetricsSource(tmp_path).render("")[0].decode())
        assert total(samples, "tsobs_requests_total") == 6  # counters continue


def test_a_bad_directory_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "obs.cli",
            "exporter",
            "--metrics-dir",
            str(tmp_path / "a-file" / "m"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "a-file" in result.stderr


def test_health_says_what_is_wrong_when_the_directory_goes(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    run_worker(directory, "w9000", 1)
    source = MetricsSource(directory)
    assert source.problem() is None
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    assert "does not exist" in source.problem()
    body = source.render("")[0].decode()  # still answers, with its own gauges
    assert "tsobs_exporter_metrics_files 0.0" in body


FORKING_WORKER = textwrap.dedent(
    """
    import os, signal, sys, threading
    from pathlib import Path
    from prometheus_client import Counter
    from obs.metrics import use_multiprocess_dir
    use_multiprocess_dir(Path(sys.argv[1]), "w9000")
    counter = Counter("user_items_total", "Items a handler counted.", registry=None)
    counter.inc()
    held = threading.Event()
    def hold_the_lock():  # another thread writing metrics while the process forks
        while not held.is_set():
            counter.inc(0)
    threading.Thread(target=hold_the_lock, daemon=True).start()
    child = os.fork()
    if child == 0:
        signal.alarm(30)  # a child deadlocked on an inherited lock must not outlive the test
    for _ in range(1000):  # parent and child write at the same time
        counter.inc()
    if child == 0:
        os._exit(0)
    held.set()
    os.waitpid(child, 0)
    """
)


def test_a_forked_child_writes_its_own_files_never_its_parents(tmp_path: Path) -> None:
    """A DataLoader worker or multiprocessing child forked from a worker: its updates land
    in files of its own (``w9000-c<pid>``), the parent loses none, and the total is exact."""
    subprocess.run([sys.executable, "-c", FORKING_WORKER, str(tmp_path)], check=True, timeout=60)
    samples = parse_samples(MetricsSource(tmp_path).render("")[0].decode())
    assert total(samples, "user_items_total") == 2001
    names = {p.name for p in tmp_path.glob("counter_*.db")} - {"counter_w9000.db"}
    (child,) = names
    assert child.startswith("counter_w9000-c")


def test_retired_workers_fold_into_the_archive_and_the_directory_stays_small(
    tmp_path: Path,
) -> None:
    """Each scale-up gives new ports: their files are folded once the workers are gone,
    totals continue, and the file count does not grow with the cycles."""
    source = MetricsSource(tmp_path, fold_after_s=0)
    counts = []
    for cycle in range(4):
        for index in range(3):
            run_worker(tmp_path, f"w{9000 + 3 * cycle + index}", 2, version="1.0")
        samples = parse_samples(source.render("")[0].decode())
        counts.append(sorted(p.name for p in tmp_path.iterdir()))
        assert total(samples, "tsobs_requests_total") == 6 * (cycle + 1)
        assert total(samples, "tsobs_worker_starts_total") == 3 * (cycle + 1)
        handle = {"stage": "handle"}
        assert total(samples, "tsobs_stage_duration_seconds_count", **handle) == 3 * (cycle + 1)
        assert total(samples, "tsobs_stage_duration_seconds_bucket", le="+Inf") == 3 * (cycle + 1)
    assert counts[0] == counts[-1] == ["archive.json"]


def test_a_fold_interrupted_before_removing_files_is_not_counted_twice(tmp_path: Path) -> None:
    run_worker(tmp_path, "w9000", 5, version="1.0")
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    source = MetricsSource(tmp_path, fold_after_s=0)
    samples = parse_samples(source.render("")[0].decode())
    assert total(samples, "tsobs_requests_total") == 5
    assert sorted(os.listdir(tmp_path)) == ["archive.json"]
    for name, data in kept.items():  # as if the exporter died after writing the archive
        (tmp_path / name).write_bytes(data)
    samples = parse_samples(source.render("")[0].decode())
    assert total(samples, "tsobs_requests_total") == 5
    assert sorted(os.listdir(tmp_path)) == ["archive.json"]
