"""A simulated Job controller for ``batch/v1`` Jobs (what kube-controller-manager does for them).

What it does, as Kubernetes 1.31+ does:

* Pods ``<job>-<random>`` from ``spec.template`` with the labels ``batch.kubernetes.io/job-name``,
  ``job-name``, ``batch.kubernetes.io/controller-uid`` and ``controller-uid``, and an ownerReference to
  the job; up to ``parallelism`` at once until ``completions`` (default 1) pods succeeded
  (``completionMode: NonIndexed``); with ``Indexed`` each pod gets the lowest index not yet succeeded or
  running (label and annotation ``batch.kubernetes.io/job-completion-index``, env ``JOB_COMPLETION_INDEX``)
  and the job succeeds once every index has (no ``backoffLimitPerIndex``).
* ``suspend``: no pods while true (active ones are deleted), condition ``Suspended`` True
  (``JobSuspended``), then False (``JobResumed``) on resume, when ``startTime`` starts again.
* ``backoffLimit`` (default 6): more failed pods than that → ``FailureTarget`` then, once no pod is
  left running, ``Failed``, both with reason ``BackoffLimitExceeded``.
* ``podFailurePolicy``: rules in order, ``onExitCodes`` (``containerName``, ``operator`` In/NotIn,
  ``values``) and ``onPodConditions`` (``type``, ``status``, default True); the first that matches a
  failed pod decides: ``FailJob`` (reason ``PodFailurePolicy``), ``Ignore`` (not counted against
  ``backoffLimit``, the pod is replaced), ``Count``. Requires ``restartPolicy: Never``.
* A pod that disappears before it ended (deleted by hand) counts as failed, with no exit code.
* ``podReplacementPolicy`` (defaulted by the API server: ``Failed`` with a podFailurePolicy, else
  ``TerminatingOrFailed``): with ``Failed`` a replacement is created only once the pod it replaces has
  ended (no two pods of a trial at once), else as soon as it is terminating.
* ``activeDeadlineSeconds`` → ``DeadlineExceeded``; ``ttlSecondsAfterFinished`` deletes the finished
  job (and, through the ownerReferences, its pods).
* Success: ``SuccessCriteriaMet`` then ``Complete`` (reason ``CompletionsReached``).
* ``status``: ``active``, ``ready``, ``succeeded``, ``failed``, ``terminating``, ``startTime``,
  ``completionTime``, ``conditions``.

The pods it has counted are remembered in an annotation on the job (a real controller uses a
finalizer on each pod), so that a pod deleted after it was counted is not counted twice.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import secrets
import string
from typing import Any

from ..store import Event
from ..util import JSON, ApiError, now_iso
from .base import Controller, owner_ref

__all__ = ["JobController", "match_pod_failure_policy"]

_COUNTED = "fake.nni-ts/counted-pods"
_REACHED = "Reached expected number of succeeded pods"
_SUFFIX = string.ascii_lowercase + string.digits


def _cond(status: JSON, type_: str) -> JSON | None:
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def _is_true(status: JSON, type_: str) -> bool:
    c = _cond(status, type_)
    return c is not None and c.get("status") == "True"


def _set_cond(status: JSON, type_: str, value: str, reason: str, message: str) -> bool:
    conditions = list(status.get("conditions") or [])
    now = now_iso()
    for i, c in enumerate(conditions):
        if c.get("type") == type_:
            if c.get("status") == value and c.get("reason") == reason:
                return False
            new = dict(c, status=value, reason=reason, message=message, lastProbeTime=now)
            if c.get("status") != value:
                new["lastTransitionTime"] = now
            conditions[i] = new
            status["conditions"] = conditions
            return True
    conditions.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastProbeTime": now,
            "lastTransitionTime": now,
        }
    )
    status["conditions"] = conditions
    return True


def _pod_ready(pod: JSON) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _parse_time(text: str) -> _dt.datetime:
    return _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.UTC)


def _terminated(pod: JSON) -> list[tuple[str, int]]:
    out = []
    for s in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (s.get("state") or {}).get("terminated")
        if term is not None:
            out.append((str(s.get("name")), int(term.get("exitCode", 0))))
    return out


def _index(pod: JSON) -> int:
    return int((pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-completion-index", -1))


def match_pod_failure_policy(policy: JSON | None, pod: JSON) -> tuple[str, int, str] | None:
    """The first rule of ``policy`` that matches failed ``pod``: ``(action, index, message)``, or None."""
    for index, rule in enumerate((policy or {}).get("rules") or []):
        action = str(rule.get("action", ""))
        codes = rule.get("onExitCodes")
        if codes is not None:
            operator = codes.get("operator", "In")
            values = {int(v) for v in codes.get("values") or []}
            for container, code in _terminated(pod):
                if codes.get("containerName") not in (None, container):
                    continue
                if code == 0:
                    continue  # a successful container never matches an exit-code rule
                if (operator == "In" and code in values) or (operator == "NotIn" and code not in values):
                    name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
                    return (
                        action,
                        index,
                        f"Container {container} for pod {name} failed with exit code {code} matching "
                        f"{action} rule at index {index}",
                    )
            continue
        for wanted in rule.get("onPodConditions") or []:
            for c in (pod.get("status") or {}).get("conditions") or []:
                if c.get("type") == wanted.get("type") and c.get("status") == wanted.get("status", "True"):
                    name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
                    return (
                        action,
                        index,
                        f"Pod {name} has condition {c['type']} matching {action} rule at index {index}",
                    )
    return None


class JobController(Controller):
    name = "job-controller"
    group = "batch"
    plural = "jobs"
    kind = "Job"

    def __init__(self, api: Any) -> None:
        #: The last state of this controller's pods that were removed, by uid (a real controller keeps
        #: them with its tracking finalizer until it has counted them).
        self._gone: dict[str, JSON] = {}
        super().__init__(api)

    def _on_event(self, event: Event) -> None:
        if event.type == "DELETED" and event.gr == ("", "pods") and self.owner_of(event) is not None:
            self._gone[event.obj["metadata"]["uid"]] = event.obj
            while len(self._gone) > 10000:  # pods of deleted jobs are never looked up: forget the oldest
                del self._gone[next(iter(self._gone))]
        super()._on_event(event)

    def reconcile(self, namespace: str, name: str) -> None:
        job = self.primary(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        rtype = self.api.by_gr[(self.group, self.plural)]
        spec: JSON = job.get("spec") or {}
        status = copy.deepcopy(job.get("status") or {})
        before = copy.deepcopy(status)
        counted: dict[str, str] = json.loads((job["metadata"].get("annotations") or {}).get(_COUNTED, "{}"))
        pods = [p for p in self.owned_pods(job)]
        live = {p["metadata"]["uid"]: p for p in pods}
        finished = _is_true(status, "Complete") or _is_true(status, "Failed")
        failure_target = _cond(status, "FailureTarget")
        success_target = _is_true(status, "SuccessCriteriaMet")
        had_target = failure_target is not None or success_target

        # Count what ended: succeeded and failed pods, and pods that vanished before they ended.
        ignored = 0
        for uid, pod in live.items():
            phase = (pod.get("status") or {}).get("phase")
            if counted.get(uid, "active") != "active" or phase not in ("Succeeded", "Failed"):
                continue  # already counted (or removed by this controller), or still running
            if phase == "Succeeded":
                counted[uid] = "succeeded"
                continue
            verdict = match_pod_failure_policy(spec.get("podFailurePolicy"), pod)
            if verdict is not None and verdict[0] == "Ignore":
                counted[uid] = "ignored"
                ignored += 1
                continue
            counted[uid] = "failed"
            if verdict is not None and verdict[0] == "FailJob" and failure_target is None and not finished:
                _set_cond(status, "FailureTarget", "True", "PodFailurePolicy", verdict[2])
                failure_target = _cond(status, "FailureTarget")
        for uid in list(counted):
            if uid not in live and counted[uid] == "active":
                # Removed before it was counted: a pod deleted while it ran counts as failed, unless the
                # podFailurePolicy ignores it (an evicted pod carries the DisruptionTarget condition).
                last = self._gone.get(uid)
                verdict = match_pod_failure_policy(spec.get("podFailurePolicy"), last) if last else None
                if last is not None and (last.get("status") or {}).get("phase") == "Succeeded":
                    counted[uid] = "succeeded"
                elif verdict is not None and verdict[0] == "Ignore":
                    counted[uid] = "ignored"
                    ignored += 1
                else:
                    counted[uid] = "failed"
                    if verdict is not None and verdict[0] == "FailJob" and failure_target is None and not finished:
                        _set_cond(status, "FailureTarget", "True", "PodFailurePolicy", verdict[2])
                        failure_target = _cond(status, "FailureTarget")
            if uid not in live:
                self._gone.pop(uid, None)
        for uid, pod in live.items():
            if uid not in counted and not pod["metadata"].get("deletionTimestamp"):
                counted[uid] = "active"
        indexed = spec.get("completionMode") == "Indexed"
        if indexed:  # succeeded indexes, not pods
            succeeded = len({_index(p) for p in pods if counted.get(p["metadata"]["uid"]) == "succeeded"})
        else:
            succeeded = sum(1 for v in counted.values() if v == "succeeded")
        failed = sum(1 for v in counted.values() if v == "failed")
        active_pods = [
            p
            for p in pods
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not p["metadata"].get("deletionTimestamp")
        ]
        terminating = [p for p in pods if p["metadata"].get("deletionTimestamp")]

        suspended = bool(spec.get("suspend"))
        completions = int(spec.get("completions", 1) or 1)
        parallelism = int(spec.get("parallelism", 1) if spec.get("parallelism") is not None else 1)
        backoff_limit = int(spec.get("backoffLimit", 6) if spec.get("backoffLimit") is not None else 6)

        if not finished:
            if suspended:
                if _set_cond(status, "Suspended", "True", "JobSuspended", "Job suspended"):
                    self.record(job, "Suspended", "Job suspended")
                for pod in active_pods:
                    self._delete_pod(pod, counted)
                active_pods = []
                status.pop("startTime", None)
            else:
                if _is_true(status, "Suspended"):
                    _set_cond(status, "Suspended", "False", "JobResumed", "Job resumed")
                    self.record(job, "Resumed", "Job resumed")
                status.setdefault("startTime", now_iso())
            if failure_target is None and not success_target and not suspended:
                restarts = sum(  # under restartPolicy OnFailure, container restarts count as failures
                    int(c.get("restartCount", 0))
                    for p in active_pods
                    for c in (p.get("status") or {}).get("containerStatuses") or []
                )
                if failed + restarts > backoff_limit:
                    message = "Job has reached the specified backoff limit"
                    _set_cond(status, "FailureTarget", "True", "BackoffLimitExceeded", message)
                    failure_target = _cond(status, "FailureTarget")
                elif succeeded >= completions:
                    _set_cond(
                        status,
                        "SuccessCriteriaMet",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    )
                    success_target = True
                else:
                    deadline = spec.get("activeDeadlineSeconds")
                    if deadline is not None and status.get("startTime"):
                        age = (_dt.datetime.now(_dt.UTC) - _parse_time(status["startTime"])).total_seconds()
                        if age >= float(deadline):
                            message = "Job was active longer than specified deadline"
                            _set_cond(status, "FailureTarget", "True", "DeadlineExceeded", message)
                            failure_target = _cond(status, "FailureTarget")
                        else:
                            self.enqueue_later(float(deadline) - age + 0.05, namespace, name)
            if failure_target is not None:
                for pod in active_pods:
                    self._delete_pod(pod, counted)
                active_pods = []
                if not had_target:
                    self.enqueue(namespace, name)  # FailureTarget is written on its own first, as a real cluster does
                elif not terminating and not any(
                    (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed") for p in pods
                ):
                    reason, message = failure_target.get("reason", ""), failure_target.get("message", "")
                    _set_cond(status, "Failed", "True", reason, message)
                    self.record(job, reason, message, "Warning")
                    status["completionTime"] = now_iso()  # as kubectl shows it; real Jobs leave it unset
            elif success_target:
                if not had_target:
                    self.enqueue(namespace, name)
                elif not active_pods and not terminating:
                    _set_cond(
                        status, "Complete", "True", "CompletionsReached", "Reached expected number of succeeded pods"
                    )
                    self.record(job, "Completed", "Job completed")
                    status["completionTime"] = now_iso()
            elif not suspended:
                want = min(parallelism, completions - succeeded) - len(active_pods)
                if spec.get("podReplacementPolicy") == "Failed":
                    want -= sum(
                        1 for p in terminating if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                    )
                taken = {_index(p) for p in active_pods} | {
                    _index(p) for p in pods if counted.get(p["metadata"]["uid"]) == "succeeded"
                }
                free = [i for i in range(completions) if i not in taken]
                for n in range(max(0, want)):
                    created = self._create_pod(job, free[n] if indexed and n < len(free) else None)
                    if created is not None:
                        counted[created["metadata"]["uid"]] = "active"
                        active_pods.append(created)
                if ignored:
                    self.record(job, "PodFailurePolicy", "A failed pod matched an Ignore rule; it was replaced")

        status["active"] = len(active_pods)
        status["ready"] = sum(
            1
            for p in active_pods
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
        )
        status["succeeded"] = succeeded
        status["failed"] = failed
        status["terminating"] = len(terminating)
        self._remember(job, counted)
        if status != before:
            self.api.update_status(rtype, namespace, name, status)
        if (_is_true(status, "Complete") or _is_true(status, "Failed")) and spec.get(
            "ttlSecondsAfterFinished"
        ) is not None:
            done = _parse_time(status.get("completionTime") or now_iso())
            left = float(spec["ttlSecondsAfterFinished"]) - (_dt.datetime.now(_dt.UTC) - done).total_seconds()
            if left <= 0:
                try:
                    self.api.delete(rtype, namespace, name, propagation="Background")
                except ApiError:
                    pass
            else:
                self.enqueue_later(left + 0.05, namespace, name)

    # ------------------------------------------------------------------ helpers

    def _remember(self, job: JSON, counted: dict[str, str]) -> None:
        text = json.dumps(counted, sort_keys=True)
        if (job["metadata"].get("annotations") or {}).get(_COUNTED) == text:
            return
        obj = copy.deepcopy(self.primary(job["metadata"]["namespace"], job["metadata"]["name"]) or job)
        obj["metadata"].setdefault("annotations", {})[_COUNTED] = text
        self.api.store.put((self.group, self.plural), obj, added=False)

    def _delete_pod(self, pod: JSON, counted: dict[str, str]) -> None:
        """Delete a pod this controller no longer wants; it does not count as failed."""
        counted[pod["metadata"]["uid"]] = "removed"
        try:
            self.api.delete(self.api.rtype("", "v1", "pods"), pod["metadata"]["namespace"], pod["metadata"]["name"])
        except ApiError:
            pass

    def _create_pod(self, job: JSON, index: int | None = None) -> JSON | None:
        template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
        if index is not None:
            key = "batch.kubernetes.io/job-completion-index"
            meta_ = template.setdefault("metadata", {})
            meta_.setdefault("labels", {})[key] = str(index)
            meta_.setdefault("annotations", {})[key] = str(index)
            for c in (template.get("spec") or {}).get("containers") or []:
                c["env"] = [*(c.get("env") or []), {"name": "JOB_COMPLETION_INDEX", "value": str(index)}]
        meta = template.get("metadata") or {}
        job_name, uid = job["metadata"]["name"], job["metadata"]["uid"]
        name = f"{job_name}-{''.join(secrets.choice(_SUFFIX) for _ in range(5))}"
        labels = {
            **(meta.get("labels") or {}),
            "batch.kubernetes.io/job-name": job_name,
            "job-name": job_name,
            "batch.kubernetes.io/controller-uid": uid,
            "controller-uid": uid,
        }
        pod: Any = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": job["metadata"]["namespace"],
                "labels": labels,
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [owner_ref(job)],
            },
            "spec": template.get("spec") or {},
        }
        try:
            created = self.api.create(self.api.rtype("", "v1", "pods"), job["metadata"]["namespace"], pod)
        except ApiError as exc:
            self.record(job, "FailedCreate", f"Error creating: {exc.message}", "Warning")
            return None
        self.record(job, "SuccessfulCreate", f"Created pod: {name}")
        return created if isinstance(created, dict) else pod
