"""The example model with TorchServe's own micro-batching, installed the documented way."""

from tiny_classifier import TinyClassifier
from ts.handler_utils.micro_batching import MicroBatching

from handler_mixins import ObservabilityMixin


class MicroTiny(ObservabilityMixin, TinyClassifier):
    def __init__(self):
        super().__init__()
        self.handle = MicroBatching(self, micro_batch_size=2)
