"""The example handler, without observability: scores four numbers into three classes.

Bad input gets a 400 for that request alone, so one malformed request never fails the
batch it shares with good ones. Two inputs exist for tests and demos: ``{"fail": "why"}``
raises (TorchServe then fails the whole batch with 503) and ``{"sleep": s, "features":
[...]}`` holds the worker busy for ``s`` seconds. ``TINY_INITIALIZE_SLEEP_S`` in the
environment makes loading the model take that long, for tests of workers killed mid-load.
"""

import json
import os
import time

import torch
from ts.torch_handler.base_handler import BaseHandler

FEATURES = 4


class TinyClassifier(BaseHandler):
    def initialize(self, context):
        time.sleep(float(os.environ.get("TINY_INITIALIZE_SLEEP_S") or 0))
        super().initialize(context)

    def preprocess(self, data):
        self.rejected = {}
        rows = []
        for index, item in enumerate(data):
            payload = item.get("data") or item.get("body")
            try:
                if isinstance(payload, (bytes, bytearray)):
                    payload = payload.decode("utf-8")
                if isinstance(payload, str):
                    payload = json.loads(payload)
            except (UnicodeDecodeError, ValueError):
                payload = None
            if isinstance(payload, dict) and "fail" in payload:
                raise RuntimeError(f"asked to fail: {payload['fail']}")
            try:
                if isinstance(payload, dict) and "sleep" in payload:
                    time.sleep(min(float(payload["sleep"]), 30.0))
                    payload = payload.get("features")
                features = [float(x) for x in payload]
                if len(features) != FEATURES:
                    raise TypeError
            except (TypeError, ValueError):
                self.rejected[index] = f"expected a JSON list of {FEATURES} numbers"
                features = [0.0] * FEATURES
            rows.append(features)
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return torch.softmax(self.model(data), dim=1)

    def postprocess(self, data):
        results = []
        for index, probabilities in enumerate(data.tolist()):
            if index in self.rejected:
                self.context.set_response_status(400, self.rejected[index], index)
                results.append({"error": self.rejected[index]})
            else:
                rounded = [round(p, 6) for p in probabilities]
                results.append({"label": rounded.index(max(rounded)), "probabilities": rounded})
        return results
