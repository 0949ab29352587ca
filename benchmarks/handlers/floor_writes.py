"""The floor of the mixin's cost: the least Python that writes what it writes per batch.

Put before a handler's class, as the mixin is. Per batch it does what the mixin must do and
nothing else, every write inline with no function of ours between: the request IDs from the
headers (TorchServe's, the client's ``X-Request-ID``, the ``traceparent``), the batch written
into a checksummed ledger slot of a shared memory map before the stages run and its counts
after, the stages timed, six histogram observations (sum and bucket) written to mmap
positions, and one ISO-timestamped JSON line per request written to stdout with one system
call. No checks, no fallbacks, no context for log lines, no fork or failure handling: a
figure to measure against, not a handler to use. What the mixin costs above this is the
price of its guarantees and its structure; a target below this cannot be met in Python.
"""

import itertools
import mmap
import os
import struct
import sys
import tempfile
import time
import zlib
from bisect import bisect_left

import orjson

from obs.context import _TRACEPARENT_00 as _TRACEPARENT  # the usual header, as the mixin reads it
from obs.signals import Metrics

_BOUNDS = [list(Metrics.STAGE_DURATION.buckets)] * 4 + [
    list(Metrics.BATCH_SIZE.buckets),
    list(Metrics.BATCH_FILL.buckets),
]
"""The bucket bounds of the six histograms a batch observes, in the order of ``observed``."""
_FIRST_CELLS = [sum(len(b) + 2 for b in _BOUNDS[:i]) for i in range(len(_BOUNDS))]
"""Each histogram's cells, consecutive: its sum, then a bucket per bound and one for +Inf."""
_HEADER = struct.Struct("<4sII")
_VALUE = struct.Struct("dd").pack
_SLOT = 1 << 16
_CELLS = 2 * _SLOT
"""Where the histogram cells start in the map: after the ledger's two slots."""
_MAP_BYTES = _CELLS + sum(len(b) + 2 for b in _BOUNDS) * 16
_KEY = "model\tversion"


class FloorWrites:
    def initialize(self, context):
        super().initialize(context)
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir()
        fd = os.open(os.path.join(directory, f"floor_{os.getpid()}"), os.O_RDWR | os.O_CREAT)
        os.ftruncate(fd, _MAP_BYTES)
        self._map = mmap.mmap(fd, _MAP_BYTES)
        self._values = [0.0] * ((_MAP_BYTES - _CELLS) // 16)
        self._state = {"seq": 0, "counts": {_KEY: {"requests": [0, 0, 0]}}, "inflight": {}}
        self._batches = itertools.count(1)
        self._second = (None, "")
        self._stage_seconds = [0.0, 0.0, 0.0]
        self._worker = f"w{os.getpid()}"

    def _commit(self):
        state = self._state
        state["seq"] += 1
        payload = orjson.dumps(state)
        data = _HEADER.pack(b"TSL1", len(payload), zlib.crc32(payload)) + payload
        offset = (state["seq"] % 2) * _SLOT
        self._map[offset : offset + len(data)] = data

    def preprocess(self, data):
        started = time.perf_counter()
        result = super().preprocess(data)
        self._stage_seconds[0] += time.perf_counter() - started
        return result

    def inference(self, data, *args, **kwargs):
        started = time.perf_counter()
        result = super().inference(data, *args, **kwargs)
        self._stage_seconds[1] += time.perf_counter() - started
        return result

    def postprocess(self, data):
        started = time.perf_counter()
        result = super().postprocess(data)
        self._stage_seconds[2] += time.perf_counter() - started
        return result

    def handle(self, data, context):
        started = time.perf_counter()
        processors, request_ids = context.request_processor, context.request_ids
        ids = []
        for index in range(len(data)):
            headers = processors[index].get_request_properties()
            match = _TRACEPARENT.match(headers.get("traceparent", ""))
            trace = match.groups() if match else (None, None)
            ids.append((request_ids.get(index), headers.get("X-Request-ID"), *trace))
        batch_id = f"{self._worker}-{next(self._batches)}"
        inflight = self._state["inflight"]
        inflight[batch_id] = {"b": batch_id, "s": len(ids), "r": ids, "m": _KEY}
        self._commit()
        self._stage_seconds = [0.0, 0.0, 0.0]
        result = super().handle(data, context)
        preprocess, inference, postprocess = self._stage_seconds
        seconds = time.perf_counter() - started
        observed = (preprocess, inference, postprocess, seconds, len(ids), 1.0)
        values, cells = self._values, self._map
        for amount, bounds, total in zip(observed, _BOUNDS, _FIRST_CELLS):
            values[total] += amount
            at = _CELLS + total * 16
            cells[at : at + 16] = _VALUE(values[total], 0.0)
            bucket = total + 1 + bisect_left(bounds, amount)
            values[bucket] += 1.0
            at = _CELLS + bucket * 16
            cells[at : at + 16] = _VALUE(values[bucket], 0.0)
        now = time.time()
        second = int(now)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        head = orjson.dumps(
            {
                "timestamp": f"{self._second[1]}.{int((now - second) * 1e6):06d}Z",
                "level": "info",
                "logger": "torchserve_obs",
                "event": "request_completed",
                "model_name": "model",
                "model_version": "version",
                "worker": self._worker,
                "batch_id": batch_id,
                "batch_size": len(ids),
                "preprocess_ms": int(preprocess * 1e6 + 0.5) / 1000,
                "inference_ms": int(inference * 1e6 + 0.5) / 1000,
                "postprocess_ms": int(postprocess * 1e6 + 0.5) / 1000,
                "duration_ms": int(seconds * 1e6 + 0.5) / 1000,
            }
        )[:-1]
        lines = []
        for index, (request_id, client_request_id, trace_id, span_id) in enumerate(ids):
            status = processors[index].get_response_status_code()
            record = orjson.dumps(
                {
                    "batch_index": index,
                    "request_id": request_id,
                    "client_request_id": client_request_id,
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "outcome": "success" if status < 400 else "error",
                    "status": status,
                }
            )
            lines.append(head + b"," + record[1:])
        sys.stdout.flush()
        os.write(sys.stdout.fileno(), b"\n".join(lines) + b"\n")
        self._state["counts"][_KEY]["requests"][0] += len(ids)
        del inflight[batch_id]
        self._commit()
        return result
