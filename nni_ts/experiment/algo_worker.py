"""The thread that runs an experiment's tuner and assessor, so that the event loop never waits on them.

Every call to the tuner or assessor goes through one ``AlgoWorker``: calls run one at a time, in the
order they were made (so results reach the tuner in the order they arrived, before any later
suggestion), and each returns an asyncio future that the loop can await or attach a callback to.
The thread never keeps the process from exiting: a tuner stuck in its own code cannot hang the manager.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..clock import outside_work

__all__ = ["AlgoWorker"]


#: The GIL switch interval while any tuner computes. The tuner thread takes the GIL whenever the loop
#: thread releases it (every SQLite call does) and keeps it up to the switch interval: at Python's
#: 5 ms, one trial-end callback took 60-190 ms while TPE computed; at 0.5 ms far fewer callbacks
#: pass 50 ms. Set only while a tuner call runs, and restored when the last one ends.
BUSY_SWITCH_INTERVAL = 0.0005
_busy_lock = threading.Lock()
_busy = 0
_saved_interval = 0.005


def _enter_busy() -> None:
    global _busy, _saved_interval
    with _busy_lock:
        if _busy == 0:
            _saved_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved_interval, BUSY_SWITCH_INTERVAL))
        _busy += 1


def _leave_busy() -> None:
    global _busy
    with _busy_lock:
        _busy -= 1
        if _busy == 0:
            sys.setswitchinterval(_saved_interval)


def _settle(future: asyncio.Future[Any], ok: bool, result: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(result)
    else:
        future.set_exception(result)


class AlgoWorker:
    """One daemon thread running queued calls in order; ``call`` returns an asyncio future."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Any, Any, Any] | None] = (
            queue.SimpleQueue()
        )
        self._started = False
        self._closed = False

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue ``fn(*args)``; the future resolves (on the calling loop) with its result or exception."""
        if self._closed:
            raise RuntimeError(f"the {self.name} worker is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._started:
            # the low-level start does not wait for the new thread to be scheduled (threading's does,
            # which stalled the loop for tens of ms on a busy machine); such a thread never blocks exit
            _thread.start_new_thread(self._run, ())
            self._started = True
        # counted as work the loop waits for outside itself, so that a fake clock does not jump meanwhile
        pending: concurrent.futures.Future[None] = concurrent.futures.Future()
        outside_work(pending)
        self._queue.put((fn, args, loop, future, pending))
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args, loop, future, pending = item
            _enter_busy()
            try:
                result, ok = fn(*args), True
            except BaseException as exc:  # handed to the caller's future, never lost
                result, ok = exc, False
            finally:
                _leave_busy()
            try:
                loop.call_soon_threadsafe(_settle, future, ok, result)
            except RuntimeError:
                pass  # the loop is closed: nobody waits for this result any more
            pending.set_result(None)  # after the result is queued to the loop: it is not idle meanwhile

    def close(self) -> None:
        """No more calls; the thread ends after the calls already queued."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
