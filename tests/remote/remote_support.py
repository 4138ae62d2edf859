"""Helpers of the remote-platform tests: a service over the sshd fixture hosts, a controllable trial."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil

from nni_ts.models import TrialJobMetric, TrialJobStatus
from nni_ts.platforms.remote import RemoteTrainingService
from nni_ts.testing.conformance import wait_for_status
from nni_ts.testing.sshd import SshdCluster, SshHost

#: The python3 of this interpreter: the hosts use it (skipping slow version-manager shims).
PYTHON_DIR = os.path.dirname(sys.executable)

#: A trial that reports 1, waits for its "release" file (bounded), then reports 2 and the final 3.
TRIAL = textwrap.dedent(
    """
    import json, os, sys, time
    import nni

    p = nni.get_next_parameter()
    if p.get("runs"):  # one file per run of the trial, to count them
        open(os.path.join(p["runs"], "%s.%d" % (nni.get_trial_id(), os.getpid())), "w").close()
    if p.get("pid_dir"):
        with open(os.path.join(p["pid_dir"], nni.get_trial_id() + ".pid"), "w") as fh:
            fh.write(str(os.getpid()))
    nni.report_intermediate_result(1)
    release = p.get("release")
    if release:
        deadline = time.time() + 120
        while not os.path.exists(release) and time.time() < deadline:
            time.sleep(0.05)
    nni.report_intermediate_result(2)
    files = sorted(os.listdir("."))
    final = {"default": 3, "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "files": files}
    final["pre"] = os.environ.get("PRE_VAR")
    nni.report_final_result(final)
    """
)


def machine(host: SshHost, **extra: Any) -> dict[str, Any]:
    return host.machine(**{"workDirectory": str(host.work_dir), "pythonPath": PYTHON_DIR, **extra})


def make_code(tmp_path: Path, name: str = "code") -> Path:
    code = tmp_path / name
    code.mkdir(parents=True, exist_ok=True)
    (code / "trial.py").write_text(TRIAL, encoding="utf-8")
    return code


def make_service(
    cluster: SshdCluster,
    code: Path,
    exp_dir: Path,
    *,
    hosts: list[dict[str, Any]] | None = None,
    poll_interval: float = 0.5,
    experiment_id: str | None = None,
    **overrides: Any,
) -> RemoteTrainingService:
    config = {
        "platform": "remote",
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": str(code),
        "cancelGracePeriod": 2,
        "knownHostsFile": str(cluster.known_hosts),
        "keeperHeartbeat": 0.3,
        "heartbeatTimeout": 3,
        "machineList": hosts if hosts is not None else [machine(h) for h in cluster.hosts],
        **overrides,
    }
    return RemoteTrainingService(
        config,
        experiment_dir=exp_dir,
        experiment_id=experiment_id,
        poll_interval=poll_interval,
        connect_timeout=5,
    )


class Recorder:
    def __init__(self, service: RemoteTrainingService) -> None:
        self.metrics: list[TrialJobMetric] = []
        service.add_trial_job_metric_listener(self.metrics.append)

    def values(self, trial_id: str) -> list[Any]:
        return [json.loads(json.loads(m.data)["value"]) for m in self.metrics if m.trial_job_id == trial_id]


async def wait_metrics(rec: Recorder, trial_id: str, count: int, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while len(rec.values(trial_id)) < count:
            await asyncio.sleep(0.02)


async def wait_status(
    service: RemoteTrainingService, trial_id: str, status: TrialJobStatus, timeout: float = 30
) -> None:
    await wait_for_status(service, trial_id, timeout=timeout, status=status)


async def wait_pid_file(pid_dir: Path, trial_id: str, timeout: float = 30) -> int:
    path = pid_dir / f"{trial_id}.pid"
    async with asyncio.timeout(timeout):
        while True:
            try:
                return int(path.read_text())
            except (FileNotFoundError, ValueError):
                await asyncio.sleep(0.02)


async def wait_gone(pid: int, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
            await asyncio.sleep(0.05)
