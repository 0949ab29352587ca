"""The example handler with observability: the one line a user adds."""

from tiny_classifier import TinyClassifier

from handler_mixins import ObservabilityMixin


class TinyClassifierObserved(ObservabilityMixin, TinyClassifier):
    pass
