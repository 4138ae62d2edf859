"""A FakeCluster running in a background thread with its own event loop, for synchronous code and tests
(the official ``kubernetes`` client, CLI tests) that cannot share the caller's loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .cluster import FakeCluster

__all__ = ["ThreadedCluster"]

T = TypeVar("T")


class ThreadedCluster:
    """``with ThreadedCluster(tmp_path, **FakeCluster_kwargs) as tc:`` then ``tc.url``, ``tc.kubeconfig``,
    ``tc.call(lambda c: c.get("pods", "p"))`` and ``tc.run(lambda c: c.faults.restart_api())`` run code in
    the cluster's loop and return its result."""

    def __init__(self, state_dir: Path | str, **kwargs: Any) -> None:
        self._args = (state_dir, kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._cluster: FakeCluster | None = None
        self._stop: asyncio.Event | None = None

    @property
    def cluster(self) -> FakeCluster:
        if self._cluster is None:
            raise RuntimeError("The threaded fake cluster is not running; use it as a context manager.")
        return self._cluster

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def start(self, timeout: float = 30.0) -> ThreadedCluster:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                cluster = FakeCluster(self._args[0], **self._args[1])
                await cluster.start()
            except BaseException as exc:
                ready.set_exception(exc)
                return
            self._cluster = cluster
            ready.set_result(None)
            try:
                await self._stop.wait()
            finally:
                await cluster.close()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), name="fake-k8s-cluster", daemon=True)
        self._thread.start()
        ready.result(timeout)
        return self

    def call(self, fn: Callable[[FakeCluster], T], timeout: float = 30.0) -> T:
        """Run ``fn(cluster)`` in the cluster's loop and return its result."""

        async def run() -> T:
            return fn(self.cluster)

        return self._submit(run(), timeout)

    def run(self, fn: Callable[[FakeCluster], Awaitable[T]], timeout: float = 30.0) -> T:
        """Await ``fn(cluster)`` in the cluster's loop and return its result."""

        async def run() -> T:
            return await fn(self.cluster)

        return self._submit(run(), timeout)

    def _submit(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._loop is None:
            raise RuntimeError("The threaded fake cluster is not running; use it as a context manager.")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the cluster (every pod process is killed) and its thread."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        self._loop = None
        self._cluster = None

    def __enter__(self) -> ThreadedCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
