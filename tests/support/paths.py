"""Where the tests find the repository and the validation schemas."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "tests" / "schemas"
"""Upstream schemas copied into the repository with their licenses (see SOURCES.md there)."""
