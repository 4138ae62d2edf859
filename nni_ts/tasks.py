"""One owner for background tasks: :class:`TaskSupervisor`.

Every background task in nni-ts (a watch, a heartbeat sweep, a trial's waiter, a retry) is spawned
through a supervisor, which

* names it (the name shows in logs and in ``asyncio.all_tasks()``),
* logs its failure with that name (a task that raises is never silently forgotten),
* forgets it when it finishes (no growing list of done tasks), and
* stops all of them with :meth:`TaskSupervisor.stop`: cancel, wait at most ``timeout`` seconds, log
  the tasks that did not finish by then.

Cancellation of the *caller* is never swallowed: if the task that awaits :meth:`stop` is itself
cancelled, :meth:`stop` finishes cancelling its tasks and re-raises :class:`asyncio.CancelledError`.

The services' base class owns one (``TrainingService.tasks``), stopped by ``clean_up()``; the
experiment loop, the cluster server and the fake cluster own theirs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

from .errors import InvalidStateError

__all__ = ["TaskSupervisor"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class TaskSupervisor:
    """Owns a set of named background tasks. See the module docstring."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<TaskSupervisor {self.name!r}: {len(self._tasks)} task(s){' closed' if self._closed else ''}>"

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        """True once :meth:`stop` has been called: no task can be spawned any more."""
        return self._closed

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        """The tasks still running."""
        return frozenset(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Run ``coro`` as a task named ``name`` (prefixed with the supervisor's name)."""
        if self._closed:
            coro.close()
            raise InvalidStateError(f"The task supervisor {self.name!r} is stopped; it cannot start {name!r}.")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("Background task %s failed.", task.get_name(), exc_info=exc)

    async def stop(self, timeout: float = 10.0) -> None:
        """Cancel every task and wait at most ``timeout`` seconds for them to finish. Idempotent.

        Tasks still running after ``timeout`` are logged and left to the loop. If the caller is
        cancelled while waiting, the tasks are still cancelled and the caller's cancellation is
        re-raised.
        """
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            log.warning("Background task %s did not finish within %.3g s of being cancelled.", task.get_name(), timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
