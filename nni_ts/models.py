"""The data a training service exchanges with its caller, mirroring NNI's types in Python style."""

from __future__ import annotations

import enum
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "TERMINAL_STATUSES",
    "HyperParameters",
    "PlacementConstraint",
    "TrialJobApplicationForm",
    "TrialJobDetail",
    "TrialJobMetric",
    "TrialJobStatus",
    "now_ms",
]


def now_ms() -> int:
    """The current time in epoch milliseconds, as NNI's timestamps are."""
    return time.time_ns() // 1_000_000


class TrialJobStatus(enum.StrEnum):
    """A trial's status. WAITING and RUNNING are live, UNKNOWN is temporary, the rest are terminal."""

    WAITING = "WAITING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    USER_CANCELED = "USER_CANCELED"
    SYS_CANCELED = "SYS_CANCELED"
    EARLY_STOPPED = "EARLY_STOPPED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    def __str__(self) -> str:
        return self.value


TERMINAL_STATUSES = frozenset(
    {
        TrialJobStatus.SUCCEEDED,
        TrialJobStatus.FAILED,
        TrialJobStatus.USER_CANCELED,
        TrialJobStatus.SYS_CANCELED,
        TrialJobStatus.EARLY_STOPPED,
    }
)


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class HyperParameters(_Model):
    """One set of hyper-parameters. ``value`` is the parameter.cfg JSON text, written verbatim."""

    value: str = Field(description="The JSON text written to parameter.cfg, as NNI's dispatcher sends it.")
    index: int = Field(0, description="The parameter index (always 0 for single-phase trials).")


class PlacementConstraint(_Model):
    """Where a trial may run. ``gpu_number`` GPUs on any host, or explicit ``gpus``."""

    type: str = Field("None", description="None, GPUNumber or Device, as in NNI.")
    gpus: list[int] | list[tuple[str, int]] = Field(
        default_factory=list, description="GPU count per host (GPUNumber) or (host, index) pairs (Device)."
    )


class TrialJobApplicationForm(_Model):
    """What the tuner loop asks a training service to run."""

    sequence_id: int = Field(description="The trial's sequence number within its experiment.")
    hyper_parameters: HyperParameters = Field(description="The hyper-parameters the trial reads.")
    placement_constraint: PlacementConstraint | None = Field(
        None, description="GPU placement; None means the service's default (trialGpuNumber)."
    )
    gpu_number: int | None = Field(
        None, ge=0, description="GPUs this trial needs; None takes the service's configured default."
    )
    command: str | None = Field(None, description="Overrides the service's trial command for this trial.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    trial_job_id: str | None = Field(
        None, description="A trial id chosen by the caller (used on resume); generated when absent."
    )

    def parameters(self) -> dict[str, Any]:
        """The hyper-parameters as a dict (the ``parameters`` key of parameter.cfg)."""
        import json

        data = json.loads(self.hyper_parameters.value)
        if isinstance(data, dict) and isinstance(data.get("parameters"), dict):
            return dict(data["parameters"])
        return {}


class TrialJobDetail(_Model):
    """A trial as the training service sees it. Times are epoch milliseconds."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", validate_assignment=False)

    id: str = Field(description="The trial job id.")
    status: TrialJobStatus = Field(TrialJobStatus.WAITING, description="The current status.")
    submit_time: int = Field(default_factory=now_ms, description="When it was submitted.")
    start_time: int | None = Field(None, description="When it started running.")
    end_time: int | None = Field(None, description="When it reached a terminal status.")
    tags: list[str] = Field(default_factory=list, description="Free tags.")
    url: str | None = Field(None, description="Where the trial can be inspected (a directory, a host path).")
    working_directory: str = Field("", description="The trial's working directory.")
    form: TrialJobApplicationForm = Field(description="The application form it was submitted with.")
    sequence_id: int = Field(0, description="The sequence number.")
    is_early_stopped: bool = Field(False, description="Whether it was cancelled as an early stop.")
    message: str | None = Field(None, description="A human-readable reason for the status, if any.")
    exit_code: int | None = Field(None, description="The trial command's exit code, once known.")
    host: str | None = Field(None, description="Where it runs (host name, node or pod).")
    infrastructure_failure: bool = Field(
        False, description="True when the trial failed because of the platform, not the user's code."
    )
    platform_data: dict[str, Any] = Field(
        default_factory=dict,
        description="Opaque, JSON-serialisable facts the platform needs to re-attach to the trial "
        "after a manager restart (a pid and its start time, a host, a job name). Persisted by the store.",
    )


class TrialJobMetric(_Model):
    """One metric record. ``data`` is the record's JSON text, byte for byte as the trial wrote it."""

    trial_job_id: str = Field(description="The trial the record belongs to.")
    data: str = Field(description="The record JSON text exactly as written by the trial's SDK.")
    sequence: int = Field(
        description="The record's position among this trial's records, counted from 0 by the service."
    )
