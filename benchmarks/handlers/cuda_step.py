"""The example handler, with an inference that holds a GPU for a fixed time per batch.

A kernel spins on the GPU for ``GPU_STEP_S`` seconds (default 0.005, calibrated when the model
loads) and the handler waits for it, as it waits for a small model's forward pass: the CPU is
mostly idle meanwhile, the batch takes the step's time whatever its size.
"""

import os
import time

import torch
from tiny_classifier import TinyClassifier


def cycles_for(seconds):
    """GPU clock cycles ``torch.cuda._sleep`` spins for to take ``seconds``."""
    probe = 10_000_000
    torch.cuda._sleep(probe)
    torch.cuda.synchronize()
    started = time.perf_counter()
    torch.cuda._sleep(probe)
    torch.cuda.synchronize()
    return int(probe * seconds / (time.perf_counter() - started))


class CudaStep(TinyClassifier):
    def initialize(self, context):
        super().initialize(context)
        self.cycles = cycles_for(float(os.environ.get("GPU_STEP_S") or 0.005))

    def inference(self, data, *args, **kwargs):
        torch.cuda._sleep(self.cycles)
        torch.cuda.synchronize()
        return super().inference(data, *args, **kwargs)
