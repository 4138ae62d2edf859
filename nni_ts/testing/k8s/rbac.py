"""RBAC for service-account tokens: Roles, ClusterRoles and their bindings, evaluated as the real
authorizer does for the rules a client meets (verbs x apiGroups x resources, with subresources such as
``pods/log``, and ``resourceNames``; ``*`` wildcards).

A token is bound to a ServiceAccount (``cluster.service_account_token(namespace, name)``, the TokenRequest
subresource ``POST .../serviceaccounts/<name>/token`` as ``kubectl create token`` sends it, or a Secret of
type ``kubernetes.io/service-account-token``). Requests with such a token are allowed only what the bound
roles grant; the cluster's own token and requests without a token keep their access (everything, or the
namespaces the ``tokens`` option gives)."""

from __future__ import annotations

import secrets

from .store import Store
from .util import JSON

__all__ = ["RBAC_GROUP", "authorize", "rule_allows", "subject_matches"]

RBAC_GROUP = "rbac.authorization.k8s.io"


def subject_matches(subject: JSON, sa_namespace: str, sa_name: str, binding_namespace: str) -> bool:
    """Whether a binding's subject names the ServiceAccount (directly or by one of its groups)."""
    kind = subject.get("kind")
    if kind == "ServiceAccount":
        return subject.get("name") == sa_name and (subject.get("namespace") or binding_namespace) == sa_namespace
    if kind == "Group":
        return subject.get("name") in (
            "system:serviceaccounts",
            f"system:serviceaccounts:{sa_namespace}",
            "system:authenticated",
        )
    if kind == "User":
        return subject.get("name") == f"system:serviceaccount:{sa_namespace}:{sa_name}"
    return False


def rule_allows(rule: JSON, verb: str, group: str, resource: str, name: str) -> bool:
    """Whether one PolicyRule allows ``verb`` on ``resource`` (``plural`` or ``plural/sub``) of ``group``."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and verb not in verbs:
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and group not in groups:
        return False
    resources = rule.get("resources") or []
    plural, _, sub = resource.partition("/")
    if not (
        "*" in resources
        or resource in resources
        or (sub and f"*/{sub}" in resources)
        or (sub and f"{plural}/*" in resources)
    ):
        return False
    names = rule.get("resourceNames") or []
    return not names or name in names


def _rules(store: Store, kind: str, role_namespace: str, role_name: str) -> list[JSON]:
    if kind == "ClusterRole":
        role = store.get((RBAC_GROUP, "clusterroles"), "", role_name)
    else:
        role = store.get((RBAC_GROUP, "roles"), role_namespace, role_name)
    return list((role or {}).get("rules") or [])


def authorize(
    store: Store,
    sa_namespace: str,
    sa_name: str,
    verb: str,
    group: str,
    resource: str,
    namespace: str,
    name: str,
) -> bool:
    """Whether the ServiceAccount may do ``verb`` on ``resource`` in ``namespace`` ("" at cluster scope)."""
    candidates: list[tuple[str, str, str]] = []  # (role kind, role namespace, role name)
    for binding in store.list((RBAC_GROUP, "clusterrolebindings")):
        if any(subject_matches(s, sa_namespace, sa_name, "") for s in binding.get("subjects") or []):
            candidates.append(("ClusterRole", "", str((binding.get("roleRef") or {}).get("name", ""))))
    if namespace:
        for binding in store.list((RBAC_GROUP, "rolebindings"), namespace):
            if any(subject_matches(s, sa_namespace, sa_name, namespace) for s in binding.get("subjects") or []):
                ref = binding.get("roleRef") or {}
                candidates.append((str(ref.get("kind", "")), namespace, str(ref.get("name", ""))))
    for kind, role_ns, role_name in candidates:
        for rule in _rules(store, kind, role_ns, role_name):
            if rule_allows(rule, verb, group, resource, name):
                return True
    return False


def new_token() -> str:
    """An opaque token (the fake does not sign JWTs)."""
    return "fake-sa." + secrets.token_urlsafe(24)
