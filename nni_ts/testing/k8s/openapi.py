"""Just enough OpenAPI for kubectl: ``/openapi/v3`` (an index and one document per group version) and
``/openapi/v2`` (one swagger document). Every write operation declares the ``fieldValidation`` query
parameter, so kubectl validates on the server side (``kubectl apply --validate=strict``, its default)."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import TYPE_CHECKING, Any

from .util import JSON, ApiError

if TYPE_CHECKING:
    from .api import Api
    from .resources import ResourceType

__all__ = ["document"]

_PARAMS = ["dryRun", "fieldManager", "fieldValidation", "pretty"]


def _definition_name(rtype: ResourceType) -> str:
    group = ".".join(reversed(rtype.group.split("."))) if rtype.group else "io.k8s.api.core"
    return f"{group}.{rtype.version}.{rtype.kind}"


def _gvk(rtype: ResourceType) -> JSON:
    return {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}


def _schema(rtype: ResourceType) -> JSON:
    schema: JSON = (
        copy.deepcopy(rtype.schema)
        if rtype.schema
        else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    )
    schema["x-kubernetes-group-version-kind"] = [_gvk(rtype)]
    return schema


def _operations(rtype: ResourceType, v3: bool, ref: str) -> dict[str, JSON]:
    base = "/api/" + rtype.version if not rtype.group else f"/apis/{rtype.group}/{rtype.version}"
    collection = f"{base}/namespaces/{{namespace}}/{rtype.plural}" if rtype.namespaced else f"{base}/{rtype.plural}"
    item = collection + "/{name}"

    def param(name: str, where: str = "query") -> JSON:
        if v3:
            return {
                "name": name,
                "in": where,
                "schema": {"type": "string", "uniqueItems": True},
                **({"required": True} if where == "path" else {}),
            }
        return {
            "name": name,
            "in": where,
            "type": "string",
            "uniqueItems": True,
            **({"required": True} if where == "path" else {}),
        }

    def op(action: str, write: bool) -> JSON:
        body: JSON = {
            "operationId": f"{action}{rtype.kind}",
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": _gvk(rtype),
            "parameters": [param(p) for p in _PARAMS] if write else [param("pretty")],
            "responses": {
                "200": (
                    {"description": "OK", "content": {"application/json": {"schema": {"$ref": ref}}}}
                    if v3
                    else {"description": "OK", "schema": {"$ref": ref}}
                )
            },
        }
        return body

    path_params = [param("namespace", "path")] if rtype.namespaced else []
    return {
        collection: {"get": op("list", False), "post": op("post", True), "parameters": path_params},
        item: {
            "get": op("get", False),
            "put": op("put", True),
            "patch": op("patch", True),
            "delete": op("delete", False),
            "parameters": [*path_params, param("name", "path")],
        },
    }


def _gv_document(api: Api, group: str, version: str) -> JSON:
    paths: JSON = {}
    schemas: JSON = {}
    for rtype in api.types.values():
        if rtype.group != group or rtype.version != version:
            continue
        name = _definition_name(rtype)
        schemas[name] = _schema(rtype)
        paths.update(_operations(rtype, True, f"#/components/schemas/{name}"))
    if not paths:
        raise ApiError(404, "NotFound", f"no OpenAPI document for {group or 'core'}/{version}")
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (nni-ts fake)", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _hash(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()


def document(api: Api, parts: list[str], _hash_param: str | None = None) -> JSON:
    """The OpenAPI document at ``/openapi/<parts...>``."""
    if parts == ["v2"]:
        paths: JSON = {}
        definitions: JSON = {}
        for rtype in api.types.values():
            name = _definition_name(rtype)
            definitions[name] = _schema(rtype)
            paths.update(_operations(rtype, False, f"#/definitions/{name}"))
        return {
            "swagger": "2.0",
            "info": {"title": "Kubernetes (nni-ts fake)", "version": "v1.32.0"},
            "paths": paths,
            "definitions": definitions,
        }
    if parts == ["v3"]:
        index: JSON = {}
        gvs = sorted({(t.group, t.version) for t in api.types.values()})
        for group, version in gvs:
            key = f"apis/{group}/{version}" if group else f"api/{version}"
            digest = _hash(_gv_document(api, group, version))
            index[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
        return {"paths": index}
    if len(parts) >= 3 and parts[0] == "v3":
        if parts[1] == "api" and len(parts) == 3:
            return _gv_document(api, "", parts[2])
        if parts[1] == "apis" and len(parts) == 4:
            return _gv_document(api, parts[2], parts[3])
    raise ApiError(404, "NotFound", "the server could not find the requested resource")
