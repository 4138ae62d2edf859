"""Tuners and assessors backed by Optuna (ask/tell), with NNI's search-space semantics."""

from __future__ import annotations

import math
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ..search_space import suggest, validate_search_space
from .base import Assessor, AssessResult, Tuner, extract_scalar

__all__ = ["MedianStopAssessor", "OptunaTuner", "PrunerAssessor", "encode_params"]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _direction(optimize_mode: str) -> Literal["minimize", "maximize"]:
    return "minimize" if optimize_mode == "minimize" else "maximize"


def encode_params(
    space: dict[str, Any], params: dict[str, Any], *, prefix: str = ""
) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """The Optuna parameters and distributions that ``suggest`` would have produced for ``params``.

    Used to replay finished trials into a study (resume, import_data). Values outside the space are
    skipped (the trial is then imported with fewer parameters, which Optuna accepts).
    """
    values: dict[str, Any] = {}
    dists: dict[str, BaseDistribution] = {}
    for name, spec in space.items():
        if name not in params:
            continue
        key = f"{prefix}{name}"
        kind, v, got = spec["_type"], spec["_value"], params[name]
        if kind == "choice":
            nested = any(isinstance(x, dict) and "_name" in x for x in v)
            plain = all(x is None or isinstance(x, bool | int | float | str) for x in v)
            if plain and not nested:
                if got in v:
                    values[key], dists[key] = got, CategoricalDistribution(v)
                continue
            index = next((i for i, x in enumerate(v) if _same_choice(x, got)), None)
            if index is None:
                continue
            values[f"{key}/index"], dists[f"{key}/index"] = index, CategoricalDistribution(list(range(len(v))))
            item = v[index]
            if isinstance(item, dict) and "_name" in item and isinstance(got, dict):
                sub = {k: s for k, s in item.items() if k != "_name"}
                sv, sd = encode_params(sub, got, prefix=f"{key}/{item['_name']}/")
                values.update(sv)
                dists.update(sd)
        elif kind == "randint":
            if isinstance(got, int | float) and v[0] <= got < v[1]:
                values[key], dists[key] = int(got), IntDistribution(int(v[0]), int(v[1]) - 1)
        elif kind in ("uniform", "quniform", "loguniform", "qloguniform"):
            if isinstance(got, int | float) and v[0] <= got <= v[1]:
                log = "log" in kind
                values[key], dists[key] = float(got), FloatDistribution(v[0], v[1], log=log)
        else:  # normal family: back through the CDF
            if not isinstance(got, int | float):
                continue
            x = float(got)
            if kind in ("lognormal", "qlognormal"):
                if x <= 0:
                    continue
                x = math.log(x)
            u = 0.5 * (1 + math.erf((x - v[0]) / (v[1] * math.sqrt(2))))
            u = min(max(u, 1e-9), 1 - 1e-9)
            values[f"{key}/u"], dists[f"{key}/u"] = u, FloatDistribution(1e-9, 1 - 1e-9)
    return values, dists


def _same_choice(option: Any, got: Any) -> bool:
    if isinstance(option, dict) and "_name" in option:
        return isinstance(got, dict) and got.get("_name") == option["_name"]
    return bool(option == got)


class OptunaTuner(Tuner):
    """An NNI tuner driving an Optuna sampler with ask/tell.

    ``generate_parameters`` asks a trial and samples the NNI space through it;
    ``receive_trial_result`` tells its value once; a trial that ends without a result is told
    FAILED (or PRUNED if a pruner stopped it). Results for parameter ids this tuner never generated
    (a manager resumed mid-trial) are imported as finished trials.
    """

    def __init__(
        self,
        sampler: optuna.samplers.BaseSampler,
        *,
        optimize_mode: str = "maximize",
        pruner: optuna.pruners.BasePruner | None = None,
        name: str = "optuna",
    ) -> None:
        self.name = name
        self.optimize_mode = optimize_mode
        self.study = optuna.create_study(
            direction=_direction(optimize_mode), sampler=sampler, pruner=pruner or optuna.pruners.NopPruner()
        )
        self.space: dict[str, Any] = {}
        self.trials: dict[int, optuna.trial.Trial] = {}
        self.builtin_assessor: Assessor | None = PrunerAssessor(self) if pruner is not None else None

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        space = validate_search_space(search_space)
        if self.space and space != self.space and self.study.trials:
            # A running experiment changed its space (``nni-ts update``): Optuna cannot change a parameter's
            # distribution inside a study, so sampling starts over in a new one. Trials asked from the old
            # study are still told there (``trial.study``).
            self.study = optuna.create_study(
                direction=self.study.direction, sampler=self.study.sampler, pruner=self.study.pruner
            )
        self.space = space

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        trial = self.study.ask()
        self.trials[parameter_id] = trial
        return suggest(self.space, trial)

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        trial = self.trials.pop(parameter_id, None)
        scalar = extract_scalar(value)
        if trial is None:
            self.import_data([{"parameter": parameters, "value": value}])
            return
        if scalar is None:
            trial.study.tell(trial, state=TrialState.FAIL)
        else:
            trial.study.tell(trial, scalar)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        trial = self.trials.pop(parameter_id, None)
        if trial is None:
            return  # already told its result
        frozen = trial.study._storage.get_trial(trial._trial_id)
        state = TrialState.PRUNED if frozen.intermediate_values else TrialState.FAIL
        trial.study.tell(trial, state=state)

    def import_data(self, data: list[dict[str, Any]]) -> None:
        for item in data:
            scalar = extract_scalar(item.get("value"))
            params = item.get("parameter") or {}
            if scalar is None or not isinstance(params, dict):
                continue
            values, dists = encode_params(self.space, params)
            self.study.add_trial(
                optuna.trial.create_trial(params=values, distributions=dists, value=scalar, state=TrialState.COMPLETE)
            )


class PrunerAssessor(Assessor):
    """The assessor of an Optuna tuner with a pruner (Hyperband, BOHB): prunes in the tuner's study."""

    def __init__(self, tuner: OptunaTuner) -> None:
        self.tuner = tuner
        self.by_job: dict[str, int] = {}

    def trial_submitted(self, trial_job_id: str, parameter_id: int) -> None:
        self.by_job[trial_job_id] = parameter_id

    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
        pid = self.by_job.get(trial_job_id)
        trial = self.tuner.trials.get(pid) if pid is not None else None
        if trial is None or not trial_history:
            return AssessResult.Good
        value = extract_scalar(trial_history[-1])
        if value is None:
            return AssessResult.Good
        trial.report(value, step=len(trial_history))
        return AssessResult.Bad if trial.should_prune() else AssessResult.Good

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        self.by_job.pop(trial_job_id, None)


class MedianStopAssessor(Assessor):
    """NNI's Medianstop through Optuna's median rule, in a study of its own.

    A trial is stopped at step t (t >= ``start_step``) when its best intermediate result so far is
    worse than the median of the other finished trials' running averages at step t. Works beside any
    tuner, built-in or custom.
    """

    def __init__(self, optimize_mode: str = "maximize", start_step: int = 0, n_startup_trials: int = 1) -> None:
        self.study = optuna.create_study(
            direction=_direction(optimize_mode),
            sampler=optuna.samplers.RandomSampler(),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=n_startup_trials, n_warmup_steps=max(0, start_step), interval_steps=1
            ),
        )
        self.trials: dict[str, optuna.trial.Trial] = {}
        self.reported: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def _trial(self, trial_job_id: str) -> optuna.trial.Trial:
        trial = self.trials.get(trial_job_id)
        if trial is None:
            trial = self.trials[trial_job_id] = self.study.ask()
            self.reported[trial_job_id] = 0
        return trial

    def trial_submitted(self, trial_job_id: str, parameter_id: int) -> None:
        self._trial(trial_job_id)

    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
        trial = self._trial(trial_job_id)
        for step in range(self.reported[trial_job_id], len(trial_history)):
            value = extract_scalar(trial_history[step])
            if value is not None:
                trial.report(value, step=step + 1)
                self.last[trial_job_id] = value
        self.reported[trial_job_id] = len(trial_history)
        return AssessResult.Bad if trial.should_prune() else AssessResult.Good

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        trial = self.trials.pop(trial_job_id, None)
        self.reported.pop(trial_job_id, None)
        last = self.last.pop(trial_job_id, None)
        if trial is None:
            return
        if success and last is not None:
            self.study.tell(trial, last)
        elif last is not None:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
