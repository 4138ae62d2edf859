"""Fault switches of the fake cluster (``FakeCluster.faults``)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .util import JSON, ApiError, now_iso

if TYPE_CHECKING:
    from .cluster import FakeCluster

__all__ = ["Faults"]


class Faults:
    """Inject failures into a running :class:`FakeCluster`. Every switch takes effect at once."""

    def __init__(self, cluster: FakeCluster) -> None:
        self._cluster = cluster

    async def restart_api(self, downtime: float = 0.1) -> None:
        """Stop the API server (open watches and log streams break, connections are refused) and start it
        again on the same port after ``downtime`` seconds. The cluster's state and pods are kept."""
        server = self._cluster.server
        await server.stop()
        await asyncio.sleep(downtime)
        await server.start()

    def gone_next_watches(self, count: int = 1) -> None:
        """The next ``count`` watch requests get an ERROR event with a 410 Expired Status, then end."""
        self._cluster.server.faults.gone_watches += count

    def compact(self) -> None:
        """Forget the event history (like etcd compaction): any watch resuming from an old
        resourceVersion gets 410 Gone."""
        self._cluster.api.store.compact()

    def error_burst(
        self,
        status: int = 500,
        count: int = 3,
        *,
        verbs: Iterable[str] | None = None,
        resource: str | None = None,
        retry_after: int = 1,
    ) -> None:
        """The next ``count`` API requests (optionally only these verbs / this plural resource) fail with
        ``status`` (429 carries ``Retry-After: retry_after``)."""
        self._cluster.server.faults.bursts.append(
            [status, count, set(verbs) if verbs is not None else None, resource, retry_after]
        )

    def slow(self, seconds: float) -> None:
        """Delay every API request by ``seconds`` (0 switches it off)."""
        self._cluster.server.faults.delay = seconds

    def clear(self) -> None:
        """Switch off error bursts, slowness and pending 410s."""
        faults = self._cluster.server.faults
        faults.bursts.clear()
        faults.delay = 0.0
        faults.gone_watches = 0
        self._cluster.api.admission_checks.clear()

    async def evict_pod(
        self, namespace: str, name: str, message: str = "The node was low on resource: memory. "
    ) -> None:
        """Evict a pod: its processes are killed and it ends Failed with reason Evicted (done on return)."""
        task = self._cluster.kubelet.fail_pod(namespace, name, "Evicted", message)
        if task is not None:
            await task

    def oom_kill(self, namespace: str, name: str) -> None:
        """Kill a pod's containers as the OOM killer does (exit code 137, reason OOMKilled)."""
        self._cluster.kubelet.fail_pod(namespace, name, "OOMKilled", "", oom=True)

    async def lose_node(self, name: str, pod_phase: str = "Failed") -> None:
        """The node stops responding: its Ready condition turns Unknown, its pods' processes are killed and
        the pods end in ``pod_phase`` (Failed or Unknown) with reason NodeLost. Nothing is scheduled there
        any more. Done on return."""
        api = self._cluster.api
        node = api.store.get(("", "nodes"), "", name)
        if node is None:
            raise ApiError.not_found("nodes", name)
        node = copy.deepcopy(node)
        for cond in node["status"].get("conditions") or []:
            if cond["type"] == "Ready":
                cond.update(
                    status="Unknown",
                    reason="NodeStatusUnknown",
                    message="Kubelet stopped posting node status.",
                    lastTransitionTime=now_iso(),
                )
        node["spec"]["taints"] = [
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": now_iso()}
        ]
        api.store.put(("", "nodes"), node, added=False)
        tasks = []
        for pod in api.store.list(("", "pods")):
            if pod["spec"].get("nodeName") == name and pod.get("status", {}).get("phase") not in (
                "Succeeded",
                "Failed",
            ):
                task = self._cluster.kubelet.fail_pod(
                    pod["metadata"]["namespace"],
                    pod["metadata"]["name"],
                    "NodeLost",
                    f"Node {name} which was running pod {pod['metadata']['name']} is unresponsive",
                    phase=pod_phase,
                )
                if task is not None:
                    tasks.append(task)
        for task in tasks:
            await task

    def restore_node(self, name: str) -> None:
        """Bring a lost node back (Ready again, pods can be scheduled on it)."""
        api = self._cluster.api
        node = api.store.get(("", "nodes"), "", name)
        if node is None:
            raise ApiError.not_found("nodes", name)
        node = copy.deepcopy(node)
        for cond in node["status"].get("conditions") or []:
            if cond["type"] == "Ready":
                cond.update(
                    status="True",
                    reason="KubeletReady",
                    message="kubelet is posting ready status",
                    lastTransitionTime=now_iso(),
                )
        node["spec"].pop("taints", None)
        api.store.put(("", "nodes"), node, added=False)

    def deny_pods(self, message: str = "pods are not allowed here") -> None:
        """A validating admission webhook that refuses every pod created from now on (403), as
        ``admission webhook "deny.example.com" denied the request: <message>``."""

        def check(rtype: Any, namespace: str, obj: JSON) -> None:
            if rtype.kind == "Pod":
                raise ApiError(
                    403,
                    "Forbidden",
                    f'admission webhook "deny.example.com" denied the request: {message}',
                )

        self._cluster.api.admission_checks.append(check)

    def pod_quota(self, pods: int, name: str = "compute-quota") -> None:
        """A ResourceQuota allowing ``pods`` pods per namespace: creating one more answers 403 with the
        API server's message (``exceeded quota: ...``)."""

        def check(rtype: Any, namespace: str, obj: JSON) -> None:
            if rtype.kind != "Pod":
                return
            used = len(self._cluster.api.store.list(("", "pods"), namespace))
            if used >= pods:
                raise ApiError(
                    403,
                    "Forbidden",
                    f'pods "{obj["metadata"].get("name")}" is forbidden: exceeded quota: {name}, requested: '
                    f"pods=1, used: pods={used}, limited: pods={pods}",
                )

        self._cluster.api.admission_checks.append(check)

    def missing_image(self, image: str) -> None:
        """Pods using ``image`` (created from now on) never pull it: ErrImagePull, then ImagePullBackOff."""
        self._cluster.kubelet.missing_images.add(image)
