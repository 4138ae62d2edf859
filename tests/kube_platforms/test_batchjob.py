"""The ``kubernetes`` platform (a batch/v1 Job per trial) against the fake cluster's real Job controller:
the Job it builds, the trial's own failure failing it at once (PodFailurePolicy), an
eviction mid-trial that does not fail it (the pod is replaced, every metric once), DeadlineExceeded from
maxTrialDuration, and configuration errors naming the key."""

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
def platform() -> str:
    return "kubernetes"


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "kit_trial.py").write_text(KIT_TRIAL, encoding="utf-8")
    return code


def _values(metrics: list[TrialJobMetric], trial_id: str) -> list[Any]:
    return [json.loads(json.loads(m.data)["value"]) for m in metrics if m.trial_job_id == trial_id]


def _pods(cluster: FakeCluster, trial_id: str) -> list[dict[str, Any]]:
    return cluster.list("pods", label_selector=f"nni-ts.io/trial={trial_id}")


async def test_the_trials_own_failure_fails_it_at_once_with_the_job_reason(
    cluster: FakeCluster, make_service: Factory, code_dir: Path
) -> None:
    svc = make_service(code_dir, "python3 kit_trial.py", backoffLimit=3)
    async with svc:
        detail = await svc.submit_trial_job(form({"mode": "fail", "code": 4}))
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        job = cluster.get("jobs", detail.platform_data["job"])
        pods = _pods(cluster, detail.id)
        anchor_uid = svc.anchor["metadata"]["uid"]
    assert done.status is TrialJobStatus.FAILED and done.exit_code == 4, done.message
    assert not done.infrastructure_failure
    assert "The trial command exited with code 4." in (done.message or "")
    assert "(PodFailurePolicy)" in (done.message or "") and "exit code 4 matching FailJob rule" in (done.message or "")
    assert job is not None and job["status"]["failed"] == 1  # no retry burnt on the trial's own error
    assert len(pods) == 1 and pods[0]["metadata"]["name"].startswith(job["metadata"]["name"] + "-")
    # The Job as the platform builds it (a successful trial: the conformance kit).
    spec = job["spec"]
    assert spec["backoffLimit"] == 3 and spec["podReplacementPolicy"] == "Failed"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trial", "operator": "NotIn", "values": [0]},
    }
    assert "activeDeadlineSeconds" not in spec and "ttlSecondsAfterFinished" not in spec
    assert job["metadata"]["ownerReferences"][0]["uid"] == anchor_uid
    template = spec["template"]
    assert template["metadata"]["labels"]["nni-ts.io/role"] == "trial"
    assert template["spec"]["restartPolicy"] == "Never"
    assert template["spec"]["volumes"][0]["name"] == "nni-ts-storage"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["eviction-api", "node-pressure"])
async def test_an_evicted_pod_is_replaced_and_the_trial_succeeds_with_every_metric_once(
    cluster: FakeCluster, make_service: Factory, code_dir: Path, tmp_path: Path, how: str
) -> None:
    """``kubectl drain``'s Eviction API (the pod is deleted) and the kubelet's node-pressure eviction (the pod
    stays, Failed): both carry DisruptionTarget, so the Job replaces the pod and the trial runs again.
    The trial ignores SIGTERM, so the evicted pod takes cancelGracePeriod (3 s) to end: the trial waits for
    its replacement past the pendingTimeout (3 s) counted from its submission, which must not fail it."""
    import kubernetes_asyncio as k8s

    runs = tmp_path / "runs"
    command = "trap '' TERM; python3 kit_trial.py"
    svc = make_service(code_dir, command, backoffLimit=0, pendingTimeout=3, cancelGracePeriod=3)
    metrics: list[TrialJobMetric] = []
    statuses: list[TrialJobStatus] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        detail = await svc.submit_trial_job(form({"mode": "sleep", "seconds": 3, "runs_file": str(runs)}))
        svc.events.on("trial_status", lambda d: statuses.append(d.status) if d.id == detail.id else None)
        await wait_for_status(svc, detail.id, timeout=TIMEOUT, status=TrialJobStatus.RUNNING)
        await cluster.wait_for(lambda c: len(metrics) == 1, timeout=TIMEOUT, message="the first run's metric")
        (first,) = _pods(cluster, detail.id)
        name = first["metadata"]["name"]
        if how == "node-pressure":
            await cluster.faults.evict_pod("default", name)
        else:
            cfg = k8s.client.Configuration()
            cfg.host = cluster.url
            async with k8s.client.ApiClient(cfg) as api:
                body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}}
                await k8s.client.CoreV1Api(api).create_namespaced_pod_eviction(name, "default", body)
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        job = cluster.get("jobs", detail.platform_data["job"])
        pods = _pods(cluster, detail.id)
    assert done.status is TrialJobStatus.SUCCEEDED, done.message
    assert not done.infrastructure_failure
    # The second run reported 0.0 again (a duplicate of record 0, dropped) and then the final result.
    assert _values(metrics, detail.id) == [0.0, 1.0]
    assert [m.sequence for m in metrics] == [0, 1]
    assert runs.read_text().split() == [detail.id]  # only the second run reached its end
    # WAITING while the Job replaced the pod, then RUNNING again.
    changes = [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] is not s]
    assert changes == [
        TrialJobStatus.RUNNING,
        TrialJobStatus.WAITING,
        TrialJobStatus.RUNNING,
        TrialJobStatus.SUCCEEDED,
    ], statuses
    assert job is not None and job["status"]["failed"] == 0 and job["status"]["succeeded"] == 1
    running = [p for p in pods if p["metadata"]["name"] != name]
    assert len(running) == 1 and running[0]["status"]["phase"] == "Succeeded"
    if how == "eviction-api":
        assert len(pods) == 1  # deleted
    else:
        (evicted,) = [p for p in pods if p["metadata"]["name"] == name]
        assert evicted["status"]["phase"] == "Failed" and evicted["status"]["reason"] == "Evicted"
    state = Path(done.working_directory or "") / ".nni-ts"
    assert sorted(p.name for p in state.glob("attempt-*")) == ["attempt-1", "attempt-2"]


async def test_a_pod_deleted_by_hand_fails_the_job_at_once_as_an_infrastructure_failure(
    cluster: FakeCluster, make_service: Factory, code_dir: Path
) -> None:
    """``kubectl delete pod`` (no DisruptionTarget): as on a real cluster, the pod ends Failed with the keeper's
    SIGTERM exit (143) before it goes, the FailJob rule matches it, and the Job fails at once (no replacement,
    no retry of backoffLimit spent). The trial is FAILED as an infrastructure failure (the experiment re-runs
    it), with what it delivered before."""
    svc = make_service(code_dir, "python3 kit_trial.py", backoffLimit=3)
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        detail = await svc.submit_trial_job(form({"mode": "sleep", "seconds": 60}))
        await cluster.wait_for(lambda c: len(metrics) == 1, timeout=TIMEOUT, message="the trial's first metric")
        (pod,) = _pods(cluster, detail.id)
        await asyncio.to_thread(kubectl, cluster, "delete", "pod", pod["metadata"]["name"])  # waits until gone
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        job = cluster.get("jobs", detail.platform_data["job"])
        pods = _pods(cluster, detail.id)
    assert done.status is TrialJobStatus.FAILED and done.infrastructure_failure, done.message
    assert done.exit_code == 143, done.message
    message = done.message or ""
    assert f"The pod {pod['metadata']['name']} was deleted outside nni-ts" in message, message
    assert "(exit code 143)" in message, message
    assert job is not None and job["status"]["failed"] == 1 and job["status"].get("succeeded", 0) == 0
    failed = [c for c in job["status"]["conditions"] if c["type"] == "Failed" and c["status"] == "True"]
    assert failed and failed[0]["reason"] == "PodFailurePolicy", job["status"]["conditions"]
    assert "exit code 143 matching FailJob rule at index 1" in failed[0]["message"]
    assert pods == []  # not replaced
    assert _values(metrics, detail.id) == [0.0] and [m.sequence for m in metrics] == [0]


@pytest.mark.slow
async def test_max_trial_duration_becomes_the_jobs_deadline(
    cluster: FakeCluster, make_service: Factory, code_dir: Path
) -> None:
    svc = make_service(code_dir, "python3 kit_trial.py", maxTrialDuration="1.5s")
    async with svc:
        detail = await svc.submit_trial_job(form({"mode": "sleep", "seconds": 60}))
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        job = cluster.get("jobs", detail.platform_data["job"])
    assert job is not None and job["spec"]["activeDeadlineSeconds"] == 2
    assert done.status is TrialJobStatus.FAILED, done.message
    assert "(DeadlineExceeded)" in (done.message or "") and "maxTrialDuration" in (done.message or "")
    assert not done.infrastructure_failure  # the trial ran too long: its own doing, not the platform's


_BASE: dict[str, Any] = {
    "searchSpace": {"x": {"_type": "choice", "_value": [1]}},
    "trialConcurrency": 1,
    "tuner": {"name": "Random"},
    "trialCommand": "python3 t.py",
}
_TS: dict[str, Any] = {
    "platform": "kubernetes",
    "storage": {"storageType": "nfs", "server": "10.0.0.1", "path": "/nfs"},
    "dockerImage": "python:3.11",
    "memorySize": "1g",
}


def _load(ts: dict[str, Any], **top: Any) -> Any:
    from nni_ts.config.loader import config_from_dict

    data = {**_BASE, **top, "trainingService": ts}
    return config_from_dict({k: v for k, v in data.items() if v is not None}, base_dir=Path("."))


def test_the_experiments_max_trial_duration_and_command_reach_the_platform() -> None:
    cfg = _load(_TS, maxTrialDuration="90s").training_service
    assert cfg.platform == "kubernetes" and cfg.active_deadline_seconds == 90 and cfg.trial_command == "python3 t.py"
    own = _load(dict(_TS, command="python3 own.py", maxTrialDuration="1m"), trialCommand=None).training_service
    assert own.command == "python3 own.py" and own.active_deadline_seconds == 60
    assert _load(_TS).training_service.active_deadline_seconds is None


@pytest.mark.parametrize(
    ("ts", "top", "key", "words"),
    [
        ({k: v for k, v in _TS.items() if k != "dockerImage"}, {}, "trainingService.dockerImage", "required"),
        (dict(_TS, backoffLimit=-1), {}, "trainingService.backoffLimit", "greater than or equal to 0"),
        (dict(_TS, maxTrialDuration="soon"), {}, "trainingService.maxTrialDuration", "expected a duration"),
        (_TS, {"maxTrialDuration": "soon"}, "at maxTrialDuration", "expected a duration"),
        (_TS, {"trialCommand": None}, "trainingService", "needs a command: set trialCommand"),
        (dict(_TS, memorySize="lots"), {}, "trainingService.memorySize", "expected a memory size"),
        (dict(_TS, worker={"replicas": 1}), {}, "trainingService.worker", "unknown key"),
    ],
)
def test_configuration_errors_name_the_key(ts: dict[str, Any], top: dict[str, Any], key: str, words: str) -> None:
    from nni_ts.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        _load(ts, **top)
    message = str(info.value)
    assert key in message and words in message, message
    assert message.count("expected a duration") <= 1, message  # an inherited bad value is said once


def test_registered_like_the_other_platforms() -> None:
    """setup.cfg's entry point and the registry's built-in table agree (an install older than the code still
    finds the platform), and the configuration reference lists it."""
    import configparser

    from nni_ts.config.reference import render_reference
    from nni_ts.platforms.kubernetes.batchjob import KubernetesJobTrainingService
    from nni_ts.registry import BUILTIN_PLATFORMS, available_platforms, get_platform_class

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    lines = setup["options.entry_points"]["nni_ts.platforms"].strip().splitlines()
    declared = {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in lines)}
    assert declared == BUILTIN_PLATFORMS
    assert "kubernetes" in available_platforms()
    assert get_platform_class("kubernetes") is KubernetesJobTrainingService
    assert "## `trainingService` for `platform: kubernetes` (batch Jobs)" in render_reference()
    assert "| `backoffLimit` | integer | `1` |" in render_reference()


@pytest.mark.slow
async def test_a_suspended_job_keeps_its_trial_until_it_resumes(
    cluster: FakeCluster, make_service: Factory, code_dir: Path
) -> None:
    """Suspending the Job (what a queue such as Kueue does to preempt it) deletes its pod; the trial is not
    given up after settle_timeout while the Job stays suspended, and runs again when it resumes."""
    svc = make_service(code_dir, "python3 kit_trial.py", service_kwargs={"settle_timeout": 0.3})
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        detail = await svc.submit_trial_job(form({"mode": "sleep", "seconds": 2}))
        job = detail.platform_data["job"]
        await cluster.wait_for(lambda c: len(metrics) == 1, timeout=TIMEOUT, message="the first run's metric")
        (first,) = _pods(cluster, detail.id)
        cluster.patch("jobs", job, {"spec": {"suspend": True}})
        await cluster.wait_for(lambda c: not _pods(c, detail.id), timeout=TIMEOUT, message="the pod deleted")
        # Several settle_timeouts pass while the Job is suspended: the trial is still there.
        await cluster.wait_for_object(
            "jobs", job, lambda j: any(c["type"] == "Suspended" for c in j["status"].get("conditions") or [])
        )
        await asyncio.sleep(1.0)  # nothing to await: the point is that nothing happens (> 3 settle_timeouts)
        assert not svc.reporter.status(detail.id).is_terminal
        cluster.patch("jobs", job, {"spec": {"suspend": False}})
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        pods = {p["metadata"]["name"] for p in _pods(cluster, detail.id)}
    assert done.status is TrialJobStatus.SUCCEEDED, done.message
    assert _values(metrics, detail.id) == [0.0, 1.0] and [m.sequence for m in metrics] == [0, 1]
    assert len(pods) == 1 and first["metadata"]["name"] not in pods


async def test_a_report_of_a_replaced_run_is_refused(tmp_path: Path) -> None:
    """A report of the previous pod's keeper still in flight when the Job replaced the pod: its records are
    not acknowledged (the new run delivers those sequence numbers) and its exit is not the trial's."""
    from nni_ts.models import TrialJobDetail
    from nni_ts.platforms.kubernetes.batchjob import KubernetesJobTrainingService, _RunSink
    from nni_ts.platforms.kubernetes.service import _Trial

    svc = KubernetesJobTrainingService(
        {**_TS, "trialCommand": "true", "storage": dict(_TS["storage"], localMountPath=str(tmp_path))},
        experiment_dir=tmp_path / "exp",
    )
    trial = _Trial(detail=TrialJobDetail(id="t1", form=form({})), job="j")
    svc._runs["t1"] = 2
    old = _RunSink(svc, trial, 1)
    assert await old.on_records([(3, '{"type": "FINAL"}')]) == 0
    await old.on_exited(143, 1)
    assert trial.facts.keeper_exit is None and trial.queue.empty()
