"""Patches as the API server applies them: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and the
basics of strategic merge patch (lists of objects merged by their ``name`` (or other known) key,
``$patch: delete|replace``, ``$retainKeys`` ignored)."""

from __future__ import annotations

import copy
from typing import Any

from .util import ApiError

__all__ = ["json_patch", "merge_patch", "strategic_merge_patch"]

#: List fields merged by key in strategic merge patch (field name -> merge key), as the built-in types declare.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "conditions": "type",
    "tolerations": "key",
    "hostAliases": "ip",
    "volumeDevices": "devicePath",
    "ownerReferences": "uid",
}
#: List fields whose strategy is "merge" of scalars (union), like finalizers.
SET_LISTS = {"finalizers"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _parse_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ApiError.bad_request(f"the JSON pointer {pointer!r} must start with '/'")
    return [_unescape(t) for t in pointer[1:].split("/")]


def _walk(doc: Any, tokens: list[str], pointer: str) -> Any:
    cur = doc
    for tok in tokens:
        if isinstance(cur, dict):
            if tok not in cur:
                raise ApiError(
                    422,
                    "Invalid",
                    f"the server rejected our request due to an error in our request: doc is missing path: {pointer!r}",
                )
            cur = cur[tok]
        elif isinstance(cur, list):
            try:
                cur = cur[int(tok)]
            except (ValueError, IndexError) as exc:
                raise ApiError(422, "Invalid", f"doc is missing path: {pointer!r}") from exc
        else:
            raise ApiError(422, "Invalid", f"doc is missing path: {pointer!r}")
    return cur


def _add(doc: Any, pointer: str, value: Any, replace: bool) -> Any:
    tokens = _parse_pointer(pointer)
    if not tokens:
        return copy.deepcopy(value)
    parent = _walk(doc, tokens[:-1], pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise ApiError(422, "Invalid", f"doc is missing key: {pointer!r}")
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-":
            parent.append(copy.deepcopy(value))
        else:
            try:
                index = int(last)
            except ValueError as exc:
                raise ApiError(422, "Invalid", f"invalid array index in {pointer!r}") from exc
            if replace:
                if not 0 <= index < len(parent):
                    raise ApiError(422, "Invalid", f"doc is missing path: {pointer!r}")
                parent[index] = copy.deepcopy(value)
            else:
                if not 0 <= index <= len(parent):
                    raise ApiError(422, "Invalid", f"index out of range in {pointer!r}")
                parent.insert(index, copy.deepcopy(value))
    else:
        raise ApiError(422, "Invalid", f"doc is missing path: {pointer!r}")
    return doc


def _remove(doc: Any, pointer: str) -> Any:
    tokens = _parse_pointer(pointer)
    if not tokens:
        raise ApiError(422, "Invalid", "cannot remove the whole document")
    parent = _walk(doc, tokens[:-1], pointer)
    last = tokens[-1]
    try:
        if isinstance(parent, dict):
            return parent.pop(last)
        if isinstance(parent, list):
            return parent.pop(int(last))
    except (KeyError, ValueError, IndexError) as exc:
        raise ApiError(422, "Invalid", f"unable to remove nonexistent key: {pointer!r}") from exc
    raise ApiError(422, "Invalid", f"doc is missing path: {pointer!r}")


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 operations (add, remove, replace, move, copy, test) applied to a copy of ``target``."""
    if not isinstance(operations, list):
        raise ApiError.bad_request("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError.bad_request(f"invalid JSON patch operation {op!r}: 'op' and 'path' are required")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, op.get("value"), replace=False)
        elif kind == "replace":
            doc = _add(doc, path, op.get("value"), replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "move":
            value = _remove(doc, op["from"])
            doc = _add(doc, path, value, replace=False)
        elif kind == "copy":
            value = _walk(doc, _parse_pointer(op["from"]), op["from"])
            doc = _add(doc, path, value, replace=False)
        elif kind == "test":
            if _walk(doc, _parse_pointer(path), path) != op.get("value"):
                raise ApiError(422, "Invalid", f"testing value {path} failed")
        else:
            raise ApiError.bad_request(f"unknown JSON patch operation {kind!r}")
    return doc


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge patch, the basics: like merge patch, but lists of objects with a known merge key
    are merged element by element, ``$patch: delete`` removes an element, ``$patch: replace`` replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if key.startswith(("$setElementOrder/", "$deleteFromPrimitiveList/")):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, MERGE_KEYS[key])
        elif isinstance(value, list) and key in SET_LISTS and isinstance(result.get(key), list):
            result[key] = list(dict.fromkeys([*result[key], *value]))
        else:
            result[key] = strategic_merge_patch(result.get(key), value, key)
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(result.get(name), list):
                result[name] = [x for x in result[name] if x not in value]
    return result


def _merge_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    if not all(isinstance(x, dict) for x in patch) or any(not isinstance(x, dict) for x in current):
        return copy.deepcopy(patch)
    out = copy.deepcopy(current)
    for item in patch:
        if item.get("$patch") == "replace":
            return [copy.deepcopy({k: v for k, v in x.items() if k != "$patch"}) for x in patch]
        key = item.get(merge_key)
        index = next((i for i, x in enumerate(out) if x.get(merge_key) == key), None)
        if item.get("$patch") == "delete":
            if index is not None:
                out.pop(index)
            continue
        if index is None:
            out.append(copy.deepcopy(item))
        else:
            out[index] = strategic_merge_patch(out[index], item)
    return out
