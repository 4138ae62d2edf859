"""Simulated Kubeflow tf-operator and pytorch-operator (training-operator, kubeflow.org/v1).

For each replica type and index a pod ``<job>-<type>-<index>`` is created from the replica's template
(labels ``training.kubeflow.org/job-name``, ``replica-type``, ``replica-index``, an ownerReference to the
job; the replica's restartPolicy on the pod, ``ExitCode`` meaning Never plus re-creation after a
retryable exit code, 128 and above). ``status.conditions`` go Created, Running, then Succeeded or Failed
(Restarting on a re-creation); ``replicaStatuses`` count active, succeeded and failed pods; ``startTime``
and ``completionTime`` are set. runPolicy: cleanPodPolicy (None by default, Running, All),
backoffLimit, activeDeadlineSeconds and ``suspend`` (training-operator v1.7+, what Kueue sets): while
suspended the job's pods are deleted, ``Suspended`` is True (reason ``<Kind>Suspended``), ``Running`` False,
``startTime`` unset and ``replicaStatuses`` count the pods still terminating as active; on resume
``Suspended`` turns False (``<Kind>Resumed``), ``startTime`` starts again and the pods are created anew.
Deleting the job deletes its pods (ownerReferences).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
from typing import Any

from ..util import JSON, ApiError, now_iso
from .base import Controller, owner_ref

__all__ = ["PyTorchOperator", "TFOperator"]


def _cond(status: JSON, type_: str) -> JSON | None:
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def _set_cond(status: JSON, type_: str, value: str, reason: str, message: str) -> bool:
    """Set a condition; return True if anything changed. Conditions keep their order; a changed one moves
    to the end (kubectl shows the last one as the job's state)."""
    conditions = list(status.get("conditions") or [])
    now = now_iso()
    for i, c in enumerate(conditions):
        if c.get("type") == type_:
            if c.get("status") == value and c.get("reason") == reason:
                return False
            new = dict(c, status=value, reason=reason, message=message, lastUpdateTime=now)
            if c.get("status") != value:
                new["lastTransitionTime"] = now
            conditions.pop(i)
            conditions.append(new)
            status["conditions"] = conditions
            return True
    conditions.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastUpdateTime": now,
            "lastTransitionTime": now,
        }
    )
    status["conditions"] = conditions
    return True


def _finished(status: JSON) -> bool:
    return any(
        c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True" for c in status.get("conditions") or []
    )


def _exit_code(pod: JSON) -> int | None:
    for s in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (s.get("state") or {}).get("terminated")
        if term is not None and term.get("exitCode", 0) != 0:
            return int(term["exitCode"])
    return None


class KubeflowOperator(Controller):
    group = "kubeflow.org"
    replicas_field = ""
    container_name = ""
    label_prefix = "training.kubeflow.org"
    operator_label = ""

    # ------------------------------------------------------------------ reconcile

    def reconcile(self, namespace: str, name: str) -> None:
        job = self.primary(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        rtype = self.api.by_gr[(self.group, self.plural)]
        status = copy.deepcopy(job.get("status") or {})
        before = copy.deepcopy(status)
        kind = self.kind
        if _cond(status, "Created") is None:
            _set_cond(status, "Created", "True", f"{kind}Created", f"{kind} {name} is created.")
            self.record(job, f"{kind}Created", f"{kind} {name} is created.")
        status.setdefault("startTime", now_iso())
        specs: JSON = (job.get("spec") or {}).get(self.replicas_field) or {}
        run_policy: JSON = (job.get("spec") or {}).get("runPolicy") or {}
        pods = self.owned_pods(job)
        by_key: dict[tuple[str, int], JSON] = {}
        for pod in pods:
            labels = pod["metadata"].get("labels") or {}
            try:
                key = (labels[f"{self.label_prefix}/replica-type"], int(labels[f"{self.label_prefix}/replica-index"]))
            except (KeyError, ValueError):
                continue
            if not pod["metadata"].get("deletionTimestamp"):
                by_key[key] = pod
        finished = _finished(status)
        if not finished and run_policy.get("suspend"):
            self._suspended(job, status, specs, pods)
            if status != before:
                status["lastReconcileTime"] = now_iso()
                self.api.update_status(rtype, namespace, name, status)
            return
        suspended = _cond(status, "Suspended")
        if not finished and suspended is not None and suspended.get("status") == "True":
            message = f"{kind} {name} is resumed."
            _set_cond(status, "Suspended", "False", f"{kind}Resumed", message)
            self.record(job, f"{kind}Resumed", message)
            status["startTime"] = now_iso()
        restarts = int(json.loads((job["metadata"].get("annotations") or {}).get("fake.nni-ts/recreations", "0")))
        recreated = 0
        failed_types: dict[str, int] = {}
        replica_statuses: JSON = {}
        for rt, spec in specs.items():
            replicas = int(spec.get("replicas", 1))
            policy = spec.get("restartPolicy", "Never")
            rt_low = rt.lower()
            counts = {"active": 0, "succeeded": 0, "failed": 0}
            for index in range(replicas):
                found = by_key.get((rt_low, index))
                if found is None:
                    if not finished:
                        self._create_pod(job, rt, index, spec, specs)
                    continue
                phase = (found.get("status") or {}).get("phase")
                if phase == "Running":
                    counts["active"] += 1
                elif phase == "Succeeded":
                    counts["succeeded"] += 1
                elif phase == "Failed":
                    code = _exit_code(found)
                    # A failed pod the kubelet will not restart (evicted, node lost; or a retryable exit code
                    # under ExitCode) is re-created, as the operator does.
                    retryable = policy in ("OnFailure", "Always") or (
                        policy == "ExitCode" and code is not None and code >= 128
                    )
                    if retryable and not finished:
                        self.api.delete(
                            self.api.rtype("", "v1", "pods"), namespace, found["metadata"]["name"], grace_period=0
                        )
                        recreated += 1
                        _set_cond(
                            status,
                            "Restarting",
                            "True",
                            f"{kind}Restarting",
                            f"{kind} {name} is restarting because {rt} replica(s) failed.",
                        )
                        continue
                    counts["failed"] += 1
                    failed_types[rt] = failed_types.get(rt, 0) + 1
            replica_statuses[rt] = {
                **counts,
                "selector": ",".join(f"{k}={v}" for k, v in self._labels(job, rt, None).items()),
            }
        status["replicaStatuses"] = replica_statuses
        if recreated:
            self._bump_recreations(job, restarts + recreated)
        if not finished:
            self._update_conditions(job, status, specs, by_key, failed_types, run_policy, restarts + recreated)
        if _finished(status) and not finished:
            status["completionTime"] = now_iso()
            policy = run_policy.get("cleanPodPolicy", "None")
            failed = next((c for c in status["conditions"] if c["type"] == "Failed" and c["status"] == "True"), None)
            if (
                failed is not None
                and failed.get("reason") in ("DeadlineExceeded", "BackoffLimitExceeded")
                and policy == "None"
            ):
                policy = "Running"  # past its deadline or back-off limit, a job's active pods are stopped
            self._clean_pods(job, policy)
            deadline = None
        else:
            deadline = run_policy.get("activeDeadlineSeconds")
        if status != before:
            status["lastReconcileTime"] = now_iso()
            self.api.update_status(rtype, namespace, name, status)
        if deadline and not _finished(status):
            self.enqueue_later(float(deadline) + 0.05, namespace, name)
        ttl = run_policy.get("ttlSecondsAfterFinished")
        if ttl is not None and _finished(status) and status.get("completionTime"):
            done = _dt.datetime.strptime(status["completionTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.UTC)
            left = float(ttl) - (_dt.datetime.now(_dt.UTC) - done).total_seconds()
            if left <= 0:
                try:
                    self.api.delete(rtype, namespace, name, propagation="Background")
                except ApiError:
                    pass
            else:
                self.enqueue_later(left + 0.05, namespace, name)

    def _suspended(self, job: JSON, status: JSON, specs: JSON, pods: list[JSON]) -> None:
        """runPolicy.suspend: no pods (they are deleted, with their grace period), Suspended True."""
        kind, name = self.kind, job["metadata"]["name"]
        pods_type = self.api.rtype("", "v1", "pods")
        for pod in pods:
            if not pod["metadata"].get("deletionTimestamp"):
                try:
                    self.api.delete(pods_type, pod["metadata"]["namespace"], pod["metadata"]["name"])
                except ApiError:
                    pass
        message = f"{kind} {name} is suspended."
        running = _cond(status, "Running")
        if running is not None and running.get("status") == "True":
            _set_cond(status, "Running", "False", f"{kind}Suspended", message)
        if _set_cond(status, "Suspended", "True", f"{kind}Suspended", message):
            self.record(job, f"{kind}Suspended", message)
        status.pop("startTime", None)
        replica_statuses: JSON = {}
        for rt in specs:
            left = [
                p
                for p in pods
                if (p["metadata"].get("labels") or {}).get(f"{self.label_prefix}/replica-type") == rt.lower()
                and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            ]
            replica_statuses[rt] = {
                "active": len(left),
                "succeeded": 0,
                "failed": 0,
                "selector": ",".join(f"{k}={v}" for k, v in self._labels(job, rt, None).items()),
            }
        status["replicaStatuses"] = replica_statuses

    def _update_conditions(
        self,
        job: JSON,
        status: JSON,
        specs: JSON,
        by_key: dict[tuple[str, int], JSON],
        failed_types: dict[str, int],
        run_policy: JSON,
        restarts: int,
    ) -> None:
        kind, ns, name = self.kind, job["metadata"]["namespace"], job["metadata"]["name"]
        full = f"{ns}/{name}"
        if failed_types:
            rt, count = next(iter(failed_types.items()))
            message = f"{kind} {full} has failed because {count} {rt} replica(s) failed."
            self._finish(job, status, "Failed", f"{kind}Failed", message)
            return
        backoff = run_policy.get("backoffLimit")
        if backoff is not None:
            total = restarts + sum(
                int(s.get("restartCount", 0))
                for p in by_key.values()
                for s in (p.get("status") or {}).get("containerStatuses") or []
            )
            if total > int(backoff):
                self._finish(
                    job,
                    status,
                    "Failed",
                    "BackoffLimitExceeded",
                    f"{kind} {full} has failed because it has reached the specified backoff limit",
                )
                return
        deadline = run_policy.get("activeDeadlineSeconds")
        if deadline is not None and status.get("startTime"):
            start = _dt.datetime.strptime(status["startTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.UTC)
            if (_dt.datetime.now(_dt.UTC) - start).total_seconds() >= float(deadline):
                self._finish(
                    job,
                    status,
                    "Failed",
                    "DeadlineExceeded",
                    f"{kind} {full} has failed because it was active longer than specified deadline",
                )
                return
        if self._succeeded(job, specs, by_key):
            self._finish(job, status, "Succeeded", f"{kind}Succeeded", f"{kind} {full} successfully completed.")
            return
        if any((p.get("status") or {}).get("phase") == "Running" for p in by_key.values()):
            if _set_cond(status, "Running", "True", f"{kind}Running", f"{kind} {full} is running."):
                self.record(job, f"{kind}Running", f"{kind} {full} is running.")
            restarting = _cond(status, "Restarting")
            if restarting is not None and restarting.get("status") == "True":
                _set_cond(status, "Restarting", "False", f"{kind}Restarting", restarting.get("message", ""))

    def _finish(self, job: JSON, status: JSON, type_: str, reason: str, message: str) -> None:
        running = _cond(status, "Running")
        if running is not None:
            _set_cond(status, "Running", "False", running.get("reason", ""), running.get("message", ""))
        _set_cond(status, type_, "True", reason, message)
        self.record(job, reason, message, "Normal" if type_ == "Succeeded" else "Warning")

    def _succeeded(self, job: JSON, specs: JSON, by_key: dict[tuple[str, int], JSON]) -> bool:
        raise NotImplementedError

    @staticmethod
    def _all_succeeded(rt: str, specs: JSON, by_key: dict[tuple[str, int], JSON]) -> bool:
        replicas = int(specs[rt].get("replicas", 1))
        return all(
            (by_key.get((rt.lower(), i)) or {}).get("status", {}).get("phase") == "Succeeded" for i in range(replicas)
        )

    def _bump_recreations(self, job: JSON, total: int) -> None:
        obj = copy.deepcopy(self.primary(job["metadata"]["namespace"], job["metadata"]["name"]) or job)
        obj["metadata"].setdefault("annotations", {})["fake.nni-ts/recreations"] = str(total)
        self.api.store.put((self.group, self.plural), obj, added=False)

    def _clean_pods(self, job: JSON, policy: str) -> None:
        if policy not in ("All", "Running"):
            return
        pods_type = self.api.rtype("", "v1", "pods")
        for pod in self.owned_pods(job):
            phase = (pod.get("status") or {}).get("phase")
            if policy == "All" or phase in ("Running", "Pending"):
                try:
                    self.api.delete(pods_type, pod["metadata"]["namespace"], pod["metadata"]["name"])
                except ApiError:
                    pass

    # ------------------------------------------------------------------ pods

    def _labels(self, job: JSON, rt: str, index: int | None) -> dict[str, str]:
        labels = {
            f"{self.label_prefix}/job-name": job["metadata"]["name"],
            f"{self.label_prefix}/operator-name": self.operator_label,
            f"{self.label_prefix}/replica-type": rt.lower(),
        }
        if index is not None:
            labels[f"{self.label_prefix}/replica-index"] = str(index)
        return labels

    def _create_pod(self, job: JSON, rt: str, index: int, spec: JSON, specs: JSON) -> None:
        template = copy.deepcopy(spec.get("template") or {})
        meta = template.get("metadata") or {}
        pod_spec: JSON = template.get("spec") or {}
        name = f"{job['metadata']['name']}-{rt.lower()}-{index}"
        labels = {**(meta.get("labels") or {}), **self._labels(job, rt, index)}
        if rt in ("Chief", "Master") or (rt == "Worker" and index == 0 and not (set(specs) & {"Chief", "Master"})):
            labels[f"{self.label_prefix}/job-role"] = "master"
        policy = spec.get("restartPolicy", "Never")
        pod_spec["restartPolicy"] = policy if policy in ("Always", "OnFailure", "Never") else "Never"
        env = self._env(job, rt, index, specs)
        for c in pod_spec.get("containers") or []:
            if c.get("name") == self.container_name:
                names = {e.get("name") for e in c.get("env") or []}
                c["env"] = [*(c.get("env") or []), *({"name": k, "value": v} for k, v in env.items() if k not in names)]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": job["metadata"]["namespace"],
                "labels": labels,
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [owner_ref(job)],
            },
            "spec": pod_spec,
        }
        try:
            self.api.create(self.api.rtype("", "v1", "pods"), job["metadata"]["namespace"], pod)
        except ApiError as exc:
            if exc.code != 409:
                self.record(job, "FailedCreatePod", f"Error creating: {exc.message}", "Warning")
            return
        self.record(job, "SuccessfulCreatePod", f"Created pod: {name}")

    def _env(self, job: JSON, rt: str, index: int, specs: JSON) -> dict[str, str]:
        return {}


class TFOperator(KubeflowOperator):
    """tf-operator: TFJob, containers named ``tensorflow`` get ``TF_CONFIG``."""

    name = "tf-operator"
    plural = "tfjobs"
    kind = "TFJob"
    replicas_field = "tfReplicaSpecs"
    container_name = "tensorflow"
    operator_label = "tfjob-controller"

    def _env(self, job: JSON, rt: str, index: int, specs: JSON) -> dict[str, str]:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        cluster: dict[str, list[str]] = {}
        for other, spec in specs.items():
            if other == "Evaluator":
                continue
            cluster[other.lower()] = [
                f"{name}-{other.lower()}-{i}.{ns}.svc:2222" for i in range(int(spec.get("replicas", 1)))
            ]
        config: Any = {"cluster": cluster, "task": {"type": rt.lower(), "index": index}, "environment": "cloud"}
        return {"TF_CONFIG": json.dumps(config)}

    def _succeeded(self, job: JSON, specs: JSON, by_key: dict[tuple[str, int], JSON]) -> bool:
        for chief in ("Chief", "Master"):
            if chief in specs:
                return self._all_succeeded(chief, specs, by_key)
        if "Worker" not in specs:
            return False
        if (job.get("spec") or {}).get("successPolicy") == "AllWorkers":
            return self._all_succeeded("Worker", specs, by_key)
        return bool((by_key.get(("worker", 0)) or {}).get("status", {}).get("phase") == "Succeeded")


class PyTorchOperator(KubeflowOperator):
    """pytorch-operator: PyTorchJob, containers named ``pytorch`` get MASTER_ADDR, MASTER_PORT,
    WORLD_SIZE, RANK and PYTHONUNBUFFERED."""

    name = "pytorch-operator"
    plural = "pytorchjobs"
    kind = "PyTorchJob"
    replicas_field = "pytorchReplicaSpecs"
    container_name = "pytorch"
    operator_label = "pytorchjob-controller"

    def _env(self, job: JSON, rt: str, index: int, specs: JSON) -> dict[str, str]:
        name = job["metadata"]["name"]
        masters = int((specs.get("Master") or {}).get("replicas", 1)) if "Master" in specs else 0
        workers = int((specs.get("Worker") or {}).get("replicas", 1)) if "Worker" in specs else 0
        rank = index if rt == "Master" else masters + index
        master = f"{name}-master-0" if masters else f"{name}-worker-0"
        return {
            "MASTER_ADDR": master if not (rt == "Master" and index == 0) else "localhost",
            "MASTER_PORT": "23456",
            "WORLD_SIZE": str(masters + workers),
            "RANK": str(rank),
            "PYTHONUNBUFFERED": "1",
        }

    def _succeeded(self, job: JSON, specs: JSON, by_key: dict[tuple[str, int], JSON]) -> bool:
        if "Master" in specs:
            return self._all_succeeded("Master", specs, by_key)
        return "Worker" in specs and self._all_succeeded("Worker", specs, by_key)
