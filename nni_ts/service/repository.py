"""Typed rows of the service database, and the request bodies the API validates with pydantic.

Handlers read ``row.status`` instead of ``row[5]``. The rows are NamedTuples in the column order of
their ``COLUMNS`` (so a ``SELECT {COLUMNS}`` row converts with ``Row(*row)``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError

__all__ = ["ExperimentRow", "ExtendRequest", "TrialRow", "parse_extend"]


class ExperimentRow(NamedTuple):
    """One row of ``svc_experiments``."""

    id: str
    user_name: str
    workspace: str
    name: str | None
    platform: str
    status: str
    message: str | None
    config: str  # JSON, secrets redacted
    trial_concurrency: int
    gpus_per_trial: int
    optimize_mode: str
    owner: str  # the replica that runs it
    legacy: int
    created_ms: int
    updated_ms: int
    ended_ms: int | None

    @property
    def target(self) -> str:
        """``user/workspace/id``, as the audit log names it."""
        return f"{self.user_name}/{self.workspace}/{self.id}"


class TrialRow(NamedTuple):
    """One row of ``svc_trials``."""

    experiment_id: str
    id: str
    sequence_id: int
    parameter_id: int
    attempt: int
    parameters: str  # JSON
    status: str
    start_ms: int | None
    end_ms: int | None
    exit_code: int | None
    message: str | None
    final_value: float | None
    final_data: str | None
    metric_count: int


EXPERIMENT_COLUMNS = ", ".join(ExperimentRow._fields)
TRIAL_COLUMNS = ", ".join(TrialRow._fields)


class ExtendRequest(BaseModel):
    """``POST /experiments/{id}/extend``: at least one of the three."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    max_trial_number: int | None = Field(None, alias="maxTrialNumber", ge=1, le=1_000_000)
    max_experiment_duration: str | int | None = Field(None, alias="maxExperimentDuration")
    rerun_failed: bool = Field(False, alias="rerunFailed")


def parse_extend(body: Any) -> ExtendRequest:
    """Validate an extend body; a problem is a ConfigError (422) naming the key."""
    if not isinstance(body, dict):
        raise ConfigError(
            "the body must be a JSON object: {maxTrialNumber, maxExperimentDuration, rerunFailed}.",
            source="the request body",
        )
    try:
        req = ExtendRequest.model_validate(body)
    except pydantic.ValidationError as exc:
        from ..config.errors import format_loc

        err = exc.errors(include_url=False)[0]
        loc = format_loc([p for p in err["loc"] if isinstance(p, str | int)]) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = "unknown key; expected maxTrialNumber, maxExperimentDuration or rerunFailed"
        else:
            msg = err["msg"]
        raise ConfigError(f"{msg}.", source="the request body", path=loc) from None
    if req.max_experiment_duration is not None:
        from ..config.experiment import parse_duration

        parse_duration(req.max_experiment_duration, path="maxExperimentDuration")
    if req.max_trial_number is None and req.max_experiment_duration is None and not req.rerun_failed:
        raise ConfigError(
            "give maxTrialNumber, maxExperimentDuration or rerunFailed.", source="the request body", path="(top level)"
        )
    return req
