"""Minimal CustomResourceDefinitions for TFJob, PyTorchJob and Framework, written for the fake cluster.

They are deliberately permissive (the essentials are typed, the pod templates are kept as they are), so the
fake works without the real CRD files; load the real ones (``crd_files=`` or ``--crd``) to validate as a
real cluster does.
"""

from __future__ import annotations

from typing import Any

from .util import JSON

__all__ = ["BUILTIN_CRDS"]

_ANY: JSON = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _replica_spec() -> JSON:
    return {
        "type": "object",
        "properties": {
            "replicas": {"type": "integer", "minimum": 0},
            "restartPolicy": {"type": "string", "enum": ["Always", "OnFailure", "Never", "ExitCode"]},
            "template": _ANY,
        },
    }


def _kubeflow(kind: str, plural: str, replicas_field: str, roles: list[str]) -> JSON:
    schema: Any = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "required": [replicas_field],
                "properties": {
                    replicas_field: {"type": "object", "additionalProperties": _replica_spec()},
                    "runPolicy": _ANY,
                    "successPolicy": {"type": "string"},
                    "elasticPolicy": _ANY,
                    "enableDynamicWorker": {"type": "boolean"},
                },
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "status": _ANY,
        },
    }
    _ = roles
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kubeflow.org"},
        "spec": {
            "group": "kubeflow.org",
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": plural[:-1]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": schema},
                    "additionalPrinterColumns": [
                        {"name": "State", "type": "string", "jsonPath": ".status.conditions[-1:].type"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


_FRAMEWORK: JSON = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "frameworks.frameworkcontroller.microsoft.com"},
    "spec": {
        "group": "frameworkcontroller.microsoft.com",
        "scope": "Namespaced",
        "names": {"kind": "Framework", "plural": "frameworks", "singular": "framework"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "metadata": {
                                "type": "object",
                                "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]{1,63}$"}},
                            },
                            "spec": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                                "properties": {
                                    "executionType": {"type": "string", "enum": ["Create", "Start", "Stop"]},
                                    "retryPolicy": _ANY,
                                    "taskRoles": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True,
                                            "properties": {
                                                "name": {"type": "string", "pattern": "^[a-z0-9]{1,63}$"},
                                                "taskNumber": {"type": "integer", "minimum": 0},
                                                "frameworkAttemptCompletionPolicy": _ANY,
                                                "task": _ANY,
                                            },
                                        },
                                    },
                                },
                            },
                            "status": {
                                "type": "object",
                                "nullable": True,
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}

#: The built-in CRDs, loaded by every FakeCluster unless ``builtin_crds=False``.
BUILTIN_CRDS: list[JSON] = [
    _kubeflow("TFJob", "tfjobs", "tfReplicaSpecs", ["Chief", "Master", "PS", "Worker", "Evaluator"]),
    _kubeflow("PyTorchJob", "pytorchjobs", "pytorchReplicaSpecs", ["Master", "Worker"]),
    _FRAMEWORK,
]
