from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.faults import SCORECARDS, Cluster


@pytest.fixture
def cluster(tmp_path: Path, log_dir: Path) -> Iterator[Cluster]:
    """A private Redis (AOF on, fsync always) for one scenario; gateways and workers are added by the test."""
    c = Cluster(tmp_path, log_dir, appendonly=True)
    yield c
    c.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SCORECARDS:
        terminalreporter.section("fault-injection scorecard")
        for line in SCORECARDS:
            terminalreporter.write_line(line)
