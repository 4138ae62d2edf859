"""Configuration of the Kubeflow platform (TFJob and PyTorchJob)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .kubernetes import KubernetesPlatformConfig, PodRoleConfig
from .podsettings import RolePodSettings

__all__ = ["KubeflowConfig", "KubeflowRoleConfig"]


class KubeflowRoleConfig(PodRoleConfig, RolePodSettings):
    """One replica type of the job (worker, ps or master)."""

    replicas: int = Field(1, ge=1, description="How many replicas of this role.")
    code_directory: str | None = Field(None, description="Accepted for NNI compatibility; the trial code is shared.")


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
