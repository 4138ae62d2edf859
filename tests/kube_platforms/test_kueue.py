"""Kueue on the Kubernetes platforms (issue 16): ``queueName`` labels the trials' objects, a trial Kueue holds is
WAITING with Kueue's reason and never RUNNING, a preempted trial goes back to WAITING and runs again with every
metric once, and a missing queue is a clear error naming the key. On the fake cluster's small Kueue, with the
real Workload and LocalQueue CRDs of Kueue 0.19.2."""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nni_ts.errors import ConfigError
from nni_ts.experiment import Experiment
from nni_ts.models import TrialJobDetail, TrialJobMetric, TrialJobStatus
from nni_ts.platforms.kubernetes import kueue as kq
from nni_ts.platforms.kubernetes.lifecycle import Facts, KueueStep, Phase, kueue_step
from nni_ts.testing.conformance import form, wait_for_status
from nni_ts.testing.k8s import FakeCluster, Node
from nni_ts.testing.k8s.cluster import CONTROLLERS

from .conftest import (
    CRD_DIR,
    NFS_PATH,
    NFS_SERVER,
    PLATFORMS,
    TRAINER_CRDS,
    config_for,
    crd_files,
    trainjob_runtime,
)

pytestmark = pytest.mark.timeout(180)

KUEUE_CRDS = [CRD_DIR / "next" / "kueue.x-k8s.io_workloads.yaml", CRD_DIR / "next" / "kueue.x-k8s.io_localqueues.yaml"]
#: The platforms whose trial objects Kueue manages: kubeflow (TFJob, through runPolicy.suspend) and, once they
#: are merged, kubernetes (batch/v1 Job) and trainjob (TrainJob). FrameworkController has no Kueue integration.
KUEUE_PLATFORMS = [p for p in ("kubeflow", "kubernetes", "trainjob") if p in PLATFORMS]
QUEUE = "user-queue"


@pytest.fixture(params=KUEUE_PLATFORMS)
def platform(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def cluster(tmp_path: Path, nfs_dir: Path, platform: str) -> AsyncIterator[FakeCluster]:
    trainer = platform == "trainjob"
    async with FakeCluster(
        tmp_path / "cluster",
        crd_files=[*crd_files(), *KUEUE_CRDS, *(TRAINER_CRDS if trainer else [])],
        nodes=[Node("node-1", cpu=64, memory="256Gi", gpus=2)],
        nfs_exports={(NFS_SERVER, NFS_PATH): nfs_dir},
        controllers=[*CONTROLLERS, "kueue"],
    ) as c:
        if trainer:
            c.create(trainjob_runtime())
        yield c


def make_queues(cluster: FakeCluster, cpu: str, namespace: str = "default") -> None:
    """A ClusterQueue with ``cpu`` CPUs of quota behind the LocalQueue ``user-queue`` of ``namespace``."""
    group = f"{kq.GROUP}/v1beta2"
    cluster.create({"apiVersion": group, "kind": "ResourceFlavor", "metadata": {"name": "default-flavor"}})
    resources = [{"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": "64Gi"}]
    flavor = {"name": "default-flavor", "resources": resources}
    cluster.create(
        {
            "apiVersion": group,
            "kind": "ClusterQueue",
            "metadata": {"name": "cluster-queue"},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [flavor]}],
            },
        }
    )
    cluster.create(
        {
            "apiVersion": group,
            "kind": "LocalQueue",
            "metadata": {"name": QUEUE, "namespace": namespace},
            "spec": {"clusterQueue": "cluster-queue"},
        }
    )


#: Each trial: two intermediate results, then the final one. The trial of sequence 0 waits (bounded) after its
#: intermediate results until the test releases it (the file RELEASE; the fake cluster's pods run on this host):
#: the test preempts it meanwhile, and its second run (a new pod) writes the same two intermediate results again,
#: which must not be delivered twice.
TRIAL = textwrap.dedent(
    """
    import os, time
    import nni

    params = nni.get_next_parameter()
    nni.report_intermediate_result(1)
    nni.report_intermediate_result(2)
    if os.environ.get("NNI_TRIAL_SEQ_ID") == "0":
        release = RELEASE
        for _ in range(1200):
            if os.path.exists(release):
                break
            time.sleep(0.05)
    time.sleep(0.2)
    nni.report_final_result(params["x"])
    """
)


@pytest.mark.slow
async def test_eight_trials_behind_a_queue_of_two_with_a_preemption(
    cluster: FakeCluster, nfs_dir: Path, tmp_path: Path, platform: str
) -> None:
    make_queues(cluster, cpu="1")  # each trial asks 0.5 CPU: Kueue admits two at a time
    code = tmp_path / "code"
    code.mkdir()
    release = tmp_path / "release"
    (code / "trial.py").write_text(f"RELEASE = {str(release)!r}\n" + TRIAL)
    # On kubernetes without shared storage (storageType none: the code from the manager, the metrics' fallback
    # the pod's log), elsewhere on NFS: both storage modes, at no extra cost.
    storage = {"storage": {"storageType": "none"}} if platform == "kubernetes" else {}
    platform_config = config_for(platform, cluster, nfs_dir, code, "python3 trial.py", queueName=QUEUE, **storage)
    config = {
        "experimentName": "kueue",
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": str(code),
        # Over-submission: trialConcurrency bounds the live (WAITING + RUNNING) trials, above the queue's 2.
        "trialConcurrency": 8,
        "maxTrialNumber": 8,
        "maxFailedTrialNumber": 1,  # a preemption counted as a failure would stop the experiment
        "tuner": {"name": "Random", "classArgs": {"seed": 1}},
        "trainingService": platform_config,
    }
    service = PLATFORMS[platform][1](platform_config, experiment_dir=tmp_path / "exp", experiment_id="kueuetest")
    history: list[TrialJobDetail] = []
    running: set[str] = set()
    most = 0
    metrics: list[TrialJobMetric] = []

    def on_status(detail: TrialJobDetail) -> None:
        nonlocal most
        history.append(detail)
        if detail.status is TrialJobStatus.RUNNING:
            running.add(detail.id)
        else:
            running.discard(detail.id)
        most = max(most, len(running))

    service.events.on("trial_status", on_status)
    service.events.on("metric", metrics.append)
    exp = Experiment(config, service=service, control_socket=False)
    task = asyncio.create_task(exp.run())
    try:

        def first_trial() -> TrialJobDetail | None:
            return next((d for d in history if d.sequence_id == 0), None)

        async def until(predicate: Any, what: str, timeout: float = 60) -> None:
            async with asyncio.timeout(timeout):
                while not predicate():
                    assert not task.done(), f"the experiment ended while waiting for {what}: {task.result()}"
                    await asyncio.sleep(0.05)

        # The trial of sequence 0 runs and delivered its two intermediate results: preempt it.
        await until(lambda: (t := first_trial()) is not None and t.id in running, "trial 0 RUNNING")
        victim = first_trial()
        assert victim is not None
        await until(lambda: sum(m.trial_job_id == victim.id for m in metrics) == 2, "trial 0's two metrics")
        job = service.reporter.detail(victim.id).platform_data["job"]
        workload = next(w for w in cluster.list("workloads") if w["metadata"]["ownerReferences"][0]["name"] == job)
        cluster.kueue.preempt("default", workload["metadata"]["name"])
        # Back to WAITING (not a failure), and then admitted and RUNNING again in a new pod.
        await until(
            lambda: any(
                d.id == victim.id and d.status is TrialJobStatus.WAITING and "Preempted by Kueue" in (d.message or "")
                for d in history
            ),
            "trial 0 requeued",
        )
        requeued_at = len(history)
        await until(
            lambda: any(d.id == victim.id and d.status is TrialJobStatus.RUNNING for d in history[requeued_at:]),
            "trial 0 running again",
        )
        release.touch()
        async with asyncio.timeout(120):
            result = await task
    finally:
        release.touch()
        if not task.done():
            exp.stop("the test ended")
            await asyncio.wait_for(task, 60)

    assert result.status == "DONE", result.message
    assert [t.status for t in result.trials] == [TrialJobStatus.SUCCEEDED] * 8, [
        (t.id, t.status, t.message) for t in result.trials
    ]
    # Never more than the queue's two RUNNING at once; the others waited, saying why.
    assert most <= 2, most
    assert len({d.id for d in history if d.status is TrialJobStatus.RUNNING}) == 8
    reasons = [d.message or "" for d in history if d.status is TrialJobStatus.WAITING]
    queued = [m for m in reasons if m.startswith(f"Queued by Kueue in LocalQueue {QUEUE!r}: ")]
    assert any("insufficient unused quota for cpu" in m for m in queued), reasons
    # The preempted trial: RUNNING, WAITING (preempted), RUNNING, SUCCEEDED; never FAILED or UNKNOWN.
    moves = [d.status for d in history if d.id == victim.id]
    compact = [s for i, s in enumerate(moves) if i == 0 or moves[i - 1] is not s]
    assert compact == [
        TrialJobStatus.WAITING,
        TrialJobStatus.RUNNING,
        TrialJobStatus.WAITING,
        TrialJobStatus.RUNNING,
        TrialJobStatus.SUCCEEDED,
    ], compact
    # Every metric once: its second run wrote the two intermediate results again; they were skipped.
    seen = [(m.trial_job_id, m.sequence) for m in metrics]
    assert len(seen) == len(set(seen)) == 8 * 3, seen
    mine = [json.loads(m.data)["value"] for m in metrics if m.trial_job_id == victim.id]
    assert mine[:2] == ["1", "2"] or mine[:2] == [1, 2], mine
    # The trials' objects carried the queue label only (Kueue suspended them by itself).
    assert all(w["spec"]["queueName"] == QUEUE for w in cluster.list("workloads"))


async def test_a_missing_queue_is_a_clear_error_naming_queue_name(make_service: Any, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    service = make_service(code, "true", queueName="no-such-queue")
    with pytest.raises(ConfigError) as err:
        await service.start()
    text = str(err.value)
    assert "queueName" in text and "no-such-queue" in text and "LocalQueue" in text, text
    assert err.value.path == "trainingService.queueName"


async def test_a_cluster_without_kueue_is_a_clear_error_naming_queue_name(
    tmp_path: Path, nfs_dir: Path, platform: str
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    trainer = TRAINER_CRDS if platform == "trainjob" else []
    async with FakeCluster(
        tmp_path / "plain", crd_files=crd_files() + trainer, nfs_exports={(NFS_SERVER, NFS_PATH): nfs_dir}
    ) as plain:
        if trainer:
            plain.create(trainjob_runtime())
        config = config_for(platform, plain, nfs_dir, code, "true", queueName=QUEUE)
        service = PLATFORMS[platform][1](config, experiment_dir=tmp_path / "exp")
        with pytest.raises(ConfigError) as err:
            await service.start()
    text = str(err.value)
    assert "queueName" in text and "does not serve Kueue's API" in text and "install Kueue" in text, text


# ---------------------------------------------------------------------- the pure parts, no cluster


def _wl(*conditions: tuple[str, str, str, str], queue: str = QUEUE, **status: Any) -> dict[str, Any]:
    conds = [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions]
    return {"spec": {"queueName": queue, "active": True}, "status": {"conditions": conds, **status}}


NO_QUOTA = "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor default, 1 more needed"


def test_a_workloads_conditions_say_whether_and_why_kueue_holds_the_trial() -> None:
    assert kq.admission(_wl()) == kq.Admission("queued", "Queued by Kueue in LocalQueue 'user-queue': waiting for "
                                               "Kueue to admit it.")  # fmt: skip
    held = kq.admission(_wl(("QuotaReserved", "False", "Pending", NO_QUOTA)))
    assert held.state == "queued" and held.message == f"Queued by Kueue in LocalQueue 'user-queue': {NO_QUOTA}."
    missing = kq.admission(
        _wl(("QuotaReserved", "False", "Inadmissible", "LocalQueue nope doesn't exist"), queue="nope")
    )
    assert missing.message == "Queued by Kueue in LocalQueue 'nope': LocalQueue nope doesn't exist (Inadmissible)."
    checks = kq.admission(
        _wl(("QuotaReserved", "True", "QuotaReserved", "ok"), ("Admitted", "False", "UnsatisfiedAdmissionChecks", "x"))
    )
    assert checks.state == "queued" and "quota reserved, not admitted yet (x)" in checks.message
    admitted = _wl(("QuotaReserved", "True", "QuotaReserved", "ok"), ("Admitted", "True", "Admitted", "ok"))
    assert kq.admission(admitted).state == "admitted"
    inactive = dict(admitted, spec={"queueName": QUEUE, "active": False})
    assert kq.admission(inactive).state == "queued" and "deactivated" in kq.admission(inactive).message
    evicted = kq.admission(
        _wl(
            ("QuotaReserved", "False", "Pending", NO_QUOTA),
            ("Evicted", "True", "Preempted", "Preempted to accommodate a workload"),
            ("Preempted", "True", "InClusterQueue", "Preempted to accommodate a workload"),
            requeueState={"count": 2},
        )
    )
    assert evicted.state == "evicted" and evicted.evictions == 2
    assert evicted.message.startswith("Preempted by Kueue: Preempted to accommodate a workload; waiting in LocalQueue")
    assert NO_QUOTA in evicted.message
    timeout = kq.admission(_wl(("Evicted", "True", "PodsReadyTimeout", "Exceeded the PodsReady timeout")))
    assert timeout.message.startswith("Evicted by Kueue (PodsReadyTimeout): Exceeded the PodsReady timeout")
    finished = _wl(("Evicted", "True", "Preempted", "x"), ("Finished", "True", "Succeeded", "done"))
    assert kq.admission(finished).state == "finished"


def test_kueue_step_holds_admits_and_requeues_only_a_run_that_was_admitted() -> None:
    fresh = Facts()
    assert kueue_step(Phase.ACTIVE, fresh, "queued") is KueueStep.HOLD
    assert kueue_step(Phase.ACTIVE, fresh, "evicted") is KueueStep.HOLD  # requeued already: it still waits
    assert kueue_step(Phase.ACTIVE, fresh, "admitted") is KueueStep.ADMIT
    ran = Facts(admitted=True)
    assert kueue_step(Phase.ACTIVE, ran, "admitted") is KueueStep.IGNORE
    assert kueue_step(Phase.ACTIVE, ran, "evicted") is KueueStep.REQUEUE
    assert kueue_step(Phase.ACTIVE, ran, "queued") is KueueStep.REQUEUE  # quota taken back without Evicted
    # The keeper's SIGTERM exit came first: still a requeue. A trial that ended by itself keeps its end.
    assert kueue_step(Phase.SETTLING, Facts(admitted=True, keeper_exit=143), "evicted") is KueueStep.REQUEUE
    assert kueue_step(Phase.SETTLING, Facts(admitted=True, keeper_exit=0), "evicted") is KueueStep.IGNORE
    assert kueue_step(Phase.SETTLING, Facts(admitted=True, keeper_exit=3), "evicted") is KueueStep.IGNORE
    assert kueue_step(Phase.REQUEUED, Facts(), "evicted") is KueueStep.HOLD
    assert kueue_step(Phase.REQUEUED, Facts(), "admitted") is KueueStep.IGNORE  # after its old pods are gone
    for phase in (Phase.FINISHING, Phase.STOPPING, Phase.CONCLUDED):
        assert kueue_step(phase, ran, "evicted") is KueueStep.IGNORE
    assert kueue_step(Phase.ACTIVE, ran, "finished") is KueueStep.IGNORE
    # A requeue forgets what the evicted run left, not what the user or the platform decided.
    facts = Facts(admitted=True, keeper_exit=143, pod_deleted="p", primary_exit=143, cancel_status=None)
    facts.warnings.append("x")
    facts.requeue()
    assert (facts.keeper_exit, facts.pod_deleted, facts.primary_exit, facts.warnings, facts.admitted) == (
        None,
        None,
        None,
        [],
        False,
    )
    assert facts.requeues == 1


def test_queue_name_labels_and_config_errors() -> None:
    from nni_ts.config.frameworkcontroller import FrameworkControllerConfig
    from nni_ts.config.kubeflow import KubeflowConfig
    from nni_ts.config.loader import config_from_dict

    role = {"replicas": 1, "command": "true", "cpuNumber": 1, "memorySize": "1g", "dockerImage": "python:3.11"}
    base = {
        "operator": "tf-operator",
        "storage": {"storageType": "nfs", "server": "10.0.0.1", "path": "/nfs"},
        "worker": role,
    }
    cfg = KubeflowConfig.model_validate({**base, "queueName": "team-a", "priorityClass": "high"})
    assert kq.kueue_labels(cfg) == {kq.QUEUE_LABEL: "team-a", kq.PRIORITY_LABEL: "high"}
    assert kq.kueue_labels(KubeflowConfig.model_validate(base)) == {}

    def error(training_service: dict[str, Any]) -> str:
        experiment = {
            "searchSpace": {"x": {"_type": "choice", "_value": [1]}},
            "trialCommand": "true",
            "trialConcurrency": 1,
            "trainingService": training_service,
        }
        with pytest.raises(ConfigError) as info:
            config_from_dict(experiment, base_dir=Path("."))
        return str(info.value)

    kubeflow = {"platform": "kubeflow", **base}
    text = error({**kubeflow, "priorityClass": "high"})
    assert "priorityClass" in text and "queueName" in text, text
    text = error({**kubeflow, "queueName": "Team A"})
    assert "trainingService.queueName" in text, text
    role = {"name": "worker", "taskNumber": 1, "command": "true", "cpuNumber": 1, "memorySize": "1g",
            "dockerImage": "python:3.11"}  # fmt: skip
    fc = {"platform": "frameworkcontroller", "storage": base["storage"], "taskRoles": [role], "queueName": "team-a"}
    text = error(fc)
    assert "trainingService.queueName" in text and "FrameworkController" in text, text
    assert FrameworkControllerConfig.model_validate({k: v for k, v in fc.items() if k != "queueName"})


@pytest.mark.parametrize("source", ["docs", "deploy"])
async def test_the_documented_roles_allow_kueue(tmp_path: Path, nfs_dir: Path, source: str) -> None:
    """The Role of docs/kubernetes.md and deploy/ let a service account run a trial behind a queue (the
    LocalQueue read at start, the Workloads watched); the fake cluster enforces RBAC for its token."""
    repo = Path(__file__).resolve().parents[2]
    if source == "docs":
        blocks = re.findall(r"```yaml\n(.*?)```", (repo / "docs" / "kubernetes.md").read_text(), re.S)
        role = next(yaml.safe_load(b) for b in blocks if "kind: Role" in b)
    else:
        role = next(
            d for d in yaml.safe_load_all((repo / "deploy" / "20-rbac.yaml").read_text()) if d["kind"] == "Role"
        )
    namespace, sa = role["metadata"]["namespace"], ("default", "manager")
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "nni-ts", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]},
        "subjects": [{"kind": "ServiceAccount", "namespace": sa[0], "name": sa[1]}],
    }
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text("import nni\nnni.get_next_parameter()\nnni.report_final_result(1)\n")
    async with FakeCluster(
        tmp_path / "cluster",
        crd_files=[*crd_files(), *KUEUE_CRDS],
        nfs_exports={(NFS_SERVER, NFS_PATH): nfs_dir},
        namespaces=sorted({namespace, sa[0]}),
        controllers=["tf-operator", "kueue"],
    ) as cluster:
        make_queues(cluster, cpu="1", namespace=namespace)
        cluster.create(role)
        cluster.create(binding)
        kubeconfig = cluster.write_kubeconfig(tmp_path / "sa.kubeconfig", token=cluster.service_account_token(*sa))
        config = config_for("kubeflow", cluster, nfs_dir, code, "python3 trial.py", queueName=QUEUE)
        config.update(kubeconfig=str(kubeconfig), namespace=namespace)
        async with PLATFORMS["kubeflow"][1](config, experiment_dir=tmp_path / "exp") as service:
            trial = await service.submit_trial_job(form({}))
            done = await wait_for_status(service, trial.id, timeout=60)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message
            assert len(cluster.list("workloads", namespace=namespace)) == 1  # Kueue did manage the trial
        assert cluster.server.forbidden == []


async def test_a_queued_trial_outwaits_the_pending_timeout_and_can_be_cancelled(
    make_service: Any, cluster: FakeCluster, tmp_path: Path
) -> None:
    """``pendingTimeout`` counts from the admission: a trial Kueue holds longer than that still waits (WAITING
    with Kueue's reason); cancelling it, or the running one, works as without a queue."""
    make_queues(cluster, cpu="0.5")  # one trial at a time
    code = tmp_path / "code"
    code.mkdir()
    release = tmp_path / "release"
    wait = f"for _ in range(1200):\n    if os.path.exists({str(release)!r}): break\n    time.sleep(0.05)\n"
    (code / "trial.py").write_text("import os, time\n" + wait)
    timeout = 2.0
    service = make_service(code, "python3 trial.py", queueName=QUEUE, pendingTimeout=timeout)
    quota_reason = asyncio.Event()

    def on_status(detail: TrialJobDetail) -> None:
        if detail.sequence_id == 1 and "insufficient unused quota for cpu" in (detail.message or ""):
            quota_reason.set()

    service.events.on("trial_status", on_status)
    async with service:
        first = await service.submit_trial_job(form({}, sequence_id=0))
        await wait_for_status(service, first.id, terminal=False, status=TrialJobStatus.RUNNING, timeout=60)
        second = await service.submit_trial_job(form({}, sequence_id=1))
        submitted = asyncio.get_running_loop().time()
        await asyncio.wait_for(quota_reason.wait(), 30)
        # Past the pending time-out (the absence of an event: a bounded wait is the only way to see it).
        await asyncio.sleep(max(0.0, submitted + timeout + 0.5 - asyncio.get_running_loop().time()))
        still = await service.get_trial_job(second.id)
        assert still.status is TrialJobStatus.WAITING, still.message
        assert (still.message or "").startswith(f"Queued by Kueue in LocalQueue {QUEUE!r}: "), still.message
        await service.cancel_trial_job(second.id)
        cancelled = await wait_for_status(service, second.id, timeout=30)
        assert cancelled.status is TrialJobStatus.USER_CANCELED, cancelled.message
        release.touch()
        done = await wait_for_status(service, first.id, timeout=60)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message


#: The resumed trial: two intermediate results, then it waits (bounded) until the test releases it (the file
#: RELEASE), then the final result. Each run appends a line to RUNS.
RESUMED_TRIAL = textwrap.dedent(
    """
    import os, time
    import nni

    params = nni.get_next_parameter()
    with open(RUNS, "a") as fh:
        fh.write("run\\n")
    nni.report_intermediate_result(1)
    nni.report_intermediate_result(2)
    for _ in range(1200):
        if os.path.exists(RELEASE):
            break
        time.sleep(0.05)
    nni.report_final_result(params["x"])
    """
)


def _quota(cluster: FakeCluster, cpu: str) -> None:
    """Change the ClusterQueue's CPU quota (make_queues') to ``cpu``."""
    resources = [{"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": "64Gi"}]
    groups = [{"coveredResources": ["cpu", "memory"], "flavors": [{"name": "default-flavor", "resources": resources}]}]
    cluster.patch("clusterqueues", "cluster-queue", {"spec": {"resourceGroups": groups}})


def _stored(experiment: str) -> tuple[list[Any], dict[str, list[Any]]]:
    """The experiment's trials and each one's metrics, as the store has them now."""
    from nni_ts.errors import StoreError
    from nni_ts.storage import open_store

    try:
        with open_store(readonly=True) as s:
            trials = s.list_trials(experiment, with_detail=True)
            return trials, {t.id: s.metrics(experiment, t.id) for t in trials}
    except StoreError:  # the first manager has not created the store yet
        return [], {}


def _metric_counts(experiment: str) -> list[tuple[Any, int]]:
    """Each stored trial with the number of its stored metrics."""
    trials, metrics = _stored(experiment)
    return [(t, len(metrics[t.id])) for t in trials]


@pytest.mark.slow
async def test_requeued_trials_stay_the_same_waiting_trials_across_a_resume(
    cluster: FakeCluster, nfs_dir: Path, tmp_path: Path, platform: str
) -> None:
    """The manager (``nni-ts create``) is SIGKILLed while Kueue holds trial A, which it preempted (A is WAITING,
    the pod of its evicted run still ending, its keeper still retrying its SIGTERM exit's report); then Kueue
    preempts trial B, RUNNING for the dead manager. ``Experiment.resume`` re-attaches both as the same trials,
    WAITING (no resubmission, no second object, their two delivered metrics kept, not a failure; neither
    RUNNING while Kueue holds it), and when Kueue admits them again they run anew and their metrics arrive
    once."""
    import os
    import signal
    import sys

    from nni_ts.storage import open_store

    exp_id = "kueueresume"
    make_queues(cluster, cpu="1")  # each trial asks 0.5 CPU: both run
    code = tmp_path / "code"
    code.mkdir()
    release, runs = tmp_path / "release", tmp_path / "runs"
    (code / "trial.py").write_text(f"RELEASE = {str(release)!r}\nRUNS = {str(runs)!r}\n" + RESUMED_TRIAL)
    platform_config = config_for(platform, cluster, nfs_dir, code, "python3 trial.py", queueName=QUEUE)
    config = {
        "experimentName": "kueue-resume",
        "searchSpace": {"x": {"_type": "choice", "_value": [0.25, 0.75]}},
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": 2,
        "maxTrialNumber": 2,
        "tuner": {"name": "GridSearch"},
        "experimentWorkingDirectory": str(tmp_path / "home"),
        "trainingService": platform_config,
    }
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))

    async def until(predicate: Any, what: str, timeout: float = 60) -> Any:
        async with asyncio.timeout(timeout):
            while not (value := predicate()):
                await asyncio.sleep(0.1)
        assert value, what
        return value

    def preempt(trial: Any) -> None:
        job = trial.detail.platform_data["job"]
        workload = next(w for w in cluster.list("workloads") if w["metadata"]["ownerReferences"][0]["name"] == job)
        cluster.kueue.preempt("default", workload["metadata"]["name"])

    def pods(trial: Any) -> list[Any]:
        return cluster.list("pods", label_selector=f"nni-ts.io/trial={trial.id}")

    with (tmp_path / "manager.log").open("w") as log:
        manager = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "nni_ts.cli", "create", "-c", str(tmp_path / "config.yml"), "--id", exp_id],
            "--quiet",
            stdout=log,
            stderr=log,
        )
    try:
        # The first manager: both trials run and delivered their two intermediate results.
        both = await until(lambda: [t for t, n in _metric_counts(exp_id) if n == 2][1:] and _stored(exp_id)[0], "2+2")
        a, b = sorted(both, key=lambda t: t.sequence_id)
        _quota(cluster, "0")  # Kueue cannot admit a preempted trial again
        # A's evicted run ends as slowly as on a real cluster (terminationGracePeriodSeconds: cancelGracePeriod
        # + 5): its keeper retries its SIGTERM exit's report (refused: the requeued trial is unregistered).
        cluster.kubelet.grace_cap = 10.0
        preempt(a)
        await until(
            lambda: (
                (t := next(t for t in _stored(exp_id)[0] if t.id == a.id)).status is TrialJobStatus.WAITING
                and "Preempted by Kueue" in (t.message or "")
            ),
            "trial A requeued in the store",
        )
    finally:
        os.kill(manager.pid, signal.SIGKILL)  # the manager dies: no clean-up, the objects and Workloads stay
        await manager.wait()
    cluster.kubelet.grace_cap = 0.5
    preempt(b)  # while no manager runs: B is RUNNING in the store
    await cluster.wait_for(lambda c: not pods(b), timeout=30, message="B's evicted pod gone")
    assert pods(a), "A's evicted pod ended before the resume: the test no longer covers that case"
    release.touch()  # the next runs go to their end
    # While no manager runs, Kueue's reason changes (a smaller quota, still too small for a trial's 0.5 CPU).
    _quota(cluster, "0.25")

    store = open_store()
    service = PLATFORMS[platform][1](platform_config, experiment_id=exp_id, experiment_dir=tmp_path / "home" / exp_id)
    statuses: dict[str, list[TrialJobDetail]] = {a.id: [], b.id: []}
    metrics: list[TrialJobMetric] = []
    service.events.on("trial_status", lambda d: statuses[d.id].append(d))
    service.add_trial_job_metric_listener(metrics.append)
    exp = Experiment.resume(exp_id, store=store, service=service, control_socket=False)
    task = asyncio.create_task(exp.run())
    try:
        # Re-attached, each read its Workload: the same WAITING trial, with Kueue's reason of now.
        await until(
            lambda: (
                all(any("0.25 more needed" in (d.message or "") for d in s) for s in statuses.values()) or task.done()
            ),
            "Kueue's reason",
        )
        assert not task.done(), task
        stored, stored_metrics = _stored(exp_id)
        assert sorted((t.id, t.attempt, t.status) for t in stored) == sorted(
            (t.id, 1, TrialJobStatus.WAITING) for t in (a, b)
        )
        for t in (a, b):
            now = service.reporter.detail(t.id)
            assert now.status is TrialJobStatus.WAITING and (now.message or "").startswith("Preempted by Kueue"), now
            assert len(stored_metrics[t.id]) == 2
            objects = cluster.list(service.plural, label_selector=f"nni-ts.io/trial={t.id}")
            assert [o["metadata"]["name"] for o in objects] == [t.detail.platform_data["job"]]
            assert kq.is_suspended(objects[0])
        # Kueue admits them again: they run in new pods, to their end.
        _quota(cluster, "1")
        async with asyncio.timeout(120):
            result = await task
    finally:
        if not task.done():
            exp.stop("the test ended")
            await asyncio.wait_for(task, 60)
        store.close()

    assert result.status == "DONE", result.message
    assert sorted((t.id, t.attempt, t.status) for t in result.trials) == sorted(
        (t.id, 1, TrialJobStatus.SUCCEEDED) for t in (a, b)
    ), [(t.id, t.status, t.message) for t in result.trials]
    assert runs.read_text() == "run\n" * 4  # each: the preempted run and the one after the resume; no other
    stored, stored_metrics = _stored(exp_id)
    for t in stored:
        # WAITING from its re-attach until Kueue admitted it again; never FAILED or UNKNOWN, nor RUNNING early.
        changes = [d.status for d in statuses[t.id]]
        compact = [c for i, c in enumerate(changes) if i == 0 or changes[i - 1] is not c]
        assert compact == [TrialJobStatus.WAITING, TrialJobStatus.RUNNING, TrialJobStatus.SUCCEEDED], (t.id, changes)
        # Every metric once: the resumed manager got only the final result (the new run's 1 and 2 were skipped).
        assert [m.sequence for m in metrics if m.trial_job_id == t.id] == [2]
        values = [json.loads(m.data)["value"] for m in stored_metrics[t.id]]
        assert [m.type for m in stored_metrics[t.id]] == ["PERIODICAL", "PERIODICAL", "FINAL"], values
        assert [float(v) for v in values] == [1, 2, t.parameters["x"]], values
        assert t.detail is not None and t.detail.platform_data["requeues"] == 1, t.detail.platform_data
