"""The example handler with the mixin, writing its JSON lines to a file (``TSOBS_LOG_FILE``).

Every model of one TorchServe shares the frontend's environment, so this variant sets the
variable itself, from ``TSOBS_BENCH_LOG_FILE``, before the mixin reads its settings (when
the model loads).
"""

import os

from tiny_classifier import TinyClassifier

from handler_mixins import ObservabilityMixin

os.environ["TSOBS_LOG_FILE"] = os.environ["TSOBS_BENCH_LOG_FILE"]


class TinyObservedToFile(ObservabilityMixin, TinyClassifier):
    pass
