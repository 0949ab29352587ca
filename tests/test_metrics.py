"""A batch's observations, written under one lock, land where ``Histogram.observe`` puts them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORKER = """
import json, sys
from pathlib import Path
from obs.metrics import ModelInstruments, use_multiprocess_dir
from obs.signals import LATENCY_BUCKETS
use_multiprocess_dir(Path(sys.argv[1]), "w9000")
batched, one_by_one = ModelInstruments("batched", "1"), ModelInstruments("one_by_one", "1")
# Bucket bounds themselves, values between them, and beyond the last bound.
for seconds, size, fill in [(LATENCY_BUCKETS[3], 1, 0.125), (0.0004, 32, 1.0), (42.0, 8, 0.25)]:
    stages = {"preprocess": seconds, "inference": seconds / 3, "handle": seconds * 2}
    batched.observe_batch(stages, size, fill)
    for stage, value in stages.items():
        one_by_one.stage_seconds[stage].observe(value)
    one_by_one.batch_size.observe(size)
    one_by_one.batch_fill.observe(fill)
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
registry = CollectorRegistry()
MultiProcessCollector(registry, sys.argv[1])
print(json.dumps([[s.name, s.labels, s.value] for m in registry.collect() for s in m.samples]))
"""


def test_batched_observations_equal_observe_calls(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    by_model: dict = {"batched": {}, "one_by_one": {}}
    for name, labels, value in json.loads(done.stdout):
        model = labels.pop("model_name")
        by_model[model][(name, tuple(sorted(labels.items())))] = value
    assert by_model["batched"] == by_model["one_by_one"]
    assert sum(v for (n, _), v in by_model["batched"].items() if n.endswith("_count")) == 15
