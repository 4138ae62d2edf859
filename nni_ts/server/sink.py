"""Where the ClusterServer delivers a trial's events: the :class:`TrialSink` protocol, the
per-trial de-duplicating :class:`TrialChannel`, and :class:`ServiceSink`, the ready adapter that
feeds a :class:`~nni_ts.training_service.TrainingService`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from ..errors import MetricRefused
from ..models import TrialJobStatus
from ..training_service import TrainingService

__all__ = ["ServiceSink", "TrialChannel", "TrialSink", "exit_status"]

log = logging.getLogger(__name__)

#: Records held back waiting for a gap to fill, at most, per trial. Beyond it a report is refused.
MAX_HELD = 100_000


@runtime_checkable
class TrialSink(Protocol):
    """What a platform hands to ``ClusterServer.register``. Every method is a coroutine run on the
    event loop; it must not block. An exception from ``on_records`` refuses the records it was given
    (the keeper resends them); an exception from the others is logged."""

    async def on_started(self, start_time_ms: int, host: str, pid: int) -> None:
        """The keeper is running the trial's command (called again after a server restart)."""

    async def on_records(self, records: list[tuple[int, str]]) -> int | None:
        """New records ``(seq, data)``, each exactly once, in seq order without gaps.

        Returns once they are stored: how many of them were accepted (None: all of them). A record
        not accepted is not acknowledged and comes again.
        """

    async def on_exited(self, exit_code: int, end_time_ms: int) -> None:
        """The command ended; every record came before this call. Called once."""

    async def on_lost(self, message: str) -> None:
        """No report for longer than the heartbeat time-out."""

    async def on_heartbeat(self) -> None:
        """A report arrived after ``on_lost``: the trial is back."""

    async def on_rejected(self, message: str) -> None:
        """The keeper cannot be served (its version differs from the server's). Called once."""


def exit_status(exit_code: int) -> TrialJobStatus:
    return TrialJobStatus.SUCCEEDED if exit_code == 0 else TrialJobStatus.FAILED


class TrialChannel:
    """One registered trial: de-duplication, re-ordering and the exit, in front of its sink.

    Records may come from the keeper's reports, from a journal read back from shared storage, or
    both: :meth:`feed` drops what was delivered, holds back what comes early, and hands the sink
    each record once, in order. ``next_seq`` advances only over records the sink accepted (stored),
    so the acknowledgement sent to the keeper never covers a record that could still be lost.
    :meth:`finish` delivers the exit once every record before it is in. Calls for one trial are
    serialised.
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
        self._lock = asyncio.Lock()

    async def feed(self, records: Iterable[tuple[int, str]]) -> int:
        """Take records ``(seq, data)`` in any order, with duplicates; deliver the new ones in order.

        Returns how many were delivered and accepted. Raises ValueError if too many would be held
        back. Records the sink refused stay held and are offered again by the next call.
        """
        async with self._lock:
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
            seq = self.next_seq
            while seq in self.held:
                ready.append((seq, self.held[seq]))
                seq += 1
            if not ready:
                return 0
            try:
                accepted = await self.sink.on_records(ready)
            except Exception:
                log.warning(
                    "The sink of trial %s refused records %d-%d; they are not acknowledged and will come again.",
                    self.trial_id,
                    ready[0][0],
                    ready[-1][0],
                    exc_info=True,
                )
                accepted = 0
            count = len(ready) if accepted is None else max(0, min(int(accepted), len(ready)))
            for seq, _data in ready[:count]:
                del self.held[seq]
            self.next_seq += count
            return count

    async def finish(self, exit_code: int, end_time_ms: int, record_count: int) -> bool:
        """Deliver the exit if all ``record_count`` records are in. Returns whether it is delivered."""
        async with self._lock:
            if self.exited:
                return True
            if self.next_seq < record_count:
                return False
            self.exited = True
        await self.call("on_exited", exit_code, end_time_ms)
        return True

    async def call(self, name: str, *args: object) -> None:
        """Call one of the sink's notification methods; an exception is logged."""
        try:
            await getattr(self.sink, name)(*args)
        except Exception:
            log.exception("The sink of trial %s raised in %s.", self.trial_id, name)


class ServiceSink:
    """Wires a trial's events to a TrainingService's reporter:
    ``server.register(trial_id, ServiceSink(service, trial_id))``.

    - started: RUNNING (and the trial's host);
    - records: ``await service.reporter.metric(...)`` for each, in order; a refused record stops the
      batch there (it and the ones after are not acknowledged);
    - exited: SUCCEEDED for exit code 0, else FAILED with the code; if the platform set
      :attr:`cancel_status` before stopping the trial, that status instead;
    - lost: UNKNOWN (the contract's time-out later fails it as an infrastructure failure);
      a later report brings it back to RUNNING;
    - rejected: FAILED as an infrastructure failure, with the reason.
    """

    def __init__(self, service: TrainingService, trial_id: str) -> None:  # type: ignore[type-arg]
        self.reporter = service.reporter
        self.trial_id = trial_id
        #: Set by the platform before it stops the trial: the status the exit then means.
        self.cancel_status: TrialJobStatus | None = None

    async def on_started(self, start_time_ms: int, host: str, pid: int) -> None:
        detail = self.reporter.detail(self.trial_id)
        if host and detail.host is None:
            self.reporter.note(self.trial_id, host=host)
        if detail.status is TrialJobStatus.WAITING:
            self.reporter.running(self.trial_id, when=start_time_ms)

    async def on_records(self, records: list[tuple[int, str]]) -> int:
        accepted = 0
        for _seq, data in records:
            try:
                await self.reporter.metric(self.trial_id, data)
            except MetricRefused as exc:
                log.warning("%s", exc)
                break
            accepted += 1
        return accepted

    async def on_exited(self, exit_code: int, end_time_ms: int) -> None:
        if self.cancel_status is not None:
            await self.reporter.ended(
                self.trial_id, self.cancel_status, message="Cancelled.", exit_code=exit_code, when=end_time_ms
            )
        elif exit_code == 0:
            await self.reporter.ended(self.trial_id, TrialJobStatus.SUCCEEDED, exit_code=0, when=end_time_ms)
        else:
            await self.reporter.ended(
                self.trial_id,
                TrialJobStatus.FAILED,
                message=f"The trial command exited with code {exit_code}.",
                exit_code=exit_code,
                when=end_time_ms,
            )

    async def on_lost(self, message: str) -> None:
        self.reporter.unknown(self.trial_id, message)

    async def on_heartbeat(self) -> None:
        if self.reporter.status(self.trial_id) is TrialJobStatus.UNKNOWN:
            self.reporter.running(self.trial_id, message="The trial's keeper is back.")

    async def on_rejected(self, message: str) -> None:
        await self.reporter.ended(self.trial_id, TrialJobStatus.FAILED, message=message, infrastructure_failure=True)
