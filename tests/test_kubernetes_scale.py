"""The scale benchmark, small: a real Prometheus loaded with a synthetic fleet from real code.

The full run (500 pods x 5 models x 4 workers) is for the closing note and docs/kubernetes.md;
this one keeps the benchmark working and checks its series accounting against the metric
definitions it is derived from.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from obs.signals import LATENCY_BUCKETS, Outcome, Stage
from tests.support.paths import REPO

pytestmark = pytest.mark.prometheus


def test_small_fleet_series_rules_and_dashboard_queries() -> None:
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        pytest.skip("prometheus and promtool are needed (Debian: apt-get install prometheus)")
    pytest.importorskip("ts", reason="TorchServe's metrics.yaml is read from the installed package")
    argv = [sys.executable, str(REPO / "benchmarks" / "kubernetes_scale.py")]
    argv += ["--pods", "3", "--models", "2", "--workers", "3", "--history", "10m"]
    argv += ["--repeat", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    mixin = result["series"]["mixin"]
    # The stage histogram alone: every timed stage, its buckets, +Inf, _sum and _count.
    assert mixin["per_model"] > len(Stage.TIMED) * (len(LATENCY_BUCKETS) + 3) + len(Outcome.ALL)
    assert mixin["per_worker"] == 0, "CPU workers add no series: the exporter sums them"
    torchserve = result["series"]["torchserve"]
    assert torchserve["per_worker"] == 1  # WorkerLoadTime{WorkerName}
    assert result["series"]["per_pod"] == mixin["per_pod"] + torchserve["per_pod"]
    assert result["series"]["fleet"] == 3 * result["series"]["per_pod"]
    assert mixin["per_pod"] == 2 * mixin["per_model"] + mixin["per_pod_fixed"]
    assert result["backfill"]["samples"] == result["series"]["fleet"] * 21  # 10m every 30s

    rules = result["rules"]
    assert rules and all(group["seconds"] < float("inf") for group in rules.values())
    recorded = sum(group["recorded_series"] for group in rules.values())
    assert recorded > 0, "the recording rules found the fleet's series"
    assert {"Overview", "Model"} <= set(result["dashboards"])
    assert all(board["queries"] > 10 for board in result["dashboards"].values())
    assert all(board["timeouts"] == 0 for board in result["dashboards"].values())
