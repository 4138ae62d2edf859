"""The time source of the contract's and the experiment loop's timeouts.

Everything that waits for a timeout (a trial's ``unknown_timeout``, the loop's ``maxTrialDuration`` and
``maxExperimentDuration`` timers) asks a :class:`Clock` instead of the event loop or :mod:`time`, so that
tests can replace it with :class:`nni_ts.testing.FakeClock` and run a one-hour timeout in a millisecond.
Production code uses :data:`REAL_CLOCK` (the default everywhere).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["REAL_CLOCK", "Clock", "RealClock", "TimerHandle"]


@runtime_checkable
class TimerHandle(Protocol):
    """What :meth:`Clock.call_later` returns: a callback that can still be cancelled."""

    def cancel(self) -> None: ...

    def cancelled(self) -> bool: ...


@runtime_checkable
class Clock(Protocol):
    """A source of time for timeouts.

    ``time()`` is monotonic seconds (only differences mean something); ``wall()`` is seconds since the
    epoch, for comparing with the millisecond timestamps of a :class:`~nni_ts.models.TrialJobDetail`.
    ``call_later`` runs a plain callback on the running event loop after ``delay`` seconds of this
    clock; ``sleep`` suspends the caller for ``delay`` seconds of this clock.
    """

    def time(self) -> float: ...

    def wall(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle: ...

    async def sleep(self, delay: float) -> None: ...


class RealClock:
    """The event loop's own time: what every service and experiment uses unless told otherwise."""

    def time(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback, *args)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)

    def __repr__(self) -> str:
        return "RealClock()"


#: The shared real clock (it holds no state).
REAL_CLOCK: Clock = RealClock()
