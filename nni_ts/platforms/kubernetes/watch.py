"""One list-then-watch loop per resource kind and namespace, filtered by a label selector.

The :class:`Watcher` keeps a cache of the objects it has seen (by name) and calls ``on_event(type,
obj)`` for every change, on the event loop. It lists once, then watches from the list's
resourceVersion; a watch the server closes (its ``timeoutSeconds``) is resumed from the last version
seen, a ``410 Gone`` (the version is too old) triggers a fresh list whose difference with the cache is
replayed as events (deleted objects included), and a broken connection (the API server restarting) is
retried with jittered back-off, from 0.1 s doubling to 5 s. No per-object polling.

A watch can also go silent without breaking (an API server that came back with a fresh store and does
not know the version the watch resumed from, a proxy that holds the connection): while ``busy()`` says
the caller expects changes (trials run), a watch that brought no event, not even a bookmark, for
``resync`` seconds is ended and the collection re-listed, as client-go's informers resync.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import aiohttp

from ...errors import TemporaryError
from .client import JSON, KubeApiError, KubeClient

__all__ = ["Watcher"]

log = logging.getLogger(__name__)

EventHandler = Callable[[str, JSON], None]


class Watcher:
    """Watch the collection at ``path`` (e.g. ``/api/v1/namespaces/ns/pods``) for ``label_selector``."""

    def __init__(
        self,
        client: KubeClient,
        path: str,
        label_selector: str,
        on_event: EventHandler,
        *,
        name: str,
        watch_timeout: int = 300,
        max_backoff: float = 5.0,
        field_selector: str = "",
        keep_cache: bool = True,
        resync: float | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.client = client
        self.path = path
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.keep_cache = keep_cache
        self.resync = resync
        self.busy = busy
        self.on_event = on_event
        self.name = name
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.cache: dict[str, JSON] = {}
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        #: Counters for tests and benchmarks.
        self.lists = 0
        self.watches = 0
        self.gone = 0
        self.reconnects = 0
        self.resyncs = 0
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"nni-ts-watch-{self.name}")

    async def wait_synced(self, timeout: float) -> None:
        """Wait for the first list; raise the watcher's error if it failed for good."""
        assert self._task is not None
        waiter = asyncio.ensure_future(self.synced.wait())
        try:
            done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self.synced.is_set():
            return
        if self._task.done() and self._task.exception() is not None:
            raise self._task.exception()  # type: ignore[misc]
        raise TemporaryError(f"Could not list {self.path} within {timeout:g} s.")

    async def stop(self) -> None:
        """Cancel the loop and wait for it; the caller's own cancellation is not swallowed."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            log.debug("The %s watch had stopped: %s", self.name, task.exception())  # reported when it happened

    # ------------------------------------------------------------------ the loop

    def _emit(self, kind: str, obj: JSON) -> None:
        try:
            self.on_event(kind, obj)
        except Exception:
            log.exception("The %s watch handler raised on a %s event; the watch goes on.", self.name, kind)

    def _selectors(self) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        return query

    async def _list(self) -> None:
        self.lists += 1
        body = await self.client.request("GET", self.path, query=self._selectors())
        items = body.get("items") or []
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "") or None
        if not self.keep_cache:
            # Only changes matter (events): the list just gives the version to watch from.
            self.synced.set()
            return
        fresh: dict[str, JSON] = {}
        for item in items:
            fresh[item["metadata"]["name"]] = item
        gone = [obj for name, obj in self.cache.items() if name not in fresh]
        for obj in gone:
            del self.cache[obj["metadata"]["name"]]
            self._emit("DELETED", obj)
        for name, obj in fresh.items():
            kind = "MODIFIED" if name in self.cache else "ADDED"
            self.cache[name] = obj
            self._emit(kind, obj)
        self.synced.set()

    async def _run(self) -> None:
        delay = 0.1
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                self.watches += 1
                query: dict[str, Any] = {
                    "watch": "true",
                    **self._selectors(),
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": self.watch_timeout,
                }
                if self.resource_version:
                    query["resourceVersion"] = self.resource_version
                if await self._watch_once(query):
                    need_list = True
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except KubeApiError as exc:
                if exc.status == 410:
                    self.gone += 1
                    need_list = True
                    continue
                if exc.status in (401, 403, 404):
                    log.error("The %s watch cannot go on: %s", self.name, exc)
                    self.error = exc
                    if not self.synced.is_set():
                        raise
                self.reconnects += 1
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.max_backoff)
            except (aiohttp.ClientError, TimeoutError, OSError, TemporaryError, ValueError) as exc:
                # The API server went away (restart, network): come back from the last version seen.
                log.info("The %s watch broke (%s); reconnecting.", self.name, exc)
                self.reconnects += 1
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.max_backoff)

    async def _watch_once(self, query: dict[str, Any]) -> bool:
        """One watch request, until the server ends it. Returns True when a fresh list is needed (410
        Gone, an error event, or a silent watch while the caller is busy)."""
        loop = asyncio.get_running_loop()
        silent = False
        async with asyncio.timeout(None) as deadline:
            if self.resync is not None:
                deadline.reschedule(loop.time() + self.resync)
            try:
                async for event in self.client.stream(self.path, query, read_timeout=self.watch_timeout + 30):
                    if self.resync is not None:
                        deadline.reschedule(loop.time() + self.resync)
                    if self._handle(event):
                        return True
            except TimeoutError:
                if not deadline.expired():
                    raise
                silent = True
        if silent:
            if self.busy is None or self.busy():
                self.resyncs += 1
                log.info("The %s watch was silent for %g s; re-listing.", self.name, self.resync)
                return True
        return False

    def _handle(self, event: JSON) -> bool:
        """Apply one watch event. Returns True when a fresh list is needed (410 Gone)."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                self.gone += 1
                return True
            log.warning("The %s watch reported an error: %s", self.name, obj.get("message"))
            return True
        meta = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        if kind == "BOOKMARK":
            return False
        name = meta.get("name")
        if not name:
            return False
        if not self.keep_cache:
            pass
        elif kind == "DELETED":
            self.cache.pop(name, None)
        else:
            self.cache[name] = obj
        self._emit(str(kind), obj)
        return False
