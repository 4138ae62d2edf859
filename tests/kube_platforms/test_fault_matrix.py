"""The faults of issue 13, each on both platforms: multi-replica roles, a pod deleted by hand, drained or
lost with its node mid-trial, the anchor or a trial's job deleted, pods that cannot be created, and the
token kept out of the job and pod specs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from nni_ts.models import TrialJobMetric, TrialJobStatus
from nni_ts.testing.conformance import KIT_TRIAL, form, wait_for_status
from nni_ts.testing.k8s import FakeCluster

from .conftest import Factory, kubectl

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
            ps={
                "replicas": 2,
                "command": "python3 hold.py",
                "memorySize": "256m",
                "cpuNumber": 0.5,
                "dockerImage": "python:3.11",
            },
        )
    else:
        ps = {
            "name": "ps",
            "taskNumber": 2,
            "command": "python3 hold.py",
            "dockerImage": "python:3.11",
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
    pods = _pods(cluster, detail.id)
    # The operators' pods end with their index; a JobSet's Job pods have a random suffix and the index label.
    primary = next(
        p["metadata"]["name"]
        for p in pods
        if p["metadata"]["name"].endswith("-0")
        or (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-completion-index") == "0"
    )
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
            await asyncio.to_thread(kubectl, cluster, "delete", "pod", pod, "--wait=false")
        elif how == "kubectl drain":
            node = _pods(cluster, trial_id)[0]["spec"]["nodeName"]
            await asyncio.to_thread(kubectl, cluster, "drain", node, "--ignore-daemonsets", "--force", "--timeout=30s")
        else:
            node = _pods(cluster, trial_id)[0]["spec"]["nodeName"]
            await cluster.faults.lose_node(node)
        done = await wait_for_status(svc, trial_id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.FAILED
        assert done.infrastructure_failure, done.message
        assert _values(metrics, trial_id) == [0.0]
        assert [m.sequence for m in metrics if m.trial_job_id == trial_id] == [0]


# ---------------------------------------------------------------------- 3. the anchor or a job deleted


async def test_the_anchor_deleted_is_recreated_and_the_budget_is_not_burnt(
    cluster: FakeCluster, make_service: Factory, code_dir: Path
) -> None:
    """Issue 13 #3: with the anchor gone, every new job was garbage-collected at once."""
    svc = make_service(code_dir, "python3 kit_trial.py")
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        trial_id, _pod = await _running_trial(svc, cluster, metrics)
        anchor = svc.anchor["metadata"]
        await asyncio.to_thread(kubectl, cluster, "delete", "configmap", anchor["name"], "--wait=false")
        done = await wait_for_status(svc, trial_id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.FAILED and done.infrastructure_failure, done.message
        await cluster.wait_for(
            lambda c: (
                (c.get("configmaps", anchor["name"]) or {}).get("metadata", {}).get("uid") not in (None, anchor["uid"])
            ),
            timeout=TIMEOUT,
        )
        for i in range(2):
            after = await svc.submit_trial_job(form({"mode": "ok", "n": 1}, 10 + i))
            finished = await wait_for_status(svc, after.id, timeout=TIMEOUT)
            assert finished.status is TrialJobStatus.SUCCEEDED, finished.message


async def test_a_job_deleted_by_hand(cluster: FakeCluster, make_service: Factory, code_dir: Path) -> None:
    svc = make_service(code_dir, "python3 kit_trial.py")
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        trial_id, _pod = await _running_trial(svc, cluster, metrics)
        job = (await svc.get_trial_job(trial_id)).platform_data["job"]
        await asyncio.to_thread(kubectl, cluster, "delete", svc.plural, job, "--wait=false")
        done = await wait_for_status(svc, trial_id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.FAILED and done.infrastructure_failure, done.message
        assert _values(metrics, trial_id) == [0.0]


# ---------------------------------------------------------------------- 5. pods that cannot be created


@pytest.mark.parametrize("refusal", ["quota", "admission"])
async def test_pods_that_cannot_be_created_fail_the_trial_in_seconds(
    cluster: FakeCluster, make_service: Factory, code_dir: Path, refusal: str
) -> None:
    """Issue 13 #5: the reason comes from the job's and pods' Warning events, long before pendingTimeout."""
    svc = make_service(code_dir, "python3 kit_trial.py", pendingTimeout=300)
    if refusal == "quota":
        cluster.faults.pod_quota(0)
    else:
        cluster.faults.deny_pods("images must come from registry.example")
    async with svc:
        loop = asyncio.get_running_loop()
        start = loop.time()
        detail = await svc.submit_trial_job(form({"mode": "ok"}))
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        assert loop.time() - start < 20
        assert done.status is TrialJobStatus.FAILED and not done.infrastructure_failure
        expected = "exceeded quota: compute-quota" if refusal == "quota" else "denied the request"
        assert expected in (done.message or ""), done.message


# ---------------------------------------------------------------------- 6. the token


async def test_the_token_is_not_readable_from_the_job_or_pod_spec(
    cluster: FakeCluster, make_service: Factory, code_dir: Path
) -> None:
    svc = make_service(code_dir, "python3 kit_trial.py")
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        trial_id, pod = await _running_trial(svc, cluster, metrics)  # the keeper got its token: it reported
        token = svc.server.token_for(trial_id)
        job = (await svc.get_trial_job(trial_id)).platform_data["job"]
        for text in (
            await asyncio.to_thread(kubectl, cluster, "get", svc.plural, job, "-o", "json"),
            await asyncio.to_thread(kubectl, cluster, "get", "pod", pod, "-o", "json"),
        ):
            assert token not in text
            assert "secretKeyRef" in text
        (secret,) = [
            s for s in cluster.list("secrets", label_selector=f"nni-ts.io/experiment={svc.experiment_id}")
            if s["metadata"]["name"] == svc._token_secret_name()
        ]  # fmt: skip
        assert secret["metadata"]["ownerReferences"][0]["uid"] == svc.anchor["metadata"]["uid"]
        await svc.cancel_trial_job(trial_id)


# ---------------------------------------------------------------------- 7. a slot until the job ended


async def test_a_trial_ends_only_once_its_job_has_ended(
    cluster: FakeCluster, make_service: Factory, code_dir: Path
) -> None:
    """Issue 13 #7: SUCCEEDED came when worker-0's keeper reported, before its job ended, so more jobs ran
    at once than trialConcurrency."""
    svc = make_service(code_dir, "python3 kit_trial.py")
    seen: list[tuple[str, Any]] = []

    def on_status(detail: Any) -> None:
        if detail.status.is_terminal:
            job = cluster.get(svc.plural, detail.platform_data["job"])
            seen.append((detail.status.value, svc._job_view(job).phase if job is not None else "gone"))

    svc.events.on("trial_status", on_status)
    async with svc:
        for i in range(3):
            detail = await svc.submit_trial_job(form({"mode": "ok", "n": 1}, i))
            await wait_for_status(svc, detail.id, timeout=TIMEOUT)
    assert seen == [("SUCCEEDED", "succeeded")] * 3


async def test_the_keepers_report_over_https(
    cluster: FakeCluster, make_service: Factory, code_dir: Path, tmp_path: Path
) -> None:
    """clusterServerCertFile / KeyFile: the cluster server serves https://, the pods trust its CA (staged in
    the trial's directory, NNI_TS_KEEPER_CA_FILE)."""
    from nni_ts.testing.k8s.tls import make_certificate

    cert, key = make_certificate(tmp_path / "pki", "127.0.0.1")
    svc = make_service(code_dir, "python3 kit_trial.py", clusterServerCertFile=str(cert), clusterServerKeyFile=str(key))
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        detail = await svc.submit_trial_job(form({"mode": "ok", "n": 2, "final": 0.5}))
        pods: list[dict[str, Any]] = []

        def note_pods(d: Any) -> None:
            if d.id == detail.id and not pods:
                pods.extend(_pods(cluster, detail.id))

        svc.events.on("trial_status", note_pods)
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        assert len(_values(metrics, detail.id)) == 3
        env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
        assert env["NNI_TS_KEEPER_SERVER_URL"].startswith("https://")
        assert env["NNI_TS_KEEPER_CA_FILE"].endswith("cluster-server-ca.pem")
