"""The ``frameworkcontroller`` platform: each trial is a FrameworkController Framework.

Each task role of the config becomes a task role of the Framework (``taskNumber`` tasks, its
``frameworkAttemptCompletionPolicy``); every task runs its command under the trial keeper, and the
first task of the first role reports to the manager. Nothing is retried (``maxRetryCount: 0``): a trial
is one run. With several roles, the ``frameworkbarrier`` init container holds every task until all
are up, and its ``injector.sh`` gives them each other's addresses (``FB_<ROLE>_ADDRESSES``...).
Cancel patches ``spec.executionType`` to ``Stop`` (the controller stops the pods and completes the
Framework with code -210), then deletes it.
"""

from __future__ import annotations

from typing import ClassVar

from ...config.frameworkcontroller import FrameworkControllerConfig, FrameworkControllerRoleConfig
from . import manifest as mf
from .client import JSON, KubeApiError
from .names import framework_name
from .service import KubernetesTrainingService, _Trial
from .status import JobView, framework_view

__all__ = ["BARRIER_IMAGE", "FrameworkControllerTrainingService"]

BARRIER_IMAGE = "frameworkcontroller/frameworkbarrier"
_BARRIER_VOLUME = "frameworkbarrier-volume"
_BARRIER_PATH = "/mnt/frameworkbarrier"


class FrameworkControllerTrainingService(KubernetesTrainingService[FrameworkControllerConfig]):
    """Trials as FrameworkController Frameworks (frameworkcontroller.microsoft.com/v1)."""

    platform_name: ClassVar[str] = "frameworkcontroller"
    config_class: ClassVar[type[FrameworkControllerConfig]] = FrameworkControllerConfig
    group: ClassVar[str] = "frameworkcontroller.microsoft.com"
    version: ClassVar[str] = "v1"

    @property
    def plural(self) -> str:
        return "frameworks"

    @property
    def kind(self) -> str:
        return "Framework"

    def _missing_crd_hint(self) -> str:
        return "deploy FrameworkController (it registers the Framework CRD when it starts)."

    def _job_name(self, trial_id: str) -> str:
        return framework_name(self.experiment_id, trial_id)

    def _primary_pod(self, job: str) -> str:
        return f"{job}-{self.config.task_roles[0].name}-0"

    def _registry_auth_paths(self) -> list[str]:
        return sorted({r.private_registry_auth_path for r in self.config.task_roles if r.private_registry_auth_path})

    def _build_job(self, trial: _Trial, keeper: mf.KeeperSpec) -> JSON:
        return build_framework(self, trial, keeper)

    def _job_view(self, obj: JSON) -> JobView:
        return framework_view(obj)

    async def _stop_job(self, trial: _Trial) -> bool:
        path = f"{self._collection()}/{trial.job}"
        try:
            await self.kube.request(
                "PATCH",
                path,
                body=[{"op": "replace", "path": "/spec/executionType", "value": "Stop"}],
                content_type="application/json-patch+json",
            )
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return await self._delete(self._collection(), trial.job, "Background")


def _role_pod(
    service: FrameworkControllerTrainingService,
    trial: _Trial,
    keeper: mf.KeeperSpec,
    role: FrameworkControllerRoleConfig,
    primary: bool,
    barrier: bool,
) -> JSON:
    cfg = service.config
    detail = trial.detail
    base = detail.form.command if primary and detail.form.command else role.command
    gpus = detail.form.gpu_number if primary and detail.form.gpu_number is not None else role.gpu_number
    test = f'[ "${{FC_TASKROLE_NAME:-}}" = "{role.name}" ] && [ "${{FC_TASK_INDEX:-}}" = 0 ]' if primary else "false"
    mounts = [{"name": _BARRIER_VOLUME, "mountPath": _BARRIER_PATH}] if barrier else []
    spec: JSON = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": int(cfg.cancel_grace_period) + 5,
        "containers": [
            mf.container(
                name=role.name,
                image=role.docker_image,
                command=service._role_command(base, detail),
                keeper=keeper,
                primary_test=test,
                cpu=role.cpu_number,
                memory_mb=role.memory_size,
                gpus=gpus,
                extra_mounts=mounts,
            )
        ],
        "volumes": [service.storage_volume()],
    }
    if barrier:
        spec["initContainers"] = [
            {
                "name": "frameworkbarrier",
                "image": BARRIER_IMAGE,
                "volumeMounts": [{"name": _BARRIER_VOLUME, "mountPath": _BARRIER_PATH}],
            }
        ]
        spec["volumes"].append({"name": _BARRIER_VOLUME, "emptyDir": {}})
    if role.private_registry_auth_path:
        spec["imagePullSecrets"] = [{"name": service._registry_secrets[role.private_registry_auth_path]}]
    return service.pod_template(trial, spec, role=role.name)


def build_framework(service: FrameworkControllerTrainingService, trial: _Trial, keeper: mf.KeeperSpec) -> JSON:
    """The Framework of one trial."""
    cfg = service.config
    barrier = len(cfg.task_roles) > 1
    task_roles = []
    for i, role in enumerate(cfg.task_roles):
        policy = role.framework_attempt_completion_policy
        task_roles.append(
            {
                "name": role.name,
                "taskNumber": role.task_number,
                "frameworkAttemptCompletionPolicy": {
                    "minFailedTaskCount": policy.min_failed_task_count,
                    "minSucceededTaskCount": policy.min_succeed_task_count,
                },
                "task": {
                    "retryPolicy": {"fancyRetryPolicy": False, "maxRetryCount": 0},
                    "podGracefulDeletionTimeoutSec": int(cfg.cancel_grace_period) + 30,
                    "pod": _role_pod(service, trial, keeper, role, i == 0, barrier),
                },
            }
        )
    return {
        "apiVersion": f"{service.group}/{service.version}",
        "kind": "Framework",
        "metadata": service.trial_metadata(trial),
        "spec": {
            "executionType": "Start",
            "retryPolicy": {"fancyRetryPolicy": False, "maxRetryCount": 0},
            "taskRoles": task_roles,
        },
    }
