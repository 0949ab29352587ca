"""`torchserve-obs demo` as a user runs it, twice in a row in one directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.torchserve


def _demo(workdir: Path, requests: int) -> str:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "torchserve-obs"),
            "demo",
            "--workdir",
            str(workdir),
            "--requests",
            str(requests),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _sample_lines(output: str) -> List[str]:
    after = output.split("a few of them, as written there:\n", 1)[1]
    return after.split("\n\n", 1)[0].splitlines()


def test_a_second_run_starts_clean_and_ends_with_next_steps(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    _demo(workdir, 15)
    output = _demo(workdir, 12)

    # Which statuses come back depends on batching (a request batched with the failing one
    # gets its 503 too); the failing one always does.
    sent = re.search(r"sent 12 requests; answers with status \[([\d, ]+)\]", output)
    assert sent and "503" in sent.group(1).split(", "), output
    counts = re.findall(r"^tsobs_requests_total\{.*\} (\d+)\.0$", output, re.M)
    assert sum(int(c) for c in counts) == 12, output
    assert re.search(r"^tsobs_batch_size_sum\{.*\} 12\.0$", output, re.M), output

    named = re.search(r"^\d+ JSON log lines in (\S+); a few of them", output, re.M)
    assert named, output
    log_path = Path(named.group(1))
    assert log_path.is_relative_to(workdir), log_path
    log = log_path.read_text()
    samples = _sample_lines(output)
    # One sample each: no client ID, traced, client error (unless batching put every
    # malformed request in the failing batch, which answers them 503), the failed batch.
    statuses = sent.group(1).split(", ")
    assert len(samples) == (4 if "400" in statuses else 3), (statuses, samples)
    for line in samples:
        whole, _, cut = line.partition(" [... ")
        assert whole in log and (not cut or re.fullmatch(r"\d+ more characters\]", cut)), line
    assert log.count('"event":"request_completed"') == 12

    assert re.search(r"^latency +p50 +p90 +p99$", output, re.M)
    assert re.search(r"^client +[\d.]+ms +[\d.]+ms +[\d.]+ms", output, re.M)
    assert re.search(r"^handle +[\d.]+ms +[\d.]+ms +[\d.]+ms", output, re.M)

    next_steps = output.rsplit("TorchServe and the exporter are stopped", 1)[1]
    assert "demo --keep-running" in next_steps and "make stack-up" in next_steps
    assert "http://127.0.0.1" not in next_steps
    for noise in ("NumPy", "Editable install", "Traceback"):
        assert noise not in output.replace(samples[-1], ""), noise
