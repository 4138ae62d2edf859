"""The faults of issue 13, each on both platforms: multi-replica roles, a pod deleted by hand, drained or
lost with its node mid-trial, the anchor or a trial's job deleted, pods that cannot be created, and the
token kept out of the job and pod specs."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nni_ts.models import TrialJobMetric, TrialJobStatus
from nni_ts.testing.conformance import KIT_TRIAL, form, wait_for_status
from nni_ts.testing.k8s import FakeCluster

from .conftest import Factory

TIMEOUT = 60.0


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "kit_trial.py").write_text(KIT_TRIAL, encoding="utf-8")
    (code / "hold.py").write_text("import time\ntime.sleep(120)\n", encoding="utf-8")
    return code


def _values(metrics: list[TrialJobMetric], trial_id: str) -> list[Any]:
    return [json.loads(json.loads(m.data)["value"]) for m in metrics if m.trial_job_id == trial_id]


def _pods(cluster: FakeCluster, trial_id: str) -> list[dict[str, Any]]:
    return cluster.list("pods", label_selector=f"nni-ts.io/trial={trial_id}")


def _kubectl(cluster: FakeCluster, *args: str) -> str:
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


# ---------------------------------------------------------------------- 1. multi-replica roles


@pytest.mark.parametrize("replicas", [2, 3])
async def test_several_replicas_of_the_reporting_role(
    cluster: FakeCluster, make_service: Factory, code_dir: Path, platform: str, replicas: int
) -> None:
    """Only index 0 of the first role reports; the others run under a journal-only keeper (issue 13 #1:
    the launcher's ``if ! A && B`` made every FrameworkController task but the first believe it reports)."""
    role = {"replicas": replicas} if platform == "kubeflow" else {"taskNumber": replicas}
    if platform == "frameworkcontroller":
        role["frameworkAttemptCompletionPolicy"] = {"minFailedTaskCount": 1, "minSucceededTaskCount": replicas}
    svc = make_service(code_dir, "python3 kit_trial.py", role=role)
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        detail = await svc.submit_trial_job(form({"mode": "ok", "n": 2, "final": 0.5}))
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        assert len(_values(metrics, detail.id)) == 3


async def test_two_roles_each_with_two_tasks(
    cluster: FakeCluster, make_service: Factory, code_dir: Path, platform: str
) -> None:
    """worker + ps (kubeflow), two task roles with taskNumber 2 (frameworkcontroller)."""
    if platform == "kubeflow":
        svc = make_service(
            code_dir,
            "python3 kit_trial.py",
            role={"replicas": 2},
            ps={"replicas": 2, "command": "python3 hold.py", "memorySize": "256m", "cpuNumber": 0.5},
        )
    else:
        ps = {
            "name": "ps",
            "taskNumber": 2,
            "command": "python3 hold.py",
            "memorySize": "256m",
            "cpuNumber": 0.5,
            "frameworkAttemptCompletionPolicy": {"minFailedTaskCount": 1, "minSucceededTaskCount": -1},
        }
        svc = make_service(
            code_dir,
            "python3 kit_trial.py",
            role={
                "taskNumber": 2,
                "frameworkAttemptCompletionPolicy": {"minFailedTaskCount": 1, "minSucceededTaskCount": 2},
            },
            extra_roles=[ps],
        )
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        detail = await svc.submit_trial_job(form({"mode": "ok", "n": 1, "final": 0.25}))
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        assert _values(metrics, detail.id)[-1] == 0.25


# ---------------------------------------------------------------------- 2. pods taken away mid-trial


async def _running_trial(svc: Any, cluster: FakeCluster, metrics: list[TrialJobMetric]) -> tuple[str, str]:
    """Submit a sleeping trial, wait until its first metric arrived; return (trial id, primary pod)."""
    detail = await svc.submit_trial_job(form({"mode": "sleep", "seconds": 60}))
    async with asyncio.timeout(TIMEOUT):
        while not _values(metrics, detail.id):
            await asyncio.sleep(0.05)
    pods = [p["metadata"]["name"] for p in _pods(cluster, detail.id)]
    primary = next(p for p in pods if p.endswith("-0"))
    return detail.id, primary


@pytest.mark.parametrize("how", ["kubectl delete pod", "kubectl drain", "node lost"])
async def test_a_pod_taken_away_is_an_infrastructure_failure(
    cluster: FakeCluster, make_service: Factory, code_dir: Path, how: str
) -> None:
    """Issue 13 #2: the keeper exits 143 after the SIGTERM; that must not hide that the platform, not the
    trial, ended it (FrameworkController: PodExternalDeleted, code -101)."""
    svc = make_service(code_dir, "python3 kit_trial.py", service_kwargs={"settle_timeout": 5.0})
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        trial_id, pod = await _running_trial(svc, cluster, metrics)
        if how == "kubectl delete pod":
            await asyncio.to_thread(_kubectl, cluster, "delete", "pod", pod, "--wait=false")
        elif how == "kubectl drain":
            node = _pods(cluster, trial_id)[0]["spec"]["nodeName"]
            await asyncio.to_thread(_kubectl, cluster, "drain", node, "--ignore-daemonsets", "--force", "--timeout=30s")
        else:
            node = _pods(cluster, trial_id)[0]["spec"]["nodeName"]
            await cluster.faults.lose_node(node)
        done = await wait_for_status(svc, trial_id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.FAILED
        assert done.infrastructure_failure, done.message
        assert _values(metrics, trial_id) == [0.0]
        assert [m.sequence for m in metrics if m.trial_job_id == trial_id] == [0]
