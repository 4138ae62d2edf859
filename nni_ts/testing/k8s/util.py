"""Small helpers of the fake cluster: API errors as Status objects, quantities, selectors, times."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

__all__ = [
    "ApiError",
    "JSON",
    "FieldSelector",
    "LabelSelector",
    "now_iso",
    "parse_quantity",
    "status_object",
]


def now_iso() -> str:
    """The current UTC time as Kubernetes writes it (RFC 3339, seconds, ``Z``)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str, details: JSON | None = None) -> JSON:
    """A ``meta.k8s.io/v1 Status`` object describing a failure, as the API server sends it."""
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


@dataclass
class ApiError(Exception):
    """An API failure that the server turns into a Status response with ``code``."""

    code: int
    reason: str
    message: str
    details: JSON | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def status(self) -> JSON:
        return status_object(self.code, self.reason, self.message, self.details)

    @classmethod
    def not_found(cls, resource: str, name: str, group: str = "") -> ApiError:
        qual = f"{resource}.{group}" if group else resource
        return cls(404, "NotFound", f'{qual} "{name}" not found', {"name": name, "group": group, "kind": resource})

    @classmethod
    def already_exists(cls, resource: str, name: str, group: str = "") -> ApiError:
        qual = f"{resource}.{group}" if group else resource
        return cls(
            409, "AlreadyExists", f'{qual} "{name}" already exists', {"name": name, "group": group, "kind": resource}
        )

    @classmethod
    def conflict(cls, resource: str, name: str, group: str = "", why: str = "") -> ApiError:
        qual = f"{resource}.{group}" if group else resource
        why = why or "the object has been modified; please apply your changes to the latest version and try again"
        return cls(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {qual} "{name}": {why}',
            {"name": name, "group": group, "kind": resource},
        )

    @classmethod
    def invalid(cls, kind: str, name: str, group: str, causes: list[tuple[str, str, str]]) -> ApiError:
        """422 Invalid; ``causes`` are ``(field, reason, message)`` triples."""
        qual = f"{kind}.{group}" if group else kind
        text = "; ".join(f"{f}: {m}" for f, _, m in causes) if causes else "invalid object"
        if len(causes) > 1:
            text = "[" + ", ".join(f"{f}: {m}" for f, _, m in causes) + "]"
        return cls(
            422,
            "Invalid",
            f'{qual} "{name}" is invalid: {text}',
            {
                "name": name,
                "group": group,
                "kind": kind,
                "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes],
            },
        )

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)


# ---------------------------------------------------------------- quantities

_SUFFIXES: dict[str, float] = {
    "": 1,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity (``"500m"``, ``"1Gi"``, ``2``, ``"1e3"``) as a float.

    Raises ``ValueError`` with a full sentence for text that is not a quantity.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity; expected a number or text like '500m' or '1Gi'.")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"{value!r} is not a quantity; expected a number or text like '500m' or '1Gi'.")
    return float(match.group(1)) * _SUFFIXES[match.group(2) or ""]


# ---------------------------------------------------------------- selectors

_REQ = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<val>\([^)]*\)|[A-Za-z0-9_.-]*))?\s*$"
)


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


Requirement = tuple[str, str, frozenset[str]]  # (key, op, values); op in =, !=, in, notin, exists, !exists


@dataclass
class LabelSelector:
    """A parsed label selector (``a=b,c!=d,e in (x,y),f notin (z),g,!h``)."""

    requirements: list[Requirement] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        sel = cls()
        if not text:
            return sel
        for part in _split_top(text):
            m = _REQ.match(part)
            if not m:
                raise ApiError.bad_request(f"unable to parse requirement: {part.strip()!r} in label selector {text!r}")
            key, op, val, neg = m.group("key"), (m.group("op") or "").strip(), m.group("val"), m.group("neg")
            if neg:
                if op:
                    raise ApiError.bad_request(f"unable to parse requirement: {part.strip()!r}")
                sel.requirements.append((key, "!exists", frozenset()))
            elif not op:
                sel.requirements.append((key, "exists", frozenset()))
            elif op in ("=", "=="):
                sel.requirements.append((key, "=", frozenset([val or ""])))
            elif op == "!=":
                sel.requirements.append((key, "!=", frozenset([val or ""])))
            else:
                if not val or not val.startswith("("):
                    raise ApiError.bad_request(f"unable to parse requirement: {part.strip()!r}: expected a (list)")
                values = frozenset(v.strip() for v in val[1:-1].split(",") if v.strip())
                sel.requirements.append((key, op, values))
        return sel

    @classmethod
    def from_dict(cls, selector: Mapping[str, Any]) -> LabelSelector:
        """From a ``metav1.LabelSelector`` (``matchLabels``, ``matchExpressions``)."""
        sel = cls()
        for k, v in (selector.get("matchLabels") or {}).items():
            sel.requirements.append((k, "=", frozenset([v])))
        ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
        for expr in selector.get("matchExpressions") or []:
            op = ops.get(expr.get("operator", ""))
            if op is not None:
                sel.requirements.append((expr.get("key", ""), op, frozenset(expr.get("values") or [])))
        return sel

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        lb = labels or {}
        for key, op, values in self.requirements:
            present = key in lb
            if op == "exists":
                ok = present
            elif op == "!exists":
                ok = not present
            elif op in ("=", "in"):
                ok = present and lb[key] in values
            else:  # != and notin match objects without the label too
                ok = not present or lb[key] not in values
            if not ok:
                return False
        return True


def _get_path(obj: JSON, dotted: str) -> Any:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


@dataclass
class FieldSelector:
    """A parsed field selector (``metadata.name=x,status.phase!=Running``)."""

    terms: list[tuple[str, bool, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None, allowed: set[str]) -> FieldSelector:
        sel = cls()
        if not text:
            return sel
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "!=" in part:
                key, value = part.split("!=", 1)
                positive = False
            elif "==" in part:
                key, value = part.split("==", 1)
                positive = True
            elif "=" in part:
                key, value = part.split("=", 1)
                positive = True
            else:
                raise ApiError.bad_request(f"invalid selector: {text!r}; can't understand {part!r}")
            key = key.strip()
            if key not in allowed:
                raise ApiError.bad_request(f"field label not supported: {key}")
            sel.terms.append((key, positive, value.strip()))
        return sel

    def matches(self, obj: JSON) -> bool:
        for key, positive, value in self.terms:
            actual = _get_path(obj, key)
            actual_text = "" if actual is None else str(actual)
            if (actual_text == value) != positive:
                return False
        return True
