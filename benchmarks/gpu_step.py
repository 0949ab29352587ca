"""What the mixin costs beside a real 5 ms CUDA step, in-process, on a machine with a GPU.

A handler whose inference holds the GPU for ~5 ms per batch (a spinning kernel, waited for;
see handlers/cuda_step.py) runs through TorchServe's Python backend with the mixin, without
it, and without it again (the A/A control), at batch 1 and 32, calls alternating. Then the
example (CPU) handler as ``mixin_overhead.py`` runs it in-process, for the same figures on
this machine's CPU. Needs the ``torchserve`` and ``torch-model-archiver`` packages (their
Python parts only: no frontend, no Java) and this repository's dependencies. Prints one JSON object: per batch size, µs per request the
mixin adds and the throughput ratio (plain time per batch / the variant's), min / median /
max over rounds, beside the A/A control.

    python3 benchmarks/gpu_step.py [--rounds 5] [--calls 200] [--step-s 0.005]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import mixin_overhead
from mixin_overhead import MIXIN, PLAIN_A, PLAIN_B, compare_in_process, in_process
from saturation import HERE, variant_archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--step-s", type=float, default=0.005, help="GPU time per batch")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, as in mixin_overhead.py
    os.environ["GPU_STEP_S"] = str(args.step_s)
    import torch

    from handler_mixins.example.build import PLAIN_MODEL_NAME, build_archives

    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        store = scratch / "store"
        build_archives(store, batch_size=32)
        base = store / f"{PLAIN_MODEL_NAME}.mar"
        plain = variant_archive(base, HERE / "handlers" / "cuda_step.py", store / "g.mar")
        observed = variant_archive(
            base,
            HERE / "handlers" / "cuda_step_observed.py",
            store / "g_observed.mar",
            extra=[HERE / "handlers" / "cuda_step.py"],
        )
        gpu = compare_in_process(
            {MIXIN: observed, PLAIN_A: plain, PLAIN_B: plain},
            (1, 32),
            args.rounds,
            args.calls,
            scratch / "gpu",
        )
        cpu = in_process(args.rounds, args.calls * 2, scratch / "cpu")
    report = {
        "code": mixin_overhead.code_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0),
        },
        "gpu_step_s": args.step_s,
        "gpu_step_in_process": gpu,
        "example_handler_in_process": cpu,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
