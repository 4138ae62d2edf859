"""What a job's and its pods' status mean for a trial, with messages a user can act on.

Pure functions over the JSON objects the API server returns, so that they can be tested on their own:

* :func:`kubeflow_job_view` reads a TFJob's / PyTorchJob's ``status.conditions`` (PROTOCOLS §4);
* :func:`trainjob_view` reads a Kubeflow Trainer v2 TrainJob's conditions and ``jobsStatus``;
* :func:`framework_view` reads a Framework's ``status.state`` and its attempt's ``completionStatus`` (§5);
* :func:`batch_job_view` reads a ``batch/v1`` Job's conditions (Complete, Failed and its reason);
* :func:`pod_problem` finds why a pod is stuck or died: ImagePullBackOff, Unschedulable, OOMKilled,
  eviction, a configuration error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "JobView",
    "PodProblem",
    "batch_job_view",
    "framework_view",
    "is_disrupted",
    "kubeflow_job_view",
    "pod_phase",
    "pod_problem",
    "trainjob_view",
]

JSON = dict[str, Any]
Phase = Literal["pending", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class JobView:
    """A job's state as a trial sees it."""

    phase: Phase
    message: str | None = None
    exit_code: int | None = None
    #: The platform, not the user's code, ended the job (a pod deleted or evicted, a node lost).
    infrastructure: bool = False
    #: The reason of the job's failure as its controller gives it (a batch Job's DeadlineExceeded...).
    reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("succeeded", "failed")


@dataclass(frozen=True)
class PodProblem:
    """Why a pod does not run, or why it died."""

    #: ``evicted`` covers every way the platform took the pod away: eviction, a lost node, preemption.
    kind: Literal["image", "unschedulable", "config", "oom", "evicted", "crashloop"]
    pod: str
    message: str

    @property
    def infrastructure(self) -> bool:
        return self.kind == "evicted"


# ---------------------------------------------------------------------- Kubeflow


def _conditions(obj: JSON) -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and isinstance(cond.get("type"), str):
            out[cond["type"]] = cond
    return out


def kubeflow_job_view(obj: JSON) -> JobView:
    """The state of a TFJob or PyTorchJob from its conditions. Finished once Succeeded or Failed is True."""
    conds = _conditions(obj)
    kind = obj.get("kind", "job")
    name = (obj.get("metadata") or {}).get("name", "?")

    def true(kind_: str) -> JSON | None:
        c = conds.get(kind_)
        return c if c is not None and c.get("status") == "True" else None

    if (c := true("Succeeded")) is not None:
        return JobView("succeeded", c.get("message"), 0)
    if (c := true("Failed")) is not None:
        reason = c.get("reason") or "Failed"
        message = c.get("message") or f"The {kind} {name} failed."
        return JobView("failed", f"The {kind} {name} failed ({reason}): {message}")
    if true("Running") is not None or true("Restarting") is not None:
        return JobView("running")
    return JobView("pending")


# ---------------------------------------------------------------------- Kubeflow Trainer v2


def trainjob_view(obj: JSON) -> JobView:
    """The state of a TrainJob (Trainer v2.0 to v2.3). Finished once ``Complete`` or ``Failed`` is True
    (copied from its JobSet's ``Completed`` / ``Failed``, or ``Failed`` with the reason
    ``TrainingRuntimeNotSupported`` or ``DeadlineExceeded``). There is no Running condition: a TrainJob
    runs once one of its replicated jobs has ready pods (``status.jobsStatus[].ready``); a suspended one
    (``Suspended``: Kueue holds it) is pending."""
    conds = _conditions(obj)
    name = (obj.get("metadata") or {}).get("name", "?")

    def true(kind: str) -> JSON | None:
        c = conds.get(kind)
        return c if c is not None and c.get("status") == "True" else None

    if (c := true("Failed")) is not None:
        reason = c.get("reason") or "Failed"
        message = str(c.get("message") or "no message given").strip()
        return JobView("failed", f"The TrainJob {name} failed ({reason}): {message}", reason=reason)
    if (c := true("Complete")) is not None:
        return JobView("succeeded", c.get("message"), 0)
    if true("Suspended") is not None:
        return JobView("pending", "The TrainJob is suspended.")
    for job in (obj.get("status") or {}).get("jobsStatus") or []:
        if isinstance(job, dict) and int(job.get("ready") or 0) > 0:
            return JobView("running")
    return JobView("pending")


# ---------------------------------------------------------------------- FrameworkController

#: Negative completion codes that mean the platform ended the framework, not the user's code.
_INFRA_CODES = {-100, -101, -110, -111, -120, -300, -310}
_CODE_HINTS = {
    -100: "the framework's ConfigMap was deleted outside nni-ts",
    -101: "a pod of the framework was deleted outside nni-ts (evicted, or its node was lost)",
    -110: "the controller's local cache timed out creating the ConfigMap",
    -111: "the controller's local cache timed out creating a pod",
    -120: "a pod could not be created (a transient error)",
    -200: "a pod could not be created (a permanent error: the pod spec was rejected)",
    -210: "the framework was stopped",
    -300: "a pod failed without a failed container (evicted, or its node was lost)",
    -310: "a pod could not be created (an unknown error)",
}


def framework_view(obj: JSON) -> JobView:
    """The state of a Framework: running from AttemptRunning on, finished at Completed."""
    status = obj.get("status") or {}
    state = status.get("state")
    name = (obj.get("metadata") or {}).get("name", "?")
    if state != "Completed":
        if state in ("AttemptRunning", "AttemptDeletionPending", "AttemptDeletionRequested", "AttemptDeleting"):
            return JobView("running")
        return JobView("pending")
    attempt = status.get("attemptStatus") or {}
    comp = attempt.get("completionStatus") or {}
    code = comp.get("code")
    type_ = comp.get("type") or {}
    if type_.get("name") == "Succeeded" or code == 0:
        return JobView("succeeded", None, 0)
    phrase = comp.get("phrase") or "Failed"
    attributes = ", ".join(type_.get("attributes") or [])
    diagnostics = str(comp.get("diagnostics") or "").strip()
    parts = [f"The Framework {name} completed with code {code} ({phrase}{'; ' + attributes if attributes else ''})"]
    hint = _CODE_HINTS.get(code) if isinstance(code, int) else None
    if isinstance(code, int) and code > 0 and code not in (200, 201, 210):
        hint = f"a task's command exited with code {code}"
    if hint:
        parts.append(hint)
    message = ": ".join(parts) + "."
    if diagnostics:
        message += f" Diagnostics: {diagnostics[:2000]}"
    exit_code = code if isinstance(code, int) and code > 0 else None
    return JobView("failed", message, exit_code, infrastructure=isinstance(code, int) and code in _INFRA_CODES)


# ---------------------------------------------------------------------- batch/v1 Job

#: What a failed Job's reason means for the trial (the Job's own message follows).
_JOB_REASONS = {
    "PodFailurePolicy": "the trial's command exited with a non-zero code",
    "BackoffLimitExceeded": "its pod failed more times than backoffLimit allows (trainingService.backoffLimit), "
    "without the trial's own exit code: deleted, or its node lost",
    "DeadlineExceeded": "it ran longer than its activeDeadlineSeconds (maxTrialDuration)",
}
_EXIT_CODE = re.compile(r"failed with exit code (\d+)")


def batch_job_view(obj: JSON) -> JobView:
    """The state of a ``batch/v1`` Job from its conditions: finished once ``Complete`` or ``Failed`` is True
    (``SuccessCriteriaMet`` and ``FailureTarget`` come first, while the pod still terminates); running while
    a pod is ready. A failure names the Job's reason (PodFailurePolicy, BackoffLimitExceeded,
    DeadlineExceeded) and what it means; BackoffLimitExceeded is the platform's failure, not the trial's."""
    conds = _conditions(obj)
    name = (obj.get("metadata") or {}).get("name", "?")
    status = obj.get("status") or {}

    def true(kind: str) -> JSON | None:
        c = conds.get(kind)
        return c if c is not None and c.get("status") == "True" else None

    if true("Complete") is not None:
        return JobView("succeeded", None, 0)
    if (c := true("Failed")) is not None:
        reason = str(c.get("reason") or "Failed")
        detail = str(c.get("message") or "").strip()
        meaning = _JOB_REASONS.get(reason)
        message = f"The Job {name} failed ({reason}){': ' + meaning if meaning else ''}."
        if detail:
            message += f" {detail}{'' if detail.endswith('.') else '.'}"
        code = _EXIT_CODE.search(detail) if reason == "PodFailurePolicy" else None
        return JobView(
            "failed",
            message,
            int(code.group(1)) if code else None,
            infrastructure=reason == "BackoffLimitExceeded",
            reason=reason,
        )
    if true("Suspended") is None and int(status.get("ready") or 0) > 0:
        return JobView("running")
    return JobView("pending")


# ---------------------------------------------------------------------- pods


def is_disrupted(pod: JSON) -> str | None:
    """Why the cluster took the pod away (its ``DisruptionTarget`` condition: an eviction, a preemption,
    a node drained), or None. A Job's podFailurePolicy ignores such a pod and replaces it."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            reason = str(cond.get("reason") or "DisruptionTarget")
            message = str(cond.get("message") or "").strip()
            return f"{reason}{': ' + message if message else ''}"
    return None


#: Pod failure reasons that mean the node, not the trial, ended the pod.
_LOST_REASONS = {"NodeLost", "Shutdown", "Terminated", "NodeShutdown", "UnexpectedAdmissionError", "Preempting"}


def pod_phase(pod: JSON) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _limit(pod: JSON, container: str) -> str | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == container:
            limits = (c.get("resources") or {}).get("limits") or {}
            value = limits.get("memory")
            return str(value) if value is not None else None
    return None


def pod_problem(pod: JSON) -> PodProblem | None:
    """The first thing that keeps ``pod`` from running or that killed it, or None."""
    meta = pod.get("metadata") or {}
    name = str(meta.get("name", "?"))
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    reason = status.get("reason")
    if phase == "Failed" and reason == "Evicted":
        return PodProblem("evicted", name, f"The pod {name} was evicted: {status.get('message') or 'no reason given'}.")
    if phase == "Unknown" or (phase == "Failed" and reason in _LOST_REASONS):
        why = status.get("message") or reason or "its node stopped answering"
        return PodProblem("evicted", name, f"The pod {name} was lost with its node ({reason or phase}): {why}.")
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        reason = waiting.get("reason")
        detail = str(waiting.get("message") or "").strip()
        if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"):
            image = cs.get("image") or "?"
            return PodProblem(
                "image",
                name,
                f"The image {image!r} of pod {name} cannot be pulled ({reason}){': ' + detail if detail else ''}. "
                "Check the role's dockerImage, and privateRegistryAuthPath for a private registry.",
            )
        if reason in ("CreateContainerConfigError", "CreateContainerError", "RunContainerError"):
            return PodProblem(
                "config", name, f"The container of pod {name} cannot start ({reason}){': ' + detail if detail else ''}."
            )
        for key in ("state", "lastState"):
            term = (cs.get(key) or {}).get("terminated") or {}
            if term.get("reason") == "OOMKilled":
                limit = _limit(pod, str(cs.get("name")))
                return PodProblem(
                    "oom",
                    name,
                    f"The container of pod {name} was killed for using more memory than its limit"
                    f"{' (' + limit + ')' if limit else ''} (OOMKilled, exit code {term.get('exitCode', 137)}); "
                    "raise the role's memorySize.",
                )
        if reason == "CrashLoopBackOff":
            return PodProblem("crashloop", name, f"The container of pod {name} keeps crashing (CrashLoopBackOff).")
    if phase == "Pending":
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                why = str(cond.get("message") or cond.get("reason") or "no node fits").strip()
                return PodProblem(
                    "unschedulable",
                    name,
                    f"The pod {name} cannot be scheduled: {why}. Lower the role's cpuNumber, memorySize or "
                    "gpuNumber, or add capacity to the cluster.",
                )
    return None


def terminated_exit_code(pod: JSON, container: str | None = None) -> int | None:
    """The exit code of the pod's (first, or named) container once it terminated."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if container is not None and cs.get("name") != container:
            continue
        term = (cs.get("state") or {}).get("terminated") or {}
        if "exitCode" in term:
            return int(term["exitCode"])
    return None
