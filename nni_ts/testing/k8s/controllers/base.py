"""A level-triggered controller: events enqueue keys, ``reconcile(namespace, name)`` reads current state."""

from __future__ import annotations

import asyncio
import logging

from ..api import Api
from ..store import Event
from ..util import JSON

__all__ = ["Controller", "owner_ref"]

log = logging.getLogger(__name__)


def owner_ref(obj: JSON) -> JSON:
    """An ownerReference to ``obj`` marking it as the controller."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class Controller:
    name = "controller"
    group = ""
    plural = ""
    kind = ""

    def __init__(self, api: Api) -> None:
        self.api = api
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._pending: set[tuple[str, str]] = set()
        api.store.subscribe(self._on_event)
        for obj in api.store.list((self.group, self.plural)):
            self.enqueue(obj["metadata"]["namespace"], obj["metadata"]["name"])

    def enqueue(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def enqueue_later(self, delay: float, namespace: str, name: str) -> None:
        asyncio.get_running_loop().call_later(delay, self.enqueue, namespace, name)

    def _on_event(self, event: Event) -> None:
        if event.gr == (self.group, self.plural):
            self.enqueue(event.namespace, event.obj["metadata"]["name"])
            return
        owner = self.owner_of(event)
        if owner is not None:
            self.enqueue(event.namespace, owner)

    def owner_of(self, event: Event) -> str | None:
        """The name of the primary object a dependent's event concerns (pods by default)."""
        if event.gr != ("", "pods"):
            return None
        for ref in event.obj["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == self.kind and ref.get("controller"):
                return str(ref.get("name"))
        return None

    async def run(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            try:
                self.reconcile(*key)
            except Exception:  # noqa: BLE001 - a controller survives a failing reconcile, as real ones do
                log.exception("The simulated %s failed to reconcile %s/%s.", self.name, *key)
            await asyncio.sleep(0)

    def reconcile(self, namespace: str, name: str) -> None:
        raise NotImplementedError

    # helpers

    def primary(self, namespace: str, name: str) -> JSON | None:
        return self.api.store.get((self.group, self.plural), namespace, name)

    def owned_pods(self, obj: JSON) -> list[JSON]:
        uid = obj["metadata"]["uid"]
        out = []
        for gr, ns, name in self.api.store.owner_index.get(uid, ()):
            if gr == ("", "pods"):
                pod = self.api.store.get(gr, ns, name)
                if pod is not None:
                    out.append(pod)
        return out

    def record(self, obj: JSON, reason: str, message: str, type_: str = "Normal") -> None:
        self.api.record_event(obj, reason, message, type_, self.name)
