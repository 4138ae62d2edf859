"""Pytest fixtures that fail a test which leaves asyncio tasks or child processes behind.

Use them as a plugin from a ``conftest.py``::

    pytest_plugins = ["nni_ts.testing.hygiene"]

Both are autouse. A leaked child process is killed (with its process group) before the test fails,
so that one leak does not cascade into the next tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator

import psutil
import pytest

__all__ = ["no_leaked_children", "no_leaked_tasks"]

#: Seconds a test's children get to finish exiting after the test before they count as leaked.
GRACE = 5.0


def _live_children() -> dict[int, psutil.Process]:
    out: dict[int, psutil.Process] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                out[proc.pid] = proc
        except psutil.NoSuchProcess:
            continue
    return out


def _descendants_of_sessions(sids: set[int]) -> dict[int, psutil.Process]:
    """Processes in the sessions a test started (they may have been re-parented to init)."""
    out: dict[int, psutil.Process] = {}
    if not sids:
        return out
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in sids and proc.status() != psutil.STATUS_ZOMBIE:
                out[proc.pid] = proc
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


@pytest.fixture(autouse=True)
def no_leaked_children(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves a child process (or a process of a session it created) running."""
    before = set(_live_children())
    own_sid = os.getsid(0)
    yield
    if request.node.get_closest_marker("allow_leaked_children"):
        return
    deadline = time.monotonic() + GRACE
    while True:
        new = {pid: p for pid, p in _live_children().items() if pid not in before}
        if not new or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not new:
        return
    sids = set()
    for pid in new:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            sid = os.getsid(pid)
            if sid != own_sid:
                sids.add(sid)
    leaked = {**new, **_descendants_of_sessions(sids)}
    description = []
    for proc in leaked.values():
        try:
            description.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            description.append(str(proc.pid))
    for proc in leaked.values():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL) if os.getpgid(proc.pid) == proc.pid else proc.kill()
    pytest.fail("The test left child processes running:\n  " + "\n  ".join(description), pytrace=False)


@pytest.fixture(autouse=True)
def no_leaked_tasks(request: pytest.FixtureRequest) -> Iterator[None]:
    """For async tests: fail if asyncio tasks other than the test's own are still pending at its end."""
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        request.getfixturevalue("_no_leaked_tasks_async")
    yield


@pytest.fixture
async def _no_leaked_tasks_async() -> AsyncIterator[None]:
    yield
    current = asyncio.current_task()
    # Let tasks that are finishing run their last step.
    for _ in range(3):
        await asyncio.sleep(0)
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if pending:
        names = ", ".join(sorted(t.get_name() for t in pending))
        for t in pending:
            t.cancel()
        pytest.fail(f"The test left asyncio tasks running: {names}", pytrace=False)
