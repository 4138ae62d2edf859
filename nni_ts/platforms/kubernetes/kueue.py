"""Kueue (``kueue.x-k8s.io/v1beta2``, as in Kueue 0.19) on the Kubernetes platforms: the labels, the check
of the LocalQueue at start, and what a trial's ``Workload`` says about it. Pure functions, but for
:func:`check_queue` (one request at start).

* ``queueName`` puts the label ``kueue.x-k8s.io/queue-name`` on each trial's top object (and
  ``priorityClass`` the label ``kueue.x-k8s.io/priority-class``, a ``WorkloadPriorityClass``). That is
  all a client does: Kueue's webhook suspends the object at creation, makes a Workload owned by it
  (label ``kueue.x-k8s.io/job-uid``), admits it within its ClusterQueue's quota and un-suspends it;
  to preempt it, Kueue suspends it again (its pods are deleted) and requeues the Workload.
* The platform watches the namespace's Workloads (one watch for the experiment) and maps each to its
  trial by its ownerReference; :func:`admission` reads one (its conditions) into an :class:`Admission`:
  queued (with Kueue's reason), admitted, evicted (preempted: waiting to run again) or finished.
  :func:`.lifecycle.kueue_step` decides what the trial does about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ...errors import ConfigError
from .client import JSON, KubeApiError

if TYPE_CHECKING:
    from ...config.kubernetes import KubernetesPlatformConfig
    from .client import KubeClient

__all__ = [
    "GROUP",
    "JOB_UID_LABEL",
    "PRIORITY_LABEL",
    "QUEUE_LABEL",
    "Admission",
    "admission",
    "check_queue",
    "held_message",
    "is_suspended",
    "kueue_labels",
    "workload_owner",
    "workloads_path",
]

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


def kueue_labels(config: KubernetesPlatformConfig) -> dict[str, str]:
    """The labels ``queueName`` and ``priorityClass`` put on each trial's top object (none without a queue)."""
    queue = getattr(config, "queue_name", None)
    if not queue:
        return {}
    labels = {QUEUE_LABEL: str(queue)}
    priority = getattr(config, "priority_class", None)
    if priority:
        labels[PRIORITY_LABEL] = str(priority)
    return labels


def workloads_path(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/workloads"


async def check_queue(client: KubeClient, namespace: str, queue: str) -> JSON:
    """The LocalQueue ``queue`` in ``namespace``; a :class:`ConfigError` naming ``queueName`` if it (or
    Kueue's API) does not exist."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/localqueues/{queue}"
    try:
        return await client.request("GET", path)
    except KubeApiError as exc:
        if exc.status != 404:
            raise
        if await _kueue_missing(client):
            raise ConfigError(
                f"queueName is {queue!r}, but the cluster does not serve Kueue's API ({GROUP}/{VERSION} "
                "LocalQueues): install Kueue 0.19 or later, or remove queueName.",
                path="trainingService.queueName",
            ) from exc
        raise ConfigError(
            f"queueName is {queue!r}, but namespace {namespace!r} has no LocalQueue of that name: create it "
            f"(kind LocalQueue, apiVersion {GROUP}/{VERSION}, spec.clusterQueue naming a ClusterQueue) or give "
            "the name of an existing one (kubectl get localqueues -n " + namespace + ").",
            path="trainingService.queueName",
        ) from exc


async def _kueue_missing(client: KubeClient) -> bool:
    try:
        await client.request("GET", f"/apis/{GROUP}/{VERSION}")
    except KubeApiError as exc:
        if exc.status == 404:
            return True
        raise
    return False


def is_suspended(obj: JSON) -> bool:
    """Whether a trial's object is suspended (``spec.suspend``; ``spec.runPolicy.suspend`` for TFJobs and
    PyTorchJobs): Kueue holds it, and it has no pods."""
    spec = obj.get("spec") or {}
    return bool(spec.get("suspend")) or bool((spec.get("runPolicy") or {}).get("suspend"))


def workload_owner(wl: JSON, kind: str) -> str | None:
    """The name of the object of ``kind`` that owns the Workload ``wl`` (a trial's job), or None."""
    for ref in (wl.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("name"):
            return str(ref["name"])
    return None


@dataclass(frozen=True)
class Admission:
    """What a trial's Workload says: ``queued`` (waiting for quota, or never admitted yet), ``admitted``,
    ``evicted`` (preempted or otherwise evicted after an admission: it waits to run again) or
    ``finished``; ``message`` is the WAITING reason to show; ``evictions`` counts its requeues."""

    state: Literal["queued", "admitted", "evicted", "finished"]
    message: str
    evictions: int = 0


def _conditions(wl: JSON) -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    for c in (wl.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and isinstance(c.get("type"), str):
            out[c["type"]] = c
    return out


def _true(conds: dict[str, JSON], type_: str) -> JSON | None:
    c = conds.get(type_)
    return c if c is not None and c.get("status") == "True" else None


def held_message(queue: str, why: str | None = None) -> str:
    """The WAITING reason of a trial Kueue holds."""
    return f"Queued by Kueue in LocalQueue {queue!r}: {why or 'waiting for Kueue to admit it'}."


def admission(wl: JSON) -> Admission:
    """Read a Workload's conditions (QuotaReserved, Admitted, Evicted, Preempted, Finished)."""
    conds = _conditions(wl)
    spec: dict[str, Any] = wl.get("spec") or {}
    queue = str(spec.get("queueName") or "?")
    count = int(((wl.get("status") or {}).get("requeueState") or {}).get("count") or 0)
    if _true(conds, "Finished") is not None:
        return Admission("finished", "", count)
    evicted = _true(conds, "Evicted")
    reserved = _true(conds, "QuotaReserved")
    admitted = _true(conds, "Admitted")
    if evicted is not None:
        reason = str(evicted.get("reason") or "Evicted")
        why = str(evicted.get("message") or "").strip().rstrip(".")
        preempted = _true(conds, "Preempted") is not None or reason == "Preempted"
        what = "Preempted by Kueue" if preempted else f"Evicted by Kueue ({reason})"
        message = f"{what}{': ' + why if why else ''}; waiting in LocalQueue {queue!r} to run again"
        pending = conds.get("QuotaReserved") or {}
        now = str(pending.get("message") or "").strip().rstrip(".")
        if reserved is None and now and "reempt" not in now:  # why it still waits (not the eviction again)
            message += f" ({now})"
        return Admission("evicted", message + ".", count)
    if reserved is not None and admitted is not None and spec.get("active", True) is not False:
        return Admission("admitted", "", count)
    if spec.get("active", True) is False:
        return Admission("queued", held_message(queue, "the Workload is deactivated (spec.active is false)"), count)
    if reserved is not None:
        checks = conds.get("Admitted") or {}
        why = str(checks.get("message") or "waiting for its admission checks").strip().rstrip(".")
        return Admission("queued", held_message(queue, f"quota reserved, not admitted yet ({why})"), count)
    pending = conds.get("QuotaReserved") or {}
    why = str(pending.get("message") or "").strip().rstrip(".")
    reason = str(pending.get("reason") or "")
    if why and reason and reason not in ("Pending", "QuotaReserved"):
        why = f"{why} ({reason})"
    return Admission("queued", held_message(queue, why or None), count)
