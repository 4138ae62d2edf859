"""The conformance kit against the remote platform: two real sshd hosts on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nni_ts.platforms.remote import RemoteTrainingService
from nni_ts.testing.conformance import TrainingServiceConformance
from nni_ts.testing.sshd import SshdCluster

pytestmark = pytest.mark.slow  # seconds per test (a real sshd): scripts/test --fast leaves it out


class TestRemoteConformance(TrainingServiceConformance):
    timeout = 60.0
    concurrency = 30

    @pytest.fixture
    def service_factory(self, tmp_path: Path, sshd_cluster: SshdCluster) -> Any:
        def make(code_dir: Path, command: str, **overrides: Any) -> RemoteTrainingService:
            config = {
                "platform": "remote",
                "trialCommand": command,
                "trialCodeDirectory": str(code_dir),
                "cancelGracePeriod": 2,
                "knownHostsFile": str(sshd_cluster.known_hosts),
                "keeperHeartbeat": 0.5,
                "machineList": [h.machine(workDirectory=str(h.work_dir)) for h in sshd_cluster.hosts],
                **overrides,
            }
            return RemoteTrainingService(config, experiment_dir=tmp_path / "exp", poll_interval=1.0)

        return make
