"""Configuration of the Kubeflow platform (TFJob and PyTorchJob)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .kubernetes import KubernetesPlatformConfig, parse_memory_mb
from .podsettings import RolePodSettings

__all__ = ["KubeflowConfig", "KubeflowRoleConfig"]


class KubeflowRoleConfig(RolePodSettings):
    """One replica type of the job (worker, ps or master)."""

    replicas: int = Field(1, ge=1, description="How many replicas of this role.")
    command: str = Field(description="The command each replica runs, in the trial code directory.")
    gpu_number: int = Field(0, ge=0, description="GPUs per replica (nvidia.com/gpu).")
    cpu_number: float = Field(1, gt=0, description="CPUs per replica.")
    memory_size: int = Field(description="Memory per replica in MiB; accepts 8192, '8g', '8gb', '512mb'.")
    docker_image: str = Field(
        min_length=1,
        pattern=r"^\S+$",
        description="The container image (required: it needs Python 3.8+ and what the trial imports).",
    )
    private_registry_auth_path: str | None = Field(
        None, description="A docker config.json with registry credentials, turned into an imagePullSecret."
    )
    code_directory: str | None = Field(None, description="Accepted for NNI compatibility; the trial code is shared.")

    _mem = field_validator("memory_size", mode="before")(classmethod(lambda cls, v: parse_memory_mb(v)))


class KubeflowConfig(KubernetesPlatformConfig):
    """Trials run as Kubeflow TFJobs or PyTorchJobs (NNI's ``kubeflow`` training service)."""

    platform: Literal["kubeflow"] = Field("kubeflow", description="Always 'kubeflow'.")
    operator: Literal["tf-operator", "pytorch-operator"] = Field(description="tf-operator or pytorch-operator.")
    api_version: str = Field("v1", description="The kubeflow.org API version; only v1 is supported.")
    worker: KubeflowRoleConfig | None = Field(None, description="The worker role.")
    ps: KubeflowRoleConfig | None = Field(None, description="The parameter-server role (tf-operator).")
    master: KubeflowRoleConfig | None = Field(None, description="The master role (pytorch-operator).")

    @model_validator(mode="after")
    def _roles(self) -> KubeflowConfig:
        if self.api_version != "v1":
            raise ValueError(f"apiVersion {self.api_version!r} is not supported; use v1")
        if self.worker is None and self.master is None:
            raise ValueError("a kubeflow job needs a worker role (or a master role for pytorch-operator)")
        if self.operator == "tf-operator" and self.master is not None:
            raise ValueError("tf-operator jobs have worker and ps roles, not master")
        if self.operator == "pytorch-operator" and self.ps is not None:
            raise ValueError("pytorch-operator jobs have master and worker roles, not ps")
        return self
