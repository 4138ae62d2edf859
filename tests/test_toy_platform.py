"""The toy platform of docs/new-platform.md passes the conformance kit, so the walk-through is true."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from nni_ts.testing.conformance import TrainingServiceConformance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "toy_platform"))
from toy_platform import ToyTrainingService  # noqa: E402


class TestToyConformance(TrainingServiceConformance):
    supports_reattach = False  # the walk-through keeps it short: no re-attach
    timeout = 30.0

    @pytest.fixture
    def service_factory(self, tmp_path: Path) -> Any:
        def make(code_dir: Path, command: str, **overrides: Any) -> ToyTrainingService:
            config = {"trialCommand": command, "trialCodeDirectory": str(code_dir), **overrides}
            return ToyTrainingService(config, experiment_dir=tmp_path / "exp")

        return make
