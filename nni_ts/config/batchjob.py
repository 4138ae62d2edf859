"""Configuration of the ``kubernetes`` platform: each trial a ``batch/v1`` Job with one pod."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .kubernetes import KubernetesPlatformConfig, PodRoleConfig

__all__ = ["KubernetesJobConfig"]


class KubernetesJobConfig(KubernetesPlatformConfig, PodRoleConfig):
    """Trials run as ``batch/v1`` Jobs of one pod, on any cluster: no operator needed (nni-ts)."""

    platform: Literal["kubernetes"] = Field("kubernetes", description="Always 'kubernetes'.")
    command: str | None = Field(  # type: ignore[assignment]
        None, description="The command the trial's pod runs, in the trial code directory; default trialCommand."
    )
    gpu_number: int | None = Field(  # type: ignore[assignment]
        None, ge=0, description="GPUs of the trial's pod (nvidia.com/gpu); default trialGpuNumber."
    )
    backoff_limit: int = Field(
        1,
        ge=0,
        le=10,
        description="The Job's backoffLimit: how many times a pod that failed without the trial's own exit code "
        "(its node lost, deleted by hand) is replaced before the trial fails. The trial's own non-zero exit "
        "fails it at once, and an evicted or preempted pod is replaced without counting.",
    )
    max_trial_duration: str | int | float | None = Field(
        None,
        description="The Job's activeDeadlineSeconds (rounded up): the Job fails with DeadlineExceeded after "
        "this long from its start (pod scheduling included). Default: the experiment's maxTrialDuration.",
    )

    @field_validator("max_trial_duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        from .experiment import _duration_validator

        return _duration_validator(v)

    @model_validator(mode="after")
    def _has_command(self) -> KubernetesJobConfig:
        if not (self.command or self.trial_command):
            raise ValueError("the kubernetes platform needs a command: set trialCommand (or trainingService.command)")
        return self

    @property
    def active_deadline_seconds(self) -> int | None:
        """``maxTrialDuration`` as the Job's ``activeDeadlineSeconds``, or None."""
        if self.max_trial_duration is None:
            return None
        from .experiment import parse_duration

        return max(1, math.ceil(parse_duration(self.max_trial_duration, path="trainingService.maxTrialDuration")))
