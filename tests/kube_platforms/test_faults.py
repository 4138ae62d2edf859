"""Fault tests for both Kubernetes platforms against the fake cluster: the API server restarting under
the watches, 410 Gone, an evicted pod, an OOM-killed pod, a job that can never be scheduled, a wrong
image, the manager unreachable from the pods (the journal on the NFS share brings the metrics), and a
manager restart that re-attaches a running trial and sweeps orphans."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
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
    return code


@pytest.fixture
def pid_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pids"
    d.mkdir()
    return d


def _kill_pids(pid_dir: Path) -> None:
    """The fake kubelet kills a pod's main process group; a trial's own group may outlive a SIGKILL."""
    for f in pid_dir.glob("*.pid"):
        for pid in f.read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)


def _values(metrics: list[TrialJobMetric], trial_id: str) -> list[Any]:
    return [json.loads(json.loads(m.data)["value"]) for m in metrics if m.trial_job_id == trial_id]


def _pods(cluster: FakeCluster, trial_id: str) -> list[dict[str, Any]]:
    return cluster.list("pods", label_selector=f"nni-ts.io/trial={trial_id}")


@pytest.mark.slow
async def test_api_server_restart_and_410_while_the_manager_is_unreachable(
    cluster: FakeCluster, make_service: Factory, code_dir: Path, platform: str
) -> None:
    """The keeper cannot report, so only the watches can tell the job ended: they must survive the API
    server's restart and a 410, and the journal then delivers every record exactly once."""
    svc = make_service(
        code_dir,
        "python3 kit_trial.py",
        reportTimeout=0.5,
        service_kwargs={"keeper_server_url": "http://127.0.0.1:9"},
    )
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        detail = await svc.submit_trial_job(form({"mode": "sleep", "seconds": 2}))
        await wait_for_status(svc, detail.id, timeout=TIMEOUT, status=TrialJobStatus.RUNNING)
        cluster.faults.gone_next_watches(2)
        await cluster.faults.restart_api(downtime=0.5)
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        assert _values(metrics, detail.id) == [0.0, 1.0]
        assert [m.sequence for m in metrics] == [0, 1]
        watchers = svc._watchers
        assert sum(w.reconnects for w in watchers) >= 1
        assert sum(w.gone for w in watchers) >= 1
        assert all(w.lists >= 2 for w in watchers if w.gone)


async def test_unreachable_manager_metrics_come_from_the_journal(
    cluster: FakeCluster, make_service: Factory, code_dir: Path
) -> None:
    svc = make_service(
        code_dir, "python3 kit_trial.py", reportTimeout=0.5, service_kwargs={"keeper_server_url": "http://127.0.0.1:9"}
    )
    metrics: list[TrialJobMetric] = []
    statuses: list[TrialJobStatus] = []
    svc.add_trial_job_metric_listener(metrics.append)
    svc.events.on("trial_status", lambda d: statuses.append(d.status))
    async with svc:
        ok = await svc.submit_trial_job(form({"mode": "ok", "n": 3, "final": 0.5}, 0))
        bad = await svc.submit_trial_job(form({"mode": "fail", "code": 4}, 1))
        done_ok = await wait_for_status(svc, ok.id, timeout=TIMEOUT)
        done_bad = await wait_for_status(svc, bad.id, timeout=TIMEOUT)
    assert done_ok.status is TrialJobStatus.SUCCEEDED, done_ok.message
    assert len(_values(metrics, ok.id)) == 4 and _values(metrics, ok.id)[-1] == 0.5
    assert done_bad.status is TrialJobStatus.FAILED and done_bad.exit_code == 4
    assert _values(metrics, bad.id) == [1.0]
    # Never stuck in WAITING: the pod watch said RUNNING although the keeper never reached the manager.
    assert TrialJobStatus.RUNNING in statuses


async def test_evicted_pod_is_an_infrastructure_failure(
    cluster: FakeCluster, make_service: Factory, code_dir: Path, pid_dir: Path
) -> None:
    svc = make_service(code_dir, "python3 kit_trial.py")
    try:
        async with svc:
            detail = await svc.submit_trial_job(form({"mode": "sleep", "seconds": 20, "pid_dir": str(pid_dir)}))
            await wait_for_status(svc, detail.id, timeout=TIMEOUT, status=TrialJobStatus.RUNNING)
            pod = _pods(cluster, detail.id)[0]["metadata"]["name"]
            await cluster.faults.evict_pod("default", pod)
            done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
            assert done.status is TrialJobStatus.FAILED
            assert done.infrastructure_failure
            assert "evicted" in (done.message or "")
    finally:
        _kill_pids(pid_dir)


async def test_oom_killed_pod_says_raise_memory(
    cluster: FakeCluster, make_service: Factory, code_dir: Path, pid_dir: Path
) -> None:
    svc = make_service(code_dir, "python3 kit_trial.py", service_kwargs={"settle_timeout": 5.0})
    try:
        async with svc:
            detail = await svc.submit_trial_job(form({"mode": "sleep", "seconds": 20, "pid_dir": str(pid_dir)}))
            await wait_for_status(svc, detail.id, timeout=TIMEOUT, status=TrialJobStatus.RUNNING)
            pod = _pods(cluster, detail.id)[0]["metadata"]["name"]
            cluster.faults.oom_kill("default", pod)
            done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
            assert done.status is TrialJobStatus.FAILED
            assert not done.infrastructure_failure
            assert "OOMKilled" in (done.message or "") and "memorySize" in (done.message or "")
    finally:
        _kill_pids(pid_dir)


async def test_job_that_can_never_be_scheduled(cluster: FakeCluster, make_service: Factory, code_dir: Path) -> None:
    svc = make_service(code_dir, "python3 kit_trial.py", pendingTimeout=1.0, role={"gpuNumber": 8})
    async with svc:
        detail = await svc.submit_trial_job(form({"mode": "ok"}))
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.FAILED
        assert not done.infrastructure_failure
        message = done.message or ""
        assert "pendingTimeout" in message and "cannot be scheduled" in message
        assert "nvidia.com/gpu" in message and "gpuNumber" in message
        assert _pods(cluster, detail.id) == []  # reported, then cancelled
        assert cluster.list(svc.plural, label_selector=f"nni-ts.io/trial={detail.id}") == []


async def test_wrong_image(cluster: FakeCluster, make_service: Factory, code_dir: Path) -> None:
    svc = make_service(
        code_dir, "python3 kit_trial.py", pendingTimeout=1.5, role={"dockerImage": "registry.example/doesnotexist:1"}
    )
    async with svc:
        detail = await svc.submit_trial_job(form({"mode": "ok"}))
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.FAILED
        message = done.message or ""
        assert "registry.example/doesnotexist:1" in message and "cannot be pulled" in message
        assert "dockerImage" in message


@pytest.mark.slow
async def test_manager_restart_reattaches_and_sweeps_orphans(
    cluster: FakeCluster, make_service: Factory, code_dir: Path, tmp_path: Path
) -> None:
    first = make_service(code_dir, "python3 kit_trial.py", service_kwargs={"experiment_id": "ExpReattach1"})
    metrics: list[TrialJobMetric] = []
    first.add_trial_job_metric_listener(metrics.append)
    await first.start()
    running = await first.submit_trial_job(form({"mode": "sleep", "seconds": 3}, 0))
    orphan = await first.submit_trial_job(form({"mode": "sleep", "seconds": 30}, 1))
    await wait_for_status(first, running.id, timeout=TIMEOUT, status=TrialJobStatus.RUNNING)
    async with asyncio.timeout(TIMEOUT):
        while len(metrics) < 1:
            await asyncio.sleep(0.05)
    saved = await first.get_trial_job(running.id)
    orphan_job = (await first.get_trial_job(orphan.id)).platform_data["job"]
    # The manager dies: no clean-up, its server and watches just go away.
    await first._close_resources()

    second = make_service(code_dir, "python3 kit_trial.py", service_kwargs={"experiment_id": "ExpReattach1"})
    again: list[TrialJobMetric] = []
    second.add_trial_job_metric_listener(again.append)
    async with second:
        await second.reattach_trial_job(saved, metrics_delivered=1)
        done = await wait_for_status(second, running.id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        assert [json.loads(json.loads(m.data)["value"]) for m in again] == [1.0]
        assert [m.sequence for m in again] == [1]
        # A new submission sweeps the job nobody re-attached.
        fresh = await second.submit_trial_job(form({"mode": "ok", "n": 0}, 2))
        await wait_for_status(second, fresh.id, timeout=TIMEOUT)
        await cluster.wait_for(lambda c: c.get(second.plural, orphan_job) is None, timeout=TIMEOUT)
        assert orphan_job in second.orphans_swept


@pytest.mark.parametrize("pod_phase", ["Failed", "Unknown"])
async def test_lost_node_is_an_infrastructure_failure(
    cluster: FakeCluster, make_service: Factory, code_dir: Path, pid_dir: Path, pod_phase: str
) -> None:
    svc = make_service(code_dir, "python3 kit_trial.py")
    try:
        async with svc:
            detail = await svc.submit_trial_job(form({"mode": "sleep", "seconds": 20, "pid_dir": str(pid_dir)}))
            await wait_for_status(svc, detail.id, timeout=TIMEOUT, status=TrialJobStatus.RUNNING)
            node = _pods(cluster, detail.id)[0]["spec"]["nodeName"]
            await cluster.faults.lose_node(node, pod_phase=pod_phase)
            done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
            assert done.status is TrialJobStatus.FAILED
            assert done.infrastructure_failure
            assert "lost with its node" in (done.message or "")
    finally:
        _kill_pids(pid_dir)


async def test_bursts_of_api_errors_are_retried(cluster: FakeCluster, make_service: Factory, code_dir: Path) -> None:
    svc = make_service(code_dir, "python3 kit_trial.py")
    async with svc:
        cluster.faults.error_burst(status=500, count=2, verbs=["create"])
        first = await svc.submit_trial_job(form({"mode": "ok", "n": 1}, 0))
        cluster.faults.error_burst(status=429, count=2, verbs=["create"], retry_after=0)
        second = await svc.submit_trial_job(form({"mode": "ok", "n": 1}, 1))
        for d in (first, second):
            done = await wait_for_status(svc, d.id, timeout=TIMEOUT)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message


async def test_an_image_without_python_says_so(cluster: FakeCluster, make_service: Factory, code_dir: Path) -> None:
    svc = make_service(code_dir, "python3 kit_trial.py")
    async with svc:
        f = form({"mode": "ok"})
        f.env = {"PATH": "/nonexistent"}  # as in an image without python
        detail = await svc.submit_trial_job(f)
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.FAILED
        assert "no python3 or python" in (done.message or ""), done.message
        assert done.exit_code == 127


async def test_a_failed_pods_last_lines_are_its_last_bytes(
    cluster: FakeCluster, make_service: Factory, code_dir: Path
) -> None:
    """What a failed trial's message quotes from its pod (when the keeper could not record an exit) is
    the end of its last ten lines, at most 4 KiB. It asked for ``limitBytes=4096``, which a real API
    server (and the fake) answers with the *first* 4 KiB of those lines: the reason, printed last, was
    cut off."""
    svc = make_service(code_dir, "python3 kit_trial.py")
    async with svc:
        namespace = svc.namespace
        script = "for i in range(12): print(f'line {i:02d} ' + 'x' * 1000)\nprint('the reason it failed')"
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "talkative", "namespace": namespace},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "python", "command": ["python3", "-c", script]}],
                },
            }
        )
        await cluster.wait_for_object(
            "pods",
            "talkative",
            lambda p: ((p or {}).get("status") or {}).get("phase") == "Succeeded",
            namespace=namespace,
        )
        tail = await svc._pod_log_tail("talkative")
    assert tail.endswith("the reason it failed"), tail[-200:]
    assert len(tail.encode()) <= 4096 and "line 11 " in tail and "line 00 " not in tail
