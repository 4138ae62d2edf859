"""The exceptions nni-ts raises.

Every exception the library raises on purpose derives from :class:`NniTsError`::

    NniTsError
    ├── UserError                      the user's own mistake: the CLI prints it and exits 2
    │   ├── ConfigError                a config file, a search space or a cluster-metadata value is wrong
    │   └── SearchSpaceError           a search space is malformed (also a ConfigError)
    ├── TrainingServiceError           something about a training service call
    │   ├── InvalidStateError          the call is not valid in the service's current state
    │   ├── TrialNotFoundError         no trial has that id
    │   ├── TrialStateError            the trial is in a status that does not allow the call
    │   ├── MetricRefused              a metric listener refused or failed to store a record
    │   └── PlatformError              the platform failed (a host, a cluster, a process)
    │       └── TemporaryError         likely to succeed if retried after ``delay`` seconds
    ├── StoreError                     the experiment store cannot be read or written
    └── ProtocolError                  a peer (keeper, trial, server) spoke the protocol wrongly

Messages are full sentences that say what was wrong and, where it helps, what was expected.
Causes are chained with ``raise ... from``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InvalidStateError",
    "MetricRefused",
    "NniTsError",
    "PlatformError",
    "ProtocolError",
    "SearchSpaceError",
    "StoreError",
    "TemporaryError",
    "TrainingServiceError",
    "TrialNotFoundError",
    "TrialStateError",
    "UserError",
]


class NniTsError(Exception):
    """Base class of every error nni-ts raises on purpose."""


class UserError(NniTsError):
    """A mistake in what the user gave us. Shown without a traceback; the CLI exits with code 2."""


class ConfigError(UserError):
    """A configuration value is invalid.

    ``source`` names the file (or other origin) and ``path`` the key path, for example
    ``trainingService.machineList[0].port``.
    """

    def __init__(self, message: str, *, source: str | None = None, path: str | None = None) -> None:
        self.source = source
        self.path = path
        where = ""
        if source and path:
            where = f"{source}: at {path}: "
        elif source:
            where = f"{source}: "
        elif path:
            where = f"at {path}: "
        super().__init__(where + message)
        self.reason = message


class SearchSpaceError(ConfigError):
    """A search space is malformed."""


class TrainingServiceError(NniTsError):
    """Base class of errors raised by a :class:`~nni_ts.TrainingService` call."""


class InvalidStateError(TrainingServiceError):
    """The call is not valid in the service's current lifecycle state."""


class MetricRefused(TrainingServiceError):
    """A metric listener refused a record (for example its durable write failed).

    The record was not counted: the platform must deliver it again later, with the same content.
    ``trial_job_id`` names the trial; the listener's own exception is the ``__cause__``.
    """

    def __init__(self, trial_job_id: str, message: str) -> None:
        self.trial_job_id = trial_job_id
        super().__init__(message)


class TrialNotFoundError(TrainingServiceError, KeyError):
    """No trial job has the given id."""

    def __init__(self, trial_job_id: str) -> None:
        self.trial_job_id = trial_job_id
        super().__init__(f"No trial job has the id {trial_job_id!r}.")

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0])


class TrialStateError(TrainingServiceError):
    """The trial's status does not allow the call (for example updating a finished trial)."""


class PlatformError(TrainingServiceError):
    """The platform failed: a process could not start, a host or cluster refused a request."""


class TemporaryError(PlatformError):
    """A failure that is likely to pass. Retry after ``delay`` seconds."""

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class StoreError(NniTsError):
    """The experiment store could not be read or written."""


class ProtocolError(NniTsError):
    """A peer sent something that does not follow the protocol."""
