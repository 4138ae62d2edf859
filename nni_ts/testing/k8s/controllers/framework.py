"""Simulated FrameworkController (frameworkcontroller.microsoft.com/v1 Framework).

A Framework attempt goes AttemptCreationPending, AttemptCreationRequested (its ConfigMap
``<name>-attempt`` is created), AttemptPreparing (pods ``<name>-<taskrole>-<index>`` created, owned by the
ConfigMap), AttemptRunning, then AttemptDeletionPending / AttemptDeleting (the ConfigMap and so the pods are
deleted) and AttemptCompleted; the framework then retries (a new attempt) or ends Completed.

Completion codes: 0 Succeeded; a container exit code of 200 / 201 / 210 means ContainerTransientFailed /
ContainerTransientConflictFailed / ContainerPermanentFailed; any other non-zero exit code is used as the code
with phrase ContainerUnrecognizedFailed (type Failed, no attributes); a pod failed without a failed container
gives -300; an externally deleted pod -101 (Transient); ``executionType: Stop`` gives -210
StopFrameworkRequested (Permanent); tasks cut short by the attempt's completion get -220.
``frameworkAttemptCompletionPolicy`` (minFailedTaskCount default 1, minSucceededTaskCount default -1) and
``retryPolicy`` (fancyRetryPolicy, maxRetryCount, -1 unlimited) are honoured for the framework and its tasks.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from ..store import Event
from ..util import JSON, ApiError, now_iso
from .base import Controller, owner_ref

__all__ = ["FrameworkController"]

CODES: dict[int, tuple[str, str, list[str]]] = {
    0: ("Succeeded", "Succeeded", []),
    200: ("ContainerTransientFailed", "Failed", ["Transient"]),
    201: ("ContainerTransientConflictFailed", "Failed", ["Transient", "Conflict"]),
    210: ("ContainerPermanentFailed", "Failed", ["Permanent"]),
    -100: ("ConfigMapExternalDeleted", "Failed", ["Transient"]),
    -101: ("PodExternalDeleted", "Failed", ["Transient"]),
    -120: ("PodCreationTransientError", "Failed", ["Transient"]),
    -200: ("PodCreationPermanentError", "Failed", ["Permanent"]),
    -210: ("StopFrameworkRequested", "Failed", ["Permanent"]),
    -220: ("FrameworkAttemptCompletion", "Failed", ["Permanent"]),
    -230: ("DeleteTaskRequested", "Failed", ["Permanent"]),
    -300: ("PodFailedWithoutFailedContainer", "Failed", []),
    -310: ("PodCreationUnknownError", "Failed", []),
}


def completion(code: int, diagnostics: str = "", **extra: Any) -> JSON:
    """A completionStatus for ``code`` (unknown positive codes are ContainerUnrecognizedFailed)."""
    phrase, name, attributes = CODES.get(code, ("ContainerUnrecognizedFailed", "Failed", []))
    return {
        "code": code,
        "phrase": phrase,
        "type": {"name": name, "attributes": list(attributes)},
        "diagnostics": diagnostics,
        **extra,
    }


def _pod_completion(pod: JSON) -> JSON:
    status = pod.get("status") or {}
    if status.get("phase") == "Succeeded":
        return completion(0, "Pod succeeded")
    last: tuple[str, int] | None = None
    for s in status.get("containerStatuses") or []:
        term = (s.get("state") or {}).get("terminated")
        if term is not None and term.get("exitCode", 0) != 0:
            if term["exitCode"] in (200, 201, 210):
                return completion(
                    int(term["exitCode"]),
                    f"PodPattern matched: container {s.get('name')} exited with {term['exitCode']}",
                )
            if last is None or str(term.get("finishedAt", "")) >= last[0]:
                last = (str(term.get("finishedAt", "")), int(term["exitCode"]))
    reason = status.get("reason", "")
    if last is None:
        return completion(
            -300,
            f"PodPattern unmatched: pod failed without a failed container (reason {reason!r}, "
            f"message {status.get('message', '')!r})",
        )
    return completion(
        last[1],
        f"PodPattern unmatched: the last failed container exited with {last[1]}"
        + (f" (pod reason {reason})" if reason else ""),
    )


def _should_retry(policy: JSON, comp: JSON, retry_status: JSON) -> tuple[bool, bool]:
    """(retry?, counts against maxRetryCount?)"""
    if comp["type"]["name"] == "Succeeded":
        return False, False
    attributes = comp["type"]["attributes"]
    max_retry = int(policy.get("maxRetryCount", 0))
    if policy.get("fancyRetryPolicy"):
        if "Transient" in attributes:
            return True, False
        if "Permanent" in attributes:
            return False, False
    if max_retry in (-1, -2) or int(retry_status.get("accountableRetriedCount", 0)) < max_retry:
        return True, True
    return False, False


class FrameworkController(Controller):
    name = "frameworkcontroller"
    group = "frameworkcontroller.microsoft.com"
    plural = "frameworks"
    kind = "Framework"

    def owner_of(self, event: Event) -> str | None:
        if event.gr in (("", "pods"), ("", "configmaps")):
            labels = event.obj["metadata"].get("labels") or {}
            if "FC_FRAMEWORK_NAME" in labels and not (event.gr == ("", "pods") and event.type == "ADDED"):
                return str(labels["FC_FRAMEWORK_NAME"])
        return None

    # ------------------------------------------------------------------ reconcile

    def reconcile(self, namespace: str, name: str) -> None:
        fw = self.primary(namespace, name)
        if fw is None or fw["metadata"].get("deletionTimestamp"):
            return
        status = copy.deepcopy(fw.get("status") or {})
        before = copy.deepcopy(status)
        spec = fw.get("spec") or {}
        if not status.get("state"):
            status.update(self._new_status(fw))
        if status["state"] != "Completed":
            self._step(fw, spec, status)
        if status != before:
            self._write(namespace, name, status)

    def _write(self, namespace: str, name: str, status: JSON) -> None:
        current = self.primary(namespace, name)
        if current is None:
            return
        obj = dict(current, status=status)
        obj["metadata"] = dict(current["metadata"])
        self.api.store.put((self.group, self.plural), obj, added=False)

    def _new_status(self, fw: JSON) -> JSON:
        now = now_iso()
        return {
            "startTime": now,
            "completionTime": None,
            "state": "AttemptCreationPending",
            "transitionTime": now,
            "retryPolicyStatus": {"totalRetriedCount": 0, "accountableRetriedCount": 0, "retryDelaySec": None},
            "attemptStatus": self._new_attempt(fw, 0),
        }

    def _new_attempt(self, fw: JSON, attempt_id: int) -> JSON:
        now = now_iso()
        roles = []
        for role in (fw.get("spec") or {}).get("taskRoles") or []:
            task = role.get("task") or {}
            roles.append(
                {
                    "name": role["name"],
                    "podGracefulDeletionTimeoutSec": task.get("podGracefulDeletionTimeoutSec"),
                    "taskStatuses": [self._new_task(i, 0) for i in range(int(role.get("taskNumber", 1)))],
                }
            )
        return {
            "id": attempt_id,
            "startTime": now,
            "runTime": None,
            "completionTime": None,
            "instanceUID": f"{attempt_id}_{uuid.uuid4()}",
            "configMapName": f"{fw['metadata']['name']}-attempt",
            "configMapUID": None,
            "completionStatus": None,
            "taskRoleStatuses": roles,
        }

    @staticmethod
    def _new_task(index: int, attempt_id: int, retry: JSON | None = None) -> JSON:
        now = now_iso()
        return {
            "index": index,
            "startTime": now,
            "completionTime": None,
            "state": "TaskAttemptCreationPending",
            "transitionTime": now,
            "deletionPending": False,
            "retryPolicyStatus": retry or {"totalRetriedCount": 0, "accountableRetriedCount": 0, "retryDelaySec": None},
            "attemptStatus": {
                "id": attempt_id,
                "startTime": now,
                "runTime": None,
                "completionTime": None,
                "instanceUID": None,
                "podName": None,
                "podUID": None,
                "podNodeName": None,
                "podIP": None,
                "podHostIP": None,
                "completionStatus": None,
            },
        }

    @staticmethod
    def _set_state(obj: JSON, state: str) -> None:
        if obj.get("state") != state:
            obj["state"] = state
            obj["transitionTime"] = now_iso()

    def _step(self, fw: JSON, spec: JSON, status: JSON) -> None:
        ns, name = fw["metadata"]["namespace"], fw["metadata"]["name"]
        attempt = status["attemptStatus"]
        cm_name = attempt["configMapName"]
        cm = self.api.store.get(("", "configmaps"), ns, cm_name)
        stopping = spec.get("executionType") == "Stop"
        if stopping and attempt.get("completionStatus") is None and status["state"] != "AttemptCompleted":
            attempt["completionStatus"] = completion(
                -210,
                "User has requested to stop the Framework",
                trigger={
                    "message": "User has requested to stop the Framework",
                    "taskRoleName": None,
                    "taskIndex": None,
                },
            )
        if attempt.get("completionStatus") is not None:
            self._finish_attempt(fw, spec, status, cm)
            return
        if status["state"] == "AttemptCreationPending":
            if cm is not None and cm["metadata"]["uid"] != attempt.get("configMapUID"):
                # A left-over ConfigMap of an earlier attempt: wait for its deletion.
                if not cm["metadata"].get("deletionTimestamp"):
                    self._delete("configmaps", ns, cm_name)
                return
            if (spec.get("executionType") or "Start") == "Create":
                return
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": cm_name,
                    "namespace": ns,
                    "ownerReferences": [owner_ref(fw)],
                    "labels": {"FC_FRAMEWORK_NAME": name},
                    "annotations": {
                        "FC_FRAMEWORK_ATTEMPT_ID": str(attempt["id"]),
                        "FC_FRAMEWORK_ATTEMPT_INSTANCE_UID": attempt["instanceUID"],
                    },
                },
                "data": {},
            }
            try:
                cm = self.api.create(self.api.rtype("", "v1", "configmaps"), ns, body)
            except ApiError as exc:
                self.record(fw, "ConfigMapCreationFailed", exc.message, "Warning")
                return
            attempt["configMapUID"] = cm["metadata"]["uid"]
            self._set_state(status, "AttemptCreationRequested")
        if cm is None or cm["metadata"]["uid"] != attempt.get("configMapUID"):
            if status["state"] not in ("AttemptCreationPending", "AttemptCreationRequested"):
                attempt["completionStatus"] = completion(
                    -100,
                    f"ConfigMap {cm_name} was deleted externally",
                    trigger={"message": "ConfigMap was deleted externally", "taskRoleName": None, "taskIndex": None},
                )
                self._finish_attempt(fw, spec, status, cm)
            return
        if status["state"] == "AttemptCreationRequested":
            self._set_state(status, "AttemptPreparing")
        any_running = self._sync_tasks(fw, spec, status, cm)
        if any_running and status["state"] == "AttemptPreparing":
            self._set_state(status, "AttemptRunning")
            attempt["runTime"] = now_iso()
        trigger = self._completion_policy(spec, attempt)
        if trigger is not None:
            attempt["completionStatus"] = trigger
            self._finish_attempt(fw, spec, status, cm)

    def _sync_tasks(self, fw: JSON, spec: JSON, status: JSON, cm: JSON) -> bool:
        ns, name = fw["metadata"]["namespace"], fw["metadata"]["name"]
        attempt = status["attemptStatus"]
        roles = {r["name"]: r for r in spec.get("taskRoles") or []}
        any_running = False
        for role_status in attempt["taskRoleStatuses"]:
            role = roles.get(role_status["name"])
            if role is None:
                continue
            task_spec = role.get("task") or {}
            for task in role_status["taskStatuses"]:
                if task["state"] == "TaskCompleted":
                    continue
                pod_name = f"{name}-{role['name']}-{task['index']}"
                pod = self.api.store.get(("", "pods"), ns, pod_name)
                ta = task["attemptStatus"]
                if task["state"] == "TaskAttemptCreationPending":
                    if pod is not None:
                        if not pod["metadata"].get("deletionTimestamp"):
                            self._delete("pods", ns, pod_name)
                        continue
                    created = self._create_pod(fw, role, task, attempt, cm, pod_name)
                    if created is not None:
                        ta.update(
                            podName=pod_name,
                            podUID=created["metadata"]["uid"],
                            instanceUID=f"{ta['id']}_{created['metadata']['uid']}",
                        )
                        self._set_state(task, "TaskAttemptCreationRequested")
                    continue
                if pod is None or pod["metadata"]["uid"] != ta.get("podUID"):
                    comp = ta.get("completionStatus") or completion(-101, f"Pod {pod_name} was deleted externally")
                    self._complete_task(task, task_spec, comp)
                    continue
                if pod["metadata"].get("deletionTimestamp"):
                    # Deleted by someone else (this controller deletes a task's pod only once the task has
                    # completed): -101 at once, whatever final status the kubelet writes before the pod goes;
                    # the task completes when the pod is gone.
                    if ta.get("completionStatus") is None:
                        ta["completionStatus"] = completion(-101, f"Pod {pod_name} is being deleted by others")
                    self._set_state(task, "TaskAttemptDeleting")
                    continue
                phase = (pod.get("status") or {}).get("phase")
                ta.update(
                    podNodeName=pod["spec"].get("nodeName"),
                    podIP=(pod.get("status") or {}).get("podIP"),
                    podHostIP=(pod.get("status") or {}).get("hostIP"),
                )
                if phase == "Pending":
                    self._set_state(task, "TaskAttemptPreparing")
                elif phase == "Running":
                    if task["state"] != "TaskAttemptRunning":
                        ta["runTime"] = now_iso()
                    self._set_state(task, "TaskAttemptRunning")
                    any_running = True
                elif phase in ("Succeeded", "Failed", "Unknown"):
                    comp = _pod_completion(pod) if phase != "Unknown" else completion(-300, "the pod's node was lost")
                    comp["pod"] = {
                        "name": pod_name,
                        "reason": pod["status"].get("reason", ""),
                        "message": pod["status"].get("message", ""),
                    }
                    self._complete_task(task, task_spec, comp)
                    if task["state"] == "TaskAttemptCreationPending":
                        self._delete("pods", ns, pod_name)
        return any_running

    def _complete_task(self, task: JSON, task_spec: JSON, comp: JSON) -> None:
        ta = task["attemptStatus"]
        ta["completionStatus"] = comp
        ta["completionTime"] = now_iso()
        retry, accountable = _should_retry(task_spec.get("retryPolicy") or {}, comp, task["retryPolicyStatus"])
        if retry:
            rps = dict(task["retryPolicyStatus"])
            rps["totalRetriedCount"] = int(rps.get("totalRetriedCount", 0)) + 1
            if accountable:
                rps["accountableRetriedCount"] = int(rps.get("accountableRetriedCount", 0)) + 1
            new = self._new_task(task["index"], int(ta["id"]) + 1, rps)
            task.clear()
            task.update(new)
            return
        task["completionTime"] = now_iso()
        self._set_state(task, "TaskCompleted")

    def _completion_policy(self, spec: JSON, attempt: JSON) -> JSON | None:
        roles = {r["name"]: r for r in spec.get("taskRoles") or []}
        total = failed_total = 0
        all_done = True
        for role_status in attempt["taskRoleStatuses"]:
            role = roles.get(role_status["name"]) or {}
            policy = role.get("frameworkAttemptCompletionPolicy") or {}
            min_failed = int(policy.get("minFailedTaskCount", 1))
            min_succeeded = int(policy.get("minSucceededTaskCount", -1))
            failed = succeeded = 0
            for task in role_status["taskStatuses"]:
                total += 1
                if task["state"] != "TaskCompleted":
                    all_done = False
                    continue
                comp = task["attemptStatus"]["completionStatus"] or {}
                if comp.get("type", {}).get("name") == "Succeeded":
                    succeeded += 1
                else:
                    failed += 1
                    failed_total += 1
                    if min_failed != -1 and failed >= min_failed:
                        message = (
                            f"FailedTaskCount {failed} has reached MinFailedTaskCount {min_failed} in the TaskRole"
                        )
                        out = {k: v for k, v in comp.items() if k != "pod"}
                        out["trigger"] = {
                            "message": message,
                            "taskRoleName": role_status["name"],
                            "taskIndex": task["index"],
                        }
                        return out
                    continue
                if min_succeeded != -1 and succeeded >= min_succeeded:
                    message = (
                        f"SucceededTaskCount {succeeded} has reached MinSucceededTaskCount {min_succeeded} in "
                        "the TaskRole"
                    )
                    return completion(
                        0,
                        message,
                        trigger={"message": message, "taskRoleName": role_status["name"], "taskIndex": task["index"]},
                    )
        if all_done:
            message = (
                "All Tasks are completed and no user specified conditions in FrameworkAttemptCompletionPolicy "
                f"have ever been triggered: TotalTaskCount: {total}, FailedTaskCount: {failed_total}"
            )
            return completion(0, message, trigger={"message": message, "taskRoleName": None, "taskIndex": None})
        return None

    def _finish_attempt(self, fw: JSON, spec: JSON, status: JSON, cm: JSON | None) -> None:
        ns = fw["metadata"]["namespace"]
        attempt = status["attemptStatus"]
        if status["state"] not in (
            "AttemptDeletionPending",
            "AttemptDeletionRequested",
            "AttemptDeleting",
            "AttemptCompleted",
        ):
            self._set_state(status, "AttemptDeletionPending")
            for role_status in attempt["taskRoleStatuses"]:
                for task in role_status["taskStatuses"]:
                    if task["state"] != "TaskCompleted":
                        task["attemptStatus"]["completionStatus"] = completion(
                            -220, "Stop Task since the Framework attempt is completing"
                        )
                        task["attemptStatus"]["completionTime"] = now_iso()
                        task["completionTime"] = now_iso()
                        self._set_state(task, "TaskCompleted")
        if cm is not None and cm["metadata"]["uid"] == attempt.get("configMapUID"):
            if not cm["metadata"].get("deletionTimestamp"):
                self._delete("configmaps", ns, cm["metadata"]["name"])
                self._set_state(status, "AttemptDeletionRequested")
            return
        # Wait for the attempt's pods to be gone.
        for role_status in attempt["taskRoleStatuses"]:
            for task in role_status["taskStatuses"]:
                pod_name = task["attemptStatus"].get("podName")
                if pod_name:
                    pod = self.api.store.get(("", "pods"), ns, pod_name)
                    if pod is not None and pod["metadata"]["uid"] == task["attemptStatus"].get("podUID"):
                        self._set_state(status, "AttemptDeleting")
                        if not pod["metadata"].get("deletionTimestamp"):
                            self._delete("pods", ns, pod_name)
                        return
        attempt["completionTime"] = attempt.get("completionTime") or now_iso()
        if status["state"] != "AttemptCompleted":
            self._set_state(status, "AttemptCompleted")
        comp = attempt["completionStatus"]
        stopping = spec.get("executionType") == "Stop"
        retry, accountable = (
            (False, False)
            if stopping
            else _should_retry(spec.get("retryPolicy") or {}, comp, status["retryPolicyStatus"])
        )
        if retry:
            rps = status["retryPolicyStatus"]
            rps["totalRetriedCount"] = int(rps.get("totalRetriedCount", 0)) + 1
            if accountable:
                rps["accountableRetriedCount"] = int(rps.get("accountableRetriedCount", 0)) + 1
            status["attemptStatus"] = self._new_attempt(fw, int(attempt["id"]) + 1)
            self._set_state(status, "AttemptCreationPending")
            self.enqueue(ns, fw["metadata"]["name"])
            return
        status["completionTime"] = now_iso()
        self._set_state(status, "Completed")
        self.record(
            fw,
            "FrameworkCompleted",
            f"Framework completed: code {comp['code']} ({comp['phrase']})",
            "Normal" if comp["type"]["name"] == "Succeeded" else "Warning",
        )

    def _create_pod(self, fw: JSON, role: JSON, task: JSON, attempt: JSON, cm: JSON, pod_name: str) -> JSON | None:
        ns, name = fw["metadata"]["namespace"], fw["metadata"]["name"]
        template = copy.deepcopy((role.get("task") or {}).get("pod") or {})
        meta = template.get("metadata") or {}
        pod_spec = template.get("spec") or {}
        fc_env = {
            "FC_FRAMEWORK_NAMESPACE": ns,
            "FC_FRAMEWORK_NAME": name,
            "FC_TASKROLE_NAME": role["name"],
            "FC_TASK_INDEX": str(task["index"]),
            "FC_CONFIGMAP_NAME": cm["metadata"]["name"],
            "FC_POD_NAME": pod_name,
            "FC_FRAMEWORK_UID": fw["metadata"]["uid"],
            "FC_FRAMEWORK_ATTEMPT_ID": str(attempt["id"]),
            "FC_FRAMEWORK_ATTEMPT_INSTANCE_UID": attempt["instanceUID"],
            "FC_CONFIGMAP_UID": cm["metadata"]["uid"],
            "FC_TASK_ATTEMPT_ID": str(task["attemptStatus"]["id"]),
        }
        for c in [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]:
            names = {e.get("name") for e in c.get("env") or []}
            c["env"] = [*({"name": k, "value": v} for k, v in fc_env.items() if k not in names), *(c.get("env") or [])]
        labels = {
            **(meta.get("labels") or {}),
            "FC_FRAMEWORK_NAME": name,
            "FC_TASKROLE_NAME": role["name"],
            "FC_TASK_INDEX": str(task["index"]),
        }
        annotations = {
            **(meta.get("annotations") or {}),
            **{k: v for k, v in fc_env.items() if k not in ("FC_FRAMEWORK_UID",)},
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": ns,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [owner_ref(cm)],
            },
            "spec": pod_spec,
        }
        try:
            created = self.api.create(self.api.rtype("", "v1", "pods"), ns, pod)
        except ApiError as exc:
            code = -200 if exc.code in (422, 403, 413) else -310 if exc.code == 400 else -120
            self._complete_task(task, role.get("task") or {}, completion(code, f"Failed to create Pod: {exc.message}"))
            self.record(fw, "PodCreationFailed", exc.message, "Warning")
            return None
        self.record(fw, "PodCreated", f"Created pod {pod_name}")
        return created

    def _delete(self, plural: str, ns: str, name: str) -> None:
        try:
            self.api.delete(self.api.rtype("", "v1", plural), ns, name, propagation="Background")
        except ApiError:
            pass
