"""Configuration of the FrameworkController platform."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import ConfigModel
from .kubernetes import KubernetesPlatformConfig, PodRoleConfig
from .podsettings import RolePodSettings

__all__ = ["FrameworkAttemptCompletionPolicy", "FrameworkControllerConfig", "FrameworkControllerRoleConfig"]

_ROLE_NAME = re.compile(r"^[a-z0-9]{1,63}$")


class FrameworkAttemptCompletionPolicy(ConfigModel):
    """When a framework attempt completes, counted per task role. -1 means never."""

    min_failed_task_count: int = Field(1, ge=-1, description="Failed tasks that fail the attempt.")
    min_succeed_task_count: int = Field(
        -1, ge=-1, description="Succeeded tasks that complete the attempt (v1 and the CRD: minSucceededTaskCount)."
    )

    @model_validator(mode="before")
    @classmethod
    def _v1_spelling(cls, data: Any) -> Any:
        # The trap: NNI v2 says minSucceedTaskCount, v1 and the CRD minSucceededTaskCount. Accept both.
        if isinstance(data, dict):
            data = dict(data)
            for key in ("minSucceededTaskCount", "min_succeeded_task_count"):
                if key in data:
                    data.setdefault("minSucceedTaskCount", data.pop(key))
        return data


class FrameworkControllerRoleConfig(PodRoleConfig, RolePodSettings):
    """One task role of the framework."""

    name: str = Field(description="The role name: lowercase letters and digits, at most 63 (FrameworkController).")
    task_number: int = Field(1, ge=1, description="How many tasks of this role.")
    framework_attempt_completion_policy: FrameworkAttemptCompletionPolicy = Field(
        default_factory=FrameworkAttemptCompletionPolicy, description="When this role completes the attempt."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _ROLE_NAME.match(v):
            raise ValueError(f"role name {v!r} must be 1 to 63 lowercase letters or digits (FrameworkController rule)")
        return v


class FrameworkControllerConfig(KubernetesPlatformConfig):
    """Trials run as FrameworkController Frameworks (NNI's ``frameworkcontroller`` training service)."""

    platform: Literal["frameworkcontroller"] = Field("frameworkcontroller", description="Always 'frameworkcontroller'.")
    task_roles: list[FrameworkControllerRoleConfig] = Field(min_length=1, description="The task roles.")

    @field_validator("queue_name")
    @classmethod
    def _no_kueue(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError(
                "Kueue has no FrameworkController integration: it would neither queue nor hold the Frameworks; "
                "for Kueue use platform kubernetes, trainjob or kubeflow (with Kueue's kubeflow.org/tfjob or "
                "pytorchjob integration enabled), or remove queueName"
            )
        return v

    @model_validator(mode="after")
    def _unique_roles(self) -> FrameworkControllerConfig:
        names = [r.name for r in self.task_roles]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task role names must be unique; repeated: {', '.join(dupes)}")
        return self
