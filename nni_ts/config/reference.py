"""The configuration reference (``docs/configuration.md``), generated from the models' descriptions.

``python -m nni_ts.config.reference > docs/configuration.md`` regenerates it; a test checks it is current.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .batchjob import KubernetesJobConfig
from .experiment import AlgorithmConfig, ExperimentConfig
from .frameworkcontroller import (
    FrameworkAttemptCompletionPolicy,
    FrameworkControllerConfig,
    FrameworkControllerRoleConfig,
)
from .kubeflow import KubeflowConfig, KubeflowRoleConfig
from .kubernetes import K8sStorageConfig, SshUploadConfig
from .local import LocalConfig
from .podsettings import PlatformPodSettings, RolePodSettings, Toleration, VolumeMount
from .remote import RemoteConfig, RemoteMachineConfig
from .trainjob import RuntimeRefConfig, TrainJobConfig, TrainJobResourcesConfig, TrainJobTrainerConfig

__all__ = ["render_reference"]

_HEADER = """# Configuration reference

nni-ts reads NNI experiment files: v2 (camelCase, below) directly, and v1 (`trainingServicePlatform`,
`trial:`, `machineList`, `kubeflowConfig`, ...) converted on load. YAML or JSON. Relative paths resolve
against the config file's directory and `~` expands. Unknown keys are errors, with a suggestion when a
key looks misspelt; every error names the file, the key path and (for YAML) the line.

This page is generated from the models (`python -m nni_ts.config.reference`).

## NNI v1 keys and their v2 names

| v1 | v2 |
|---|---|
| `trainingServicePlatform` | `trainingService.platform` |
| `maxExecDuration` | `maxExperimentDuration` |
| `maxTrialNum` | `maxTrialNumber` |
| `searchSpacePath` | `searchSpaceFile` |
| `trial.command`, `trial.codeDir`, `trial.gpuNum` | `trialCommand`, `trialCodeDirectory`, `trialGpuNumber` |
| `tuner.builtinTunerName`, `assessor.builtinAssessorName` | `tuner.name`, `assessor.name` |
| `tuner.codeDir` + `classFileName` + `className` | `tuner.codeDirectory` + `className: module.Class` |
| `localConfig.{gpuIndices, maxTrialNumPerGpu, useActiveGpu}` | `trainingService.{gpuIndices, maxTrialNumberPerGpu, useActiveGpu}` |
| `machineList[].{ip, username, passwd, sshKeyPath, passphrase, maxTrialNumPerGpu}` | `trainingService.machineList[].{host, user, password, sshKeyFile, sshPassphrase, maxTrialNumberPerGpu}` |
| `trial.{worker, ps, master}.{gpuNum, cpuNum, memoryMB, image}` | `trainingService.{worker, ps, master}.{gpuNumber, cpuNumber, memorySize, dockerImage}` |
| `trial.taskRoles[].{taskNum, ...}` | `trainingService.taskRoles[].{taskNumber, ...}` |
| `kubeflowConfig` / `frameworkcontrollerConfig` `{storage, nfs: {server, path}}` | `trainingService.storage: {storageType: nfs, server, path}` |
| `keyVault: {vaultName, name}`, `azureStorage: {accountName, azureShare}` | `storage: {storageType: azureStorage, keyVaultName, keyVaultKey, azureAccount, azureShare}` |
| `frameworkAttemptCompletionPolicy.minSucceededTaskCount` | `minSucceedTaskCount` (both spellings accepted) |
| `authorName`, `logDir`, `versionCheck`, `logCollection`, `multiThread` | dropped (no effect) |

Durations: `90` (seconds), `"90s"`, `"30m"`, `"1h"`, `"1.5d"`. Memory: `8192` (MiB), `"8g"`, `"8gb"`,
`"8Gi"`, `"512mb"`.
"""

_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Experiment (top level)", ExperimentConfig),
    ("`tuner`, `assessor`, `advisor`", AlgorithmConfig),
    ("`trainingService` for `platform: local`", LocalConfig),
    ("`trainingService` for `platform: remote`", RemoteConfig),
    ("`machineList[]` (remote)", RemoteMachineConfig),
    ("`trainingService` for `platform: kubeflow`", KubeflowConfig),
    ("`worker`, `ps`, `master` (kubeflow)", KubeflowRoleConfig),
    ("`trainingService` for `platform: frameworkcontroller`", FrameworkControllerConfig),
    ("`taskRoles[]` (frameworkcontroller)", FrameworkControllerRoleConfig),
    ("`frameworkAttemptCompletionPolicy`", FrameworkAttemptCompletionPolicy),
    ("`trainingService` for `platform: kubernetes` (batch Jobs)", KubernetesJobConfig),
    ("`trainingService` for `platform: trainjob`", TrainJobConfig),
    ("`runtimeRef` (trainjob)", RuntimeRefConfig),
    ("`trainer` (trainjob)", TrainJobTrainerConfig),
    ("`trainer.resourcesPerNode` (trainjob)", TrainJobResourcesConfig),
    ("`storage` (kubeflow, frameworkcontroller, kubernetes, trainjob)", K8sStorageConfig),
    ("`storage.upload`", SshUploadConfig),
    ("`tolerations[]` (every Kubernetes platform, and its roles)", Toleration),
    ("`volumeMounts[]` (every Kubernetes platform, and its roles)", VolumeMount),
]


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    if origin is list:
        (inner,) = typing.get_args(annotation) or (Any,)
        return f"list of {_type_name(inner)}"
    if origin is dict:
        return "mapping"
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "section"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return "any"


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        return "empty"
    if field.default is PydanticUndefined or field.default is None:
        return "unset"
    return (
        f"`{field.default!r}`".replace("'", '"')
        if not isinstance(field.default, bool)
        else f"`{str(field.default).lower()}`"
    )


def render_reference() -> str:
    """The whole reference page as Markdown."""
    out = [_HEADER]
    for title, model in _SECTIONS:
        out.append(f"\n## {title}\n\n| key | type | default | meaning |\n|---|---|---|---|")
        fields = list(model.model_fields.items())
        if issubclass(model, RolePodSettings):  # the pod settings after the section's own keys
            pod = set(PlatformPodSettings.model_fields)
            fields = [f for f in fields if f[0] not in pod] + [f for f in fields if f[0] in pod]
        for name, field in fields:
            key = field.alias or name
            desc = (field.description or "").replace("|", "\\|")
            out.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_reference())
