"""The example model with TorchServe's own micro-batching, installed the documented way; its
preprocess logs through the standard library, from MicroBatching's stage threads."""

import logging

from tiny_classifier import TinyClassifier
from ts.handler_utils.micro_batching import MicroBatching

from handler_mixins import ObservabilityMixin


class MicroTiny(ObservabilityMixin, TinyClassifier):
    def __init__(self):
        super().__init__()
        self.handle = MicroBatching(self, micro_batch_size=2)

    def preprocess(self, data):
        logging.getLogger(__name__).info("micro_preprocess rows=%d", len(data))
        return super().preprocess(data)
