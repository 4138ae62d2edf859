"""Configuration of the local platform."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import TrainingServiceConfig

__all__ = ["LocalConfig"]


class LocalConfig(TrainingServiceConfig):
    """Trials run as processes on this machine (NNI's ``local`` training service)."""

    platform: Literal["local"] = Field("local", description="Always 'local'.")
    use_active_gpu: bool = Field(
        False, description="Also place trials on GPUs that other processes are using (per nvidia-smi)."
    )
    max_trial_number_per_gpu: int = Field(1, ge=1, description="How many trials may share one GPU.")
    gpu_indices: list[int] | None = Field(
        None, description="Only these GPU indices may be used (all detected GPUs when not set)."
    )
    reuse_mode: bool = Field(False, description="Accepted for NNI compatibility; has no effect locally.")
    cancel_grace_period: float = Field(
        5.0, ge=0, description="Seconds between SIGTERM and SIGKILL when a trial is cancelled."
    )
