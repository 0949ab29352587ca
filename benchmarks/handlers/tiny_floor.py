"""The example handler with the floor's writes (``floor_writes.py``) instead of the mixin."""

from floor_writes import FloorWrites
from tiny_classifier import TinyClassifier


class TinyFloor(FloorWrites, TinyClassifier):
    pass
