"""The raw object store: objects by resource and (namespace, name), one global resourceVersion counter,
a bounded event history (older versions answer 410 Gone) and synchronous subscribers."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .util import JSON, ApiError

__all__ = ["Event", "Store"]

GR = tuple[str, str]  # (group, plural)


@dataclass(frozen=True)
class Event:
    """One change: ``type`` is ADDED, MODIFIED or DELETED; ``obj`` the object after the change (the last
    state for DELETED), ``old`` the object before it (None for ADDED)."""

    type: str
    rv: int
    gr: GR
    namespace: str
    obj: JSON
    old: JSON | None


class Store:
    """Objects are stored as dicts that are never mutated once stored: writers store new dicts."""

    def __init__(self, history_size: int = 20000) -> None:
        self.rv = 1
        self.objects: dict[GR, dict[tuple[str, str], JSON]] = {}
        self.history: deque[Event] = deque()
        self.history_size = history_size
        #: Every event with rv <= compacted_rv has been dropped: watching from there answers 410.
        self.compacted_rv = 0
        self.subscribers: list[Callable[[Event], None]] = []
        #: uid of an owner -> keys of the objects naming it in ownerReferences.
        self.owner_index: dict[str, set[tuple[GR, str, str]]] = {}
        self.uids: dict[str, tuple[GR, str, str]] = {}
        self._waiters: list[asyncio.Future[None]] = []

    # ------------------------------------------------------------- reading

    def get(self, gr: GR, namespace: str, name: str) -> JSON | None:
        return self.objects.get(gr, {}).get((namespace, name))

    def list(self, gr: GR, namespace: str | None = None) -> list[JSON]:
        bucket = self.objects.get(gr, {})
        keys = sorted(k for k in bucket if namespace is None or k[0] == namespace)
        return [bucket[k] for k in keys]

    def iter_all(self) -> Iterator[tuple[GR, JSON]]:
        for gr, bucket in self.objects.items():
            for obj in bucket.values():
                yield gr, obj

    def events_since(self, rv: int, gr: GR) -> builtins.list[Event]:
        """The events after ``rv``. A version older than the history, or one this store never issued (a
        client resuming after the API server came back with a fresh store), answers 410 Gone, as a real
        API server does: the client must list again."""
        if rv < self.compacted_rv or rv > self.rv:
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self.compacted_rv + 1})")
        return [e for e in self.history if e.rv > rv and e.gr == gr]

    # ------------------------------------------------------------- writing

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def put(self, gr: GR, obj: JSON, *, added: bool) -> JSON:
        """Store ``obj`` (its resourceVersion is set here) and publish ADDED or MODIFIED."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        bucket = self.objects.setdefault(gr, {})
        old = bucket.get(key)
        rv = self.next_rv()
        meta["resourceVersion"] = str(rv)
        bucket[key] = obj
        self._index(gr, key, old, obj)
        self._publish(Event("ADDED" if added else "MODIFIED", rv, gr, key[0], obj, old))
        return obj

    def remove(self, gr: GR, namespace: str, name: str) -> JSON | None:
        bucket = self.objects.get(gr, {})
        old = bucket.pop((namespace, name), None)
        if old is None:
            return None
        rv = self.next_rv()
        final = dict(old)
        final["metadata"] = dict(old["metadata"], resourceVersion=str(rv))
        self._index(gr, (namespace, name), old, None)
        self._publish(Event("DELETED", rv, gr, namespace, final, old))
        return final

    def drop_resource(self, gr: GR) -> None:
        self.objects.pop(gr, None)

    def compact(self) -> None:
        """Forget the whole history, as etcd compaction does: watches from any old version get 410."""
        self.history.clear()
        self.compacted_rv = self.rv

    # ------------------------------------------------------------- internals

    def _index(self, gr: GR, key: tuple[str, str], old: JSON | None, new: JSON | None) -> None:
        full = (gr, key[0], key[1])
        if old is not None:
            for ref in old["metadata"].get("ownerReferences") or []:
                refs = self.owner_index.get(ref.get("uid", ""))
                if refs is not None:
                    refs.discard(full)
                    if not refs:
                        del self.owner_index[ref.get("uid", "")]
            self.uids.pop(old["metadata"].get("uid", ""), None)
        if new is not None:
            for ref in new["metadata"].get("ownerReferences") or []:
                self.owner_index.setdefault(ref.get("uid", ""), set()).add(full)
            self.uids[new["metadata"]["uid"]] = full

    def _publish(self, event: Event) -> None:
        self.history.append(event)
        while len(self.history) > self.history_size:
            self.compacted_rv = self.history.popleft().rv
        for callback in list(self.subscribers):
            callback(event)
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        self.subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self.subscribers.remove(callback)

        return unsubscribe

    def changed(self) -> asyncio.Future[None]:
        """A future resolved at the next change of any object."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    def notify(self) -> None:
        """Wake ``changed()`` waiters without a change (used by faults and the kubelet)."""
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def usage(self) -> dict[str, Any]:
        return {"objects": sum(len(b) for b in self.objects.values()), "history": len(self.history), "rv": self.rv}
