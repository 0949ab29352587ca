"""The example model behind an ``async def handle``, as TorchServe's async worker awaits it
(model-config ``asyncCommunication: true``)."""

import asyncio

from tiny_classifier import TinyClassifier

from handler_mixins import ObservabilityMixin


class AsyncTiny(ObservabilityMixin, TinyClassifier):
    async def handle(self, data, context):
        await asyncio.sleep(0.05)  # awaited time is handle time
        return super().handle(data, context)
