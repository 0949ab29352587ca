"""GPU check: the mixin's GPU memory gauges, through the exporter, against torch's allocator.

Runs where a CUDA device is (this project's CI has none). The example handler with the mixin
is loaded on ``cuda:0`` through TorchServe's own Python backend, the exporter is started as a
user starts it, and the check asserts that

* the per-worker and per-device gauges read what torch reports for the device;
* an idle worker's gauges follow the device: memory taken after the last batch shows up
  within a few sampling intervals, with no batch run (sampled on the interval, not per batch).

Prints one JSON object; exits 1 if a check fails. The mixin's cost beside a 5 ms CUDA step
is measured by ``gpu_step.py``.

    python3 benchmarks/gpu_check.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE_INTERVAL_S = 1
HELD_BYTES = 256 << 20


def model_dir(root: Path) -> Path:
    """The example archive unpacked, as TorchServe extracts it, without torch-model-archiver."""
    import torch

    from handler_mixins.example.build import HERE, MODEL_NAME, MODEL_VERSION

    directory = root / MODEL_NAME
    (directory / "MAR-INF").mkdir(parents=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    torch.jit.script(model.eval()).save(str(directory / "model.pt"))
    for name in ("tiny_classifier.py", "tiny_classifier_observed.py"):
        (directory / name).write_text((HERE / name).read_text())
    manifest = {
        "model": {
            "modelName": MODEL_NAME,
            "modelVersion": MODEL_VERSION,
            "serializedFile": "model.pt",
            "handler": "tiny_classifier_observed.py",
        }
    }
    (directory / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    return directory


def load_on_gpu(directory: Path) -> Any:
    from ts.model_loader import TsModelLoader

    from handler_mixins.testing import metrics_cache

    sys.path.insert(0, str(directory))
    service = TsModelLoader().load(
        model_name=directory.name,
        model_dir=str(directory),
        handler="tiny_classifier_observed.py",
        gpu_id=0,
        batch_size=8,
        metrics_cache=metrics_cache(),
    )
    service.set_cl_socket(None)
    return service


def scrape(url: str) -> Dict[str, float]:
    """``{series with labels: value}`` of the tsobs_gpu_* series the exporter serves."""
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    values = {}
    for line in body.splitlines():
        if line.startswith("tsobs_gpu_"):
            series, value = line.rsplit(" ", 1)
            values[series] = float(value)
    return values


def gauge(values: Dict[str, float], name: str) -> float:
    found = [v for k, v in values.items() if k.startswith(name + "{") and 'device="cuda:0"' in k]
    if len(found) != 1:
        raise AssertionError(f"expected one {name} series for cuda:0, got {sorted(values)}")
    return found[0]


def wait_for_gauge(url: str, name: str, expected: float, deadline_s: float) -> float:
    """The gauge's value once it equals ``expected``, else its last value at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            value = gauge(scrape(url), name)
        except (AssertionError, OSError):
            value = -1.0
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="tsobs-gpu-"))
    os.environ.update(
        PROMETHEUS_MULTIPROC_DIR=str(scratch / "metrics"),
        TSOBS_GPU_SAMPLE_INTERVAL_S=str(SAMPLE_INTERVAL_S),
        TSOBS_LOG_FILE=str(scratch / "log.jsonl"),
    )
    from handler_mixins.testing import wire_request

    service = load_on_gpu(model_dir(scratch))
    port = 18083
    exporter = subprocess.Popen(
        [sys.executable, "-m", "obs.cli", "exporter", "--port", str(port)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    result: Dict[str, Any] = {"device": torch.cuda.get_device_name(0)}
    failures: List[str] = []
    try:
        request = wire_request("r", b"[0.1, 0.2, 0.3, 0.4]", {"X-Request-ID": "gpu-check"})
        for _ in range(20):
            service.predict([request] * 8)
        allocated = torch.cuda.memory_allocated(0)
        seen = wait_for_gauge(url, "tsobs_gpu_memory_allocated_bytes", allocated, 30)
        held = torch.empty(HELD_BYTES, dtype=torch.uint8, device="cuda:0")
        allocated_held = torch.cuda.memory_allocated(0)
        # No batch runs from here on: only the interval sampler can move the gauges.
        seen_idle = wait_for_gauge(
            url, "tsobs_gpu_memory_allocated_bytes", allocated_held, 10 * SAMPLE_INTERVAL_S
        )
        values = scrape(url)
        free, total = torch.cuda.mem_get_info(0)
        result["gauges"] = {
            "allocated_torch": allocated,
            "allocated_exported": seen,
            "allocated_torch_after_hold": allocated_held,
            "allocated_exported_idle": seen_idle,
            "reserved_torch": torch.cuda.memory_reserved(0),
            "reserved_exported": gauge(values, "tsobs_gpu_memory_reserved_bytes"),
            "peak_torch": torch.cuda.max_memory_allocated(0),
            "peak_exported": gauge(values, "tsobs_gpu_memory_peak_bytes"),
            "used_device": total - free,
            "used_exported": gauge(values, "tsobs_gpu_memory_used_bytes"),
            "total_device": total,
            "total_exported": gauge(values, "tsobs_gpu_memory_total_bytes"),
        }
        del held
        gauges = result["gauges"]
        lines = [json.loads(line) for line in (scratch / "log.jsonl").read_text().splitlines()]
        succeeded = [
            r for r in lines if r["event"] == "request_completed" and r["outcome"] == "success"
        ]
        result["requests_succeeded"] = len(succeeded)
        if len(succeeded) != 160:
            failures.append(f"{len(succeeded)} of 160 requests logged as successes")
        if seen != allocated:
            failures.append("exported allocated bytes differ from torch's")
        if seen_idle != allocated_held:
            failures.append("an idle worker's allocated gauge did not follow the device")
        if gauges["total_exported"] != total:
            failures.append("exported device total differs from the device's")
        if gauges["reserved_exported"] != gauges["reserved_torch"]:
            failures.append("exported reserved bytes differ from torch's")
        if not 0 < gauges["used_exported"] <= total:
            failures.append("exported used bytes are not within the device's memory")
    finally:
        exporter.terminate()
        exporter.wait(10)
    result["failures"] = failures
    print(json.dumps(result, indent=2))
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps(result, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
