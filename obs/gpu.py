"""GPU memory readings, taken on a time interval rather than per batch.

``torch.cuda.memory_allocated``/``memory_reserved``/``max_memory_allocated`` each build the
allocator's whole stats dict (about 130 µs on an H200); reading all three per batch would
add several percent to a 5 ms batch. Sampling every few seconds keeps the per-batch cost
to one clock read.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple


class GpuMemory(NamedTuple):
    allocated: int
    reserved: int
    peak: int
    used: int
    """Bytes in use on the device by every process (total minus free)."""
    total: int


def read_cuda_memory(device_index: int) -> GpuMemory:
    """Current figures for one CUDA device, from torch (imported only where CUDA is used)."""
    import torch

    free, total = torch.cuda.mem_get_info(device_index)
    return GpuMemory(
        allocated=torch.cuda.memory_allocated(device_index),
        reserved=torch.cuda.memory_reserved(device_index),
        peak=torch.cuda.max_memory_allocated(device_index),
        used=total - free,
        total=total,
    )


class IntervalSampler:
    """Calls ``read`` then ``publish`` at most once per ``interval_s``."""

    def __init__(
        self,
        read: Callable[[], GpuMemory],
        publish: Callable[[GpuMemory], None],
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._publish = publish
        self._interval_s = interval_s
        self._clock = clock
        self._due = clock()

    def maybe_sample(self) -> bool:
        """Sample if the interval has passed; True when it did."""
        now = self._clock()
        if now < self._due:
            return False
        self._due = now + self._interval_s
        self._publish(self._read())
        return True
