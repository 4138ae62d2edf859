"""Where the ClusterServer delivers a trial's events: the :class:`TrialSink` protocol, the
per-trial de-duplicating :class:`TrialChannel`, and :class:`ServiceSink`, the ready adapter that
feeds a :class:`~nni_ts.training_service.TrainingService`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from ..models import TrialJobStatus
from ..training_service import TrainingService

__all__ = ["ServiceSink", "TrialChannel", "TrialSink", "exit_status"]

log = logging.getLogger(__name__)

#: Records held back waiting for a gap to fill, at most, per trial. Beyond it a report is refused.
MAX_HELD = 100_000


@runtime_checkable
class TrialSink(Protocol):
    """What a platform hands to ``ClusterServer.register``. Every method is called on the event loop
    and must not block. Exceptions are logged and do not stop delivery."""

    def on_started(self, start_time_ms: int, host: str, pid: int) -> None:
        """The keeper is running the trial's command (called again after a server restart)."""

    def on_records(self, records: list[tuple[int, str]]) -> None:
        """New records ``(seq, data)``, each exactly once, in seq order without gaps."""

    def on_exited(self, exit_code: int, end_time_ms: int) -> None:
        """The command ended; every record came before this call. Called once."""

    def on_lost(self, message: str) -> None:
        """No report for longer than the heartbeat time-out."""

    def on_heartbeat(self) -> None:
        """A report arrived after ``on_lost``: the trial is back."""

    def on_rejected(self, message: str) -> None:
        """The keeper cannot be served (its version differs from the server's). Called once."""


def exit_status(exit_code: int) -> TrialJobStatus:
    return TrialJobStatus.SUCCEEDED if exit_code == 0 else TrialJobStatus.FAILED


class TrialChannel:
    """One registered trial: de-duplication, re-ordering and the exit, in front of its sink.

    Records may come from the keeper's reports, from a journal read back from shared storage, or
    both: :meth:`feed` drops what was delivered, holds back what comes early, and hands the sink
    each record once, in order. :meth:`finish` delivers the exit once every record before it is in.
    """

    def __init__(self, trial_id: str, sink: TrialSink, *, attempt: int | None = None, next_seq: int = 0) -> None:
        self.trial_id = trial_id
        self.sink = sink
        self.attempt = attempt
        self.next_seq = next_seq
        self.held: dict[int, str] = {}
        self.exited = False
        self.started = False
        self.lost = False
        self.rejected = False
        self.last_seen: float | None = None

    def feed(self, records: Iterable[tuple[int, str]]) -> int:
        """Take records ``(seq, data)`` in any order, with duplicates; deliver the new ones in order.

        Returns how many were delivered. Raises ValueError if too many would be held back.
        """
        if self.exited:
            return 0
        for seq, data in records:
            if seq < self.next_seq or seq in self.held:
                continue
            if seq - self.next_seq > MAX_HELD:
                raise ValueError(
                    f"record {seq} of trial {self.trial_id} is more than {MAX_HELD} ahead of the next "
                    f"expected record ({self.next_seq}); send the missing records first."
                )
            self.held[seq] = data
        ready: list[tuple[int, str]] = []
        while self.next_seq in self.held:
            ready.append((self.next_seq, self.held.pop(self.next_seq)))
            self.next_seq += 1
        if ready:
            self._call("on_records", ready)
        return len(ready)

    def finish(self, exit_code: int, end_time_ms: int, record_count: int) -> bool:
        """Deliver the exit if all ``record_count`` records are in. Returns whether it is delivered."""
        if self.exited:
            return True
        if self.next_seq < record_count:
            return False
        self.exited = True
        self._call("on_exited", exit_code, end_time_ms)
        return True

    def _call(self, name: str, *args: object) -> None:
        try:
            getattr(self.sink, name)(*args)
        except Exception:
            log.exception("The sink of trial %s raised in %s; delivery goes on.", self.trial_id, name)


class ServiceSink:
    """Wires a trial's events to a TrainingService: ``server.register(trial_id, ServiceSink(service, trial_id))``.

    - started: RUNNING (and the trial's host);
    - records: ``service._deliver_metric`` for each, in order;
    - exited: SUCCEEDED for exit code 0, else FAILED with the code; if the platform set
      :attr:`cancel_status` before stopping the trial, that status instead;
    - lost: UNKNOWN (the contract's time-out later fails it as an infrastructure failure);
      a later report brings it back to RUNNING;
    - rejected: FAILED as an infrastructure failure, with the reason.
    """

    def __init__(self, service: TrainingService, trial_id: str) -> None:  # type: ignore[type-arg]
        self.service = service
        self.trial_id = trial_id
        #: Set by the platform before it stops the trial: the status the exit then means.
        self.cancel_status: TrialJobStatus | None = None

    def on_started(self, start_time_ms: int, host: str, pid: int) -> None:
        detail = self.service._get(self.trial_id)
        if host and detail.host is None:
            detail.host = host
        if detail.status is TrialJobStatus.WAITING:
            self.service._set_status(self.trial_id, TrialJobStatus.RUNNING, when=start_time_ms)

    def on_records(self, records: list[tuple[int, str]]) -> None:
        for _seq, data in records:
            self.service._deliver_metric(self.trial_id, data)

    def on_exited(self, exit_code: int, end_time_ms: int) -> None:
        if self.cancel_status is not None:
            self.service._set_status(
                self.trial_id, self.cancel_status, message="Cancelled.", exit_code=exit_code, when=end_time_ms
            )
        elif exit_code == 0:
            self.service._set_status(self.trial_id, TrialJobStatus.SUCCEEDED, exit_code=0, when=end_time_ms)
        else:
            self.service._set_status(
                self.trial_id,
                TrialJobStatus.FAILED,
                message=f"The trial command exited with code {exit_code}.",
                exit_code=exit_code,
                when=end_time_ms,
            )

    def on_lost(self, message: str) -> None:
        self.service._set_status(self.trial_id, TrialJobStatus.UNKNOWN, message=message)

    def on_heartbeat(self) -> None:
        detail = self.service._get(self.trial_id)
        if detail.status is TrialJobStatus.UNKNOWN:
            self.service._set_status(self.trial_id, TrialJobStatus.RUNNING, message="The trial's keeper is back.")

    def on_rejected(self, message: str) -> None:
        self.service._set_status(self.trial_id, TrialJobStatus.FAILED, message=message, infrastructure_failure=True)
