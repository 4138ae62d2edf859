"""The tuner thread: calls in order, off the loop, exceptions handed back, the switch interval restored."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from nni_ts.experiment.algo_worker import BUSY_SWITCH_INTERVAL, AlgoWorker


async def test_calls_run_in_order_in_another_thread_and_errors_come_back() -> None:
    worker = AlgoWorker("test-tuner")
    seen: list[tuple[int, int]] = []
    loop_thread = threading.get_ident()
    inside: list[float] = []

    def record(i: int) -> int:
        inside.append(sys.getswitchinterval())
        seen.append((i, threading.get_ident()))
        return i * 2

    def fail() -> None:
        raise ValueError("the tuner broke")

    futures = [worker.call(record, i) for i in range(20)]
    failing = worker.call(fail)
    assert await asyncio.gather(*futures) == [i * 2 for i in range(20)]
    with pytest.raises(ValueError, match="the tuner broke"):
        await failing
    assert [i for i, _ in seen] == list(range(20))
    assert all(ident != loop_thread for _, ident in seen)
    assert all(interval <= BUSY_SWITCH_INTERVAL for interval in inside)
    assert sys.getswitchinterval() == pytest.approx(0.005)  # restored once no call runs
    worker.close()
    with pytest.raises(RuntimeError, match="closed"):
        worker.call(record, 1)
