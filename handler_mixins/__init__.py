"""TorchServe adapter of torchserve-obs: ``class MyHandler(ObservabilityMixin, BaseHandler)``."""

from handler_mixins.observability import ObservabilityMixin

__all__ = ["ObservabilityMixin"]
