"""The wire format between a trial keeper and the :class:`~nni_ts.server.ClusterServer` (API v1).

One request does everything: ``POST /api/v1/trials/{trial_id}/report`` with a :class:`Report`. A
report with no records is a heartbeat. The answer (:class:`ReportAck`) tells the keeper how far the
server has delivered, so it can forget what is acknowledged and resend the rest.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ErrorBody", "Exited", "LogRequest", "LogTail", "Record", "Report", "ReportAck"]

#: The longest trial id the server accepts (NNI's ids are 5 characters).
MAX_TRIAL_ID = 128
TRIAL_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Record(_Model):
    """One metric record, numbered by the keeper from 0 in the order the trial wrote it."""

    seq: int = Field(ge=0, le=2**53, description="The record's position among the trial's records, from 0.")
    data: str = Field(max_length=1_000_000, description="The record's JSON text exactly as the trial's SDK wrote it.")


class Exited(_Model):
    """The trial's command has ended and every one of its records is in ``record_count``."""

    exit_code: int = Field(ge=-(2**31), le=2**31, description="The command's exit code (128+N for signal N).")
    end_time_ms: int = Field(ge=0, le=2**53, description="When it ended, epoch milliseconds.")
    record_count: int = Field(ge=0, le=2**53, description="How many records the trial wrote in all.")


class LogTail(_Model):
    """The keeper's answer to a :class:`LogRequest`."""

    request_id: str = Field(min_length=1, max_length=64, description="The id of the request answered.")
    file: str = Field(pattern=r"^(stdout|stderr)$", description="Which file: stdout or stderr.")
    data: str = Field(max_length=4_000_000, description="The file's last bytes, base64-encoded.")


class Report(_Model):
    """What a keeper posts: who it is, new records, and, at the end, the exit."""

    keeper_version: str = Field(min_length=1, max_length=200, description="The keeper's full version string.")
    attempt: int = Field(ge=0, le=2**31, description="The attempt number the platform gave the keeper.")
    started_ms: int = Field(ge=0, le=2**53, description="When the trial's command started, epoch milliseconds.")
    host: str = Field("", max_length=255, description="The host (or pod) the trial runs on.")
    pid: int = Field(0, ge=0, le=2**31, description="The pid of the trial's command on that host.")
    records: list[Record] = Field(default_factory=list, description="Records not yet acknowledged, by seq.")
    exited: Exited | None = Field(None, description="Present once the command has ended.")
    log_tail: LogTail | None = Field(None, description="An answer to a log request, if one was asked.")


class LogRequest(_Model):
    """The server wants the last ``tail`` bytes of a file; the keeper answers in its next report."""

    request_id: str = Field(description="Echo it back in LogTail.request_id.")
    file: str = Field(description="stdout or stderr.")
    tail: int = Field(ge=0, description="How many bytes at most.")


class ReportAck(_Model):
    """The answer to a report."""

    next_seq: int = Field(description="Every record with a smaller seq has been delivered; resend from here.")
    exit_accepted: bool = Field(False, description="True once the exit has been delivered (the keeper may quit).")
    log_request: LogRequest | None = Field(None, description="A log tail the server asks for, if any.")


class ErrorBody(_Model):
    """Every 4xx answer: a sentence saying what was wrong."""

    error: str = Field(description="A full sentence naming the problem.")
