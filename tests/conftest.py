"""Shared test set-up: hygiene fixtures (no leaked tasks or processes) and an isolated NNI_TS_HOME."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["nni_ts.testing.hygiene"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_leaked_children: the test manages processes that outlive it")


@pytest.fixture(autouse=True)
def nni_ts_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own NNI_TS_HOME, so no test sees another's experiments or store."""
    home = tmp_path / "nni-ts-home"
    monkeypatch.setenv("NNI_TS_HOME", str(home))
    yield home
