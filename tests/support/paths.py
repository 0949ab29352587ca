"""Where the tests find the repository and the shared validation schemas."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO.parent / "shared" / "schemas"
"""The schemas beside the checkout (``../shared/schemas``), as laid out for CI too."""
