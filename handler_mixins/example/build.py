"""Build the example model archives: a tiny TorchScript model, with and without the mixin.

TorchScript needs no download and loads under torch >= 2.6, whose ``weights_only``
default breaks BaseHandler's loading of pickled eager models.

    python -m handler_mixins.example.build --out model-store
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional

HERE = Path(__file__).resolve().parent
MODEL_NAME = "tiny"
PLAIN_MODEL_NAME = "tiny_plain"
MODEL_VERSION = "1.0"


def model_config(workers: int, batch_size: int, max_batch_delay_ms: int, torch_version: str) -> str:
    """model-config.yaml: workers and batching, and the torch version the model was built with."""
    return (
        f"minWorkers: {workers}\n"
        f"maxWorkers: {workers}\n"
        f"batchSize: {batch_size}\n"
        f"maxBatchDelay: {max_batch_delay_ms}\n"
        "responseTimeout: 60\n"
        "torchserve_obs:\n"
        f'  torch_version: "{torch_version}"\n'
    )


def build_archives(
    out_dir: Path,
    workers: int = 2,
    batch_size: int = 8,
    max_batch_delay_ms: int = 20,
    torch_version: Optional[str] = None,
    handlers: Optional[Dict[str, Path]] = None,
    extra_config: str = "",
) -> Dict[str, Path]:
    """Write ``tiny.mar`` (with the mixin) and ``tiny_plain.mar`` (without) into ``out_dir``;
    or, given ``handlers`` (archive name: handler file), those archives of the same model."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    ).eval()
    declared = torch_version or torch.__version__.split("+")[0]
    if handlers is None:
        handlers = {
            MODEL_NAME: HERE / "tiny_classifier_observed.py",
            PLAIN_MODEL_NAME: HERE / "tiny_classifier.py",
        }
    archives = {}
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(scratch) / "model.pt"
        torch.jit.script(model).save(str(weights))
        config = Path(scratch) / "model-config.yaml"
        config.write_text(
            model_config(workers, batch_size, max_batch_delay_ms, declared) + extra_config
        )
        for name, handler in handlers.items():
            subprocess.run(
                [
                    str(Path(sys.executable).parent / "torch-model-archiver"),
                    "--model-name",
                    name,
                    "--version",
                    MODEL_VERSION,
                    "--serialized-file",
                    str(weights),
                    "--handler",
                    str(handler),
                    "--extra-files",
                    str(HERE / "tiny_classifier.py"),
                    "--config-file",
                    str(config),
                    "--export-path",
                    str(out_dir),
                    "--force",
                ],
                check=True,
            )
            archives[name] = out_dir / f"{name}.mar"
    return archives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="model store to write the archives to"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay-ms", type=int, default=20)
    parser.add_argument(
        "--torch-version", help="torch version to declare (default: the installed one)"
    )
    args = parser.parse_args()
    for path in build_archives(
        args.out, args.workers, args.batch_size, args.max_batch_delay_ms, args.torch_version
    ).values():
        print(path)


if __name__ == "__main__":
    main()
