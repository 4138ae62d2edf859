"""``nni.typehint``: the types of NNI's trial and tuner API (for annotations only)."""

import sys
from typing import Any, Dict, Optional

__all__ = ["Parameters", "SearchSpace", "TrialMetric", "TrialRecord", "ParameterRecord"]

if sys.version_info >= (3, 8):
    from typing import TypedDict
else:  # pragma: no cover - Python 3.8 is the oldest supported
    TypedDict = dict

Parameters = Dict[str, Any]
SearchSpace = Dict[str, Dict[str, Any]]
TrialMetric = float


class TrialRecord(TypedDict):
    parameter: Parameters
    value: TrialMetric


class ParameterRecord(TypedDict, total=False):
    parameter_id: Optional[int]
    parameters: Parameters
    parameter_source: str
    parameter_index: int
    trial_job_id: str
    version_info: dict
