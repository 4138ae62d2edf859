"""The resource types the fake API server serves: built-in core ones and those CustomResourceDefinitions add."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .util import JSON, ApiError

__all__ = ["BUILTIN_TYPES", "ResourceType", "check_builtin", "check_crd", "check_job", "from_crd"]

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass
class ResourceType:
    """One served resource: ``group``/``version``/``plural`` with its kind and behaviour."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    has_status: bool = False
    schema: JSON | None = None
    printer_columns: list[JSON] = field(default_factory=list)
    field_selectors: set[str] = field(default_factory=set)
    crd_name: str | None = None

    def __post_init__(self) -> None:
        self.singular = self.singular or self.kind.lower()
        self.field_selectors |= {"metadata.name", "metadata.namespace"}

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``plural.group`` as used in messages (``tfjobs.kubeflow.org``), or just ``pods``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)

    @property
    def is_custom(self) -> bool:
        return self.crd_name is not None

    def discovery(self) -> list[JSON]:
        entry: JSON = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        out = [entry]
        if self.has_status:
            out.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        if self.kind == "Pod":
            out.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]})
            out.append(
                {
                    "name": "pods/eviction",
                    "singularName": "",
                    "namespaced": True,
                    "group": "policy",
                    "version": "v1",
                    "kind": "Eviction",
                    "verbs": ["create"],
                }
            )
        return out


BUILTIN_TYPES: list[ResourceType] = [
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        short_names=["po"],
        categories=["all"],
        has_status=True,
        field_selectors={"status.phase", "spec.nodeName", "spec.restartPolicy"},
    ),
    ResourceType("", "v1", "secrets", "Secret", field_selectors={"type"}),
    ResourceType("", "v1", "configmaps", "ConfigMap", short_names=["cm"]),
    ResourceType(
        "",
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        short_names=["ns"],
        has_status=True,
        field_selectors={"status.phase"},
    ),
    ResourceType(
        "",
        "v1",
        "events",
        "Event",
        short_names=["ev"],
        field_selectors={
            "involvedObject.name",
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.uid",
            "reason",
            "type",
        },
    ),
    ResourceType("", "v1", "nodes", "Node", namespaced=False, short_names=["no"], has_status=True),
    ResourceType("", "v1", "services", "Service", short_names=["svc"], categories=["all"], has_status=True),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", short_names=["sa"]),
    ResourceType("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short_names=["pvc"], has_status=True),
    ResourceType("batch", "v1", "jobs", "Job", categories=["all"], has_status=True),
    ResourceType(
        "apps", "v1", "deployments", "Deployment", short_names=["deploy"], categories=["all"], has_status=True
    ),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        short_names=["crd", "crds"],
        has_status=True,
    ),
]


def check_builtin(rtype: ResourceType, obj: JSON) -> None:
    """Raise 422 for a built-in object the real API server refuses (Jobs, Deployments, RBAC objects)."""
    if rtype.group == "batch" and rtype.kind == "Job":
        check_job(obj)
    elif rtype.group == "apps" and rtype.kind == "Deployment":
        check_deployment(obj)
    elif rtype.group == "rbac.authorization.k8s.io":
        check_rbac(rtype.kind, obj)


def check_deployment(obj: JSON) -> None:
    name = (obj.get("metadata") or {}).get("name", "")
    spec = obj.get("spec") or {}
    causes: list[tuple[str, str, str]] = []
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not spec.get("selector"):
        causes.append(("spec.selector", "FieldValueRequired", "Required value"))
    elif any(labels.get(k) != v for k, v in selector.items()):
        causes.append(
            (
                "spec.template.metadata.labels",
                "FieldValueInvalid",
                f"Invalid value: {json.dumps(labels)}: `selector` does not match template `labels`",
            )
        )
    if not ((spec.get("template") or {}).get("spec") or {}).get("containers"):
        causes.append(("spec.template.spec.containers", "FieldValueRequired", "Required value"))
    if causes:
        raise ApiError.invalid("Deployment", name, "apps", causes)


def check_rbac(kind: str, obj: JSON) -> None:
    name = (obj.get("metadata") or {}).get("name", "")
    causes: list[tuple[str, str, str]] = []
    if kind in ("Role", "ClusterRole"):
        for i, rule in enumerate(obj.get("rules") or []):
            if not rule.get("verbs"):
                causes.append(
                    (f"rules[{i}].verbs", "FieldValueRequired", "Required value: verbs must contain at least one value")
                )
            if not rule.get("nonResourceURLs") and not rule.get("resources"):
                causes.append(
                    (
                        f"rules[{i}].resources",
                        "FieldValueRequired",
                        "Required value: resource rules must supply at least one resource",
                    )
                )
            if rule.get("resources") and rule.get("apiGroups") is None:
                causes.append(
                    (
                        f"rules[{i}].apiGroups",
                        "FieldValueRequired",
                        "Required value: resource rules must supply at least one api group",
                    )
                )
    else:
        ref = obj.get("roleRef") or {}
        if not ref.get("name"):
            causes.append(("roleRef.name", "FieldValueRequired", "Required value"))
        allowed = ("Role", "ClusterRole") if kind == "RoleBinding" else ("ClusterRole",)
        if ref.get("kind") not in allowed:
            causes.append(
                (
                    "roleRef.kind",
                    "FieldValueNotSupported",
                    f'Unsupported value: "{ref.get("kind")}": supported values: '
                    + ", ".join(f'"{k}"' for k in allowed),
                )
            )
        for i, subject in enumerate(obj.get("subjects") or []):
            if subject.get("kind") not in ("ServiceAccount", "User", "Group"):
                causes.append(
                    (
                        f"subjects[{i}].kind",
                        "FieldValueNotSupported",
                        f'Unsupported value: "{subject.get("kind")}": supported values: '
                        '"ServiceAccount", "User", "Group"',
                    )
                )
    if causes:
        raise ApiError.invalid(kind, name, "rbac.authorization.k8s.io", causes)


def check_job(obj: JSON) -> None:
    """Raise 422 for a batch/v1 Job the real API server refuses (the rules a trial launcher can hit)."""
    name = (obj.get("metadata") or {}).get("name", "")
    spec = obj.get("spec") or {}
    template_spec = (spec.get("template") or {}).get("spec") or {}
    causes: list[tuple[str, str, str]] = []
    if len(name) > 63:
        causes.append(
            ("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": must be no more than 63 characters')
        )
    policy = template_spec.get("restartPolicy")
    if policy not in ("OnFailure", "Never"):
        causes.append(
            (
                "spec.template.spec.restartPolicy",
                "FieldValueNotSupported",
                f'Unsupported value: "{policy or "Always"}": supported values: "OnFailure", "Never"',
            )
        )
    if spec.get("podFailurePolicy") is not None and policy != "Never":
        causes.append(
            (
                "spec.podFailurePolicy",
                "FieldValueInvalid",
                "Invalid value: only allowed when spec.template.spec.restartPolicy is Never",
            )
        )
    for i, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
        if rule.get("action") not in ("FailJob", "Ignore", "Count", "FailIndex"):
            causes.append(
                (
                    f"spec.podFailurePolicy.rules[{i}].action",
                    "FieldValueNotSupported",
                    f'Unsupported value: "{rule.get("action")}": supported values: '
                    '"Count", "FailIndex", "FailJob", "Ignore"',
                )
            )
        if (rule.get("onExitCodes") is None) == (rule.get("onPodConditions") is None):
            causes.append(
                (
                    f"spec.podFailurePolicy.rules[{i}]",
                    "FieldValueInvalid",
                    "Invalid value: specifying one of OnExitCodes and OnPodConditions is required",
                )
            )
    if spec.get("completionMode", "NonIndexed") not in ("NonIndexed", "Indexed"):
        causes.append(
            (
                "spec.completionMode",
                "FieldValueNotSupported",
                f'Unsupported value: "{spec.get("completionMode")}": supported values: "NonIndexed", "Indexed"',
            )
        )
    if not template_spec.get("containers"):
        causes.append(("spec.template.spec.containers", "FieldValueRequired", "Required value"))
    if causes:
        raise ApiError.invalid("Job", name, "batch", causes)


def check_crd(obj: JSON) -> None:
    """Raise 422 if a CustomResourceDefinition lacks what the server needs to serve it."""
    name = (obj.get("metadata") or {}).get("name", "")
    spec = obj.get("spec") or {}
    causes: list[tuple[str, str, str]] = []
    group = spec.get("group")
    names = spec.get("names") or {}
    if not group:
        causes.append(("spec.group", "FieldValueRequired", "Required value"))
    if not names.get("plural"):
        causes.append(("spec.names.plural", "FieldValueRequired", "Required value"))
    if not names.get("kind"):
        causes.append(("spec.names.kind", "FieldValueRequired", "Required value"))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(
            (
                "spec.scope",
                "FieldValueNotSupported",
                f'Unsupported value: "{spec.get("scope")}": supported values: "Cluster", "Namespaced"',
            )
        )
    if group and names.get("plural") and name != f"{names['plural']}.{group}":
        causes.append(
            ("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
        )
    versions = spec.get("versions") or []
    if not versions:
        causes.append(
            (
                "spec.versions",
                "FieldValueRequired",
                "Required value: must have exactly one version marked as storage version",
            )
        )
    elif sum(1 for v in versions if v.get("storage")) != 1:
        causes.append(
            (
                "spec.versions",
                "FieldValueInvalid",
                "Invalid value: must have exactly one version marked as storage version",
            )
        )
    if causes:
        raise ApiError.invalid("CustomResourceDefinition", name, "apiextensions.k8s.io", causes)


def from_crd(obj: JSON) -> list[ResourceType]:
    """The resource types (one per served version) a CustomResourceDefinition object defines."""
    spec = obj["spec"]
    names = spec["names"]
    out = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        schema: Any = (version.get("schema") or {}).get("openAPIV3Schema")
        out.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular") or names["kind"].lower(),
                short_names=list(names.get("shortNames") or []),
                categories=list(names.get("categories") or []),
                has_status="status" in subresources,
                schema=schema,
                printer_columns=list(version.get("additionalPrinterColumns") or []),
                crd_name=obj["metadata"]["name"],
            )
        )
    return out
