"""The time source of the contract's and the experiment loop's timeouts.

Everything that waits for a timeout (a trial's ``unknown_timeout``, the loop's ``maxTrialDuration`` and
``maxExperimentDuration`` timers) asks a :class:`Clock` instead of the event loop or :mod:`time`, so that
tests can replace it with :class:`nni_ts.testing.FakeClock` and run a one-hour timeout in a millisecond.
Production code uses :data:`REAL_CLOCK` (the default everywhere).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

__all__ = ["REAL_CLOCK", "Clock", "RealClock", "TimerHandle", "outside_work", "outside_work_pending", "to_thread"]

_outside_lock = threading.Lock()
_outside_count = 0


def outside_work(future: concurrent.futures.Future[Any]) -> None:
    """Count ``future`` as work the event loop waits for outside itself (a store's writer thread)
    until it is done. A :class:`~nni_ts.testing.FakeClock` does not jump ahead while any is pending:
    the loop is not idle, only waiting for a thread."""
    global _outside_count
    with _outside_lock:
        _outside_count += 1

    def done(_f: concurrent.futures.Future[Any]) -> None:
        global _outside_count
        with _outside_lock:
            _outside_count -= 1

    future.add_done_callback(done)


async def to_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """``asyncio.to_thread`` counted as :func:`outside_work`, so that a fake clock waits for it."""
    loop = asyncio.get_running_loop()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    outside_work(future)
    try:
        result = await loop.run_in_executor(None, fn, *args)
    except BaseException as exc:
        future.set_exception(exc)
        raise
    future.set_result(result)
    return result


def outside_work_pending() -> int:
    """How many :func:`outside_work` futures are not done yet."""
    return _outside_count


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
