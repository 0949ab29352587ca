"""Scale events in a real TorchServe: every new worker gets a new port, and the metrics
directory, the scrape time and the counters must not notice how many there were."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest

from handler_mixins.example.build import MODEL_NAME
from obs.services import http_get
from obs.torchserve import TorchServe
from obs.traffic import json_request, send_all
from tests.conftest import start_exporter, start_torchserve
from tests.support.traffic import parse_samples, total, wait_for

pytestmark = pytest.mark.torchserve

CYCLES = int(os.environ.get("TSOBS_SCALE_CYCLES", "10"))
"""1 -> 4 -> 1 workers this many times. The README's figures are from 100
(TSOBS_SCALE_CYCLES=100, 11 minutes here); each cycle starts three workers."""


def scale(server: TorchServe, workers: int) -> None:
    url = f"{server.ports.management_url}/models/{MODEL_NAME}?min_worker={workers}&max_worker={workers}&synchronous=true"
    urllib.request.urlopen(urllib.request.Request(url, method="PUT"), timeout=300).read()
    wait_for(
        lambda: server.ready_workers(MODEL_NAME) == workers, timeout=300, what=f"{workers} workers"
    )


def test_scale_cycles_leave_files_and_scrape_time_flat(tmp_path: Path, model_store: Path) -> None:
    server = start_torchserve(tmp_path, model_store, 9700, models=(MODEL_NAME,))
    exporter = start_exporter(tmp_path, tmp_path / "metrics", fold_after_s=1)
    try:
        scale(server, 1)
        sent = 0
        figures = []
        started = time.monotonic()
        for cycle in range(CYCLES):
            scale(server, 4)
            responses = send_all(
                server.ports.inference_url, MODEL_NAME, [json_request([1, 2, 3, 4])] * 8, 8
            )
            assert all(r.status == 200 for r in responses)
            sent += len(responses)
            scale(server, 1)
            time.sleep(1.2)  # past the fold delay
            http_get(exporter.metrics_url, timeout=60)  # folds the retired workers
            samples = parse_samples(http_get(exporter.metrics_url, timeout=60).decode())
            counted = total(samples, "tsobs_requests_total", model_name=MODEL_NAME)
            assert counted == sent, f"cycle {cycle}: counted {counted}, sent {sent}"
            figures.append(
                (
                    total(samples, "tsobs_exporter_metrics_files"),
                    total(samples, "tsobs_exporter_scrape_duration_seconds"),
                )
            )
            print(
                f"cycle {cycle + 1}: sent {sent} counted {counted:.0f}; files, scrape s: {figures[-1]}"
            )
        files = [f for f, _ in figures]
        seconds = [s for _, s in figures]
        print(
            f"\n{CYCLES} cycles in {time.monotonic() - started:.0f} s; files first/last/max "
            f"{files[0]:.0f}/{files[-1]:.0f}/{max(files):.0f}; scrape ms first/last/max "
            f"{seconds[0] * 1000:.1f}/{seconds[-1] * 1000:.1f}/{max(seconds) * 1000:.1f}"
        )
        assert max(files) == files[0]
        assert seconds[-1] < 3 * seconds[0] + 0.01
    finally:
        exporter.service.stop()
        server.stop()
