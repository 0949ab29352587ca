"""The cost benchmark (benchmarks/mixin_overhead.py) runs and reports what the README quotes.

Not a timed test: a tiny run checks the report's shape (every target with its median, range
and A/A control) and the parsing of TorchServe's timer lines the in-worker figures rest on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from saturation import LogTail, batch_timers, spread  # noqa: E402

TIMER_LINE = (
    "2026-11-27T12:09:25,479 [INFO ] W-9851-ob_1.0-stdout org.pytorch.serve.wlm.WorkerLifeCycle"
    " - result=[METRICS]{name}.Milliseconds:{value}|#ModelName:{model},Level:Model|#type:GAUGE"
    "|#hostname:vm,1795781365,{ids}, pattern=[METRICS]"
)


def timer(name: str, value: float, model: str, ids: str) -> str:
    return TIMER_LINE.format(name=name, value=value, model=model, ids=ids)


def test_timer_lines_pair_by_batch_and_count_its_requests() -> None:
    lines = [
        timer("HandlerTime", 0.16, "obs_b1", "a1"),
        timer("HandlerTime", 0.16, "obs_b1", "a1"),  # the frontend logs each line twice
        timer("PredictionTime", 0.21, "obs_b1", "a1"),
        timer("PredictionTime", 0.21, "obs_b1", "a1"),
        timer("HandlerTime", 1.5, "obs_b32", "b1,b2,b3"),
        timer("PredictionTime", 1.6, "obs_b32", "b1,b2,b3"),
        timer("HandlerTime", 9.0, "obs_b1", "unpaired"),
        '2026-11-27T12:09:25,480 [INFO ] W-9851-ob_1.0-stdout MODEL_LOG - {"event": "x"}',
    ]
    batches = batch_timers(lines)
    assert batches["obs_b32"] == [(pytest.approx(0.1), 3)]
    assert batches["obs_b1"] == [(pytest.approx(0.05), 1)]


def test_log_tail_follows_a_rolled_over_file(tmp_path: Path) -> None:
    log = tmp_path / "ts_log.log"
    log.write_text("before\n")
    tail = LogTail(log)
    with open(log, "a") as out:
        out.write("one\n")
    log.rename(tmp_path / "ts_log.1.log")
    log.write_text("two\n")
    assert tail.read() == ["one", "two"]
    with open(log, "a") as out:
        out.write("three\n")
    assert tail.read() == ["three"]
    tail.close()


def test_spread_is_min_median_max() -> None:
    assert spread([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0}


@pytest.mark.torchserve
def test_tiny_run_reports_every_target_beside_its_aa_control() -> None:
    assert shutil.which("wrk"), "wrk is needed (Debian package wrk; .ci/run installs it)"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "mixin_overhead.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert len(report["targets"]) == 7
    for row in report["targets"]:
        assert set(row) == {
            "measure",
            "source",
            "target",
            "median",
            "range",
            "aa_control",
            "floor",
            "met",
        }
        if row["source"] not in ("in_process", *report["saturation"]):
            assert row["median"] is None and row["met"] is None  # a phase --tiny skips
            continue
        assert isinstance(row["median"], float) and isinstance(row["met"], bool), row
        low, high = row["range"]
        assert low <= row["median"] <= high
        assert set(row["aa_control"]) == {"min", "median", "max"}
        assert set(row["floor"]) == {"min", "median", "max"}
    assert {row["source"] for row in report["targets"]} == {
        "in_process",
        "trivial_batch_1",
        "trivial_batch_32",
        "sleep_5ms_batch_1",
    }
    assert list(report["saturation"]) == ["trivial_batch_1"]
    for batch in report["in_process"]["batches"].values():
        for compared in (batch["added_us_per_request"], batch["throughput_ratio"]):
            assert set(compared) == {"mixin", "aa_control", "ts_metrics_api", "floor_writes"}
            assert all(isinstance(v["median"], float) for v in compared.values())
    phase = report["saturation"]["trivial_batch_1"]
    assert set(phase["throughput_ratio"]) == {
        "aa_control",
        "json_lines_on_stdout",
        "json_lines_to_file",
        "floor_writes",
    }
    assert phase["mean_batch_size"]["plain_a"]["median"] == 1.0
    assert all(v["median"] > 0 for v in phase["prediction_minus_handler_us_per_request"].values())
    assert phase["json_lines_in_file"] > 0
    assert report["instructions_per_batch"] is None  # --tiny skips the callgrind counts


def test_instruction_counts_show_what_the_mixin_adds(monkeypatch) -> None:
    """The callgrind harness runs the mixin for real; few calls, so only the shape is judged."""
    import instructions

    assert instructions.available(), (
        "valgrind is needed (Debian package valgrind; .ci/run installs it)"
    )
    monkeypatch.setattr(instructions, "CALLS", (5, 25))
    one = instructions.measure(instructions.REPO, (1,))["batch_1"]
    assert 0 < one["plain_per_batch"] * 10 < one["mixin_per_batch"]  # a few k vs ~200k
    assert one["added_per_request"] == one["mixin_per_batch"] - one["plain_per_batch"]
    # The floor does the same writes with less Python: above plain, below the mixin.
    assert one["plain_per_batch"] * 10 < one["floor_per_batch"] < one["mixin_per_batch"]
    assert one["floor_added_per_request"] == one["floor_per_batch"] - one["plain_per_batch"]
