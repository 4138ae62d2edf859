"""A guard that catches blocking database calls made on an event loop's thread.

``no_sqlite_on_loop()`` wraps :func:`sqlite3.connect` for as long as it is active: a connection
opened on a thread that runs an asyncio event loop, and every statement any connection opened
meanwhile runs on such a thread, is recorded; leaving the block raises ``AssertionError`` naming
them. Work that the store's writer thread (or ``asyncio.to_thread``) does is not on a loop's thread
and passes. Open the connections under test inside the block::

    with no_sqlite_on_loop():
        store = await asyncio.to_thread(open_store, path)
        await Experiment(config, store=store).run()
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["SqliteOnLoop", "no_sqlite_on_loop"]


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class SqliteOnLoop:
    """What the guard saw: each ``(thread name, what ran)`` that ran on a loop's thread."""

    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []
        self.statements = 0  # statements seen in all, on any thread: shows the guard was wired
        self._lock = threading.Lock()

    def _record(self, what: str) -> None:
        with self._lock:
            self.statements += 1
            if _on_loop():
                self.violations.append((threading.current_thread().name, what[:200]))


@contextlib.contextmanager
def no_sqlite_on_loop() -> Iterator[SqliteOnLoop]:
    """Fail (on leaving) if sqlite3 was used on an event loop's thread while this was active."""
    seen = SqliteOnLoop()
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        if _on_loop():
            with seen._lock:
                seen.violations.append((threading.current_thread().name, f"sqlite3.connect{args!r}"))
        conn: sqlite3.Connection = real_connect(*args, **kwargs)
        conn.set_trace_callback(seen._record)
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]
    try:
        yield seen
    finally:
        sqlite3.connect = real_connect
    if seen.violations:
        shown = "\n".join(f"  on {thread}: {what}" for thread, what in seen.violations[:20])
        raise AssertionError(
            f"{len(seen.violations)} sqlite3 call(s) ran on an event loop's thread (they block it):\n{shown}"
        )
