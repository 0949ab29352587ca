"""The README documents every metric and every setting the code defines."""

from __future__ import annotations

import re

from obs.signals import all_metrics
from tests.support.paths import REPO

README = (REPO / "README.md").read_text()


def test_every_metric_is_documented() -> None:
    missing = [spec.name for spec in all_metrics() if f"`{spec.name}`" not in README]
    assert not missing


def test_every_setting_is_documented() -> None:
    source = (REPO / "obs" / "settings.py").read_text()
    variables = set(re.findall(r'"((?:TSOBS|PROMETHEUS)_[A-Z_]+)"', source))
    assert len(variables) >= 9
    assert not [v for v in sorted(variables) if f"`{v}`" not in README]
