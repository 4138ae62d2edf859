"""A clock that moves only when a test moves it: timeouts of an hour run in a millisecond.

Give it to what takes a :class:`~nni_ts.clock.Clock` (a service's ``clock`` attribute, ``Experiment(clock=)``,
:class:`~nni_ts.testing.FakeTrainingService`), then either move time by hand::

    clock = FakeClock()
    service.clock = clock
    ...
    await clock.advance(60)        # every timer due within 60 s fires, in order

or let it run a coroutine to its end, jumping from one timer to the next whenever the event loop has
nothing else to do::

    result = await clock.run(experiment.run(), limit=3600)

"Nothing else to do" means no callback is ready on the loop and no work registered with
:func:`nni_ts.clock.outside_work` (a store's writer thread) is pending; other work in threads or
subprocesses is not waited for.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..clock import outside_work_pending

__all__ = ["FakeClock", "FakeTimer"]

T = TypeVar("T")

#: Yields to the event loop before a fake-time jump, at most (a bound on "wait until idle").
_MAX_SETTLE = 10_000
#: Real seconds to wait, at most, for registered outside work before a fake-time jump.
_MAX_OUTSIDE_WAIT = 30.0


class FakeTimer:
    """A callback scheduled on a :class:`FakeClock` (the :class:`~nni_ts.clock.TimerHandle` protocol)."""

    __slots__ = ("_args", "_callback", "_cancelled", "_when")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._when = when
        self._callback = callback
        self._args = args
        self._cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def _run(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True  # a timer fires once
        try:
            self._callback(*self._args)
        except Exception as exc:  # as asyncio does for call_later: report, do not stop the clock
            asyncio.get_running_loop().call_exception_handler(
                {"message": f"Exception in fake-clock callback {self._callback!r}", "exception": exc}
            )


class FakeClock:
    """A :class:`~nni_ts.clock.Clock` whose time moves only through :meth:`advance` and :meth:`run`."""

    def __init__(self, start: float = 1000.0, *, wall_start: float | None = None) -> None:
        self._start = start
        self._now = start
        self._wall_start = time.time() if wall_start is None else wall_start
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    # ---------------------------------------------------------------- the Clock protocol

    def time(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall_start + (self._now - self._start)

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeTimer:
        """Run ``callback(*args)`` once the clock reaches now + ``delay``; at once (soon) if ``delay <= 0``."""
        timer = FakeTimer(self._now + max(0.0, delay), callback, args)
        if delay <= 0:
            asyncio.get_running_loop().call_soon(timer._run)
        else:
            heapq.heappush(self._timers, (timer.when(), next(self._order), timer))
        return timer

    async def sleep(self, delay: float) -> None:
        if delay <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_later(delay, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()

    # ---------------------------------------------------------------- driving it

    @property
    def elapsed(self) -> float:
        """Seconds of fake time since the clock was made."""
        return self._now - self._start

    def next_deadline(self) -> float | None:
        """When the next live timer is due (this clock's time), or None."""
        while self._timers and self._timers[0][2].cancelled():
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer due on the way, in order, each at its time.

        Before each timer fires (and at the end) the event loop runs until nothing is ready, so what a
        callback started (a task, a woken ``sleep``) happens at that moment of fake time.
        """
        if seconds < 0:
            raise ValueError(f"A clock cannot go back: advance({seconds}).")
        target = self._now + seconds
        await _settle()
        while (due := self.next_deadline()) is not None and due <= target:
            self._fire_next()
            await _settle()
        self._now = target

    async def run(self, aw: Awaitable[T], *, limit: float = 24 * 3600.0) -> T:
        """Run ``aw`` to its end, jumping to the next timer whenever the loop is idle.

        Raises :class:`TimeoutError` if it has not ended after ``limit`` seconds of fake time, or if it
        waits with no timer left to fire (it would wait forever).
        """
        task = asyncio.ensure_future(aw)
        deadline = self._now + limit
        try:
            while True:
                await _settle()
                if task.done():
                    return task.result()
                due = self.next_deadline()
                if due is None:
                    # Nothing on this clock: maybe work outside the loop (a thread); give it a moment.
                    done, _ = await asyncio.wait({task}, timeout=1.0)
                    if done:
                        return task.result()
                    raise TimeoutError("The awaited work is blocked with no fake-clock timer left to fire.")
                if due > deadline:
                    raise TimeoutError(f"Not done after {limit:g} s of fake time.")
                self._fire_next()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})

    def _fire_next(self) -> None:
        when, _, timer = heapq.heappop(self._timers)
        self._now = max(self._now, when)
        timer._run()

    def __repr__(self) -> str:
        return f"FakeClock(elapsed={self.elapsed:g})"


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _settle() -> None:
    """Yield until no callback is ready on the loop and no registered outside work (a store's writer
    thread) is pending: the loop would now wait only for I/O or a timer."""
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)  # asyncio's run queue; other loops: a fixed number of yields
    deadline = time.monotonic() + _MAX_OUTSIDE_WAIT
    while True:
        for _ in range(_MAX_SETTLE if ready is not None else 100):
            await asyncio.sleep(0)
            if ready is not None and not ready:
                break
        if not outside_work_pending() or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.001)  # real time: a thread is working for the loop
