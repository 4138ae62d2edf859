"""Fixtures for the cluster server's tests (helpers live in cluster_support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cluster_support import PARAMS, TRIAL

from nni_ts.server import ClusterServer


@pytest.fixture
def trial_dir(tmp_path: Path) -> Path:
    d = tmp_path / "trial"
    d.mkdir()
    (d / "parameter.cfg").write_text(PARAMS, encoding="utf-8")
    (tmp_path / "trial.py").write_text(TRIAL, encoding="utf-8")
    return d


@pytest.fixture
async def server() -> AsyncIterator[ClusterServer]:
    async with ClusterServer(heartbeat_timeout=30.0) as srv:
        yield srv
