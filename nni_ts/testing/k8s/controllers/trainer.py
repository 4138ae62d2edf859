"""Simulated JobSet (``jobset.x-k8s.io/v1alpha2``) and Kubeflow Trainer v2 (``trainer.kubeflow.org/v1alpha1``)
controllers: TrainJob -> JobSet -> Jobs -> pods, with status flowing back up.

JobSet (as v0.12): one Job ``<jobset>-<replicatedJob>-<index>`` per replica of each replicated job, owned by
the JobSet, labelled ``jobset.sigs.k8s.io/jobset-name``, ``jobset.sigs.k8s.io/replicatedjob-name``,
``jobset.sigs.k8s.io/job-index`` (pods too); ``completionMode`` defaults to Indexed as JobSet's webhook
does; ``suspend`` is passed to the Jobs (condition ``Suspended``, reasons ``SuspendedJobs`` /
``ResumeJobs``); ``successPolicy`` (operator All/Any, targetReplicatedJobs) -> ``Completed``
(``AllJobsCompleted``), a failed Job -> ``Failed`` (``FailedJobs``) unless ``failurePolicy.maxRestarts``
allows a restart (all Jobs re-created, ``status.restarts``); ``terminalState``, ``replicatedJobsStatus``.

TrainJob (as Trainer v2.3): the runtime named by ``runtimeRef`` (ClusterTrainingRuntime by default, or a
TrainingRuntime of the same namespace) gives the JobSet template; the trainer step (the replicated job
labelled ``trainer.kubeflow.org/trainjob-ancestor-step: trainer``, else ``node``) gets ``trainer.image``,
``command``, ``args``, ``env``, ``resourcesPerNode`` on its container (``node``, else the first) and
``numNodes`` as parallelism and completions, after the ``spec.runtimePatches`` (v2.2+) were merged into the
runtime's JobSet template as the real controller does (a strategic merge of each entry's
``trainingRuntimeSpec.template.spec``, replicated jobs by name; the entries' ``template.metadata`` labels and
annotations go on the JobSet). Like the real v2.2+ controller, the TrainJob's own labels and annotations are
not propagated to the JobSet, its Jobs or its pods: a runtime patch is how a client labels the pods.
Torch runtimes add ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``. The JobSet has the TrainJob's name and is
owned by it. Status: ``Suspended`` (from spec.suspend: reasons ``Suspended`` / ``Resumed``), ``Complete``
and ``Failed`` copied from the JobSet's ``Completed`` / ``Failed``, ``jobsStatus`` from
``replicatedJobsStatus``; there is no Running condition. ``spec.activeDeadlineSeconds`` (v2.2+) counts from the
TrainJob's creation or its last resume and, once passed, fails it (``DeadlineExceeded``, "TrainJob exceeded its
active deadline") and deletes its JobSet, as v2.3's ``reconcileDeadline`` does. Admission enforces the CRD's
CEL rules a client meets (name: RFC 1035 label of at most 63 characters; ``spec.runtimeRef``, ``spec.trainer``,
``spec.initializer``, ``spec.managedBy``, ``spec.activeDeadlineSeconds`` immutable) and, as the webhook does,
that the runtime exists and that the runtime patches fit it (each ``manager`` a domain-prefixed path,
their replicated jobs and containers in the runtime, no ``env`` for the ``node`` and initializer containers,
no change while the TrainJob runs).
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
from typing import Any

from ..api import Api
from ..patch import strategic_merge_patch
from ..resources import ResourceType
from ..store import Event
from ..util import JSON, ApiError
from .base import Controller, owner_ref
from .job import _parse_time, _set_cond

__all__ = ["JobSetController", "TrainJobController", "trainjob_admission"]

TRAINER = "trainer.kubeflow.org"
JOBSET = "jobset.x-k8s.io"
_RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_IMMUTABLE = ("runtimeRef", "trainer", "initializer", "managedBy", "activeDeadlineSeconds")


def _true(obj: JSON, type_: str) -> JSON | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return dict(c)
    return None


def _meta_conditions(status: JSON) -> None:
    """metav1.Condition has no lastProbeTime."""
    for c in status.get("conditions") or []:
        c.pop("lastProbeTime", None)


def trainjob_admission(api: Api) -> Any:
    def hook(rtype: ResourceType, old: JSON | None, obj: JSON) -> None:
        if rtype.group != TRAINER or rtype.kind != "TrainJob":
            return
        name = str(obj["metadata"].get("name", ""))
        causes: list[tuple[str, str, str]] = []
        if old is None:
            if not _RFC1035.match(name):
                causes.append(
                    (
                        "metadata.name",
                        "FieldValueInvalid",
                        'Invalid value: "object": metadata.name must match RFC 1035 DNS label format',
                    )
                )
            if len(name) > 63:
                causes.append(
                    (
                        "metadata.name",
                        "FieldValueInvalid",
                        'Invalid value: "object": metadata.name must be no more than 63 characters',
                    )
                )
            ref = (obj.get("spec") or {}).get("runtimeRef") or {}
            kind = ref.get("kind") or "ClusterTrainingRuntime"
            ns = obj["metadata"].get("namespace", "")
            gr = (TRAINER, "clustertrainingruntimes" if kind == "ClusterTrainingRuntime" else "trainingruntimes")
            if (
                ref.get("name")
                and api.store.get(gr, "" if kind == "ClusterTrainingRuntime" else ns, ref["name"]) is None
            ):
                where = "" if kind == "ClusterTrainingRuntime" else f" in namespace {ns}"
                causes.append(
                    (
                        "spec.runtimeRef",
                        "FieldValueInvalid",
                        f'Invalid value: "{ref["name"]}": unsupported runtime: {kind} {ref["name"]!r} not found{where}',
                    )
                )
        else:
            for key in _IMMUTABLE:
                if (old.get("spec") or {}).get(key) != (obj.get("spec") or {}).get(key):
                    causes.append((f"spec.{key}", "FieldValueInvalid", 'Invalid value: "object": field is immutable'))
            old_spec, new_spec = old.get("spec") or {}, obj.get("spec") or {}
            if old_spec.get("runtimePatches") != new_spec.get("runtimePatches") and not (
                old_spec.get("suspend") or new_spec.get("suspend")
            ):
                causes.append(
                    (
                        "spec.runtimePatches",
                        "FieldValueForbidden",
                        "Forbidden: RuntimePatches can only be modified when the TrainJob is suspended before or "
                        "after the update",
                    )
                )
        causes.extend(_patch_causes(api, obj))
        if causes:
            raise ApiError.invalid("TrainJob", name, TRAINER, causes)

    return hook


_DOMAIN_PATH = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[-._a-zA-Z0-9/]+$")
_NO_ENV = ("dataset-initializer", "model-initializer", "node")


def _runtime_of(api: Api, obj: JSON) -> JSON | None:
    ref = (obj.get("spec") or {}).get("runtimeRef") or {}
    if (ref.get("kind") or "ClusterTrainingRuntime") == "ClusterTrainingRuntime":
        return api.store.get((TRAINER, "clustertrainingruntimes"), "", str(ref.get("name", "")))
    return api.store.get((TRAINER, "trainingruntimes"), obj["metadata"].get("namespace", ""), str(ref.get("name", "")))


def _patch_causes(api: Api, obj: JSON) -> list[tuple[str, str, str]]:
    """What the Trainer webhook (v2.3 jobset plugin ``Validate``) says of ``spec.runtimePatches``."""
    patches = (obj.get("spec") or {}).get("runtimePatches") or []
    if not patches:
        return []
    field = "spec.runtimePatches"
    causes: list[tuple[str, str, str]] = []
    runtime = _runtime_of(api, obj)
    rjobs = ((((runtime or {}).get("spec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs") or []
    names: dict[str, set[str]] = {}
    for rj in rjobs:
        pod = ((rj.get("template") or {}).get("spec") or {}).get("template") or {}
        pod_spec = pod.get("spec") or {}
        names[str(rj.get("name"))] = {
            str(c.get("name")) for c in [*(pod_spec.get("containers") or []), *(pod_spec.get("initContainers") or [])]
        }
    for patch in patches:
        manager = str(patch.get("manager") or "")
        if not _DOMAIN_PATH.match(manager):
            causes.append(
                (f"{field}.manager", "FieldValueInvalid", f'Invalid value: "{manager}": must be a domain-prefixed path')
            )
        if runtime is None:
            continue
        template = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for rjp in template.get("replicatedJobs") or []:
            containers = names.get(str(rjp.get("name")))
            if containers is None:
                causes.append(
                    (
                        field,
                        "FieldValueInvalid",
                        "must not have replicated job that doesn't exist in the runtime job template",
                    )
                )
                continue
            pod_spec = (((rjp.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for key in ("initContainers", "containers"):
                for c in pod_spec.get(key) or []:
                    if c.get("name") not in containers:
                        what = "initContainer" if key == "initContainers" else "container"
                        causes.append(
                            (
                                field,
                                "FieldValueInvalid",
                                f"must not have {what} that doesn't exist in the runtime job {rjp.get('name')}",
                            )
                        )
                    elif key == "containers" and c.get("env") and c.get("name") in _NO_ENV:
                        causes.append(
                            (
                                field,
                                "FieldValueInvalid",
                                "must not have envs for the " + ", ".join(_NO_ENV) + " containers",
                            )
                        )
    return causes


class JobSetController(Controller):
    name = "jobset-controller"
    group = JOBSET
    plural = "jobsets"
    kind = "JobSet"

    def owner_of(self, event: Event) -> str | None:
        if event.gr != ("batch", "jobs"):
            return None
        for ref in event.obj["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "JobSet" and ref.get("controller"):
                return str(ref.get("name"))
        return None

    def _jobs(self, js: JSON) -> list[JSON]:
        uid = js["metadata"]["uid"]
        out = []
        for gr, ns, name in self.api.store.owner_index.get(uid, ()):
            if gr == ("batch", "jobs"):
                job = self.api.store.get(gr, ns, name)
                if job is not None:
                    out.append(job)
        return out

    def reconcile(self, namespace: str, name: str) -> None:
        js = self.primary(namespace, name)
        if js is None or js["metadata"].get("deletionTimestamp"):
            return
        spec: JSON = js.get("spec") or {}
        status = copy.deepcopy(js.get("status") or {})
        before = copy.deepcopy(status)
        finished = _true(js, "Completed") or _true(js, "Failed")
        suspended = bool(spec.get("suspend"))
        jobs = self._jobs(js)
        restarts = int(status.get("restarts", 0))
        live = [j for j in jobs if not j["metadata"].get("deletionTimestamp")]
        stale = [
            j
            for j in live
            if (j["metadata"].get("labels") or {}).get("jobset.sigs.k8s.io/restart-attempt") != str(restarts)
        ]
        for job in stale:
            self._delete(job)
        live = [j for j in live if j not in stale]
        by_name = {j["metadata"]["name"]: j for j in live}
        rjobs = spec.get("replicatedJobs") or []
        if not finished:
            for rj in rjobs:
                for index in range(int(rj.get("replicas", 1) or 1)):
                    job_name = f"{name}-{rj['name']}-{index}"
                    existing = by_name.get(job_name)
                    if existing is None:
                        if not [j for j in jobs if j["metadata"]["name"] == job_name]:  # old one still going
                            self._create_job(js, rj, index, restarts, suspended)
                    elif bool((existing.get("spec") or {}).get("suspend")) != suspended:
                        self.api.patch(
                            self.api.rtype("batch", "v1", "jobs"),
                            namespace,
                            job_name,
                            {"spec": {"suspend": suspended}},
                            "application/merge-patch+json",
                        )
            if suspended:
                if _set_cond(status, "Suspended", "True", "SuspendedJobs", "jobset is suspended"):
                    self.record(js, "SuspendedJobs", "jobset is suspended")
            elif _true(js, "Suspended"):
                _set_cond(status, "Suspended", "False", "ResumeJobs", "jobset is resumed")
                self.record(js, "ResumeJobs", "jobset is resumed")
        # replicatedJobsStatus
        statuses = []
        for rj in rjobs:
            mine = [
                j
                for j in live
                if (j["metadata"].get("labels") or {}).get("jobset.sigs.k8s.io/replicatedjob-name") == rj["name"]
            ]
            st = {"name": rj["name"], "ready": 0, "succeeded": 0, "failed": 0, "active": 0, "suspended": 0}
            for j in mine:
                if _true(j, "Complete"):
                    st["succeeded"] += 1
                elif _true(j, "Failed"):
                    st["failed"] += 1
                elif (j.get("spec") or {}).get("suspend"):
                    st["suspended"] += 1
                else:
                    jst = j.get("status") or {}
                    if int(jst.get("active", 0)) > 0:
                        st["active"] += 1
                    want = int((j.get("spec") or {}).get("parallelism", 1) or 1)
                    if int(jst.get("ready", 0)) + int(jst.get("succeeded", 0)) >= want:
                        st["ready"] += 1
            statuses.append(st)
        status["replicatedJobsStatus"] = statuses
        status.setdefault("restarts", restarts)
        if not finished and not suspended and not stale:
            failed = [s for s in statuses if s["failed"]]
            policy = spec.get("successPolicy") or {}
            targets = policy.get("targetReplicatedJobs") or [rj["name"] for rj in rjobs]
            wanted = {rj["name"]: int(rj.get("replicas", 1) or 1) for rj in rjobs}
            done = [s["name"] for s in statuses if s["name"] in targets and s["succeeded"] >= wanted[s["name"]]]
            any_done = [s["name"] for s in statuses if s["name"] in targets and s["succeeded"] > 0]
            if failed:
                max_restarts = int((spec.get("failurePolicy") or {}).get("maxRestarts", 0) or 0)
                if restarts < max_restarts:
                    status["restarts"] = restarts + 1
                    status["restartsCountTowardsMax"] = restarts + 1
                    self.record(js, "Restarting", f"restarting jobset, attempt {restarts + 1}")
                    self.enqueue(namespace, name)
                else:
                    _set_cond(status, "Failed", "True", "FailedJobs", "jobset failed due to one or more job failures")
                    status["terminalState"] = "Failed"
                    self.record(js, "FailedJobs", "jobset failed due to one or more job failures", "Warning")
                    for job in live:
                        if not (_true(job, "Complete") or _true(job, "Failed")):
                            self._delete(job)
            elif (policy.get("operator", "All") == "Any" and any_done) or (
                policy.get("operator", "All") == "All" and len(done) == len(targets)
            ):
                _set_cond(status, "Completed", "True", "AllJobsCompleted", "jobset completed successfully")
                status["terminalState"] = "Completed"
                self.record(js, "AllJobsCompleted", "jobset completed successfully")
        _meta_conditions(status)
        if status != before:
            self.api.update_status(self.api.by_gr[(self.group, self.plural)], namespace, name, status)

    def _delete(self, job: JSON) -> None:
        try:
            self.api.delete(
                self.api.rtype("batch", "v1", "jobs"),
                job["metadata"]["namespace"],
                job["metadata"]["name"],
                propagation="Background",
            )
        except ApiError:
            pass

    def _create_job(self, js: JSON, rj: JSON, index: int, restarts: int, suspended: bool) -> None:
        template = copy.deepcopy(rj.get("template") or {})
        name = js["metadata"]["name"]
        labels = {
            "jobset.sigs.k8s.io/jobset-name": name,
            "jobset.sigs.k8s.io/replicatedjob-name": rj["name"],
            "jobset.sigs.k8s.io/job-index": str(index),
            "jobset.sigs.k8s.io/replicatedjob-replicas": str(int(rj.get("replicas", 1) or 1)),
            "jobset.sigs.k8s.io/restart-attempt": str(restarts),
        }
        meta = template.get("metadata") or {}
        job_spec = template.get("spec") or {}
        job_spec.setdefault("completionMode", "Indexed")
        job_spec["suspend"] = suspended
        pod_spec = job_spec.setdefault("template", {}).setdefault("spec", {})
        pod_spec.setdefault("restartPolicy", "OnFailure")  # JobSet's webhook default
        pod_meta = job_spec.setdefault("template", {}).setdefault("metadata", {})
        pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **labels}
        pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), **labels}
        body = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": f"{name}-{rj['name']}-{index}",
                "namespace": js["metadata"]["namespace"],
                "labels": {**(meta.get("labels") or {}), **labels},
                "annotations": {**(meta.get("annotations") or {}), **labels},
                "ownerReferences": [owner_ref(js)],
            },
            "spec": job_spec,
        }
        try:
            self.api.create(self.api.rtype("batch", "v1", "jobs"), js["metadata"]["namespace"], body)
        except ApiError as exc:
            self.record(js, "FailedCreate", f"Error creating job: {exc.message}", "Warning")


class TrainJobController(Controller):
    name = "trainjob-controller"
    group = TRAINER
    plural = "trainjobs"
    kind = "TrainJob"

    def __init__(self, api: Api) -> None:
        super().__init__(api)
        api.admission.append(trainjob_admission(api))

    def owner_of(self, event: Event) -> str | None:
        if event.gr != (JOBSET, "jobsets"):
            return None
        for ref in event.obj["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "TrainJob" and ref.get("controller"):
                return str(ref.get("name"))
        return None

    def reconcile(self, namespace: str, name: str) -> None:
        tj = self.primary(namespace, name)
        if tj is None or tj["metadata"].get("deletionTimestamp"):
            return
        spec: JSON = tj.get("spec") or {}
        status = copy.deepcopy(tj.get("status") or {})
        before = copy.deepcopy(status)
        suspended = bool(spec.get("suspend"))
        finished = _true(tj, "Complete") or _true(tj, "Failed")
        js_type = self.api.by_gr.get((JOBSET, "jobsets"))
        if js_type is None:
            _set_cond(
                status, "Failed", "True", "JobSetNotInstalled", "the JobSet CRD is not installed in the fake cluster"
            )
        elif not finished:
            js = self.api.store.get((JOBSET, "jobsets"), namespace, name)
            if js is None:
                runtime = self._runtime(tj)
                if runtime is None:
                    ref = spec.get("runtimeRef") or {}
                    _set_cond(
                        status,
                        "Failed",
                        "True",
                        "TrainingRuntimeNotSupported",
                        f"unsupported runtime: {ref.get('name')}",
                    )
                else:
                    try:
                        self.api.create(js_type, namespace, self._jobset(tj, runtime))
                    except ApiError as exc:
                        self.record(tj, "FailedCreate", f"Error creating JobSet: {exc.message}", "Warning")
            else:
                if bool((js.get("spec") or {}).get("suspend")) != suspended:
                    self.api.patch(
                        js_type, namespace, name, {"spec": {"suspend": suspended}}, "application/merge-patch+json"
                    )
                jstatus = js.get("status") or {}
                status["jobsStatus"] = copy.deepcopy(jstatus.get("replicatedJobsStatus") or [])
                for src, dst in (("Completed", "Complete"), ("Failed", "Failed")):
                    cond = _true(js, src)
                    if cond is not None and _set_cond(
                        status, dst, "True", cond.get("reason", ""), cond.get("message", "")
                    ):
                        self.record(tj, dst, cond.get("message", ""), "Normal" if dst == "Complete" else "Warning")
            if suspended:
                _set_cond(status, "Suspended", "True", "Suspended", "TrainJob is suspended")
            elif _true(tj, "Suspended"):
                _set_cond(status, "Suspended", "False", "Resumed", "TrainJob is resumed")
            if not suspended and js_type is not None:
                self._deadline(tj, status, js_type)
        _meta_conditions(status)
        if status != before:
            self.api.update_status(self.api.by_gr[(self.group, self.plural)], namespace, name, status)

    def _runtime(self, tj: JSON) -> JSON | None:
        return _runtime_of(self.api, tj)

    def _deadline(self, tj: JSON, status: JSON, js_type: Any) -> None:
        """``spec.activeDeadlineSeconds``: from creation, or from the last resume (Suspended False)."""
        deadline = (tj.get("spec") or {}).get("activeDeadlineSeconds")
        if not deadline or any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in status.get("conditions") or []
        ):
            return
        start = tj["metadata"].get("creationTimestamp")
        for c in status.get("conditions") or []:
            if c.get("type") == "Suspended" and c.get("status") == "False":
                start = c.get("lastTransitionTime") or start
        if not start:
            return
        age = (_dt.datetime.now(_dt.UTC) - _parse_time(str(start))).total_seconds()
        namespace, name = tj["metadata"]["namespace"], tj["metadata"]["name"]
        if age < float(deadline):
            self.enqueue_later(float(deadline) - age + 0.05, namespace, name)
            return
        message = "TrainJob exceeded its active deadline"
        _set_cond(status, "Failed", "True", "DeadlineExceeded", message)
        self.record(tj, "Failed", message, "Warning")
        try:
            self.api.delete(js_type, namespace, name, propagation="Background")
        except ApiError:
            pass

    def _jobset(self, tj: JSON, runtime: JSON) -> JSON:
        rspec = runtime.get("spec") or {}
        template = copy.deepcopy(rspec.get("template") or {})
        js_spec = template.setdefault("spec", {})
        meta = template.setdefault("metadata", {})
        for patch in (tj.get("spec") or {}).get("runtimePatches") or []:
            ptemplate = (patch.get("trainingRuntimeSpec") or {}).get("template") or {}
            pmeta = ptemplate.get("metadata") or {}
            for key in ("labels", "annotations"):
                if pmeta.get(key):
                    meta[key] = {**(meta.get(key) or {}), **pmeta[key]}
            for rjp in (ptemplate.get("spec") or {}).get("replicatedJobs") or []:
                for rj in js_spec.get("replicatedJobs") or []:
                    if rj.get("name") == rjp.get("name"):
                        rj["template"] = strategic_merge_patch(rj.get("template") or {}, rjp.get("template") or {})
        trainer = (tj.get("spec") or {}).get("trainer") or {}
        ml = rspec.get("mlPolicy") or {}
        num_nodes = int(trainer.get("numNodes") or ml.get("numNodes") or 1)
        rjobs = js_spec.get("replicatedJobs") or []
        step = next(
            (
                rj
                for rj in rjobs
                if ((rj.get("template") or {}).get("metadata") or {})
                .get("labels", {})
                .get("trainer.kubeflow.org/trainjob-ancestor-step")
                == "trainer"
            ),
            next((rj for rj in rjobs if rj.get("name") == "node"), rjobs[0] if rjobs else None),
        )
        if step is not None:
            job_spec = step.setdefault("template", {}).setdefault("spec", {})
            job_spec["parallelism"] = job_spec["completions"] = num_nodes
            pod_spec = job_spec.setdefault("template", {}).setdefault("spec", {})
            containers = pod_spec.get("containers") or []
            container = next((c for c in containers if c.get("name") == "node"), containers[0] if containers else None)
            if container is not None:
                for key in ("image", "command", "args"):
                    if trainer.get(key) is not None:
                        container[key] = copy.deepcopy(trainer[key])
                env = {e["name"]: e for e in container.get("env") or []}
                if "torch" in ml:
                    proc = (ml.get("torch") or {}).get("numProcPerNode", "auto")
                    for key, value in (
                        ("PET_NNODES", str(num_nodes)),
                        ("PET_NPROC_PER_NODE", str(proc)),
                        ("PET_MASTER_ADDR", "127.0.0.1"),  # the fake has no cluster networking
                        ("PET_MASTER_PORT", "29400"),
                    ):
                        env[key] = {"name": key, "value": value}
                    env["PET_NODE_RANK"] = {
                        "name": "PET_NODE_RANK",
                        "valueFrom": {
                            "fieldRef": {
                                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                            }
                        },
                    }
                for e in trainer.get("env") or []:
                    env[e["name"]] = copy.deepcopy(e)
                container["env"] = list(env.values())
                if trainer.get("resourcesPerNode") is not None:
                    container["resources"] = copy.deepcopy(trainer["resourcesPerNode"])
        labels = {**(meta.get("labels") or {}), "trainer.kubeflow.org/trainjob-name": tj["metadata"]["name"]}
        return {
            "apiVersion": f"{JOBSET}/v1alpha2",
            "kind": "JobSet",
            "metadata": {
                "name": tj["metadata"]["name"],
                "namespace": tj["metadata"]["namespace"],
                "labels": labels,
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [owner_ref(tj)],
            },
            "spec": {**js_spec, "suspend": bool((tj.get("spec") or {}).get("suspend"))},
        }
