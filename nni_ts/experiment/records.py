"""Reading NNI metric records (the JSON a trial's SDK writes) into what the loop needs."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..models import TrialJobStatus

if TYPE_CHECKING:
    from ..config.experiment import ExperimentConfig

__all__ = ["ParsedRecord", "best_trial", "is_better", "optimize_mode", "parse_record", "scalar_of"]


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


def optimize_mode(config: ExperimentConfig | Mapping[str, Any]) -> str:
    """``"maximize"`` or ``"minimize"``: the tuner's (or advisor's) ``optimize_mode`` class argument.

    ``config`` is a typed config or one as stored (NNI v2 camelCase). Anything starting with "min" is
    minimize; no tuner or no argument means maximize, as in NNI.
    """
    if isinstance(config, Mapping):
        algo = config.get("tuner") or config.get("advisor") or {}
        args = algo.get("classArgs") or {}
    else:
        typed = config.tuner or config.advisor
        args = (typed.class_args or {}) if typed is not None else {}
    mode = str(args.get("optimize_mode", "maximize"))
    return "minimize" if mode.lower().startswith("min") else "maximize"


def is_better(value: float, than: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``than`` (None: nothing to beat) under ``mode``."""
    if than is None:
        return True
    return value < than if mode == "minimize" else value > than


class Scored(Protocol):
    """What :func:`best_trial` reads of a trial (a ``TrialRecord`` has both)."""

    @property
    def final_value(self) -> float | None: ...

    @property
    def status(self) -> TrialJobStatus: ...


S = TypeVar("S", bound=Scored)


def best_trial(trials: Iterable[S], mode: str, *, succeeded_only: bool = False) -> S | None:
    """The trial with the best final value under ``mode`` (the earliest one on a tie), or None.

    ``succeeded_only`` leaves out trials that did not end SUCCEEDED (one may report a final value
    and fail afterwards).
    """
    best: S | None = None
    for trial in trials:
        value = trial.final_value
        if value is None or (succeeded_only and trial.status is not TrialJobStatus.SUCCEEDED):
            continue
        if best is None or is_better(value, best.final_value, mode):
            best = trial
    return best
