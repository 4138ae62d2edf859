"""The ``kubeflow`` platform: each trial is a TFJob (tf-operator) or a PyTorchJob (pytorch-operator).

Roles: ``worker`` and ``ps`` for TFJobs, ``master`` and ``worker`` for PyTorchJobs, each with its
replicas, command, resources and image. Every replica runs its command under the trial keeper; the one
that reports to the manager is the first worker of a TFJob, or the master of a PyTorchJob (the first
worker when there is none). Replicas never restart (``restartPolicy: Never``, ``backoffLimit: 0``): a
trial is one run. ``cleanPodPolicy: Running`` stops parameter servers once the workers are done.
Cancel deletes the job with ``propagationPolicy: Background`` and waits (on the pod watch) until its pods
are gone: their processes got SIGTERM and the grace period.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ...config.kubeflow import KubeflowConfig, KubeflowRoleConfig
from . import manifest as mf
from .client import JSON
from .names import job_name
from .service import KubernetesTrainingService, _Trial
from .status import JobView, kubeflow_job_view

__all__ = ["KubeflowTrainingService"]

_TF_ROLES = (("worker", "Worker"), ("ps", "PS"))
_PYTORCH_ROLES = (("master", "Master"), ("worker", "Worker"))


class KubeflowTrainingService(KubernetesTrainingService[KubeflowConfig]):
    """Trials as Kubeflow TFJobs or PyTorchJobs (kubeflow.org/v1). See the module docstring."""

    platform_name: ClassVar[str] = "kubeflow"
    config_class: ClassVar[type[KubeflowConfig]] = KubeflowConfig
    group: ClassVar[str] = "kubeflow.org"
    version: ClassVar[str] = "v1"

    @property
    def _tf(self) -> bool:
        return self.config.operator == "tf-operator"

    @property
    def plural(self) -> str:
        return "tfjobs" if self._tf else "pytorchjobs"

    @property
    def kind(self) -> str:
        return "TFJob" if self._tf else "PyTorchJob"

    def _missing_crd_hint(self) -> str:
        return "install the Kubeflow training operator (tf-operator or pytorch-operator, kubeflow.org/v1)."

    def roles(self) -> list[tuple[str, str, KubeflowRoleConfig]]:
        """``(config key, replica type, role)`` for every role given, in the operator's order."""
        table = _TF_ROLES if self._tf else _PYTORCH_ROLES
        out = []
        for key, replica_type in table:
            role = getattr(self.config, key)
            if role is not None:
                out.append((key, replica_type, role))
        return out

    def primary_type(self) -> str:
        """The replica type whose index 0 reports to the manager."""
        return self.roles()[0][1]

    def _job_name(self, trial_id: str) -> str:
        return job_name(self.experiment_id, trial_id)

    def _primary_pod(self, job: str) -> str:
        return f"{job}-{self.primary_type().lower()}-0"

    def _registry_auth_paths(self) -> list[str]:
        return sorted({r.private_registry_auth_path for _, _, r in self.roles() if r.private_registry_auth_path})

    def _build_job(self, trial: _Trial, keeper: mf.KeeperSpec) -> JSON:
        return build_kubeflow_job(self, trial, keeper)

    def _job_view(self, obj: JSON) -> JobView:
        return kubeflow_job_view(obj)

    async def _stop_job(self, trial: _Trial) -> bool:
        return await self._delete(self._collection(), trial.job, "Background")


def build_kubeflow_job(service: KubeflowTrainingService, trial: _Trial, keeper: mf.KeeperSpec) -> JSON:
    """The TFJob / PyTorchJob of one trial."""
    cfg = service.config
    detail = trial.detail
    assert service.anchor is not None
    container_name = "tensorflow" if service.config.operator == "tf-operator" else "pytorch"
    primary = service.primary_type()
    replica_specs: dict[str, Any] = {}
    for _key, replica_type, role in service.roles():
        base = role.command
        if replica_type == primary and detail.form.command:
            base = detail.form.command
        command = service._role_command(base, detail)
        # The operator names pods <job>-<replica type>-<index>; the pod's name comes from the downward API.
        test = f'case "${{NNI_TS_POD_NAME:-}}" in *-{replica_type.lower()}-0) true;; *) false;; esac'
        if replica_type != primary:
            test = "false"
        gpus = role.gpu_number if role.gpu_number else 0
        if replica_type == primary and detail.form.gpu_number is not None:
            gpus = detail.form.gpu_number
        pod_spec: JSON = {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": int(cfg.cancel_grace_period) + 5,
            "containers": [
                mf.container(
                    name=container_name,
                    image=role.docker_image,
                    command=command,
                    keeper=keeper,
                    primary_test=test,
                    cpu=role.cpu_number,
                    memory_mb=role.memory_size,
                    gpus=gpus,
                )
            ],
            "volumes": [service.storage_volume()],
        }
        if role.private_registry_auth_path:
            pod_spec["imagePullSecrets"] = [{"name": service._registry_secrets[role.private_registry_auth_path]}]
        replica_specs[replica_type] = {
            "replicas": role.replicas,
            "restartPolicy": "Never",
            "template": service.pod_template(trial, pod_spec, role=replica_type.lower()),
        }
    spec_key = "tfReplicaSpecs" if service.config.operator == "tf-operator" else "pytorchReplicaSpecs"
    return {
        "apiVersion": f"{service.group}/{service.version}",
        "kind": service.kind,
        "metadata": service.trial_metadata(trial),
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 0},
            spec_key: replica_specs,
        },
    }
