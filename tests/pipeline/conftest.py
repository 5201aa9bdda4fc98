"""Cell tests judge gates, recipes and artifacts, not the machine: other tests and jobs load this 2-core
host at will, so the contention record's verdict is switched off here (its thresholds out of reach) and
a busy run still gets its latency gates judged. tests/pipeline/test_cell_busy.py runs a cell beside real
CPU-bound processes with the thresholds as shipped; tests/measure/test_contention.py tests the record."""

from __future__ import annotations

import pytest

from edgematrix.measure import contention


@pytest.fixture(autouse=True)
def _contention_not_judged(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("real_contention") is None:
        monkeypatch.setattr(contention, "THRESHOLDS", dict.fromkeys(contention.THRESHOLDS, float("inf")))
