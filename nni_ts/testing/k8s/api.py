"""The API semantics over the raw store: what a real API server does on create, update, patch and delete
(metadata, generateName, resourceVersion preconditions, status subresource, validation against CRD schemas,
finalizers, deletion propagation and ownerReference garbage collection). The HTTP layer, the simulated
controllers and tests all go through this class (``FakeCluster.api``)."""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import copy
import logging
import re
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from . import patch as patches
from .resources import BUILTIN_TYPES, ResourceType, check_builtin, check_crd, from_crd
from .schema import validate
from .store import GR, Store
from .util import JSON, ApiError, FieldSelector, LabelSelector, now_iso

__all__ = ["Api", "mark_disruption"]

log = logging.getLogger(__name__)

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_ALNUM = "bcdfghjklmnpqrstvwxz2456789"

#: Hook run when a pod is deleted gracefully: returns True if it takes over removing the object.
DeletionHook = Callable[[JSON, int], bool]


class Api:
    """In-process API with the server's semantics. Methods raise :class:`ApiError` like the server answers."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store()
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.by_gr: dict[GR, ResourceType] = {}
        self.pod_deletion_hook: DeletionHook | None = None
        #: Admission hooks (what webhooks and CEL rules do): ``hook(rtype, old, obj)`` may change ``obj`` or
        #: raise ApiError; ``old`` is None on create. Run after defaulting, before schema validation.
        self.admission: list[Callable[[ResourceType, JSON | None, JSON], None]] = []
        #: Admission checks run on every create after validation: ``check(rtype, namespace, obj)`` raises
        #: an ApiError to refuse (a quota, a validating webhook; see ``Faults``).
        self.admission_checks: list[Callable[[ResourceType, str, JSON], None]] = []
        #: Events recorded by the cluster itself are kept up to this number (the oldest go first).
        self.max_events = 10000
        self._events: deque[tuple[str, str]] = deque()
        self._gc_queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        for rtype in BUILTIN_TYPES:
            self._register(rtype)
        self.store.subscribe(self._on_event)
        for ns in ("default", "kube-system", "kube-public"):
            self.create(self.rtype("", "v1", "namespaces"), "", {"metadata": {"name": ns}})

    # ---------------------------------------------------------------- types

    def _register(self, rtype: ResourceType) -> None:
        self.types[rtype.key] = rtype
        self.by_gr[(rtype.group, rtype.plural)] = rtype

    def rtype(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.types.get((group, version, plural))
        if rtype is None:
            raise ApiError(
                404,
                "NotFound",
                f"the server could not find the requested resource "
                f"({'/'.join(p for p in (group, version, plural) if p)})",
            )
        return rtype

    def find(self, resource: str) -> ResourceType:
        """A type by plural, singular, short name or kind (``tfjobs``, ``TFJob``, ``po``, ``pods.v1``)."""
        want = resource.lower()
        for rtype in self.types.values():
            names = {
                rtype.plural,
                rtype.singular,
                rtype.kind.lower(),
                *rtype.short_names,
                f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural,
            }
            if want in names:
                return rtype
        raise ApiError(404, "NotFound", f'the server doesn\'t have a resource type "{resource}"')

    def for_object(self, obj: JSON) -> ResourceType:
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        group, _, version = api_version.rpartition("/")
        for rtype in self.types.values():
            if rtype.group == group and rtype.version == version and rtype.kind == kind:
                return rtype
        raise ApiError(404, "NotFound", f'no matches for kind "{kind}" in version "{api_version}"')

    def _crd_changed(self, crd: JSON | None, old: JSON | None) -> None:
        if old is not None:
            for rtype in from_crd(old):
                self.types.pop(rtype.key, None)
                if self.by_gr.get((rtype.group, rtype.plural)) is rtype:
                    del self.by_gr[(rtype.group, rtype.plural)]
        if crd is not None:
            for rtype in from_crd(crd):
                self._register(rtype)
        elif old is not None:
            self.store.drop_resource((old["spec"]["group"], old["spec"]["names"]["plural"]))

    def load_crd(self, crd: JSON) -> JSON:
        """Register a CustomResourceDefinition (create, or replace an existing one of the same name)."""
        crd_type = self.rtype("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        current = self.store.get(("apiextensions.k8s.io", "customresourcedefinitions"), "", crd["metadata"]["name"])
        body = copy.deepcopy(crd)
        body.setdefault("apiVersion", "apiextensions.k8s.io/v1")
        body.setdefault("kind", "CustomResourceDefinition")
        if current is None:
            return self.create(crd_type, "", body)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self.update(crd_type, "", crd["metadata"]["name"], body)

    # ---------------------------------------------------------------- reading

    def get(self, rtype: ResourceType, namespace: str, name: str) -> JSON:
        obj = self.store.get((rtype.group, rtype.plural), namespace if rtype.namespaced else "", name)
        if obj is None:
            raise ApiError.not_found(rtype.plural, name, rtype.group)
        return self._out(rtype, obj)

    def list(
        self,
        rtype: ResourceType,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[JSON]:
        labels = LabelSelector.parse(label_selector)
        fields = FieldSelector.parse(field_selector, rtype.field_selectors)
        objs = self.store.list((rtype.group, rtype.plural), namespace if rtype.namespaced else None)
        return [self._out(rtype, o) for o in objs if labels.matches(o["metadata"].get("labels")) and fields.matches(o)]

    def _out(self, rtype: ResourceType, obj: JSON) -> JSON:
        if obj.get("apiVersion") != rtype.api_version:
            obj = dict(obj, apiVersion=rtype.api_version)
        return obj

    # ---------------------------------------------------------------- writing

    def create(
        self, rtype: ResourceType, namespace: str, body: JSON, *, dry_run: bool = False, field_validation: str = ""
    ) -> JSON:
        if not isinstance(body, dict):
            raise ApiError.bad_request("the body of the request is not a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError.bad_request("metadata must be an object")
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        if rtype.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and namespace and body_ns != namespace:
                raise ApiError.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            namespace = namespace or body_ns or "default"
            meta["namespace"] = namespace
            if rtype.kind != "Namespace" and self.store.get(("", "namespaces"), "", namespace) is None:
                raise ApiError.not_found("namespaces", namespace)
            ns_obj = self.store.get(("", "namespaces"), "", namespace)
            if ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp"):
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{rtype.plural} "{meta.get("name") or meta.get("generateName")}" '
                    f"is forbidden: unable to create new content in namespace {namespace} because it is "
                    "being terminated",
                )
        else:
            meta.pop("namespace", None)
            namespace = ""
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = self._generate_name(rtype, namespace, str(meta["generateName"]))
        meta_causes = self._validate_meta(rtype, obj, creating=True)
        gr = (rtype.group, rtype.plural)
        if not meta_causes and self.store.get(gr, namespace, meta["name"]) is not None:
            raise ApiError.already_exists(rtype.plural, meta["name"], rtype.group)
        for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        meta["generation"] = 1
        if rtype.has_status and rtype.kind not in ("Node",):
            obj.pop("status", None)
        self._defaults(rtype, obj)
        for hook in self.admission:
            hook(rtype, None, obj)
        self._validate_body(rtype, obj, field_validation, meta_causes)
        for check in list(self.admission_checks):
            check(rtype, namespace, obj)
        if dry_run:
            return obj
        stored = self.store.put(gr, obj, added=True)
        if rtype.kind == "CustomResourceDefinition":
            self._crd_changed(stored, None)
            self._crd_status(stored)
            stored = self.store.get(gr, "", meta["name"]) or stored
        self._check_owners(gr, stored)
        return self._out(rtype, stored)

    def _generate_name(self, rtype: ResourceType, namespace: str, prefix: str) -> str:
        import random

        for _ in range(100):
            name = prefix[:58] + "".join(random.choice(_ALNUM) for _ in range(5))
            if self.store.get((rtype.group, rtype.plural), namespace, name) is None:
                return name
        raise ApiError(409, "AlreadyExists", f"could not generate a unique name from {prefix!r}")

    def update(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        body: JSON,
        *,
        subresource: str = "",
        dry_run: bool = False,
        field_validation: str = "",
        require_rv: bool = True,
    ) -> JSON:
        if not isinstance(body, dict):
            raise ApiError.bad_request("the body of the request is not a JSON object")
        namespace = namespace if rtype.namespaced else ""
        gr = (rtype.group, rtype.plural)
        current = self.store.get(gr, namespace, name)
        if current is None:
            raise ApiError.not_found(rtype.plural, name, rtype.group)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise ApiError.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        rv = meta.get("resourceVersion")
        if rv:
            if str(rv) != current["metadata"]["resourceVersion"]:
                raise ApiError.conflict(rtype.plural, name, rtype.group)
        elif rtype.is_custom and require_rv:
            raise ApiError.invalid(
                rtype.kind,
                name,
                rtype.group,
                [
                    (
                        "metadata.resourceVersion",
                        "FieldValueInvalid",
                        "Invalid value: 0x0: must be specified for an update",
                    )
                ],
            )
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        cur_meta = current["metadata"]
        meta_causes: builtins.list[tuple[str, str, str]] = []
        if subresource == "status":
            new_status = obj.get("status")
            obj = copy.deepcopy(current)
            if new_status is None:
                obj.pop("status", None)
            else:
                obj["status"] = new_status
            meta = obj["metadata"]
        else:
            if rtype.has_status:
                if "status" in current:
                    obj["status"] = copy.deepcopy(current["status"])
                else:
                    obj.pop("status", None)
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
                if key in cur_meta:
                    meta[key] = cur_meta[key]
                else:
                    meta.pop(key, None)
            meta["name"] = name
            if rtype.namespaced:
                meta["namespace"] = namespace
            if cur_meta.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(cur_meta.get("finalizers") or [])
                if added:
                    raise ApiError.invalid(
                        rtype.kind,
                        name,
                        rtype.group,
                        [
                            (
                                "metadata.finalizers",
                                "FieldValueForbidden",
                                "Forbidden: no new finalizers can be added if the object is being deleted",
                            )
                        ],
                    )
            meta_causes = self._validate_meta(rtype, obj, creating=False)
            self._defaults(rtype, obj)
            for hook in self.admission:
                hook(rtype, current, obj)
            if self._spec_changed(rtype, current, obj):
                meta["generation"] = int(cur_meta.get("generation", 1)) + 1
        self._validate_body(rtype, obj, field_validation, meta_causes)
        if dry_run:
            return obj
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            if rtype.kind != "Pod" or not self._pod_running(current):
                self.store.put(gr, obj, added=False)
                final = self.store.remove(gr, namespace, name)
                return self._out(rtype, final or obj)
        stored = self.store.put(gr, obj, added=False)
        if rtype.kind == "CustomResourceDefinition":
            self._crd_changed(stored, current)
            self._crd_status(stored)
            stored = self.store.get(gr, "", name) or stored
        return self._out(rtype, stored)

    def update_status(self, rtype: ResourceType, namespace: str, name: str, status: JSON) -> JSON:
        """Replace an object's status (the controllers' write; no resourceVersion precondition)."""
        current = self.store.get((rtype.group, rtype.plural), namespace, name)
        if current is None:
            raise ApiError.not_found(rtype.plural, name, rtype.group)
        obj = dict(current, status=status)
        obj["metadata"] = dict(current["metadata"])
        return self.store.put((rtype.group, rtype.plural), obj, added=False)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        content_type: str,
        *,
        subresource: str = "",
        dry_run: bool = False,
        field_validation: str = "",
        force: bool = False,
    ) -> JSON:
        namespace = namespace if rtype.namespaced else ""
        current = self.store.get((rtype.group, rtype.plural), namespace, name)
        kind = content_type.split(";")[0].strip()
        if current is None:
            if kind == "application/apply-patch+yaml":
                body = dict(body)
                body.setdefault("metadata", {})["name"] = name
                return self.create(rtype, namespace, body, dry_run=dry_run, field_validation=field_validation)
            raise ApiError.not_found(rtype.plural, name, rtype.group)
        base = copy.deepcopy(current)
        if kind == "application/json-patch+json":
            result = patches.json_patch(base, body)
        elif kind == "application/merge-patch+json":
            result = patches.merge_patch(base, body)
        elif kind == "application/strategic-merge-patch+json":
            if rtype.is_custom:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patch is not supported for custom "
                    f"resources ({rtype.group_resource}); use a JSON merge patch",
                )
            result = patches.strategic_merge_patch(base, body)
        elif kind == "application/apply-patch+yaml":
            result = (patches.merge_patch if rtype.is_custom else patches.strategic_merge_patch)(base, body)
        else:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - "
                "accepted media types include: application/json-patch+json, "
                "application/merge-patch+json, application/apply-patch+yaml",
            )
        if not isinstance(result, dict):
            raise ApiError.bad_request("the patch does not result in an object")
        meta = result.setdefault("metadata", {})
        patched_rv = meta.get("resourceVersion")
        if patched_rv == current["metadata"]["resourceVersion"]:
            pass
        elif patched_rv and kind != "application/json-patch+json":
            raise ApiError.conflict(rtype.plural, name, rtype.group)
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self.update(
            rtype, namespace, name, result, subresource=subresource, dry_run=dry_run, field_validation=field_validation
        )

    # ---------------------------------------------------------------- deleting

    def delete(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        *,
        propagation: str | None = None,
        grace_period: int | None = None,
        preconditions: JSON | None = None,
        dry_run: bool = False,
    ) -> JSON:
        namespace = namespace if rtype.namespaced else ""
        gr = (rtype.group, rtype.plural)
        current = self.store.get(gr, namespace, name)
        if current is None:
            raise ApiError.not_found(rtype.plural, name, rtype.group)
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != current["metadata"]["uid"]:
            raise ApiError.conflict(
                rtype.plural,
                name,
                rtype.group,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                f"{current['metadata']['uid']}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise ApiError.conflict(
                rtype.plural,
                name,
                rtype.group,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                f"{current['metadata']['resourceVersion']}",
            )
        if propagation not in (None, "", "Orphan", "Background", "Foreground"):
            raise ApiError.invalid(
                "DeleteOptions",
                "",
                "",
                [
                    (
                        "propagationPolicy",
                        "FieldValueNotSupported",
                        f'Unsupported value: "{propagation}": supported values: "Foreground", "Background", "Orphan"',
                    )
                ],
            )
        if dry_run:
            return self._out(rtype, current)
        obj = copy.deepcopy(current)
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if propagation == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if propagation == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        if rtype.kind == "Namespace" and not meta.get("deletionTimestamp"):
            finalizers.append("kubernetes")
            obj.setdefault("status", {})["phase"] = "Terminating"
        if finalizers:
            already = bool(meta.get("deletionTimestamp"))
            meta["finalizers"] = finalizers
            meta.setdefault("deletionTimestamp", now_iso())
            meta.setdefault("deletionGracePeriodSeconds", 0)
            if already and finalizers == (current["metadata"].get("finalizers") or []):
                return self._out(rtype, current)
            stored = self.store.put(gr, obj, added=False)
            self._gc_enqueue(("finalize", (gr, namespace, name)))
            return self._out(rtype, stored)
        if rtype.kind == "Pod" and self.pod_deletion_hook is not None:
            grace = (
                grace_period
                if grace_period is not None
                else int(obj.get("spec", {}).get("terminationGracePeriodSeconds", 30))
            )
            if self._pod_running(current) and grace > 0:
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = now_iso()
                    meta["deletionGracePeriodSeconds"] = grace
                    stored = self.store.put(gr, obj, added=False)
                else:
                    stored = current
                if self.pod_deletion_hook(stored, grace):
                    return self._out(rtype, stored)
            elif self.pod_deletion_hook(current, 0):
                pass
        final = self.store.remove(gr, namespace, name)
        if rtype.kind == "CustomResourceDefinition":
            self._crd_changed(None, current)
        return self._out(rtype, final or current)

    def remove_now(self, rtype: ResourceType, namespace: str, name: str) -> None:
        """Remove an object at once (the kubelet's last step of a graceful pod deletion)."""
        self.store.remove((rtype.group, rtype.plural), namespace, name)

    @staticmethod
    def _pod_running(pod: JSON) -> bool:
        return (pod.get("status") or {}).get("phase") in ("Running", "Pending") and bool(
            pod.get("spec", {}).get("nodeName")
        )

    # ---------------------------------------------------------------- garbage collection

    def _gc_enqueue(self, item: tuple[str, Any]) -> None:
        self._gc_queue.put_nowait(item)

    def _on_event(self, event: Any) -> None:
        meta = event.obj["metadata"]
        if event.type == "DELETED":
            uid = meta.get("uid", "")
            if uid in self.store.owner_index:
                self._gc_enqueue(("orphaned", uid))
        elif event.type == "MODIFIED" and meta.get("deletionTimestamp"):
            finalizers = meta.get("finalizers") or []
            if "foregroundDeletion" in finalizers or "orphan" in finalizers or "kubernetes" in finalizers:
                self._gc_enqueue(("finalize", (event.gr, event.namespace, meta["name"])))
        if event.type == "DELETED" or meta.get("deletionTimestamp"):
            # An owner waiting in foreground deletion may now be free to go.
            for ref in meta.get("ownerReferences") or []:
                key = self.store.uids.get(ref.get("uid") or "")
                if key is not None:
                    owner = self.store.get(*key)
                    if owner is not None and owner["metadata"].get("deletionTimestamp"):
                        self._gc_enqueue(("finalize", key))
            if event.namespace and event.type == "DELETED":
                ns = self.store.get(("", "namespaces"), "", event.namespace)
                if ns is not None and ns["metadata"].get("deletionTimestamp"):
                    self._gc_enqueue(("finalize", (("", "namespaces"), "", event.namespace)))

    def _check_owners(self, gr: GR, obj: JSON) -> None:
        refs = obj["metadata"].get("ownerReferences") or []
        if refs and all(r.get("uid") not in self.store.uids for r in refs):
            self._gc_enqueue(("orphaned", refs[0].get("uid")))

    async def run_gc(self) -> None:
        """The garbage collector and namespace finaliser (a task of the cluster)."""
        while True:
            kind, arg = await self._gc_queue.get()
            try:
                if kind == "orphaned":
                    self._collect_dependents(arg)
                elif kind == "finalize":
                    self._finalize(*arg)
            except Exception:  # noqa: BLE001 - the collector must survive any single failure
                log.exception("The fake cluster's garbage collector failed on %s %s.", kind, arg)

    def _collect_dependents(self, uid: str) -> None:
        if uid in self.store.uids:
            return
        for gr, ns, name in list(self.store.owner_index.get(uid, ())):
            obj = self.store.get(gr, ns, name)
            rtype = self.by_gr.get(gr)
            if obj is None or rtype is None:
                continue
            owners = [r.get("uid") for r in obj["metadata"].get("ownerReferences") or []]
            if any(o in self.store.uids for o in owners):
                continue
            if not obj["metadata"].get("deletionTimestamp"):
                with contextlib.suppress(ApiError):
                    self.delete(rtype, ns, name, propagation="Background")

    def _finalize(self, gr: GR, ns: str, name: str) -> None:
        obj = self.store.get(gr, ns, name)
        rtype = self.by_gr.get(gr)
        if obj is None or rtype is None or not obj["metadata"].get("deletionTimestamp"):
            return
        uid = obj["metadata"]["uid"]
        finalizers = list(obj["metadata"].get("finalizers") or [])
        dependents = list(self.store.owner_index.get(uid, ()))
        if "orphan" in finalizers:
            for dgr, dns, dname in dependents:
                dep = self.store.get(dgr, dns, dname)
                if dep is None:
                    continue
                dep = copy.deepcopy(dep)
                dep["metadata"]["ownerReferences"] = [
                    r for r in dep["metadata"].get("ownerReferences") or [] if r.get("uid") != uid
                ]
                if not dep["metadata"]["ownerReferences"]:
                    del dep["metadata"]["ownerReferences"]
                self.store.put(dgr, dep, added=False)
            finalizers.remove("orphan")
        if "foregroundDeletion" in finalizers:
            remaining = [d for d in dependents if self.store.get(*d) is not None]
            for dgr, dns, dname in remaining:
                dep = self.store.get(dgr, dns, dname)
                drtype = self.by_gr.get(dgr)
                if dep is not None and drtype is not None and not dep["metadata"].get("deletionTimestamp"):
                    with contextlib.suppress(ApiError):
                        self.delete(drtype, dns, dname, propagation="Foreground")
            if not [d for d in dependents if self.store.get(*d) is not None]:
                finalizers.remove("foregroundDeletion")
        if "kubernetes" in finalizers and gr == ("", "namespaces"):
            left = 0
            for ogr, bucket in list(self.store.objects.items()):
                ortype = self.by_gr.get(ogr)
                for (ons, oname), o in list(bucket.items()):
                    if ons != name or ortype is None:
                        continue
                    left += 1
                    if not o["metadata"].get("deletionTimestamp"):
                        with contextlib.suppress(ApiError):
                            self.delete(ortype, ons, oname, propagation="Background")
            if left == 0 or not any(k[0] == name for b in self.store.objects.values() for k in b):
                finalizers.remove("kubernetes")
        if finalizers != (obj["metadata"].get("finalizers") or []):
            new = copy.deepcopy(obj)
            new["metadata"]["finalizers"] = finalizers
            if not finalizers:
                del new["metadata"]["finalizers"]
                self.store.put(gr, new, added=False)
                self.store.remove(gr, ns, name)
            else:
                self.store.put(gr, new, added=False)

    # ---------------------------------------------------------------- validation and defaults

    def _validate_meta(self, rtype: ResourceType, obj: JSON, creating: bool) -> builtins.list[tuple[str, str, str]]:
        meta = obj["metadata"]
        name = meta.get("name")
        causes: builtins.list[tuple[str, str, str]] = []
        if not name:
            causes.append(("metadata.name", "FieldValueRequired", "Required value: name or generateName is required"))
        elif (
            not isinstance(name, str)
            or len(name) > 253
            or not (_DNS_LABEL if rtype.kind in ("Namespace", "Service") else _DNS_SUBDOMAIN).match(name)
        ):
            causes.append(
                (
                    "metadata.name",
                    "FieldValueInvalid",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                    "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                    "character (e.g. 'example.com')",
                )
            )
        for key, value in (meta.get("labels") or {}).items():
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                causes.append(
                    (
                        "metadata.labels",
                        "FieldValueInvalid",
                        f'Invalid value: "{value}": a valid label must be an empty string or consist of '
                        "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                        f"alphanumeric character (label {key})",
                    )
                )
        if rtype.kind == "Pod":
            causes.extend(self._pod_causes(obj))
        if not name:
            raise ApiError.invalid(rtype.kind, str(meta.get("generateName") or ""), rtype.group, causes)
        return causes

    @staticmethod
    def _pod_causes(pod: JSON) -> builtins.list[tuple[str, str, str]]:
        causes: builtins.list[tuple[str, str, str]] = []
        spec = pod.get("spec")
        if not isinstance(spec, dict):
            return [("spec", "FieldValueRequired", "Required value")]
        containers = spec.get("containers")
        if not containers:
            causes.append(("spec.containers", "FieldValueRequired", "Required value"))
        for i, c in enumerate(containers or []):
            if not isinstance(c, dict):
                causes.append((f"spec.containers[{i}]", "FieldValueInvalid", "Invalid value: must be an object"))
                continue
            if not c.get("name"):
                causes.append((f"spec.containers[{i}].name", "FieldValueRequired", "Required value"))
            if not c.get("image"):
                causes.append((f"spec.containers[{i}].image", "FieldValueRequired", "Required value"))
        policy = spec.get("restartPolicy", "Always")
        if policy not in ("Always", "OnFailure", "Never"):
            causes.append(
                (
                    "spec.restartPolicy",
                    "FieldValueNotSupported",
                    f'Unsupported value: "{policy}": supported values: "Always", "OnFailure", "Never"',
                )
            )
        return causes

    def _validate_body(
        self, rtype: ResourceType, obj: JSON, field_validation: str, meta_causes: builtins.list[tuple[str, str, str]]
    ) -> None:
        if rtype.kind == "CustomResourceDefinition":
            check_crd(obj)
        if not rtype.is_custom:
            check_builtin(rtype, obj)
        if rtype.schema is None:
            if meta_causes:
                raise ApiError.invalid(rtype.kind, obj["metadata"].get("name", ""), rtype.group, meta_causes)
            return
        causes, pruned = validate(rtype.schema, obj)
        causes = meta_causes + [c for c in causes if c not in meta_causes]
        if field_validation == "Strict" and pruned:
            raise ApiError.bad_request(
                f'{rtype.kind} in version "{rtype.version}" cannot be handled as a {rtype.kind}: strict decoding '
                f"error: " + ", ".join(f'unknown field "{p}"' for p in pruned)
            )
        if causes:
            raise ApiError.invalid(rtype.kind, obj["metadata"].get("name", ""), rtype.group, causes)

    def _defaults(self, rtype: ResourceType, obj: JSON) -> None:
        if rtype.kind == "Pod":
            spec = obj.setdefault("spec", {})
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("dnsPolicy", "ClusterFirst")
            for c in spec.get("containers") or []:
                if isinstance(c, dict):
                    c.setdefault(
                        "imagePullPolicy",
                        "Always"
                        if str(c.get("image", "")).endswith(":latest") or ":" not in str(c.get("image", ""))
                        else "IfNotPresent",
                    )
                    c.setdefault("terminationMessagePath", "/dev/termination-log")
            if "status" not in obj:
                obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif rtype.kind == "Namespace":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj.setdefault("status", {"phase": "Active"})
        elif rtype.kind == "Job" and rtype.group == "batch":
            spec = obj.setdefault("spec", {})
            for key, value in (
                ("backoffLimit", 6),
                ("completions", 1),
                ("parallelism", 1),
                ("completionMode", "NonIndexed"),
                ("suspend", False),
            ):
                spec.setdefault(key, value)
            # As the API server defaults it (GA in 1.34): with a podFailurePolicy only Failed is allowed.
            spec.setdefault("podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
            template = spec.setdefault("template", {})
            labels = template.setdefault("metadata", {}).setdefault("labels", {})
            labels.setdefault("batch.kubernetes.io/job-name", obj["metadata"].get("name", ""))
            labels.setdefault("job-name", obj["metadata"].get("name", ""))
            uid = obj["metadata"].get("uid", "")
            labels.setdefault("batch.kubernetes.io/controller-uid", uid)
            labels.setdefault("controller-uid", uid)
            spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        elif rtype.kind == "Deployment" and rtype.group == "apps":
            spec = obj.setdefault("spec", {})
            spec.setdefault("replicas", 1)
            spec.setdefault(
                "strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
            )
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
        elif rtype.kind == "PersistentVolumeClaim":
            obj.setdefault("status", {"phase": "Bound"})
        elif rtype.kind == "Secret":
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                data = obj.setdefault("data", {})
                for key, value in string_data.items():
                    data[key] = base64.b64encode(str(value).encode()).decode()
            obj.setdefault("type", "Opaque")

    def _spec_changed(self, rtype: ResourceType, old: JSON, new: JSON) -> bool:
        ignore = {"metadata", "status"} if rtype.has_status else {"metadata"}
        keys = (set(old) | set(new)) - ignore
        return any(old.get(k) != new.get(k) for k in keys)

    def _crd_status(self, crd: JSON) -> None:
        obj = copy.deepcopy(crd)
        names = obj["spec"]["names"]
        obj["status"] = {
            "acceptedNames": {
                "kind": names["kind"],
                "plural": names["plural"],
                **({"singular": names["singular"]} if names.get("singular") else {}),
            },
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now_iso(),
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now_iso(),
                },
            ],
            "storedVersions": [v["name"] for v in obj["spec"]["versions"] if v.get("storage")],
        }
        self.store.put(("apiextensions.k8s.io", "customresourcedefinitions"), obj, added=False)

    # ---------------------------------------------------------------- events

    def record_event(
        self, involved: JSON, reason: str, message: str, type_: str = "Normal", component: str = "fake-cluster"
    ) -> None:
        """Record a v1 Event about ``involved``, as controllers and the kubelet do."""
        meta = involved["metadata"]
        ns = meta.get("namespace") or "default"
        events = self.rtype("", "v1", "events")
        now = now_iso()
        body = {
            "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": ns},
            "involvedObject": {
                "kind": involved.get("kind"),
                "namespace": meta.get("namespace"),
                "name": meta["name"],
                "uid": meta.get("uid"),
                "apiVersion": involved.get("apiVersion"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "count": 1,
            "source": {"component": component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "reportingComponent": component,
        }
        with contextlib.suppress(ApiError):
            created = self.create(events, ns, body)
            self._events.append((ns, created["metadata"]["name"]))
            while len(self._events) > self.max_events:
                old_ns, old_name = self._events.popleft()
                self.store.remove(("", "events"), old_ns, old_name)


def mark_disruption(api: Api, namespace: str, name: str, reason: str, message: str) -> None:
    """Add the ``DisruptionTarget`` condition a real cluster puts on a pod it evicts or preempts (what a
    Job's podFailurePolicy ``onPodConditions`` matches)."""
    pod = api.store.get(("", "pods"), namespace, name)
    if pod is None:
        return
    status = copy.deepcopy(pod.get("status") or {})
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "DisruptionTarget"]
    conditions.append(
        {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": now_iso(),
        }
    )
    status["conditions"] = conditions
    try:
        api.update_status(api.rtype("", "v1", "pods"), namespace, name, status)
    except ApiError:
        pass
