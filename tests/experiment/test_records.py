"""The one "optimize mode" and the one "best trial" the loop, the CLI and the service share."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from nni_ts.config.loader import config_from_dict
from nni_ts.experiment.records import best_trial, is_better, optimize_mode
from nni_ts.models import TrialJobStatus


@dataclass
class _T:
    name: str
    final_value: float | None
    status: TrialJobStatus = TrialJobStatus.SUCCEEDED


def _config(mode: str | None) -> dict[str, object]:
    args = {"optimize_mode": mode} if mode is not None else {}
    return {
        "trialCommand": "true",
        "trialConcurrency": 1,
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "tuner": {"name": "Random", "classArgs": args},
        "trainingService": {"platform": "local"},
    }


@pytest.mark.parametrize(
    ("given", "expected"),
    [("minimize", "minimize"), ("Min", "minimize"), ("maximize", "maximize"), ("max", "maximize"), (None, "maximize")],
)
def test_optimize_mode_reads_typed_and_stored_configs_alike(given: str | None, expected: str) -> None:
    stored = _config(given)
    assert optimize_mode(stored) == expected
    assert optimize_mode(config_from_dict(stored)) == expected


def test_optimize_mode_without_a_tuner_is_maximize() -> None:
    assert optimize_mode({}) == "maximize"


def test_is_better_follows_the_mode() -> None:
    assert is_better(1.0, None, "minimize") and is_better(1.0, None, "maximize")
    assert is_better(0.5, 1.0, "minimize") and not is_better(0.5, 1.0, "maximize")
    assert not is_better(1.0, 1.0, "maximize") and not is_better(1.0, 1.0, "minimize")


def test_best_trial_by_mode_earliest_on_a_tie() -> None:
    trials = [_T("a", None), _T("b", 0.5), _T("c", 0.9), _T("d", 0.9), _T("e", 0.1)]
    assert best_trial(trials, "maximize") is trials[2]
    assert best_trial(trials, "minimize") is trials[4]
    assert best_trial([_T("a", None)], "maximize") is None
    assert best_trial([], "minimize") is None


def test_best_trial_among_succeeded_only_when_asked() -> None:
    trials = [_T("ok", 0.5), _T("failed", 0.9, TrialJobStatus.FAILED)]
    assert best_trial(trials, "maximize").name == "failed"  # type: ignore[union-attr]
    assert best_trial(trials, "maximize", succeeded_only=True) is trials[0]
