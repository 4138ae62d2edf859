"""Configuration of the local platform."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from .base import TrainingServiceConfig

__all__ = ["LocalConfig", "parse_gpu_indices"]


def parse_gpu_indices(value: Any) -> Any:
    """NNI accepts ``[0, 1]``, ``"0,1"`` (v1) and ``0``; all become a list of ints."""
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, bool):
        return value  # let pydantic reject it
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if all(p.isdigit() for p in parts):
            return [int(p) for p in parts]
    return value


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

    _gpus = field_validator("gpu_indices", mode="before")(classmethod(lambda cls, v: parse_gpu_indices(v)))
