"""The ``trainjob`` platform: each trial is a Kubeflow Trainer v2 TrainJob (``trainer.kubeflow.org/v1alpha1``).

A TrainJob names a training runtime (``runtimeRef``: a ClusterTrainingRuntime or a TrainingRuntime the user
names in the config) and fills in its ``trainer`` (image, command, args, env, numNodes, resourcesPerNode).
The Trainer controller turns it into a JobSet of that runtime's template, the JobSet into Jobs, the Jobs
into pods: ``<trainjob>-<step>-0-<index>-<random>`` for the trainer step (the runtime's replicated job
labelled ``trainer.kubeflow.org/trainjob-ancestor-step: trainer``, usually ``node``), one pod per node.

What nni-ts puts where
----------------------
* ``trainer``: the image, ``command`` ``/bin/sh -c <launcher>`` (the trial keeper runs the trial's command,
  see :mod:`.manifest`), the keeper's environment in ``env`` (the only way to give env to the ``node``
  container: Trainer refuses env in a runtime patch for it), ``numNodes`` and ``resourcesPerNode``.
* ``runtimePatches`` (one entry, ``manager: nni-ts.io/nni-ts``): everything else of the pod template the
  base's :meth:`~.service.KubernetesTrainingService.pod_template` built: the trial's labels on the JobSet,
  the Jobs and the pods (Trainer v2.2+ propagates neither the TrainJob's labels nor its annotations to
  them; the pod watch finds a trial's pods by these labels), the storage volume and its mount, and the pod
  settings the field allows. What a runtime patch cannot express (a priority class, an image pull policy,
  init containers or sidecars of our own...) is refused at start with a message naming it: set it in the
  runtime's template instead.

Versions: ``runtimePatches`` exists from Trainer v2.2 (v2.0 had ``podSpecOverrides``, v2.1
``podTemplateOverrides``). At start the installed CRD's schema (``/openapi/v3``, else the CRD itself) says
which field the cluster has; an older cluster gets an error naming the field. Which pod fields the patch
may set is read from the same schema.

Success is the ``Complete`` condition and failure ``Failed`` (reason and message reach the trial's message);
there is no Running condition, so RUNNING comes from the pods (or ``jobsStatus[].ready``). Node 0 (the pod
whose ``JOB_COMPLETION_INDEX`` is 0) runs the reporting keeper; the other nodes journal only.
Cancel deletes the TrainJob (``propagationPolicy: Background``: its JobSet, Jobs and pods follow).
``maxTrialDuration`` (the experiment's, inherited, or the platform's) becomes ``spec.activeDeadlineSeconds``:
Trainer fails the TrainJob with ``DeadlineExceeded`` and deletes its JobSet once it has passed.
"""

from __future__ import annotations

import logging
import shlex
from typing import Any, ClassVar

from ...config.trainjob import TrainJobConfig
from ...errors import ConfigError
from ...models import HyperParameters, TrialJobApplicationForm, TrialJobDetail
from . import manifest as mf
from .client import JSON, KubeApiError
from .names import TRAINJOB_NAME_MAX, trainjob_name
from .service import KubernetesTrainingService, _Trial
from .status import JobView, trainjob_view

__all__ = [
    "MANAGER",
    "PRIMARY_TEST",
    "TrainJobTrainingService",
    "build_trainjob",
    "patch_fields",
    "runtime_retries",
    "trainer_step",
    "translate_pod_template",
]

log = logging.getLogger(__name__)

TRAINER_GROUP = "trainer.kubeflow.org"
#: The ``manager`` of nni-ts's entry in ``spec.runtimePatches`` (a domain-prefixed path, as Trainer requires).
MANAGER = "nni-ts.io/nni-ts"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
#: Trainer sets image, command and args only on the trainer step's container of this name.
NODE = "node"
#: True in node 0 of the trainer: the Jobs of a JobSet are Indexed, and Trainer runs one Job per step.
PRIMARY_TEST = '[ "${JOB_COMPLETION_INDEX:-}" = 0 ]'

#: What a runtime patch may set in a pod spec (Trainer v2.3.0's PodSpecPatch), used when the cluster's
#: schema cannot be read.
_PATCH_POD_FIELDS_V23 = frozenset(
    {
        "serviceAccountName",
        "volumes",
        "initContainers",
        "containers",
        "imagePullSecrets",
        "securityContext",
        "nodeSelector",
        "affinity",
        "tolerations",
        "schedulingGates",
        "terminationGracePeriodSeconds",
    }
)
_PATCH_CONTAINER_FIELDS_V23 = frozenset({"name", "env", "volumeMounts", "securityContext"})
#: Pod spec fields nni-ts's builder sets itself that a runtime patch cannot carry: the runtime decides them.
_OWN_POD_FIELDS = frozenset({"restartPolicy", "terminationGracePeriodSeconds"})
#: Container fields the builder sets that become ``trainer`` fields, or that a patch cannot carry.
_TRAINER_FIELDS = {
    "image": "image",
    "command": "command",
    "args": "args",
    "env": "env",
    "resources": "resourcesPerNode",
}
_OWN_CONTAINER_FIELDS = frozenset({"name", "terminationMessagePolicy"})
#: The older fields, newest first, and the Trainer release that had them.
_OLD_FIELDS = (("podTemplateOverrides", "v2.1"), ("podSpecOverrides", "v2.0"))


def _props(schema: Any, *path: str) -> JSON:
    """The ``properties`` of the schema at ``path`` (``[]`` steps into ``items``), or {}."""
    node = schema
    for step in path:
        if not isinstance(node, dict):
            return {}
        node = node.get("items") if step == "[]" else (node.get("properties") or {}).get(step)
    if not isinstance(node, dict):
        return {}
    props = node.get("properties")
    return props if isinstance(props, dict) else {}


_POD_SPEC_PATH = (
    "spec",
    "runtimePatches",
    "[]",
    "trainingRuntimeSpec",
    "template",
    "spec",
    "replicatedJobs",
    "[]",
    "template",
    "spec",
    "template",
    "spec",
)


class TrainJobTrainingService(KubernetesTrainingService[TrainJobConfig]):
    """Trials as Kubeflow Trainer v2 TrainJobs (v2.2 or later). See the module docstring."""

    platform_name: ClassVar[str] = "trainjob"
    config_class: ClassVar[type[TrainJobConfig]] = TrainJobConfig
    group: ClassVar[str] = TRAINER_GROUP
    version: ClassVar[str] = "v1alpha1"

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        #: The trainer step of the runtime (its replicated job) and what a runtime patch may set in a pod.
        self.trainer_step = NODE
        self.patch_pod_fields: frozenset[str] = _PATCH_POD_FIELDS_V23
        self.patch_container_fields: frozenset[str] = _PATCH_CONTAINER_FIELDS_V23

    @property
    def plural(self) -> str:
        return "trainjobs"

    @property
    def kind(self) -> str:
        return "TrainJob"

    def _missing_crd_hint(self) -> str:
        return "install Kubeflow Trainer v2.2 or later (with JobSet)."

    def _job_name(self, trial_id: str) -> str:
        return trainjob_name(self.experiment_id, trial_id)

    def _primary_pod(self, job: str) -> str:
        # Job pods have random suffixes: this names the Job's first pod until the pod watch shows the real
        # one (see _on_pod).
        return f"{job}-{self.trainer_step}-0-0"

    def _registry_auth_paths(self) -> list[str]:
        path = self.config.trainer.private_registry_auth_path
        return [path] if path else []

    def _build_job(self, trial: _Trial, keeper: mf.KeeperSpec) -> JSON:
        return build_trainjob(self, trial, keeper)

    def _job_view(self, obj: JSON) -> JobView:
        return trainjob_view(obj)

    async def _stop_job(self, trial: _Trial) -> bool:
        return await self._delete(self._collection(), trial.job, "Background")

    async def _on_pod(self, trial: _Trial, kind: str, pod: JSON) -> None:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        index = labels.get("batch.kubernetes.io/job-completion-index") or (meta.get("annotations") or {}).get(
            "batch.kubernetes.io/job-completion-index"
        )
        if (
            labels.get("jobset.sigs.k8s.io/replicatedjob-name") == self.trainer_step
            and labels.get("jobset.sigs.k8s.io/job-index", "0") == "0"
            and index == "0"
        ):
            trial.primary_pod = str(meta.get("name"))
        await super()._on_pod(trial, kind, pod)

    def _on_warning_event(self, kind: str, event: JSON) -> None:
        """Warning events of a trial's JobSet (named as its TrainJob) and of its Jobs (``<trainjob>-<step>-<n>``:
        FailedCreate of a pod refused by a quota or a webhook) count as the TrainJob's own."""
        involved = event.get("involvedObject") or {}
        if involved.get("kind") in ("JobSet", "Job"):
            name = str(involved.get("name") or "")
            trial = self._by_job.get(name) or next(
                (t for job, t in self._by_job.items() if name.startswith(f"{job}-{self.trainer_step}-")), None
            )
            if trial is not None:
                event = {**event, "involvedObject": {**involved, "kind": self.kind, "name": trial.job}}
        super()._on_warning_event(kind, event)

    async def _conclude(self, trial: _Trial) -> None:
        final = trial.facts.job_final
        if final is not None and final.reason == "DeadlineExceeded":
            # Trainer itself deleted the JobSet, and with it the running pods: not someone else.
            trial.facts.pod_deleted = None
        await super()._conclude(trial)

    # ------------------------------------------------------------------ start: what the cluster has

    async def _start_inner(self) -> None:
        await super()._start_inner()
        await self._detect_version()
        await self._check_runtime()
        await self._check_trainjob()

    async def _trainjob_schema(self) -> JSON | None:
        """The TrainJob's OpenAPI schema as the cluster serves it: from ``/openapi/v3`` (every authenticated
        user may read it), else from the CRD (needs a ClusterRole); None if neither can be read."""
        try:
            doc = await self.kube.request("GET", f"/openapi/v3/apis/{self.group}/{self.version}", timeout=30)
            for schema in ((doc.get("components") or {}).get("schemas") or {}).values():
                gvks = schema.get("x-kubernetes-group-version-kind") or [] if isinstance(schema, dict) else []
                if any(g.get("group") == self.group and g.get("kind") == "TrainJob" for g in gvks):
                    return dict(schema)
        except KubeApiError as exc:
            log.info("No OpenAPI v3 document for %s/%s: %s", self.group, self.version, exc)
        try:
            crd = await self.kube.request(
                "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/trainjobs.{self.group}", timeout=30
            )
        except KubeApiError as exc:
            log.warning(
                "Cannot read the TrainJob CRD's schema (%s); assuming Kubeflow Trainer v2.2 or later.", exc.api_message
            )
            return None
        for v in (crd.get("spec") or {}).get("versions") or []:
            if v.get("name") == self.version:
                return dict(((v.get("schema") or {}).get("openAPIV3Schema")) or {})
        return None

    async def _detect_version(self) -> None:
        schema = await self._trainjob_schema()
        if schema is not None:
            self.patch_pod_fields, self.patch_container_fields = patch_fields(schema)

    async def _check_runtime(self) -> None:
        ref = self.config.runtime_ref
        if ref.kind == "ClusterTrainingRuntime":
            path, where = f"/apis/{self.group}/{self.version}/clustertrainingruntimes/{ref.name}", ""
        else:
            path = f"/apis/{self.group}/{self.version}/namespaces/{self.namespace}/trainingruntimes/{ref.name}"
            where = f" in namespace {self.namespace}"
        try:
            runtime = await self.kube.request("GET", path, timeout=30)
        except KubeApiError as exc:
            if exc.status == 404:
                plural = "clustertrainingruntimes" if ref.kind == "ClusterTrainingRuntime" else "trainingruntimes"
                raise ConfigError(
                    f"the {ref.kind} {ref.name!r} named by trainingService.runtimeRef does not exist{where}: "
                    f"create it (examples/trainjob/ has one) or name one that `kubectl get {plural}` lists.",
                    path="trainingService.runtimeRef.name",
                ) from exc
            if exc.status == 403:
                # Reading a ClusterTrainingRuntime takes a cluster-wide grant (Kubeflow's platform manifests
                # give it to every authenticated user; nni-ts's Role is namespaced): the dry run checks it.
                log.info(
                    "Cannot read the %s %r (%s): the dry run of a TrainJob checks it instead, with the trainer "
                    "step %r.",
                    ref.kind,
                    ref.name,
                    exc.api_message,
                    NODE,
                )
                return
            raise
        self.trainer_step = trainer_step(runtime, ref.kind, ref.name)
        retries = runtime_retries(runtime, self.trainer_step)
        if retries:
            log.warning(
                "The %s %r retries a failed trainer (%s): a trial that fails then runs again under the same id. "
                "Give the runtime backoffLimit: 0 and restartPolicy: Never (examples/trainjob/runtime.yaml).",
                ref.kind,
                ref.name,
                retries,
            )

    async def _check_trainjob(self) -> None:
        """Build the TrainJob of a trial that does not exist and have the API server check it in a dry run
        (its schema, its CEL rules and Trainer's webhook: the runtime exists, the runtime patch fits it).
        A pod setting a runtime patch cannot carry, or a runtime that does not fit, is refused now, at start,
        and not at every trial."""
        form = TrialJobApplicationForm(sequence_id=0, hyper_parameters=HyperParameters(value="{}"))
        probe = _Trial(detail=TrialJobDetail(id="probe", form=form), job=self._job_name("probe"))
        body = build_trainjob(self, probe, self._keeper_spec(probe))
        try:
            await self.kube.request("POST", self._collection(), query={"dryRun": "All"}, body=body, timeout=30)
        except KubeApiError as exc:
            if exc.status not in (400, 403, 422):
                raise
            ref = self.config.runtime_ref
            runtime = "runtime" in exc.api_message.lower()
            raise ConfigError(
                f"the cluster refuses the TrainJobs of this experiment (a dry run, for the {ref.kind} "
                f"{ref.name!r}): {exc.api_message}",
                path="trainingService.runtimeRef.name" if runtime else "trainingService",
            ) from exc


def patch_fields(schema: JSON) -> tuple[frozenset[str], frozenset[str]]:
    """What the installed Trainer's runtime patch may set in a pod spec and in a container, from the TrainJob's
    OpenAPI schema. A TrainJob without ``spec.runtimePatches`` (Trainer v2.0, v2.1) is refused with an error
    naming the field it has instead."""
    spec = _props(schema, "spec")
    if "runtimePatches" not in spec:
        old = next(((f, v) for f, v in _OLD_FIELDS if f in spec), None)
        has = (
            f"has spec.{old[0]} (Kubeflow Trainer {old[1]}) and no spec.runtimePatches"
            if old
            else ("has no spec.runtimePatches")
        )
        raise ConfigError(
            f"the cluster's TrainJob CRD (trainjobs.{TRAINER_GROUP}/v1alpha1) {has}: platform trainjob needs "
            "Kubeflow Trainer v2.2 or later, whose spec.runtimePatches carries the trial's labels, storage and "
            "pod settings to the pods. Upgrade Kubeflow Trainer, or use platform kubeflow or kubernetes on this "
            "cluster.",
            path="trainingService.platform",
        )
    pod = _props(schema, *_POD_SPEC_PATH)
    container = _props(schema, *_POD_SPEC_PATH, "containers", "[]")
    return (
        frozenset(pod) if pod else _PATCH_POD_FIELDS_V23,
        frozenset(container) if container else _PATCH_CONTAINER_FIELDS_V23,
    )


def runtime_retries(runtime: JSON, step: str) -> str:
    """How the runtime would run a failed trainer step again ("" if it would not): the Job's backoffLimit
    (Kubernetes' default 6) with the pod's restartPolicy, and the JobSet's failurePolicy.maxRestarts."""
    spec = ((runtime.get("spec") or {}).get("template") or {}).get("spec") or {}
    out = []
    for rj in spec.get("replicatedJobs") or []:
        if rj.get("name") != step:
            continue
        job = (rj.get("template") or {}).get("spec") or {}
        limit = job.get("backoffLimit", 6)
        if limit:
            policy = (((job.get("template") or {}).get("spec") or {}).get("restartPolicy")) or "OnFailure"
            out.append(f"backoffLimit {limit}, restartPolicy {policy}")
    restarts = (spec.get("failurePolicy") or {}).get("maxRestarts")
    if restarts:
        out.append(f"the JobSet's failurePolicy.maxRestarts {restarts}")
    return "; ".join(out)


def trainer_step(runtime: JSON, kind: str, name: str) -> str:
    """The name of the runtime's trainer step: its replicated job labelled
    ``trainer.kubeflow.org/trainjob-ancestor-step: trainer`` with a container named ``node`` (only there
    does Trainer set the TrainJob's image and command). A step name that would make the JobSet's Job names
    too long is refused too."""
    rjobs = (((runtime.get("spec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs") or []
    for rj in rjobs:
        template = rj.get("template") or {}
        if ((template.get("metadata") or {}).get("labels") or {}).get(ANCESTOR_LABEL) != "trainer":
            continue
        containers = ((((template.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")) or []
        if not any(c.get("name") == NODE for c in containers):
            continue
        step = str(rj.get("name") or "")
        longest = TRAINJOB_NAME_MAX + len(step) + len("-0-0")
        if longest > 63:
            raise ConfigError(
                f"the {kind} {name!r} names its trainer step {step!r} ({len(step)} characters): the Jobs and pod "
                f"host names of a TrainJob would be {longest} characters, over Kubernetes' 63. Rename the "
                "replicated job in the runtime to at most 19 characters (usually 'node').",
                path="trainingService.runtimeRef.name",
            )
        return step
    raise ConfigError(
        f"the {kind} {name!r} has no trainer step: a replicated job labelled {ANCESTOR_LABEL}: trainer with a "
        f"container named {NODE!r}, where Kubeflow Trainer puts the TrainJob's image and command. Name a "
        "runtime that has one (as torch-distributed does).",
        path="trainingService.runtimeRef.name",
    )


def translate_pod_template(
    template: JSON,
    *,
    step: str,
    pod_fields: frozenset[str] = _PATCH_POD_FIELDS_V23,
    container_fields: frozenset[str] = _PATCH_CONTAINER_FIELDS_V23,
    labels: dict[str, str] | None = None,
) -> tuple[JSON, JSON]:
    """Split a pod template (the base's :meth:`pod_template`, whose ``node`` container is the trial's) into
    the TrainJob's ``trainer`` fields and its runtime patch (``runtimePatches[]`` entry).

    ``pod_fields`` / ``container_fields``: what the cluster's runtime patch may set in a pod spec and in a
    container. ``labels``: the trial's labels for the JobSet and its Jobs. Raises :class:`ConfigError` for
    a setting a TrainJob cannot carry."""
    meta = template.get("metadata") or {}
    spec = dict(template.get("spec") or {})
    containers = spec.pop("containers", [])
    others = [str(c.get("name")) for c in containers if c.get("name") != NODE]
    if others:
        raise _inexpressible(
            f"containers {others}", "a runtime patch can only change the runtime's own containers, not add any"
        )
    node = next((c for c in containers if c.get("name") == NODE), None)
    assert node is not None, "the builder's template has the node container"
    trainer: JSON = {}
    container_patch: JSON = {"name": NODE}
    for key, value in node.items():
        if key in _TRAINER_FIELDS:
            trainer[_TRAINER_FIELDS[key]] = value
        elif key in _OWN_CONTAINER_FIELDS:
            continue
        elif key in container_fields and key != "env":
            container_patch[key] = value
        else:
            raise _inexpressible(f"the container's {key}", "a runtime patch does not carry it for a container")
    pod_patch: JSON = {}
    for key, value in spec.items():
        if key in pod_fields and key not in ("containers", "initContainers"):
            pod_patch[key] = value
        elif key in _OWN_POD_FIELDS:
            continue  # the runtime's template decides (restartPolicy, and the grace period on Trainer v2.2)
        elif key == "initContainers":
            raise _inexpressible("initContainers", "a runtime patch can only change the runtime's init containers")
        else:
            raise _inexpressible(key, "a runtime patch does not carry it")
    if len(container_patch) > 1:
        pod_patch["containers"] = [container_patch]
    pod_meta = {k: dict(v) for k, v in meta.items() if k in ("labels", "annotations") and v}
    unknown_meta = sorted(set(meta) - {"labels", "annotations"})
    if unknown_meta:
        raise _inexpressible(f"pod metadata {unknown_meta}", "a runtime patch carries only labels and annotations")
    job_template: JSON = {"spec": {"template": {"metadata": pod_meta, "spec": pod_patch}}}
    jobset_template: JSON = {"spec": {"replicatedJobs": [{"name": step, "template": job_template}]}}
    if labels:
        job_template["metadata"] = {"labels": dict(labels)}
        jobset_template["metadata"] = {"labels": dict(labels)}
    return trainer, {"manager": MANAGER, "trainingRuntimeSpec": {"template": jobset_template}}


def _inexpressible(what: str, why: str) -> ConfigError:
    return ConfigError(
        f"the pod setting {what} cannot be expressed on a TrainJob ({why}; Kubeflow Trainer's runtimePatches "
        "can set serviceAccountName, volumes, imagePullSecrets, securityContext, nodeSelector, affinity, "
        "tolerations, schedulingGates, and the volumeMounts and securityContext of the runtime's containers). "
        "Set it in the training runtime's template instead.",
        path="trainingService",
    )


def build_trainjob(service: TrainJobTrainingService, trial: _Trial, keeper: mf.KeeperSpec) -> JSON:
    """The TrainJob of one trial."""
    cfg = service.config
    t = cfg.trainer
    detail = trial.detail
    base = detail.form.command or cfg.trial_command or ""
    if t.args:
        base = f"{base} {shlex.join(t.args)}"
    gpus = detail.form.gpu_number if detail.form.gpu_number is not None else t.resources_per_node.gpu_number
    container = mf.container(
        name=NODE,
        image=t.image,
        command=service._role_command(base, detail),
        keeper=keeper,
        primary_test=PRIMARY_TEST,
        cpu=t.resources_per_node.cpu_number,
        memory_mb=t.resources_per_node.memory_size,
        gpus=gpus,
    )
    ours = {e["name"] for e in container["env"]}
    container["env"] = [*({"name": k, "value": v} for k, v in t.env.items() if k not in ours), *container["env"]]
    pod_spec: JSON = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": int(cfg.cancel_grace_period) + 5,
        "containers": [container],
        "volumes": [service.storage_volume()],
    }
    if t.private_registry_auth_path:
        pod_spec["imagePullSecrets"] = [{"name": service._registry_secrets[t.private_registry_auth_path]}]
    metadata = service.trial_metadata(trial)
    template = service.pod_template(trial, pod_spec, role=service.trainer_step)
    trainer, patch = translate_pod_template(
        template,
        step=service.trainer_step,
        pod_fields=service.patch_pod_fields,
        container_fields=service.patch_container_fields,
        # The trial's own labels only: Kueue's queue label belongs on the TrainJob alone (on the JobSet too,
        # Kueue would manage it as a second workload).
        labels=mf.trial_labels(service.experiment_id, detail.id),
    )
    trainer["numNodes"] = t.num_nodes
    spec: JSON = {
        "runtimeRef": {"apiGroup": TRAINER_GROUP, "kind": cfg.runtime_ref.kind, "name": cfg.runtime_ref.name},
        "trainer": trainer,
        "runtimePatches": [patch],
    }
    if cfg.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = cfg.active_deadline_seconds
    return {"apiVersion": f"{service.group}/{service.version}", "kind": "TrainJob", "metadata": metadata, "spec": spec}
