"""The conformance kit, run against the local platform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nni_ts.platforms.local import LocalTrainingService
from nni_ts.testing.conformance import TrainingServiceConformance


class TestLocalConformance(TrainingServiceConformance):
    timeout = 30.0

    @pytest.fixture
    def service_factory(self, tmp_path: Path) -> Any:
        def make(code_dir: Path, command: str, **overrides: Any) -> LocalTrainingService:
            config = {"trialCommand": command, "trialCodeDirectory": str(code_dir), "cancelGracePeriod": 2, **overrides}
            return LocalTrainingService(config, experiment_dir=tmp_path / "exp")

        return make
