"""Configuration of the ``trainjob`` platform: each trial a Kubeflow Trainer v2 TrainJob."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import ConfigModel
from .kubernetes import KubernetesPlatformConfig, TrialDeadlineConfig, parse_memory_mb

__all__ = ["RuntimeRefConfig", "TrainJobConfig", "TrainJobResourcesConfig", "TrainJobTrainerConfig"]

#: A Kubernetes object name (RFC 1123 subdomain), as runtimes are named.
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class RuntimeRefConfig(ConfigModel):
    """The training runtime every trial's TrainJob references (``spec.runtimeRef``); it must exist."""

    kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = Field(
        "ClusterTrainingRuntime",
        description="ClusterTrainingRuntime (cluster-wide) or TrainingRuntime (in the experiment's namespace).",
    )
    name: str = Field(description="The runtime's name, for example torch-distributed.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if len(v) > 253 or not _SUBDOMAIN.match(v):
            raise ValueError(
                f"runtime name {v[:80]!r}{'...' if len(v) > 80 else ''} ({len(v)} characters) is not a Kubernetes "
                "object name: at most 253 lowercase letters, digits, '-' and '.', starting and ending with a "
                "letter or digit"
            )
        return v


class TrainJobResourcesConfig(ConfigModel):
    """What each node (pod) of the trainer asks for (``trainer.resourcesPerNode``; requests equal limits)."""

    cpu_number: float = Field(1, gt=0, description="CPUs per node.")
    memory_size: int = Field(description="Memory per node in MiB; accepts 8192, '8g', '8gb', '512mb'.")
    gpu_number: int = Field(0, ge=0, description="GPUs per node (nvidia.com/gpu).")

    @field_validator("memory_size", mode="before")
    @classmethod
    def _mem(cls, v: object) -> int:
        return parse_memory_mb(v)


class TrainJobTrainerConfig(ConfigModel):
    """The TrainJob's ``trainer``: what the runtime's trainer nodes run. The trial's command is
    ``trialCommand`` (with ``args`` appended); nni-ts runs it under the trial keeper in every node."""

    image: str = Field(
        min_length=1,
        pattern=r"^\S+$",
        description="The container image (required: it needs Python 3.8+ and what the trial imports).",
    )
    args: list[str] = Field(
        default_factory=list, description="Arguments appended to the trial command (each shell-quoted)."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables of every node.")
    num_nodes: int = Field(1, ge=1, description="How many nodes (pods) the trainer runs; node 0 reports.")
    resources_per_node: TrainJobResourcesConfig = Field(description="CPU, memory and GPUs of each node.")
    private_registry_auth_path: str | None = Field(
        None, description="A docker config.json with registry credentials, turned into an imagePullSecret."
    )

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not _ENV_NAME.match(k)]
        if bad:
            raise ValueError(f"environment variable names {bad} are not valid (letters, digits, '-', '.', '_')")
        reserved = [k for k in v if k.startswith("NNI_TS_")]
        if reserved:
            raise ValueError(f"environment variables {reserved} are reserved for nni-ts's trial keeper")
        return v


class TrainJobConfig(KubernetesPlatformConfig, TrialDeadlineConfig):
    """Trials run as Kubeflow Trainer v2 TrainJobs (trainer.kubeflow.org/v1alpha1, Trainer v2.2 or later)."""

    platform: Literal["trainjob"] = Field("trainjob", description="Always 'trainjob'.")
    runtime_ref: RuntimeRefConfig = Field(
        description="The ClusterTrainingRuntime or TrainingRuntime the TrainJobs use (checked at start)."
    )
    trainer: TrainJobTrainerConfig = Field(description="Image, arguments, environment, nodes and resources.")
    max_trial_duration: str | int | float | None = Field(
        None,
        description="The TrainJob's activeDeadlineSeconds (rounded up; Trainer v2.2+): it fails with "
        "DeadlineExceeded after this long from its creation, and its pods are stopped. Default: the "
        "experiment's maxTrialDuration.",
    )

    @model_validator(mode="after")
    def _has_command(self) -> TrainJobConfig:
        if not self.trial_command:
            raise ValueError("the trainjob platform needs the trial's command: set trialCommand")
        return self
