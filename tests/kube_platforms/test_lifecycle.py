"""The Kubernetes trial's lifecycle as data: the allowed phase transitions, and the terminal status as a
pure function of the facts (exit codes, job conditions, pod problems, deletions, events), from a table."""

from __future__ import annotations

import pytest

from nni_ts.models import TrialJobStatus
from nni_ts.platforms.kubernetes.lifecycle import (
    TRANSITIONS,
    Facts,
    Names,
    Phase,
    TransitionError,
    check_transition,
    decide,
)
from nni_ts.platforms.kubernetes.status import JobView, PodProblem

N = Names("TFJob", "job-1", "/nfs/trial", "job-1-worker-0")
FAILED_JOB = JobView("failed", "The TFJob job-1 failed (TFJobFailed): 1 Worker replica(s) failed.")
FC_DELETED = JobView("failed", "The Framework completed with code -101 (PodExternalDeleted).", None, True)
EVICTED = PodProblem("evicted", "job-1-worker-0", "The pod job-1-worker-0 was evicted: low on memory.")
OOM = PodProblem("oom", "job-1-worker-0", "OOMKilled; raise the role's memorySize.")

F = TrialJobStatus.FAILED
CASES: list[tuple[str, Facts, TrialJobStatus, bool, str]] = [
    # (case, facts, status, infrastructure, a part of the message)
    ("keeper 0", Facts(keeper_exit=0), TrialJobStatus.SUCCEEDED, False, ""),
    ("keeper 0 beats an eviction after", Facts(keeper_exit=0, problem=EVICTED), TrialJobStatus.SUCCEEDED, False, ""),
    ("keeper 1", Facts(keeper_exit=1, job_final=FAILED_JOB), F, False, "exited with code 1"),
    ("keeper 1 after a pod deletion is the trial's", Facts(keeper_exit=1, pod_deleted="p"), F, False, "code 1"),
    ("pod deleted, keeper 143", Facts(keeper_exit=143, pod_deleted="p", job_final=FAILED_JOB), F, True, "deleted"),
    ("pod deleted, no exit", Facts(pod_deleted="p"), F, True, "kubectl drain"),
    ("evicted, keeper 143", Facts(keeper_exit=143, problem=EVICTED), F, True, "evicted"),
    ("evicted, keeper 137", Facts(keeper_exit=137, problem=EVICTED), F, True, "evicted"),
    ("FC PodExternalDeleted, keeper 143", Facts(keeper_exit=143, job_final=FC_DELETED), F, True, "-101"),
    ("job vanished", Facts(job_vanished=True), F, True, "deleted outside nni-ts"),
    ("job vanished after keeper 0", Facts(keeper_exit=0, job_vanished=True), TrialJobStatus.SUCCEEDED, False, ""),
    ("another replica failed, keeper 143", Facts(keeper_exit=143, job_final=FAILED_JOB), F, False, "stopped with it"),
    ("OOM", Facts(keeper_exit=137, problem=OOM, job_final=FAILED_JOB), F, False, "memorySize"),
    ("cannot create", Facts(cannot_create="exceeded quota: q"), F, False, "cannot create its pods: exceeded quota"),
    ("forced", Facts(forced=("pendingTimeout", False), keeper_exit=143), F, False, "pendingTimeout"),
    ("cancelled", Facts(cancel_status=TrialJobStatus.USER_CANCELED, keeper_exit=143), TrialJobStatus.USER_CANCELED,
     False, "Cancelled"),
    ("no exit record", Facts(job_final=JobView("succeeded", None, 0)), F, False, "left no exit record"),
    ("exit in a rotated log", Facts(log_exit=(0, 3), job_final=JobView("succeeded", None, 0)),
     TrialJobStatus.SUCCEEDED, False, "records from #3 on were lost"),
    ("exit 2 in a rotated log", Facts(log_exit=(2, 1), job_final=FAILED_JOB), F, False,
     "exited with code 2. Its metric records from #1 on were lost"),
    ("the keeper's exit wins", Facts(keeper_exit=0, log_exit=(0, 3)), TrialJobStatus.SUCCEEDED, False, ""),
    ("failed, no exit, events", Facts(job_final=FAILED_JOB, warnings=["FailedScheduling: 0/1 nodes"]), F, False,
     "FailedScheduling"),
]  # fmt: skip


@pytest.mark.parametrize(("facts", "status", "infra", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(facts: Facts, status: TrialJobStatus, infra: bool, text: str) -> None:
    d = decide(facts, N)
    assert d.status is status
    assert d.infrastructure is infra, d.message
    assert text in (d.message or ""), d.message


def test_no_exit_record_names_the_storage_mode() -> None:
    """A Job that succeeded with no exit record: with NFS the storage settings are the suspect; without shared
    storage they are not (there are none), the pod log is."""
    facts = Facts(job_final=JobView("succeeded", None, 0))
    nfs = decide(facts, N)
    assert "trainingService.storage" in (nfs.message or "")
    none = decide(facts, Names("Job", "job-1", None, "job-1-abcde", shared_storage=False))
    assert none.status is TrialJobStatus.FAILED
    assert "trainingService.storage" not in (none.message or "") and "job-1-abcde" in (none.message or "")
    assert "log" in (none.message or "")


def test_transitions_are_data_and_enforced() -> None:
    assert TRANSITIONS[Phase.CONCLUDED] == frozenset()
    assert all(Phase.CONCLUDED in allowed for p, allowed in TRANSITIONS.items() if p is not Phase.CONCLUDED)
    check_transition(Phase.ACTIVE, Phase.SETTLING)
    for bad in [(Phase.STOPPING, Phase.ACTIVE), (Phase.CONCLUDED, Phase.STOPPING), (Phase.SETTLING, Phase.ACTIVE)]:
        with pytest.raises(TransitionError):
            check_transition(*bad)


def test_the_hooks_are_abstract() -> None:
    from nni_ts.platforms.kubernetes.service import KubernetesTrainingService

    assert {"plural", "kind", "_job_name", "_primary_pod", "_build_job", "_job_view", "_stop_job"} <= set(
        KubernetesTrainingService.__abstractmethods__
    )
