"""The clocks: the real one is the event loop's time; the fake one moves only when told, firing timers in order."""

from __future__ import annotations

import asyncio

import pytest

from nni_ts.clock import REAL_CLOCK, Clock, TimerHandle
from nni_ts.testing import FakeClock


async def test_real_clock_is_the_loops() -> None:
    assert isinstance(REAL_CLOCK, Clock)
    fired = asyncio.Event()
    handle = REAL_CLOCK.call_later(0, fired.set)
    assert isinstance(handle, TimerHandle)
    async with asyncio.timeout(10):
        await fired.wait()
    before = REAL_CLOCK.time()
    await REAL_CLOCK.sleep(0)
    assert REAL_CLOCK.time() >= before


async def test_fake_clock_fires_due_timers_in_order_each_at_its_time() -> None:
    clock = FakeClock()
    assert isinstance(clock, Clock)
    seen: list[tuple[str, float]] = []
    clock.call_later(30, lambda: seen.append(("b", clock.elapsed)))
    clock.call_later(10, lambda: seen.append(("a", clock.elapsed)))
    cancelled = clock.call_later(20, lambda: seen.append(("never", clock.elapsed)))
    cancelled.cancel()
    clock.call_later(3600, lambda: seen.append(("late", clock.elapsed)))
    await clock.advance(29.9)
    assert seen == [("a", 10.0)]
    await clock.advance(0.1)
    assert seen == [("a", 10.0), ("b", 30.0)]
    assert clock.elapsed == 30.0 and clock.next_deadline() == clock.time() + 3570
    with pytest.raises(ValueError, match="cannot go back"):
        await clock.advance(-1)


async def test_fake_sleep_wakes_at_its_time_and_chains() -> None:
    clock = FakeClock()
    wall0 = clock.wall()
    woke: list[float] = []

    async def sleeper() -> None:
        for _ in range(3):
            await clock.sleep(60)
            woke.append(clock.elapsed)

    task = asyncio.create_task(sleeper())
    await clock.advance(150)  # a sleep started by a woken sleeper is timed from its wake-up
    assert woke == [60.0, 120.0]
    await clock.advance(30)
    assert woke == [60.0, 120.0, 180.0] and task.done()
    assert clock.wall() == pytest.approx(wall0 + 180)


async def test_run_jumps_over_an_hour_at_once() -> None:
    clock = FakeClock()

    async def slow() -> str:
        await clock.sleep(3600)
        await asyncio.sleep(0)  # real loop work in between is waited for
        await clock.sleep(1800)
        return "done"

    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await clock.run(slow()) == "done"
    assert clock.elapsed == 5400.0
    assert loop.time() - started < 5  # not the 1.5 h it pretends


async def test_run_is_bounded() -> None:
    clock = FakeClock()
    with pytest.raises(TimeoutError, match="fake time"):
        await clock.run(clock.sleep(7200), limit=3600)
    never = asyncio.Event()
    with pytest.raises(TimeoutError, match="no fake-clock timer"):
        await clock.run(never.wait())


async def test_a_failing_callback_is_reported_and_time_goes_on() -> None:
    clock = FakeClock()
    errors: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx["exception"]))
    later: list[float] = []

    def boom() -> None:
        raise RuntimeError("boom")

    clock.call_later(1, boom)
    clock.call_later(2, lambda: later.append(clock.elapsed))
    await clock.advance(5)
    assert [str(e) for e in errors] == ["boom"] and later == [2.0]


async def test_the_fake_clock_waits_for_work_in_a_thread() -> None:
    """Time does not jump while the loop waits for a thread (a store's writer, a file opened off the
    loop): work registered with outside_work finishes before the next timer fires."""
    import time as _time

    from nni_ts.clock import to_thread

    clock = FakeClock()
    order: list[str] = []

    async def work() -> None:
        await to_thread(_time.sleep, 0.2)
        order.append("thread")

    async def main() -> None:
        task = asyncio.create_task(work())
        clock.call_later(10, lambda: order.append("timer"))
        await clock.sleep(20)
        await task

    await clock.run(main())
    assert order == ["thread", "timer"]
