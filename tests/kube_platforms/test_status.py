"""TFJob conditions, Framework states and pod problems mapped to what a trial's status and message say."""

from __future__ import annotations

from typing import Any

import pytest

from nni_ts.platforms.kubernetes.status import (
    batch_job_view,
    framework_view,
    is_disrupted,
    kubeflow_job_view,
    pod_problem,
    terminated_exit_code,
    trainjob_view,
)


def _job(*conditions: tuple[str, str], message: str = "") -> dict[str, Any]:
    return {
        "kind": "TFJob",
        "metadata": {"name": "j"},
        "status": {
            "conditions": [
                {"type": t, "status": s, "reason": f"TFJob{t}", "message": message or f"{t} now"} for t, s in conditions
            ]
        },
    }


def test_kubeflow_conditions() -> None:
    assert kubeflow_job_view({"metadata": {"name": "j"}}).phase == "pending"
    assert kubeflow_job_view(_job(("Created", "True"))).phase == "pending"
    assert kubeflow_job_view(_job(("Created", "True"), ("Running", "True"))).phase == "running"
    assert kubeflow_job_view(_job(("Running", "True"), ("Restarting", "True"))).phase == "running"
    done = kubeflow_job_view(_job(("Running", "False"), ("Succeeded", "True")))
    assert done.phase == "succeeded" and done.finished
    failed = kubeflow_job_view(
        _job(
            ("Running", "False"),
            ("Failed", "True"),
            message="TFJob default/j has failed because 1 Worker replica(s) failed.",
        )
    )
    assert failed.phase == "failed" and "1 Worker replica(s) failed" in (failed.message or "")
    assert "TFJobFailed" in (failed.message or "")
    assert not failed.infrastructure


def _trainjob(*conditions: tuple[str, str, str], ready: int = 0, active: int = 0) -> dict[str, Any]:
    """A TrainJob's status as Trainer v2.3 writes it: metav1 conditions and the JobSet's jobsStatus."""
    return {
        "kind": "TrainJob",
        "metadata": {"name": "tj"},
        "status": {
            "conditions": [{"type": t, "status": s, "reason": r, "message": f"{r} message"} for t, s, r in conditions],
            "jobsStatus": [
                {"name": "node", "ready": ready, "succeeded": 0, "failed": 0, "active": active, "suspended": 0}
            ],
        },
    }


def test_trainjob_conditions_and_jobs_status() -> None:
    # No condition at all (the SDK's "Created"), and pods created but not ready: pending.
    assert trainjob_view({"metadata": {"name": "tj"}}).phase == "pending"
    assert trainjob_view(_trainjob(active=1)).phase == "pending"
    # There is no Running condition: ready pods of a replicated job say it runs.
    assert trainjob_view(_trainjob(ready=1, active=1)).phase == "running"
    held = trainjob_view(_trainjob(("Suspended", "True", "Suspended")))
    assert held.phase == "pending" and held.message == "The TrainJob is suspended."
    resumed = trainjob_view(_trainjob(("Suspended", "False", "Resumed"), ready=1))
    assert resumed.phase == "running"
    done = trainjob_view(_trainjob(("Suspended", "False", "Resumed"), ("Complete", "True", "AllJobsCompleted")))
    assert done.phase == "succeeded" and done.finished and done.exit_code == 0
    failed = trainjob_view(_trainjob(("Failed", "True", "FailedJobs")))
    assert failed.phase == "failed" and failed.message == "The TrainJob tj failed (FailedJobs): FailedJobs message"
    deadline = trainjob_view(_trainjob(("Failed", "True", "DeadlineExceeded")))
    assert "(DeadlineExceeded)" in (deadline.message or "") and not deadline.infrastructure
    assert deadline.reason == "DeadlineExceeded" and failed.reason == "FailedJobs"
    # A condition that is not True does not count.
    assert trainjob_view(_trainjob(("Complete", "False", "Pending"))).phase == "pending"


def _fw(state: str, code: int | None = None, name: str = "Failed", attrs: list[str] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"state": state}
    if code is not None:
        status["attemptStatus"] = {
            "completionStatus": {
                "code": code,
                "phrase": "Phrase",
                "type": {"name": name, "attributes": attrs or []},
                "diagnostics": "container exited: boom",
            }
        }
    return {"kind": "Framework", "metadata": {"name": "fw"}, "status": status}


def _batch(*conditions: tuple[str, str, str, str], **status: Any) -> dict[str, Any]:
    return {
        "kind": "Job",
        "metadata": {"name": "j"},
        "status": {
            **status,
            "conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions],
        },
    }


def test_batch_job_conditions_and_reasons() -> None:
    assert batch_job_view({"metadata": {"name": "j"}}).phase == "pending"
    assert batch_job_view(_batch(active=1, ready=0)).phase == "pending"  # the pod is not running yet
    assert batch_job_view(_batch(active=1, ready=1)).phase == "running"
    suspended = _batch(("Suspended", "True", "JobSuspended", "Job suspended"), active=0, ready=1)
    assert batch_job_view(suspended).phase == "pending"
    done = batch_job_view(
        _batch(("SuccessCriteriaMet", "True", "CompletionsReached", ""), ("Complete", "True", "", ""))
    )
    assert done.phase == "succeeded" and done.finished and done.exit_code == 0
    # FailureTarget comes first, while the pod still terminates: not finished yet.
    target = _batch(("FailureTarget", "True", "DeadlineExceeded", "Job was active longer than specified deadline"))
    assert not batch_job_view(target).finished
    policy = batch_job_view(
        _batch(
            ("FailureTarget", "True", "PodFailurePolicy", "x"),
            (
                "Failed",
                "True",
                "PodFailurePolicy",
                "Container trial for pod default/j-abcde failed with exit code 4 matching FailJob rule at index 1",
            ),
        )
    )
    assert policy.phase == "failed" and policy.reason == "PodFailurePolicy" and policy.exit_code == 4
    assert policy.message is not None and policy.message.startswith("The Job j failed (PodFailurePolicy): the trial")
    assert "exit code 4 matching FailJob rule at index 1." in policy.message and not policy.infrastructure
    deadline = batch_job_view(
        _batch(("Failed", "True", "DeadlineExceeded", "Job was active longer than specified deadline"))
    )
    assert deadline.reason == "DeadlineExceeded" and "maxTrialDuration" in (deadline.message or "")
    assert not deadline.infrastructure and deadline.exit_code is None
    backoff = batch_job_view(
        _batch(("Failed", "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
    )
    assert backoff.infrastructure and "backoffLimit" in (backoff.message or "")  # the platform's failure
    other = batch_job_view(_batch(("Failed", "True", "", "")))
    assert other.message == "The Job j failed (Failed)." and other.reason == "Failed"


def test_a_disrupted_pod_says_why() -> None:
    pod: dict[str, Any] = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert is_disrupted(pod) is None
    pod["status"]["conditions"].append(
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "Eviction API"}
    )
    assert is_disrupted(pod) == "EvictionByEvictionAPI: Eviction API"
    pod["status"]["conditions"][-1]["status"] = "False"
    assert is_disrupted(pod) is None


@pytest.mark.parametrize(
    ("state", "phase"),
    [("AttemptCreationPending", "pending"), ("AttemptPreparing", "pending"), ("AttemptRunning", "running"),
     ("AttemptDeletionPending", "running")],
)  # fmt: skip
def test_framework_states(state: str, phase: str) -> None:
    assert framework_view(_fw(state)).phase == phase


def test_framework_completion_codes() -> None:
    assert framework_view(_fw("Completed", 0, "Succeeded")).phase == "succeeded"
    user = framework_view(_fw("Completed", 3, attrs=[]))
    assert user.phase == "failed" and user.exit_code == 3 and not user.infrastructure
    assert "exited with code 3" in (user.message or "") and "boom" in (user.message or "")
    permanent = framework_view(_fw("Completed", 210, attrs=["Permanent"]))
    assert "Permanent" in (permanent.message or "") and not permanent.infrastructure
    deleted = framework_view(_fw("Completed", -101, attrs=["Transient"]))
    assert deleted.infrastructure and "deleted outside nni-ts" in (deleted.message or "")
    evicted = framework_view(_fw("Completed", -300))
    assert evicted.infrastructure
    rejected = framework_view(_fw("Completed", -200, attrs=["Permanent"]))
    assert not rejected.infrastructure and "rejected" in (rejected.message or "")
    stopped = framework_view(_fw("Completed", -210))
    assert stopped.phase == "failed" and "stopped" in (stopped.message or "")


def _pod(phase: str = "Pending", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p-worker-0"},
        "spec": {"containers": [{"name": "tensorflow", "resources": {"limits": {"memory": "512Mi"}}}]},
        "status": {"phase": phase, **status},
    }


def test_pod_problems() -> None:
    assert pod_problem(_pod("Running")) is None
    image = pod_problem(
        _pod(containerStatuses=[{"name": "tensorflow", "image": "bad:1", "state": {"waiting": {
            "reason": "ImagePullBackOff", "message": 'Back-off pulling image "bad:1"'}}}])
    )  # fmt: skip
    assert image is not None and image.kind == "image" and "bad:1" in image.message and "dockerImage" in image.message
    unsched = pod_problem(
        _pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                          "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}])
    )  # fmt: skip
    assert unsched is not None and unsched.kind == "unschedulable" and "Insufficient nvidia.com/gpu" in unsched.message
    oom = pod_problem(
        _pod("Failed", containerStatuses=[{"name": "tensorflow", "state": {"terminated": {
            "reason": "OOMKilled", "exitCode": 137}}}])
    )  # fmt: skip
    assert oom is not None and oom.kind == "oom" and "512Mi" in oom.message and "memorySize" in oom.message
    evicted = pod_problem(_pod("Failed", reason="Evicted", message="The node was low on resource: memory."))
    assert evicted is not None and evicted.infrastructure and "low on resource" in evicted.message
    lost = pod_problem(_pod("Failed", reason="NodeLost", message="Node n1 which was running pod p is unresponsive"))
    assert lost is not None and lost.infrastructure and "lost with its node" in lost.message
    unknown = pod_problem(_pod("Unknown"))
    assert unknown is not None and unknown.infrastructure
    config = pod_problem(
        _pod(containerStatuses=[{"name": "c", "state": {"waiting": {"reason": "CreateContainerConfigError",
                                                                      "message": 'secret "x" not found'}}}])
    )  # fmt: skip
    assert config is not None and config.kind == "config"
    done = _pod("Succeeded", containerStatuses=[{"name": "tensorflow", "state": {"terminated": {"exitCode": 0}}}])
    assert terminated_exit_code(done) == 0 and terminated_exit_code(_pod()) is None
