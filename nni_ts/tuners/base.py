"""NNI's tuner and assessor interfaces, as the experiment loop calls them."""

from __future__ import annotations

import abc
import enum
import math
from typing import Any

__all__ = ["AssessResult", "Assessor", "NoMoreTrialError", "Tuner", "extract_scalar"]


class NoMoreTrialError(Exception):
    """Raised by ``generate_parameters`` when a finite tuner (GridSearch, BatchTuner) is exhausted."""


class AssessResult(enum.Enum):
    """An assessor's verdict on a running trial (NNI's values)."""

    Good = True
    Bad = False


def extract_scalar(value: Any) -> float | None:
    """The number a tuner optimises: the value itself, or its ``default`` key. None if not a finite number."""
    if isinstance(value, dict):
        value = value.get("default")
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)  # numpy scalars and the like
        except (TypeError, ValueError):
            return None
    number = float(value)
    return number if math.isfinite(number) else None


class Tuner(abc.ABC):
    """NNI's Tuner interface. Existing NNI custom tuners implement exactly these methods.

    The loop calls ``update_search_space`` once, then ``generate_parameters`` for each new trial,
    ``receive_trial_result`` when a trial reports its final result (once per parameter id), and
    ``trial_end`` when the trial ends (once, success or not). On resume, finished trials are replayed
    with ``import_data``. All calls come from the event loop's thread, one at a time.
    """

    @abc.abstractmethod
    def update_search_space(self, search_space: dict[str, Any]) -> None:
        """Receive the (validated) search space."""

    @abc.abstractmethod
    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        """Parameters for a new trial. Raise NoMoreTrialError when there are none left."""

    @abc.abstractmethod
    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        """The final result of a trial: a number, or a dict with a ``default`` number."""

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:  # noqa: B027 - optional
        """A trial ended (after its result, if it reported one)."""

    def import_data(self, data: list[dict[str, Any]]) -> None:  # noqa: B027 - optional
        """Results of earlier trials: ``[{"parameter": {...}, "value": ...}, ...]``."""

    def import_submitted(self, parameters: list[dict[str, Any]]) -> None:  # noqa: B027 - optional
        """nni-ts hook, on resume: parameters of trials submitted earlier that have no result (still
        running, or ended without one). A tuner that must not hand out a point twice drops them."""


class Assessor(abc.ABC):
    """NNI's Assessor interface: decides from intermediate results whether a trial should go on."""

    @abc.abstractmethod
    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
        """``trial_history`` holds every intermediate result so far, in order."""

    def trial_end(self, trial_job_id: str, success: bool) -> None:  # noqa: B027 - optional
        """The trial ended."""

    def trial_submitted(self, trial_job_id: str, parameter_id: int) -> None:  # noqa: B027 - optional
        """nni-ts hook: a trial was submitted with the parameters of ``parameter_id``."""
