"""A validator for the structural OpenAPI v3 schemas of CustomResourceDefinitions.

It checks what a real API server checks (type, nullable, required, properties, additionalProperties, items,
enum, pattern, minimum/maximum, lengths, item counts, ``x-kubernetes-int-or-string``), applies ``default``
values and prunes unknown fields unless ``x-kubernetes-preserve-unknown-fields`` keeps them. CEL rules
(``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from .util import JSON

__all__ = ["Cause", "validate"]

Cause = tuple[str, str, str]  # (field, reason, message)

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_ok(expected: str, value: Any) -> bool:
    if expected == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    kind = _TYPES.get(expected)
    return kind is None or isinstance(value, kind)


def validate(schema: JSON, obj: JSON, *, prune: bool = True) -> tuple[list[Cause], list[str]]:
    """Validate ``obj`` (changed in place: defaults applied, unknown fields pruned) against ``schema``.

    Returns the causes of invalidity and the paths of pruned unknown fields.
    """
    causes: list[Cause] = []
    pruned: list[str] = []
    _check(schema, obj, "", causes, pruned, prune, root=True)
    return causes, pruned


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check(
    schema: JSON, value: Any, path: str, causes: list[Cause], pruned: list[str], prune: bool, root: bool = False
) -> None:
    where = path or "<root>"
    if value is None:
        if not schema.get("nullable") and schema.get("type") and not root:
            causes.append(
                (
                    where,
                    "FieldValueInvalid",
                    f'Invalid value: "null": {where} in body must be of type {schema.get("type")}: "null"',
                )
            )
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _type_ok("integer", value)):
            causes.append(
                (
                    where,
                    "FieldValueInvalid",
                    f"Invalid value: {_show(value)}: {where} in body must be of type integer-or-string: "
                    f"{_show(_type_name(value))}",
                )
            )
        return
    expected = schema.get("type")
    if expected and not _type_ok(expected, value):
        causes.append(
            (
                where,
                "FieldValueInvalid",
                f'Invalid value: {_show(value)}: {where} in body must be of type {expected}: "{_type_name(value)}"',
            )
        )
        return
    for sub in schema.get("allOf") or []:
        _check(sub, value, path, causes, [], False)
    if schema.get("anyOf") and not any(not _errors_of(sub, value) for sub in schema["anyOf"]):
        causes.append((where, "FieldValueInvalid", f"Invalid value: {_show(value)}: {where} in body must match anyOf"))
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(v) for v in schema["enum"])
        causes.append(
            (where, "FieldValueNotSupported", f"Unsupported value: {_show(value)}: supported values: {supported}")
        )
    if isinstance(value, str):
        if "pattern" in schema and not _regex(schema["pattern"]).search(value):
            causes.append(
                (
                    where,
                    "FieldValueInvalid",
                    f"Invalid value: {_show(value)}: {where} in body should match '{schema['pattern']}'",
                )
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            causes.append((where, "FieldValueTooLong", f"Too long: may not be longer than {schema['maxLength']}"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            causes.append(
                (
                    where,
                    "FieldValueInvalid",
                    f"Invalid value: {_show(value)}: {where} in body should be at least "
                    f"{schema['minLength']} chars long",
                )
            )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            low = schema["minimum"]
            if value < low or (schema.get("exclusiveMinimum") is True and value == low):
                word = "greater than" if schema.get("exclusiveMinimum") is True else "greater than or equal to"
                causes.append(
                    (
                        where,
                        "FieldValueInvalid",
                        f"Invalid value: {_show(value)}: {where} in body should be {word} {low}",
                    )
                )
        if "maximum" in schema:
            high = schema["maximum"]
            if value > high or (schema.get("exclusiveMaximum") is True and value == high):
                word = "less than" if schema.get("exclusiveMaximum") is True else "less than or equal to"
                causes.append(
                    (
                        where,
                        "FieldValueInvalid",
                        f"Invalid value: {_show(value)}: {where} in body should be {word} {high}",
                    )
                )
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(
                (where, "FieldValueTooMany", f"Too many: {len(value)}: must have at most {schema['maxItems']} items")
            )
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(
                (
                    where,
                    "FieldValueInvalid",
                    f"Invalid value: {len(value)}: {where} in body should have at least {schema['minItems']} items",
                )
            )
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _check(items, item, f"{path}[{i}]", causes, pruned, prune)
    if isinstance(value, dict):
        _check_object(schema, value, path, causes, pruned, prune, root)


def _check_object(
    schema: JSON, value: JSON, path: str, causes: list[Cause], pruned: list[str], prune: bool, root: bool
) -> None:
    props: JSON = schema.get("properties") or {}
    for name, sub in props.items():
        if name not in value and isinstance(sub, dict) and "default" in sub:
            value[name] = json.loads(json.dumps(sub["default"]))
    for name in schema.get("required") or []:
        if name not in value:
            causes.append((_join(path, name), "FieldValueRequired", "Required value"))
    additional = schema.get("additionalProperties")
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or schema.get("x-kubernetes-embedded-resource")
    for name in list(value):
        sub_path = _join(path, name) if not isinstance(additional, dict) or name in props else f"{path}[{name}]"
        if root and name in ("apiVersion", "kind"):
            continue
        if root and name == "metadata":
            meta_schema = props.get("metadata") or {}
            meta = value.get("metadata") or {}
            for key in ("name", "generateName"):
                sub = (meta_schema.get("properties") or {}).get(key)
                if sub and key in meta:
                    _check(sub, meta[key], f"metadata.{key}", causes, pruned, False)
            continue
        if name in props:
            _check(props[name], value[name], sub_path, causes, pruned, prune)
        elif isinstance(additional, dict):
            _check(additional, value[name], sub_path, causes, pruned, prune)
        elif additional is True or preserve or (not props and additional is None and not schema.get("type")):
            continue
        elif prune:
            pruned.append(sub_path)
            del value[name]
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        causes.append(
            (
                path or "<root>",
                "FieldValueTooMany",
                f"Too many: {len(value)}: must have at most {schema['maxProperties']} items",
            )
        )


def _errors_of(schema: JSON, value: Any) -> list[Cause]:
    causes: list[Cause] = []
    _check(schema, json.loads(json.dumps(value)), "", causes, [], False)
    return causes
