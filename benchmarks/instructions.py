"""What the mixin costs per batch in CPU instructions: a figure the host's noise cannot move.

Wall-clock figures on a shared 2-core VM swing by 2x from minute to minute; an instruction
count under valgrind (callgrind) does not. A handler whose stages do nothing runs ``handle``
N1 and then N2 times, with the mixin and without, each in its own process under callgrind;
the slope (difference of totals / (N2 - N1)) is the instructions one batch costs, start-up
excluded. The floor (``handlers/floor_writes.py``, the same writes with the least Python) is
counted the same way: what the mixin adds above it is the cost of its structure. The
request headers are what a traced client sends (X-Request-ID, traceparent).

    python benchmarks/instructions.py [--root CHECKOUT] [--batch-sizes 1 32]

``--root`` measures another checkout of this repository (e.g. an older commit in a git
worktree) with the same harness, for a before/after comparison. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Sequence

REPO = Path(__file__).resolve().parents[1]
HANDLERS = REPO / "benchmarks" / "handlers"
"""Where ``floor_writes.py`` is: the floor comes from this checkout whatever ``--root`` is."""
CALLS = (100, 600)
"""N1 and N2: enough calls that the slope is exact to well under 1%."""

HARNESS = """
import os, sys, tempfile
sys.path.insert(0, sys.argv[1])
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
from ts.context import Context, RequestProcessor
from handler_mixins import ObservabilityMixin

class Plain:
    def initialize(self, context):
        self.initialized = True
    def preprocess(self, data):
        return data
    def inference(self, data):
        return data
    def postprocess(self, data):
        return data
    def handle(self, data, context):
        return self.postprocess(self.inference(self.preprocess(data)))

class Observed(ObservabilityMixin, Plain):
    pass

sys.path.insert(0, sys.argv[5])
from floor_writes import FloorWrites

class Floor(FloorWrites, Plain):
    pass

variant, size, calls = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
headers = {
    "X-Request-ID": "bench-client-request-0001",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "Host": "localhost:8080", "User-Agent": "wrk", "Accept": "*/*",
    "content-type": "application/json",
}
context = Context("m", tempfile.gettempdir(), {"model": {"modelVersion": "1.0"}}, 32, None, "0.12.0")
context.request_ids = {i: f"4b7f{i:04d}-aaaa-bbbb-cccc-123456789abc" for i in range(size)}
context.request_processor = [RequestProcessor(dict(headers)) for _ in range(size)]
sys.stdout = open(os.devnull, "w")  # the mixin's JSON lines
handler = {"mixin": Observed, "floor": Floor, "plain": Plain}[variant]()
handler.initialize(context)
data = [{"body": b"[0.1, 0.2, 0.3, 0.4]"}] * size
for _ in range(calls):
    handler.handle(data, context)
"""


def instructions(root: Path, variant: str, size: int, calls: int) -> int:
    """Instructions callgrind counts for a whole run of the harness."""
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "harness.py"
        script.write_text(HARNESS)
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={Path(scratch) / 'callgrind.out'}",
                sys.executable,
                str(script),
                str(root),
                variant,
                str(size),
                str(calls),
                str(HANDLERS),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=scratch,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts in every run
        )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def per_batch(root: Path, variant: str, size: int) -> int:
    low, high = (instructions(root, variant, size, calls) for calls in CALLS)
    return round((high - low) / (CALLS[1] - CALLS[0]))


def measure(root: Path, batch_sizes: Sequence[int]) -> Dict[str, Any]:
    """Per batch size: instructions per batch without the mixin, with it and with the floor
    (``handlers/floor_writes.py``: the least Python that writes the same), and what the mixin
    and the floor add per request."""
    results: Dict[str, Any] = {}
    for size in batch_sizes:
        plain, mixin, floor = (per_batch(root, v, size) for v in ("plain", "mixin", "floor"))
        results[f"batch_{size}"] = {
            "plain_per_batch": plain,
            "mixin_per_batch": mixin,
            "floor_per_batch": floor,
            "added_per_request": round((mixin - plain) / size),
            "floor_added_per_request": round((floor - plain) / size),
        }
    return results


def available() -> bool:
    return shutil.which("valgrind") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="the checkout to measure")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    if not available():
        sys.exit("instructions.py: valgrind is not installed (apt-get install valgrind)")
    root = args.root.resolve()
    report = {
        "root": str(root),
        "python": sys.version.split()[0],
        "instructions": measure(root, args.batch_sizes),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
