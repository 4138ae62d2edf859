"""Reading NNI metric records (the JSON a trial's SDK writes) into what the loop needs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["ParsedRecord", "parse_record", "scalar_of"]


@dataclass(frozen=True)
class ParsedRecord:
    """One record: its type (FINAL, PERIODICAL, REQUEST_PARAMETER...), its value and the value's scalar."""

    type: str
    value: Any
    scalar: float | None
    parameter_id: int | None
    valid: bool = True


def scalar_of(value: Any) -> float | None:
    """The number a tuner optimises: the value itself, or its ``default`` key (NNI's convention)."""
    if isinstance(value, dict):
        value = value.get("default")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_record(data: str) -> ParsedRecord:
    """Parse a record as NNI's SDK writes it: ``{"type", "sequence", "value": "<json text>", ...}``.

    The SDK encodes the reported value as JSON text inside the record; older SDKs and other clients
    sometimes put the value itself. Both are accepted. A record that is not JSON is kept (the store
    never drops what a trial wrote) and marked invalid.
    """
    try:
        record = json.loads(data)
    except ValueError:
        return ParsedRecord("INVALID", None, None, None, valid=False)
    if not isinstance(record, dict):
        return ParsedRecord("INVALID", None, None, None, valid=False)
    kind = str(record.get("type", "PERIODICAL")).upper()
    value = record.get("value")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass  # a plain string value
    pid = record.get("parameter_id")
    try:
        parameter_id = int(pid) if pid is not None else None
    except (TypeError, ValueError):
        parameter_id = None
    return ParsedRecord(kind, value, scalar_of(value), parameter_id)
