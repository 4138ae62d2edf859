"""Live updates: what changed in the store, as numbered server-sent events that a page can replay.

One :class:`EventHub` watches the experiments someone follows. Every ``interval`` it asks the database
whether anything was committed since its last look (the reader's ``data_version``: SQLite's ``PRAGMA
data_version``, PostgreSQL's transaction snapshot; one cheap call); only
then does it compare a light signature of each followed experiment's trials with the previous one
and publish what changed: ``trial`` (the trial's new row), ``metric`` (a new record) and
``experiment`` (status, counts, best value). Watching the store rather than the loop's callbacks
means the same code serves ``nni-ts create`` (the loop in this process), ``nni-ts serve`` and
``nni-ts view`` of an experiment another process runs.

Each experiment keeps its last events in a ring. Event ids are ``<epoch>-<n>``: a page that
reconnects sends ``Last-Event-ID`` and gets every event after it; if the id is from another
server run (other epoch) or older than the ring, it gets ``reset`` and reloads its view.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..tasks import TaskSupervisor
from .queries import DashboardReader

__all__ = ["EventHub", "Subscription"]

log = logging.getLogger(__name__)

_RING = 20_000
_QUEUE = 50_000


@dataclass(eq=False)
class Subscription:
    experiment_id: str
    queue: asyncio.Queue[tuple[str, str, str] | None] = field(default_factory=lambda: asyncio.Queue(_QUEUE))


@dataclass
class _Watch:
    ring: deque[tuple[int, str, str]] = field(default_factory=lambda: deque(maxlen=_RING))
    next_id: int = 1
    subscribers: set[Subscription] = field(default_factory=set)
    trials: dict[str, tuple[Any, ...]] | None = None
    state: tuple[Any, ...] | None = None
    idle_since: float | None = None  # when the last page left (deltas go on for a while, for reconnects)


class EventHub:
    """Numbered change events per experiment, computed from what the reader reads (awaited)."""

    def __init__(self, reader: DashboardReader, *, interval: float = 0.2, grace: float = 60.0) -> None:
        self.reader = reader
        self.interval = interval
        self.grace = grace
        self.epoch = secrets.token_hex(4)
        self._watches: dict[str, _Watch] = {}
        self._version: Any = None
        self._wake = asyncio.Event()
        self._tasks = TaskSupervisor("dashboard-events")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = self._tasks.spawn(self._loop(), name="nni-ts-dashboard-events")

    async def close(self) -> None:
        await self._tasks.stop(timeout=5.0)
        self._task = None
        for watch in self._watches.values():
            for sub in watch.subscribers:
                with_room(sub.queue, None)

    # ------------------------------------------------------------------ subscribers

    async def subscribe(
        self,
        experiment_id: str,
        last_event_id: str | None,
        queue: asyncio.Queue[tuple[str, str, str] | None] | None = None,
    ) -> tuple[Subscription, list[Any]]:
        """A subscription and what to send first: the replay after ``last_event_id``, or a reset/hello.
        Subscriptions given the same ``queue`` share it (one stream for several experiments)."""
        watch = self._watches.get(experiment_id)
        fresh = watch is None
        if watch is None:
            watch = _Watch()
            self._watches[experiment_id] = watch
        if watch.trials is None:
            trials, state = await self._snapshot(experiment_id)
            if watch.trials is None:
                if not fresh:
                    # Nobody followed this experiment for a while: changes of that gap were not computed,
                    # so a page that reconnects with an older id must reload (skip one id to force it).
                    watch.ring.clear()
                    watch.next_id += 1
                watch.trials, watch.state = trials, state
        sub = Subscription(experiment_id) if queue is None else Subscription(experiment_id, queue)
        watch.subscribers.add(sub)
        watch.idle_since = None
        first: list[Any] = []
        last = self._parse_id(last_event_id)
        if last_event_id:
            oldest = watch.ring[0][0] if watch.ring else watch.next_id
            if last is None or last + 1 < oldest:
                first.append(self._frame(watch.next_id - 1, "reset", {"reason": "missed events; reload"}))
            else:
                first += [(self._eid(i), name, data) for i, name, data in watch.ring if i > last]
        else:
            first.append(self._frame(watch.next_id - 1, "hello", {"epoch": self.epoch}))
        self.start()
        self._wake.set()
        return sub, first

    def unsubscribe(self, sub: Subscription) -> None:
        watch = self._watches.get(sub.experiment_id)
        if watch is not None:
            watch.subscribers.discard(sub)
            if not watch.subscribers:
                # Go on computing deltas for a while: a page that reconnects replays what it missed.
                watch.idle_since = time.monotonic()

    def last_event_id(self, experiment_id: str) -> str:
        """The id of the newest event of ``experiment_id`` (what a page that saw everything would send)."""
        watch = self._watches.get(experiment_id)
        return self._eid(watch.next_id - 1 if watch else 0)

    def subscriber_count(self) -> int:
        return sum(len(w.subscribers) for w in self._watches.values())

    def _eid(self, n: int) -> str:
        return f"{self.epoch}-{n}"

    def _parse_id(self, text: str | None) -> int | None:
        if not text:
            return None
        epoch, _, n = text.strip().rpartition("-")
        if epoch != self.epoch or not n.isdigit():
            return None
        return int(n)

    def _frame(self, n: int, name: str, payload: dict[str, Any]) -> tuple[str, str, str]:
        return (self._eid(n), name, json.dumps(payload))

    # ------------------------------------------------------------------ the watcher

    async def poke(self) -> None:
        """Look for changes now (after an action of this server, so the page sees it at once)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            now = time.monotonic()
            for w in self._watches.values():
                if not w.subscribers and w.idle_since is not None and now - w.idle_since > self.grace:
                    w.trials = None  # nobody came back: stop computing (a later page gets a reset)
                    w.idle_since = None
            followed = [eid for eid, w in self._watches.items() if w.trials is not None]
            if not followed:
                continue
            try:
                changes = await self._changes(followed)
            except Exception:
                log.exception("Reading the store for live updates failed.")
                await asyncio.sleep(1.0)
                continue
            for experiment_id, events in changes:
                self._publish(experiment_id, events)

    def _publish(self, experiment_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        watch = self._watches.get(experiment_id)
        if watch is None:
            return
        for name, payload in events:
            n = watch.next_id
            watch.next_id += 1
            data = json.dumps(payload)
            watch.ring.append((n, name, data))
            for sub in list(watch.subscribers):
                if not with_room(sub.queue, (self._eid(n), name, data)):
                    log.warning("A dashboard page does not keep up with experiment %s; closing it.", experiment_id)
                    watch.subscribers.discard(sub)

    # ------------------------------------------------------------------ reading

    async def _snapshot(self, experiment_id: str) -> tuple[dict[str, tuple[Any, ...]], tuple[Any, ...] | None]:
        return await self.reader.trial_states(experiment_id), await self.reader.experiment_state(experiment_id)

    async def _changes(self, followed: list[str]) -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
        version = await self.reader.data_version()
        if version == self._version:
            return []
        self._version = version
        out = []
        for experiment_id in followed:
            watch = self._watches.get(experiment_id)
            if watch is None or watch.trials is None:
                continue
            events = await self._diff(experiment_id, watch)
            if events:
                out.append((experiment_id, events))
        return out

    async def _diff(self, experiment_id: str, watch: _Watch) -> list[tuple[str, dict[str, Any]]]:
        reader = self.reader
        before = watch.trials or {}
        now = await reader.trial_states(experiment_id)
        changed = [tid for tid, sig in now.items() if before.get(tid) != sig]
        events: list[tuple[str, dict[str, Any]]] = []
        if changed:
            for row in await reader.trials_by_id(experiment_id, changed):
                events.append(("trial", row))
            for tid in changed:
                old = before.get(tid)
                grown = now[tid][1] - (old[1] if old else 0)
                if grown > 0:
                    for m in await reader.metrics(experiment_id, tid, last=min(grown, 1000)):
                        events.append(("metric", {"trialId": tid, **m}))
        state = await reader.experiment_state(experiment_id)
        if changed or state != watch.state:
            try:
                events.append(("experiment", await reader.summary(experiment_id)))
            except LookupError:
                events.append(("experiment", {"id": experiment_id, "status": "DELETED"}))
        watch.trials = now
        watch.state = state
        return events


def with_room(queue: asyncio.Queue[Any], item: Any) -> bool:
    try:
        queue.put_nowait(item)
    except asyncio.QueueFull:
        return False
    return True
