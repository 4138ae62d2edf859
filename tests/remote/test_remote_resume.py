"""SIGKILL the manager mid-experiment on two SSH hosts; ``nni-ts resume`` re-attaches and loses nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from remote_support import PYTHON_DIR

from nni_ts.models import TrialJobStatus
from nni_ts.storage import open_store
from nni_ts.testing.sshd import SshdCluster

pytestmark = pytest.mark.slow  # seconds per test (a real sshd): scripts/test --fast leaves it out


def _trial(log: Path, gate: Path) -> str:
    return textwrap.dedent(
        f"""\
        import os, time, nni
        p = nni.get_next_parameter()
        seq = nni.get_sequence_id()
        with open({str(log)!r}, "a") as f:
            f.write(f"{{seq}}\\n")
        for i in range(3):
            nni.report_intermediate_result(i)
        if seq >= 2:
            for _ in range(1200):
                if os.path.exists({str(gate)!r}):
                    break
                time.sleep(0.05)
        nni.report_final_result(p["x"])
        """
    )


def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _trials(experiment_id: str) -> list[Any]:
    try:
        with open_store(readonly=True) as store:
            return store.list_trials(experiment_id, with_detail=True)
    except Exception:
        return []


def test_resume_after_sigkill_on_remote(sshd_cluster: SshdCluster, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    starts, gate = tmp_path / "starts.log", tmp_path / "gate"
    (code / "trial.py").write_text(_trial(starts, gate))
    config = {
        "experimentName": "resume-remote",
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": 2,
        "maxTrialNumber": 6,
        "tuner": {"name": "Random", "classArgs": {"seed": 5}},
        "trainingService": {
            "platform": "remote",
            "knownHostsFile": str(sshd_cluster.known_hosts),
            "keeperHeartbeat": 0.5,
            "machineList": [
                h.machine(workDirectory=str(h.work_dir), pythonPath=PYTHON_DIR) for h in sshd_cluster.hosts
            ],
        },
    }
    cfg_path = tmp_path / "config.yml"
    cfg_path.write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "nni_ts.cli"]
    manager = subprocess.Popen(
        [*cli, "create", "-c", str(cfg_path), "--id", "remoteresume", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def two_blocked() -> bool:
            blocked = [
                t
                for t in _trials("remoteresume")
                if t.sequence_id >= 2 and t.metric_count >= 3 and t.status is TrialJobStatus.RUNNING
            ]
            return len(blocked) == 2

        _wait_until(two_blocked, 60, "two trials blocked at the gate")
    finally:
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
        assert manager.stderr is not None
        manager.stderr.close()
    running = [t for t in _trials("remoteresume") if t.status is TrialJobStatus.RUNNING]
    assert len(running) == 2
    keepers = [t.detail.platform_data["keeper_pid"] for t in running if t.detail]
    assert len(keepers) == 2 and all(psutil.pid_exists(p) for p in keepers), "trials must survive the manager"

    gate.touch()  # the blocked trials end while no manager listens: their keepers hold the records
    resumed = subprocess.run(
        [*cli, "--json", "resume", "remoteresume", "--quiet"], capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "DONE"
    after = _trials("remoteresume")
    assert len(after) == 6
    assert all(t.status is TrialJobStatus.SUCCEEDED for t in after), [(t.id, t.status) for t in after]
    assert sorted(int(x) for x in starts.read_text().split()) == list(range(6)), "a trial was run twice"
    with open_store(readonly=True) as store:
        for t in after:
            metrics = store.metrics("remoteresume", t.id)
            assert [m.seq for m in metrics] == [0, 1, 2, 3], t.id
            assert metrics[-1].value == t.parameters["x"]
    for p in keepers:
        assert not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE
