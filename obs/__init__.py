"""torchserve-obs core: signals, logging, metrics and request context, free of TorchServe.

The TorchServe adapter lives in :mod:`handler_mixins`; nothing here imports ``ts`` or
``torch`` at module level, so the exporter and the generator run without them.
"""

__version__ = "0.1.0"
