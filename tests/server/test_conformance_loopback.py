"""The conformance kit, run against trials under the keeper reporting to a ClusterServer over loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nni_ts.server.loopback import LoopbackKeeperService
from nni_ts.testing.conformance import TrainingServiceConformance


class TestLoopbackKeeperConformance(TrainingServiceConformance):
    supports_reattach = False  # the reference keeper integration does not re-attach
    timeout = 60.0

    @pytest.fixture
    def service_factory(self, tmp_path: Path) -> Any:
        def make(code_dir: Path, command: str, **overrides: Any) -> LoopbackKeeperService:
            config = {"trialCommand": command, "trialCodeDirectory": str(code_dir), "cancelGracePeriod": 2, **overrides}
            return LoopbackKeeperService(config, experiment_dir=tmp_path / "exp", heartbeat=0.5)

        return make
