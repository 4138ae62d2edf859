"""A small Kueue (``kueue.x-k8s.io/v1beta2``, as v0.19): queues, quota, admission and preemption.

* Webhook: a batch/v1 Job, JobSet, TrainJob, or a kubeflow.org/v1 TFJob or PyTorchJob, created with the label
  ``kueue.x-k8s.io/queue-name`` is suspended (``spec.suspend: true``; ``spec.runPolicy.suspend: true`` for
  the kubeflow.org jobs); the client need not do it. (Real Kueue 0.19 turned its kubeflow.org/v1
  integrations off by default: a cluster admin enables ``kubeflow.org/tfjob`` / ``pytorchjob`` in its
  configuration's ``integrations.frameworks``. The fake manages them always.)
* A ``Workload`` per such object (``<kind>-<name>-<5 hex>``, owned by it, label ``kueue.x-k8s.io/job-uid``),
  with ``podSets`` (Job: ``main`` x parallelism; JobSet: one per replicated job; TrainJob: ``node`` x
  numNodes with ``resourcesPerNode``; TFJob / PyTorchJob: one per replica type, lowercased, x replicas),
  ``queueName`` and ``priority`` (from the label
  ``kueue.x-k8s.io/priority-class`` naming a ``WorkloadPriorityClass``'s ``value``; 0 without).
* Admission per ClusterQueue (LocalQueue ``spec.clusterQueue`` -> ClusterQueue), highest priority first then
  oldest, within the ``nominalQuota`` of the first flavor of ``spec.resourceGroups`` for each covered
  resource (``cpu``, ``memory``, ``nvidia.com/gpu``: the pods' requests, or limits when requests are
  missing); ``queueingStrategy`` StrictFIFO stops at the first workload that does not fit, BestEffortFIFO
  (default) goes on. Admitted: conditions ``QuotaReserved`` (reason ``QuotaReserved``) and ``Admitted``
  (``Admitted``), ``status.admission``, then the object is unsuspended. Not admitted: ``QuotaReserved``
  False, reason ``Pending`` with the reason in the message (insufficient quota, or ``Inadmissible`` when its
  LocalQueue or ClusterQueue does not exist).
* Preemption: with ``spec.preemption.withinClusterQueue: LowerPriority`` a pending workload that does not fit
  evicts admitted ones of lower priority (lowest, then newest, first); ``kueue.preempt(ns, name)`` evicts one
  by hand. An evicted workload gets ``Evicted`` (reason ``Preempted``) and ``Preempted`` (reason
  ``InClusterQueue``) True, ``QuotaReserved`` and ``Admitted`` False, ``Requeued`` True,
  ``status.requeueState.count`` + 1; its object is suspended again (the Job controller removes the pods;
  they do not count as failures) and it waits in the queue again. When admitted again, ``Evicted`` and
  ``Preempted`` turn False.
* When the object finishes: ``Finished`` True (reason ``Succeeded`` / ``Failed``), quota released.
* ``status`` of LocalQueues and ClusterQueues: ``pendingWorkloads``, ``reservingWorkloads``,
  ``admittedWorkloads``.

ClusterQueue, ResourceFlavor and WorkloadPriorityClass get minimal CRDs when none is loaded (their real
CRDs are not among ../shared/crds); Workload and LocalQueue too, though the real v0.19.2 ones are better.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging

from ..api import Api
from ..resources import ResourceType
from ..store import Event
from ..util import JSON, ApiError, now_iso, parse_quantity

__all__ = ["KUEUE", "QUEUE_LABEL", "Kueue", "kueue_crds"]

log = logging.getLogger(__name__)

KUEUE = "kueue.x-k8s.io"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
RESOURCES = ("cpu", "memory", "nvidia.com/gpu")
#: (group, plural) -> (kind, the condition types that mean finished successfully / failed)
MANAGED: dict[tuple[str, str], tuple[str, str, str]] = {
    ("batch", "jobs"): ("Job", "Complete", "Failed"),
    ("jobset.x-k8s.io", "jobsets"): ("JobSet", "Completed", "Failed"),
    ("trainer.kubeflow.org", "trainjobs"): ("TrainJob", "Complete", "Failed"),
    ("kubeflow.org", "tfjobs"): ("TFJob", "Succeeded", "Failed"),
    ("kubeflow.org", "pytorchjobs"): ("PyTorchJob", "Succeeded", "Failed"),
}
#: The kubeflow.org/v1 jobs: suspended through ``spec.runPolicy.suspend``, pod sets per replica type.
KUBEFLOW_V1 = {("kubeflow.org", "tfjobs"): "tfReplicaSpecs", ("kubeflow.org", "pytorchjobs"): "pytorchReplicaSpecs"}


def _suspend_flag(gr: tuple[str, str], obj: JSON) -> bool:
    spec = obj.get("spec") or {}
    if gr in KUBEFLOW_V1:
        return bool((spec.get("runPolicy") or {}).get("suspend"))
    return bool(spec.get("suspend"))


def _suspend_patch(gr: tuple[str, str], value: bool) -> JSON:
    if gr in KUBEFLOW_V1:
        return {"spec": {"runPolicy": {"suspend": value}}}
    return {"spec": {"suspend": value}}


_ANY: JSON = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _crd(kind: str, plural: str, namespaced: bool) -> JSON:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{KUEUE}"},
        "spec": {
            "group": KUEUE,
            "scope": "Namespaced" if namespaced else "Cluster",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1beta2",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _ANY},
                    "subresources": {"status": {}},
                }
            ],
        },
    }


def kueue_crds() -> list[JSON]:
    """Minimal CRDs of Kueue's kinds (permissive schemas)."""
    return [
        _crd("ClusterQueue", "clusterqueues", False),
        _crd("ResourceFlavor", "resourceflavors", False),
        _crd("WorkloadPriorityClass", "workloadpriorityclasses", False),
        _crd("LocalQueue", "localqueues", True),
        _crd("Workload", "workloads", True),
    ]


def _cond(obj: JSON, type_: str) -> JSON | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            found: JSON = c
            return found
    return None


def _true(obj: JSON, type_: str) -> bool:
    c = _cond(obj, type_)
    return c is not None and c.get("status") == "True"


def _set(status: JSON, type_: str, value: str, reason: str, message: str) -> None:
    conditions = list(status.get("conditions") or [])
    now = now_iso()
    for i, c in enumerate(conditions):
        if c.get("type") == type_:
            if (c.get("status"), c.get("reason"), c.get("message")) == (value, reason, message):
                return
            new = dict(c, status=value, reason=reason, message=message)
            if c.get("status") != value:
                new["lastTransitionTime"] = now
            conditions[i] = new
            status["conditions"] = conditions
            return
    conditions.append({"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": now})
    status["conditions"] = conditions


def _requests(pod_spec: JSON) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in pod_spec.get("containers") or []:
        res = c.get("resources") or {}
        for name in RESOURCES:
            value = (res.get("requests") or {}).get(name, (res.get("limits") or {}).get(name))
            if value is not None:
                out[name] = out.get(name, 0.0) + parse_quantity(value)
    return out


class Kueue:
    """The simulated Kueue controller manager (``controllers=[..., "kueue"]``)."""

    name = "kueue"

    def __init__(self, api: Api) -> None:
        self.api = api
        for crd in kueue_crds():
            plural = crd["spec"]["names"]["plural"]
            if (KUEUE, plural) not in api.by_gr:
                api.load_crd(crd)
        api.admission.append(self._webhook)
        self._wake = asyncio.Event()
        #: job uid -> creation order (timestamps have whole seconds; the queue is first come, first served)
        self._seq: dict[str, int] = {}
        for gr in MANAGED:
            for obj in sorted(api.store.list(gr), key=lambda o: o["metadata"].get("creationTimestamp", "")):
                self._seq.setdefault(obj["metadata"]["uid"], len(self._seq))
        api.store.subscribe(self._on_event)
        self._wake.set()

    # ------------------------------------------------------------------ plumbing

    def _on_event(self, event: Event) -> None:
        if event.type == "ADDED" and event.gr in MANAGED:
            self._seq.setdefault(event.obj["metadata"]["uid"], len(self._seq))
        if event.gr in MANAGED or event.gr[0] == KUEUE:
            self._wake.set()

    def _webhook(self, rtype: ResourceType, old: JSON | None, obj: JSON) -> None:
        if old is None and (rtype.group, rtype.plural) in MANAGED:
            if (obj["metadata"].get("labels") or {}).get(QUEUE_LABEL):
                spec = obj.setdefault("spec", {})
                if (rtype.group, rtype.plural) in KUBEFLOW_V1:
                    spec.setdefault("runPolicy", {})["suspend"] = True
                else:
                    spec["suspend"] = True

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - a controller survives a failing pass, as real ones do
                log.exception("The simulated Kueue failed a scheduling pass.")
            await asyncio.sleep(0.01)  # coalesce bursts of events into one pass

    def _rt(self, plural: str) -> ResourceType:
        return self.api.by_gr[(KUEUE, plural)]

    def _status(self, obj: JSON, gr: tuple[str, str], status: JSON) -> None:
        if status != (obj.get("status") or {}):
            rtype = self.api.by_gr[gr]
            self.api.update_status(rtype, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], status)

    def _suspend(self, gr: tuple[str, str], namespace: str, name: str, value: bool) -> None:
        obj = self.api.store.get(gr, namespace, name)
        if obj is None or _suspend_flag(gr, obj) == value:
            return
        try:
            self.api.patch(
                self.api.by_gr[gr], namespace, name, _suspend_patch(gr, value), "application/merge-patch+json"
            )
        except ApiError as exc:
            log.warning("Kueue could not set suspend=%s on %s/%s: %s", value, namespace, name, exc.message)

    # ------------------------------------------------------------------ workloads

    def _owner(self, wl: JSON) -> tuple[tuple[str, str], JSON] | None:
        for ref in wl["metadata"].get("ownerReferences") or []:
            for gr, (kind, _, _) in MANAGED.items():
                if ref.get("kind") == kind and gr in self.api.by_gr:
                    obj = self.api.store.get(gr, wl["metadata"]["namespace"], str(ref.get("name")))
                    if obj is not None and obj["metadata"]["uid"] == ref.get("uid"):
                        return gr, obj
        return None

    def _pod_sets(self, gr: tuple[str, str], obj: JSON) -> list[JSON]:
        spec = obj.get("spec") or {}
        if gr == ("batch", "jobs"):
            return [
                {"name": "main", "count": int(spec.get("parallelism", 1) or 1), "template": spec.get("template") or {}}
            ]
        if gr in KUBEFLOW_V1:
            return [
                {"name": rt.lower(), "count": int(rs.get("replicas", 1) or 1), "template": rs.get("template") or {}}
                for rt, rs in (spec.get(KUBEFLOW_V1[gr]) or {}).items()
            ]
        if gr == ("jobset.x-k8s.io", "jobsets"):
            out = []
            for rj in spec.get("replicatedJobs") or []:
                job = (rj.get("template") or {}).get("spec") or {}
                count = int(rj.get("replicas", 1) or 1) * int(job.get("parallelism", 1) or 1)
                out.append({"name": rj["name"], "count": count, "template": job.get("template") or {}})
            return out
        trainer = spec.get("trainer") or {}
        container = {
            "name": "node",
            "image": trainer.get("image", "trainer"),
            "resources": trainer.get("resourcesPerNode") or {},
        }
        return [
            {
                "name": "node",
                "count": int(trainer.get("numNodes", 1) or 1),
                "template": {"spec": {"containers": [container]}},
            }
        ]

    def _ensure_workloads(self) -> None:
        wl_gr = (KUEUE, "workloads")
        existing = {
            ref.get("uid") for wl in self.api.store.list(wl_gr) for ref in wl["metadata"].get("ownerReferences") or []
        }
        for gr, (kind, _, _) in MANAGED.items():
            if gr not in self.api.by_gr:
                continue
            for obj in self.api.store.list(gr):
                meta = obj["metadata"]
                queue = (meta.get("labels") or {}).get(QUEUE_LABEL)
                if not queue or meta["uid"] in existing or meta.get("deletionTimestamp"):
                    continue
                digest = hashlib.sha256(meta["uid"].encode()).hexdigest()[:5]
                priority = 0
                pclass = (meta.get("labels") or {}).get(PRIORITY_LABEL)
                if pclass:
                    wpc = self.api.store.get((KUEUE, "workloadpriorityclasses"), "", pclass)
                    priority = int((wpc or {}).get("value", 0))
                rtype = self.api.by_gr[gr]
                body: JSON = {
                    "apiVersion": f"{KUEUE}/v1beta2",
                    "kind": "Workload",
                    "metadata": {
                        "name": f"{kind.lower()}-{meta['name']}"[:56] + f"-{digest}",
                        "namespace": meta["namespace"],
                        "labels": {"kueue.x-k8s.io/job-uid": meta["uid"]},
                        "ownerReferences": [
                            {
                                "apiVersion": rtype.api_version,
                                "kind": kind,
                                "name": meta["name"],
                                "uid": meta["uid"],
                                "controller": True,
                                "blockOwnerDeletion": True,
                            }
                        ],
                    },
                    "spec": {
                        "queueName": queue,
                        "priority": priority,
                        "active": True,
                        "podSets": self._pod_sets(gr, obj),
                    },
                }
                if pclass:
                    body["spec"]["priorityClassRef"] = {"group": KUEUE, "kind": "WorkloadPriorityClass", "name": pclass}
                try:
                    self.api.create(self._rt("workloads"), meta["namespace"], body)
                    self.api.record_event(
                        obj,
                        "CreatedWorkload",
                        f"Created Workload: {meta['namespace']}/{body['metadata']['name']}",
                        "Normal",
                        "kueue",
                    )
                except ApiError as exc:
                    log.warning(
                        "Kueue could not create the Workload of %s/%s: %s", meta["namespace"], meta["name"], exc.message
                    )

    @staticmethod
    def _usage(wl: JSON) -> dict[str, float]:
        total: dict[str, float] = {}
        for ps in (wl.get("spec") or {}).get("podSets") or []:
            for name, value in _requests((ps.get("template") or {}).get("spec") or {}).items():
                total[name] = total.get(name, 0.0) + value * int(ps.get("count", 1) or 1)
        return total

    @staticmethod
    def _quota(cq: JSON) -> tuple[str, dict[str, float]]:
        for group in (cq.get("spec") or {}).get("resourceGroups") or []:
            for flavor in group.get("flavors") or []:
                quota = {r["name"]: parse_quantity(r.get("nominalQuota", 0)) for r in flavor.get("resources") or []}
                return str(flavor.get("name", "default")), quota
        return "default", {}

    # ------------------------------------------------------------------ the scheduling pass

    def sync(self) -> None:
        if (KUEUE, "workloads") not in self.api.by_gr:
            return
        self._ensure_workloads()
        wl_gr = (KUEUE, "workloads")
        by_cq: dict[str, list[JSON]] = {}
        for wl in self.api.store.list(wl_gr):
            status = copy.deepcopy(wl.get("status") or {})
            owner = self._owner(wl)
            ns = wl["metadata"]["namespace"]
            if owner is None or _true(wl, "Finished"):
                continue
            gr, obj = owner
            if _true(wl, "QuotaReserved") and _true(wl, "Evicted") and self._stopped(gr, obj):
                self._requeue(wl)  # its pods are gone: the quota is free and it waits in the queue again
                wl = self.api.store.get(wl_gr, ns, wl["metadata"]["name"]) or wl
                status = copy.deepcopy(wl.get("status") or {})
            _, ok, bad = MANAGED[gr]
            if _true(obj, ok) or _true(obj, bad):
                _set(
                    status,
                    "Finished",
                    "True",
                    "Succeeded" if _true(obj, ok) else "Failed",
                    "Job finished successfully" if _true(obj, ok) else "Job failed",
                )
                self._status(wl, wl_gr, status)
                continue
            queue = str((wl.get("spec") or {}).get("queueName", ""))
            lq = self.api.store.get((KUEUE, "localqueues"), ns, queue)
            cq_name = str(((lq or {}).get("spec") or {}).get("clusterQueue", ""))
            cq = self.api.store.get((KUEUE, "clusterqueues"), "", cq_name) if cq_name else None
            if lq is None or cq is None:
                if not _true(wl, "QuotaReserved"):
                    what = (
                        f"LocalQueue {queue} doesn't exist" if lq is None else f"ClusterQueue {cq_name} doesn't exist"
                    )
                    _set(status, "QuotaReserved", "False", "Inadmissible", what)
                    self._status(wl, wl_gr, status)
                continue
            by_cq.setdefault(cq_name, []).append(wl)
        for cq_name, workloads in by_cq.items():
            cq = self.api.store.get((KUEUE, "clusterqueues"), "", cq_name)
            if cq is not None:
                self._schedule(cq, workloads)
        self._queue_status()

    def _schedule(self, cq: JSON, workloads: list[JSON]) -> None:
        wl_gr = (KUEUE, "workloads")
        flavor, quota = self._quota(cq)
        spec = cq.get("spec") or {}
        strict = spec.get("queueingStrategy") == "StrictFIFO"
        preempt_lower = ((spec.get("preemption") or {}).get("withinClusterQueue")) == "LowerPriority"
        admitted = [w for w in workloads if _true(w, "QuotaReserved")]
        used: dict[str, float] = {}
        for w in admitted:
            for k, v in self._usage(w).items():
                used[k] = used.get(k, 0.0) + v
        pending = [w for w in workloads if not _true(w, "QuotaReserved") and (w.get("spec") or {}).get("active", True)]
        pending.sort(
            key=lambda w: (
                -int((w.get("spec") or {}).get("priority", 0)),
                w["metadata"]["creationTimestamp"],
                self._seq.get(w["metadata"]["labels"].get("kueue.x-k8s.io/job-uid", ""), 0),
                w["metadata"]["name"],
            )
        )

        evicted_now: set[str] = set()

        def evicting(a: JSON) -> bool:
            return _true(a, "Evicted") or a["metadata"]["name"] in evicted_now

        def short(need: dict[str, float]) -> list[str]:
            return [
                f"insufficient unused quota for {r} in flavor {flavor}, "
                f"{need[r] + used.get(r, 0.0) - quota[r]:g} more needed"
                for r in RESOURCES
                if r in need and r in quota and need[r] + used.get(r, 0.0) > quota[r] + 1e-9
            ]

        for wl in pending:
            need = self._usage(wl)
            missing = short(need)
            if missing and preempt_lower:
                prio = int((wl.get("spec") or {}).get("priority", 0))
                freeing: dict[str, float] = {}
                for a in admitted:
                    if evicting(a):  # already preempted, its pods stopping: its quota will be free
                        for k, v in self._usage(a).items():
                            freeing[k] = freeing.get(k, 0.0) + v
                victims = sorted(
                    (a for a in admitted if int((a.get("spec") or {}).get("priority", 0)) < prio and not evicting(a)),
                    key=lambda a: (int((a.get("spec") or {}).get("priority", 0)), a["metadata"]["creationTimestamp"]),
                )
                for k, v in freeing.items():
                    used[k] = used.get(k, 0.0) - v
                chosen: list[JSON] = []
                for victim in victims if short(need) else []:
                    chosen.append(victim)
                    for k, v in self._usage(victim).items():
                        used[k] = used.get(k, 0.0) - v
                    if not short(need):
                        break
                enough = not short(need)
                for victim in chosen:  # evicted workloads hold their quota until their pods are gone
                    for k, v in self._usage(victim).items():
                        used[k] = used.get(k, 0.0) + v
                for k, v in freeing.items():
                    used[k] = used.get(k, 0.0) + v
                if enough:
                    message = (
                        f"Preempted to accommodate a workload (UID: {wl['metadata']['uid']}) due to prioritization "
                        "in the ClusterQueue"
                    )
                    for victim in chosen:
                        evicted_now.add(victim["metadata"]["name"])
                        self._evict(victim, message)
                    missing = ["waiting for the preempted workloads to stop"]
            status = copy.deepcopy(wl.get("status") or {})
            if missing:
                _set(
                    status,
                    "QuotaReserved",
                    "False",
                    "Pending",
                    "couldn't assign flavors to pod set "
                    + ", ".join(ps.get("name", "main") for ps in (wl.get("spec") or {}).get("podSets") or [])
                    + ": "
                    + "; ".join(missing),
                )
                self._status(wl, wl_gr, status)
                if strict:
                    break
                continue
            for k, v in need.items():
                used[k] = used.get(k, 0.0) + v
            admitted.append(wl)
            self._admit(wl, cq, flavor, status)

    def _admit(self, wl: JSON, cq: JSON, flavor: str, status: JSON) -> None:
        cq_name = cq["metadata"]["name"]
        status["admission"] = {
            "clusterQueue": cq_name,
            "podSetAssignments": [
                {
                    "name": ps.get("name", "main"),
                    "count": int(ps.get("count", 1) or 1),
                    "flavors": {r: flavor for r in _requests((ps.get("template") or {}).get("spec") or {})},
                    "resourceUsage": {
                        r: f"{v * int(ps.get('count', 1) or 1):g}"
                        for r, v in _requests((ps.get("template") or {}).get("spec") or {}).items()
                    },
                }
                for ps in (wl.get("spec") or {}).get("podSets") or []
            ],
        }
        _set(status, "QuotaReserved", "True", "QuotaReserved", f"Quota reserved in ClusterQueue {cq_name}")
        _set(status, "Admitted", "True", "Admitted", "The workload is admitted")
        for type_ in ("Evicted", "Preempted"):
            if _true(wl, type_):
                _set(
                    status,
                    type_,
                    "False",
                    "QuotaReserved",
                    "Previously: " + str((_cond(wl, type_) or {}).get("message", "")),
                )
        self._status(wl, (KUEUE, "workloads"), status)
        owner = self._owner(wl)
        if owner is not None:
            gr, obj = owner
            self.api.record_event(obj, "Started", f"Admitted by clusterQueue {cq_name}", "Normal", "kueue")
            self._suspend(gr, obj["metadata"]["namespace"], obj["metadata"]["name"], False)

    def _evict(self, wl: JSON, message: str, reason: str = "InClusterQueue") -> None:
        status = copy.deepcopy(wl.get("status") or {})
        _set(status, "Evicted", "True", "Preempted", message)
        _set(status, "Preempted", "True", reason, message)
        _set(status, "Admitted", "False", "NoReservation", "The workload has no reservation")
        self._status(wl, (KUEUE, "workloads"), status)
        owner = self._owner(wl)
        if owner is not None:
            gr, obj = owner
            self.api.record_event(obj, "Preempted", message, "Normal", "kueue")
            self._suspend(gr, obj["metadata"]["namespace"], obj["metadata"]["name"], True)

    def _stopped(self, gr: tuple[str, str], obj: JSON) -> bool:
        """Whether a suspended object's pods are gone (an evicted workload keeps its quota until then)."""
        if not _suspend_flag(gr, obj) or not _true(obj, "Suspended"):
            return False
        status = obj.get("status") or {}
        if gr in KUBEFLOW_V1:
            return all(int(r.get("active", 0)) == 0 for r in (status.get("replicaStatuses") or {}).values())
        if gr == ("batch", "jobs"):
            return int(status.get("active", 0)) + int(status.get("terminating", 0)) == 0
        jobs = status.get("replicatedJobsStatus") if gr == ("jobset.x-k8s.io", "jobsets") else status.get("jobsStatus")
        return all(int(j.get("active", 0)) == 0 for j in jobs or [])

    def _requeue(self, wl: JSON) -> None:
        status = copy.deepcopy(wl.get("status") or {})
        message = str((_cond(wl, "Evicted") or {}).get("message", ""))
        _set(status, "QuotaReserved", "False", "Pending", "Preempted; waiting in the queue again")
        _set(status, "Requeued", "True", "Preempted", message)
        status.pop("admission", None)
        state = status.setdefault("requeueState", {})
        state["count"] = int(state.get("count", 0)) + 1
        self._status(wl, (KUEUE, "workloads"), status)

    def preempt(self, namespace: str, workload: str) -> None:
        """Evict an admitted workload now (as a preemption by a higher-priority one would); it is requeued."""
        wl = self.api.store.get((KUEUE, "workloads"), namespace, workload)
        if wl is None:
            raise ApiError.not_found("workloads", workload, KUEUE)
        self._evict(wl, "Preempted to accommodate a higher priority workload (fake: cluster.kueue.preempt)")
        self._wake.set()

    def _queue_status(self) -> None:
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for wl in self.api.store.list((KUEUE, "workloads")):
            if _true(wl, "Finished"):
                continue
            key = (wl["metadata"]["namespace"], str((wl.get("spec") or {}).get("queueName", "")))
            c = counts.setdefault(key, {"pending": 0, "reserving": 0, "admitted": 0})
            if _true(wl, "QuotaReserved"):
                c["reserving"] += 1
                c["admitted"] += int(_true(wl, "Admitted"))
            else:
                c["pending"] += 1
        per_cq: dict[str, dict[str, int]] = {}
        for lq in self.api.store.list((KUEUE, "localqueues")):
            key = (lq["metadata"]["namespace"], lq["metadata"]["name"])
            c = counts.get(key, {"pending": 0, "reserving": 0, "admitted": 0})
            status = copy.deepcopy(lq.get("status") or {})
            status.update(
                pendingWorkloads=c["pending"], reservingWorkloads=c["reserving"], admittedWorkloads=c["admitted"]
            )
            self._status(lq, (KUEUE, "localqueues"), status)
            total = per_cq.setdefault(
                str((lq.get("spec") or {}).get("clusterQueue", "")), {"pending": 0, "reserving": 0, "admitted": 0}
            )
            for k in total:
                total[k] += c[k]
        for cq in self.api.store.list((KUEUE, "clusterqueues")):
            c = per_cq.get(cq["metadata"]["name"], {"pending": 0, "reserving": 0, "admitted": 0})
            status = copy.deepcopy(cq.get("status") or {})
            status.update(
                pendingWorkloads=c["pending"], reservingWorkloads=c["reserving"], admittedWorkloads=c["admitted"]
            )
            self._status(cq, (KUEUE, "clusterqueues"), status)
