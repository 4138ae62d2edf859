"""A simulated Deployment controller for ``apps/v1`` Deployments, without ReplicaSets.

The pods ``<deployment>-<hash>-<random>`` are owned by the Deployment directly (a real cluster puts a
ReplicaSet in between) and labelled with the template's labels and ``pod-template-hash``. ``replicas``
(default 1) pods of the current template are kept: missing or finished ones are replaced, extra ones and
those of an older template are deleted (both strategies behave as ``Recreate``: old pods go first).
``status``: ``observedGeneration``, ``replicas``, ``updatedReplicas``, ``readyReplicas``,
``availableReplicas``, ``unavailableReplicas`` and the conditions ``Available``
(``MinimumReplicasAvailable`` / ``MinimumReplicasUnavailable``) and ``Progressing``
(``NewReplicaSetAvailable`` once all are available, ``ReplicaSetUpdated`` before).
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import string
from typing import Any

from ..util import JSON, ApiError
from .base import Controller, owner_ref
from .job import _set_cond

__all__ = ["DeploymentController", "template_hash"]

_SUFFIX = string.ascii_lowercase + string.digits


def template_hash(template: JSON) -> str:
    """A short stable hash of a pod template (the ``pod-template-hash`` label)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _ready(pod: JSON) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class DeploymentController(Controller):
    name = "deployment-controller"
    group = "apps"
    plural = "deployments"
    kind = "Deployment"

    def reconcile(self, namespace: str, name: str) -> None:
        dep = self.primary(namespace, name)
        if dep is None or dep["metadata"].get("deletionTimestamp"):
            return
        spec: JSON = dep.get("spec") or {}
        replicas = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
        paused = bool(spec.get("paused"))
        want_hash = template_hash(spec.get("template") or {})
        pods = self.owned_pods(dep)
        alive = [
            p
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        current = [p for p in alive if (p["metadata"].get("labels") or {}).get("pod-template-hash") == want_hash]
        old = [p for p in alive if p not in current]
        if not paused:
            for pod in pods:  # finished pods are replaced (a ReplicaSet deletes them)
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    self._delete(pod)
            for pod in old:
                self._delete(pod)
            for pod in current[replicas:]:
                self._delete(pod)
            current = current[:replicas]
            terminating = [p for p in pods if p["metadata"].get("deletionTimestamp")]
            if not old and not terminating:  # Recreate: new pods only once the old ones are gone
                for _ in range(replicas - len(current)):
                    created = self._create_pod(dep, want_hash)
                    if created is not None:
                        current.append(created)
        ready = sum(1 for p in current if _ready(p))
        status = copy.deepcopy(dep.get("status") or {})
        before = copy.deepcopy(status)
        status.update(
            observedGeneration=dep["metadata"].get("generation", 1),
            replicas=len(alive),
            updatedReplicas=len(current),
            readyReplicas=ready,
            availableReplicas=ready,
            unavailableReplicas=max(0, replicas - ready),
        )
        if ready >= replicas:
            _set_cond(status, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        else:
            _set_cond(
                status,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        if ready >= replicas and not old:
            message = f'ReplicaSet "{name}-{want_hash}" has successfully progressed.'
            _set_cond(status, "Progressing", "True", "NewReplicaSetAvailable", message)
        else:
            _set_cond(
                status, "Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{name}-{want_hash}" is progressing.'
            )
        for c in status.get("conditions") or []:  # lastProbeTime is not a Deployment condition field
            c.pop("lastProbeTime", None)
            c.setdefault("lastUpdateTime", c.get("lastTransitionTime"))
        if status != before:
            self.api.update_status(self.api.by_gr[(self.group, self.plural)], namespace, name, status)

    def _delete(self, pod: JSON) -> None:
        try:
            self.api.delete(self.api.rtype("", "v1", "pods"), pod["metadata"]["namespace"], pod["metadata"]["name"])
        except ApiError:
            pass

    def _create_pod(self, dep: JSON, hash_: str) -> JSON | None:
        template = copy.deepcopy((dep.get("spec") or {}).get("template") or {})
        meta = template.get("metadata") or {}
        name = f"{dep['metadata']['name']}-{hash_}-{''.join(secrets.choice(_SUFFIX) for _ in range(5))}"
        pod: Any = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": dep["metadata"]["namespace"],
                "labels": {**(meta.get("labels") or {}), "pod-template-hash": hash_},
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [owner_ref(dep)],
            },
            "spec": template.get("spec") or {},
        }
        try:
            created = self.api.create(self.api.rtype("", "v1", "pods"), dep["metadata"]["namespace"], pod)
        except ApiError as exc:
            self.record(dep, "FailedCreate", f"Error creating: {exc.message}", "Warning")
            return None
        self.record(dep, "SuccessfulCreate", f"Created pod: {name}")
        return created if isinstance(created, dict) else pod
