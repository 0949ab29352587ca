"""The example handler reporting through TorchServe's own custom-metrics API instead of the
mixin: three stage timings and one request counter per batch. The anchor the mixin's cost is
compared with: what a user pays for the metrics TorchServe itself offers.
"""

import time

from tiny_classifier import TinyClassifier


class TinyTsMetrics(TinyClassifier):
    def _timed(self, name, stage, data):
        started = time.perf_counter()
        result = stage(data)
        self.context.metrics.add_time(name, (time.perf_counter() - started) * 1000, None, "ms")
        return result

    def preprocess(self, data):
        self.context.metrics.add_counter("AnchorRequests", len(data), None)
        return self._timed("AnchorPreprocessTime", super().preprocess, data)

    def inference(self, data, *args, **kwargs):
        return self._timed("AnchorInferenceTime", super().inference, data)

    def postprocess(self, data):
        return self._timed("AnchorPostprocessTime", super().postprocess, data)
