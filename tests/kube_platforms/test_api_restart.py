"""The API server restarted under a running experiment (issue 13 #4): ``python -m nni_ts.testing.k8s serve``
in another process is stopped with SIGTERM or SIGKILL and started again on the same port, with the same or
a fresh state directory. The trials that ran are all accounted for (their keepers' reports, or the re-list
that shows their jobs gone), and the next trial runs: the anchor is recreated, its job is not
garbage-collected at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nni_ts.models import TrialJobStatus
from nni_ts.platforms.kubernetes.frameworkcontroller import FrameworkControllerTrainingService
from nni_ts.platforms.kubernetes.kubeflow import KubeflowTrainingService
from nni_ts.testing.conformance import KIT_TRIAL, form, wait_for_status

from .conftest import crd_files, fc_config, kubeflow_config

pytestmark = pytest.mark.slow
TIMEOUT = 60.0


class _Served:
    def __init__(self, nfs: Path) -> None:
        self.nfs = nfs
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.kubeconfig = Path()

    def start(self, state_dir: Path) -> None:
        args = [sys.executable, "-m", "nni_ts.testing.k8s", "serve", "--port", str(self.port)]
        args += ["--state-dir", str(state_dir), "--nfs", f"127.0.0.1:{self.nfs}={self.nfs}"]
        for crd in crd_files():
            args += ["--crd", str(crd)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "kubeconfig:" in line, line
        self.kubeconfig = Path(line.rsplit("kubeconfig:", 1)[1].strip())
        match = re.search(r"server: https?://127\.0\.0\.1:(\d+)", self.kubeconfig.read_text())
        assert match is not None
        self.port = int(match.group(1))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None


@pytest.mark.parametrize("platform", ["kubeflow", "frameworkcontroller"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("state", ["same", "fresh"])
async def test_api_server_restart(tmp_path: Path, platform: str, sig: int, state: str) -> None:
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    code = tmp_path / "code"
    code.mkdir()
    (code / "kit_trial.py").write_text(KIT_TRIAL, encoding="utf-8")
    served = _Served(nfs)
    served.start(tmp_path / "k8s")
    pids = tmp_path / "pids"
    pids.mkdir()
    try:
        make = kubeflow_config if platform == "kubeflow" else fc_config
        fake_cluster: Any = type("Served", (), {"kubeconfig": served.kubeconfig})
        cfg: dict[str, Any] = make(fake_cluster, nfs, code, "python3 kit_trial.py")
        cfg["storage"] = {"storageType": "nfs", "server": "127.0.0.1", "path": str(nfs), "localMountPath": str(nfs)}
        cls = KubeflowTrainingService if platform == "kubeflow" else FrameworkControllerTrainingService
        svc = cls(cfg, experiment_dir=tmp_path / "exp", resync=2.0, settle_timeout=5.0)
        async with svc:
            first = [
                await svc.submit_trial_job(form({"mode": "sleep", "seconds": 2, "pid_dir": str(pids)}, i))
                for i in range(2)
            ]
            for d in first:
                await wait_for_status(svc, d.id, timeout=TIMEOUT, status=TrialJobStatus.RUNNING)
            served.stop(sig)
            served.start(tmp_path / ("k8s" if state == "same" else "k8s-fresh"))
            for d in first:
                done = await wait_for_status(svc, d.id, timeout=TIMEOUT)
                # Either the keeper reported (it outlived a SIGKILLed cluster) or the job is gone.
                assert done.status is TrialJobStatus.SUCCEEDED or done.infrastructure_failure, done.message
            after = await svc.submit_trial_job(form({"mode": "ok", "n": 1}, 2))
            done = await wait_for_status(svc, after.id, timeout=TIMEOUT)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message
    finally:
        served.stop(signal.SIGKILL)
        for f in pids.glob("*.pid"):
            for pid in f.read_text().split():
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
