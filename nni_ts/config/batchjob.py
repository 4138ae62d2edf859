"""Configuration of the ``kubernetes`` platform: each trial a ``batch/v1`` Job with one pod."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .kubernetes import KubernetesPlatformConfig, PodRoleConfig, TrialDeadlineConfig

__all__ = ["KubernetesJobConfig"]


class KubernetesJobConfig(KubernetesPlatformConfig, PodRoleConfig, TrialDeadlineConfig):
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

    @model_validator(mode="after")
    def _has_command(self) -> KubernetesJobConfig:
        if not (self.command or self.trial_command):
            raise ValueError("the kubernetes platform needs a command: set trialCommand (or trainingService.command)")
        return self
