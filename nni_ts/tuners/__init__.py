"""Tuners and assessors: NNI's built-in names mapped onto Optuna, and NNI-style custom classes.

``create_tuner`` and ``create_assessor`` build them from a config's ``tuner`` / ``assessor`` section.
See ``docs/tuners.md`` for the mapping and the supported ``classArgs``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import ConfigError
from ..search_space import grid, validate_search_space
from .base import Assessor, AssessResult, NoMoreTrialError, Tuner, extract_scalar

__all__ = [
    "SUPPORTED_ASSESSORS",
    "SUPPORTED_TUNERS",
    "AssessResult",
    "Assessor",
    "BatchTuner",
    "GridSearchTuner",
    "NoMoreTrialError",
    "Tuner",
    "create_assessor",
    "create_tuner",
    "extract_scalar",
]

#: Built-in tuner names (case-insensitive) -> what they are built on.
SUPPORTED_TUNERS = {
    "TPE": "optuna TPESampler (constant liar for parallel trials)",
    "Random": "optuna RandomSampler",
    "GridSearch": "nni-ts grid over choice, randint and q-types",
    "Evolution": "optuna NSGAIISampler (a genetic algorithm; population_size)",
    "GP": "optuna GPSampler (needs PyTorch: pip install 'nni-ts[gp]')",
    "BatchTuner": "nni-ts: each value of combine_params once",
    "Hyperband": "optuna RandomSampler + HyperbandPruner (advisor; early stopping built in)",
    "BOHB": "optuna TPESampler + HyperbandPruner (advisor; early stopping built in)",
}
SUPPORTED_ASSESSORS = {"Medianstop": "optuna MedianPruner rule, beside any tuner"}
_NOT_SUPPORTED = {
    "anneal": "Anneal has no Optuna equivalent; TPE is the closest model-based choice",
    "smac": "SMAC needs SMAC3, which nni-ts does not wrap",
    "metistuner": "Metis has no Optuna equivalent",
    "pbttuner": "PBT changes running trials' weights, which the trial protocol cannot express",
    "dngo": "DNGO has no Optuna equivalent",
    "networkmorphism": "network morphism is NAS, not hyperparameter search",
    "ppotuner": "PPO is NAS, not hyperparameter search",
    "curvefitting": "Curvefitting is not implemented (its learning-curve model is unsound for short, noisy "
    "curves); use Medianstop",
}


class GridSearchTuner(Tuner):
    """Every combination of a discrete space, once, then NoMoreTrialError."""

    def __init__(self, optimize_mode: str = "maximize") -> None:
        self.optimize_mode = optimize_mode
        self._iter: Iterator[dict[str, Any]] = iter(())

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        self._iter = grid(validate_search_space(search_space))

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        try:
            return next(self._iter)
        except StopIteration:
            raise NoMoreTrialError("every grid point has been tried") from None

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        pass

    def import_data(self, data: list[dict[str, Any]]) -> None:
        done = [d.get("parameter") for d in data]
        remaining = [p for p in self._iter if p not in done]
        self._iter = iter(remaining)

    def import_submitted(self, parameters: list[dict[str, Any]]) -> None:
        self.import_data([{"parameter": p} for p in parameters])


class BatchTuner(Tuner):
    """NNI's BatchTuner: the search space is ``{"combine_params": {"_type": "choice", "_value": [...]}}``."""

    def __init__(self, optimize_mode: str = "maximize") -> None:
        self.optimize_mode = optimize_mode
        self._values: list[Any] = []

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        spec = search_space.get("combine_params") if isinstance(search_space, dict) else None
        if set(search_space) != {"combine_params"} or not isinstance(spec, dict) or spec.get("_type") != "choice":
            raise ConfigError(
                "BatchTuner needs a search space of exactly one key, combine_params, of _type choice, "
                "whose _value lists the parameter sets to run.",
                path="searchSpace",
            )
        values = spec.get("_value")
        if not isinstance(values, list) or not values:
            raise ConfigError(
                "combine_params needs a non-empty list of parameter sets.", path="searchSpace.combine_params._value"
            )
        self._values = list(values)

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        if not self._values:
            raise NoMoreTrialError("every parameter set of the batch has been tried")
        value = self._values.pop(0)
        return value if isinstance(value, dict) else {"value": value}

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        pass

    def import_data(self, data: list[dict[str, Any]]) -> None:
        done = [d.get("parameter") for d in data]
        self._values = [v for v in self._values if v not in done]

    def import_submitted(self, parameters: list[dict[str, Any]]) -> None:
        self.import_data([{"parameter": p} for p in parameters])


# ---------------------------------------------------------------------- building


def _mode(args: dict[str, Any], path: str) -> str:
    mode = str(args.pop("optimize_mode", "maximize")).lower()
    if mode not in ("maximize", "minimize"):
        raise ConfigError(f"optimize_mode must be maximize or minimize, got {mode!r}.", path=f"{path}.optimize_mode")
    return mode


def _construct(factory: Callable[..., Any], kwargs: dict[str, Any], path: str, what: str) -> Any:
    """Call ``factory(**kwargs)``, turning unknown or bad keyword arguments into a ConfigError."""
    try:
        params: Mapping[str, inspect.Parameter] = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if params and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            known = ", ".join(sorted(k for k in params if k not in ("self",))) or "none"
            raise ConfigError(
                f"{what} does not take {', '.join(unknown)}; its options are: {known}.",
                path=f"{path}.{unknown[0]}",
            )
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} rejected its classArgs: {exc}.", path=path) from None


def _optuna_tuner(key: str, args: dict[str, Any], seed: int | None, path: str) -> Tuner:
    import optuna

    from .optuna_tuners import OptunaTuner

    mode = _mode(args, path)
    seed = args.pop("seed", seed)
    pruner = None
    if key == "tpe":
        tpe_args = dict(args.pop("tpe_args", None) or {})
        renames = {"n_startup_jobs": "n_startup_trials", "constant_liar_type": "constant_liar"}
        for old, new in renames.items():
            if old in tpe_args:
                value = tpe_args.pop(old)
                tpe_args[new] = bool(value) if new == "constant_liar" else value
        options = {"constant_liar": True, "seed": seed, **tpe_args, **args}
        sampler = _construct(optuna.samplers.TPESampler, options, path, "TPE")
    elif key == "random":
        sampler = _construct(optuna.samplers.RandomSampler, {"seed": seed, **args}, path, "Random")
    elif key == "evolution":
        options = {"population_size": args.pop("population_size", 32), "seed": seed, **args}
        sampler = _construct(optuna.samplers.NSGAIISampler, options, path, "Evolution")
    elif key == "gp":
        try:
            importlib.import_module("torch")
        except ImportError:
            raise ConfigError(
                "the GP tuner runs on Optuna's GPSampler, which needs PyTorch: pip install 'nni-ts[gp]' "
                "(or use TPE, which needs nothing more).",
                path=path,
            ) from None
        sampler = _construct(optuna.samplers.GPSampler, {"seed": seed, **args}, path, "GP")
    else:  # hyperband, bohb
        r = args.pop("R", args.pop("max_budget", 60))
        eta = args.pop("eta", 3)
        low = args.pop("min_budget", 1)
        args.pop("exec_mode", None)
        pruner = _construct(
            optuna.pruners.HyperbandPruner,
            {"min_resource": low, "max_resource": r, "reduction_factor": eta},
            path,
            "Hyperband",
        )
        if key == "bohb":
            options = {
                "seed": seed,
                **{
                    k: v
                    for k, v in args.items()
                    if k not in ("top_n_percent", "num_samples", "random_fraction", "bandwidth_factor", "min_bandwidth")
                },
            }
            sampler = _construct(optuna.samplers.TPESampler, options, path, "BOHB")
        else:
            sampler = _construct(optuna.samplers.RandomSampler, {"seed": seed, **args}, path, "Hyperband")
    return OptunaTuner(sampler, optimize_mode=mode, pruner=pruner, name=key)


def _load_class(class_name: str, code_directory: str | None, path: str) -> type:
    module_name, _, attr = class_name.rpartition(".")
    if not module_name:
        raise ConfigError(
            f"className {class_name!r} must be 'module.ClassName' (for example my_tuner.MyTuner).",
            path=f"{path}.className",
        )
    if code_directory and code_directory not in sys.path:
        sys.path.insert(0, code_directory)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = f" (looked in {code_directory} too)" if code_directory else ""
        raise ConfigError(f"cannot import {module_name}{where}: {exc}.", path=f"{path}.className") from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ConfigError(f"{module_name} has no class {attr}.", path=f"{path}.className")
    return cls


class _TunerAdapter(Tuner):
    """Wraps an NNI-style tuner object (duck-typed): optional methods default to no-ops."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        self.inner.update_search_space(search_space)

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        try:
            params = self.inner.generate_parameters(parameter_id, **kwargs)
        except Exception as exc:
            if type(exc).__name__ == "NoMoreTrialError":
                raise NoMoreTrialError(str(exc)) from exc
            raise
        return _plain(params)  # type: ignore[no-any-return]

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        self.inner.receive_trial_result(parameter_id, parameters, value, **kwargs)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        fn = getattr(self.inner, "trial_end", None)
        if fn is not None:
            fn(parameter_id, success, **kwargs)

    def import_data(self, data: list[dict[str, Any]]) -> None:
        fn = getattr(self.inner, "import_data", None)
        if fn is not None:
            fn(data)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (as NNI's own tuners return) become plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, str | bytes):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value.tolist() if hasattr(value, "tolist") else value
    return value


class _AssessorAdapter(Assessor):
    """Wraps an NNI-style assessor object; its AssessResult (NNI's enum or a bool) is mapped to ours."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
        result = self.inner.assess_trial(trial_job_id, trial_history)
        if isinstance(result, AssessResult):
            return result
        if getattr(result, "name", None) == "Bad" or result is False:
            return AssessResult.Bad
        return AssessResult.Good

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        fn = getattr(self.inner, "trial_end", None)
        if fn is not None:
            fn(trial_job_id, success)

    def trial_submitted(self, trial_job_id: str, parameter_id: int) -> None:
        fn = getattr(self.inner, "trial_submitted", None)
        if fn is not None:
            fn(trial_job_id, parameter_id)


def _unsupported(name: str, kind: str, supported: dict[str, str], path: str) -> ConfigError:
    reason = _NOT_SUPPORTED.get(name.lower())
    lead = f"the {kind} {name!r} is not supported" + (f" ({reason})" if reason else "")
    names = ", ".join(supported)
    return ConfigError(
        f"{lead}. Built-in {kind}s: {names}. Any NNI-style {kind} class works too, with "
        f"className: module.Class (for example NNI's own, when nni is installed).",
        path=f"{path}.name",
    )


def create_tuner(
    name: str | None = None,
    *,
    class_name: str | None = None,
    code_directory: str | None = None,
    class_args: dict[str, Any] | None = None,
    search_space: dict[str, Any],
    seed: int | None = None,
    path: str = "tuner",
) -> Tuner:
    """A tuner from a config section, with the search space already given to it."""
    args = dict(class_args or {})
    cpath = f"{path}.classArgs"
    if class_name is not None:
        cls = _load_class(class_name, code_directory, path)
        obj = _construct(cls, args, cpath, class_name)
        missing = [
            m
            for m in ("generate_parameters", "receive_trial_result", "update_search_space")
            if not callable(getattr(obj, m, None))
        ]
        if missing:
            raise ConfigError(
                f"{class_name} is not an NNI tuner: it lacks {', '.join(missing)}.", path=f"{path}.className"
            )
        tuner: Tuner = obj if isinstance(obj, Tuner) else _TunerAdapter(obj)
    else:
        if name is None:
            raise ConfigError("give the tuner a name (TPE, Random, ...) or a className.", path=path)
        key = name.lower().replace("_", "").replace("-", "")
        key = {
            "gridsearch": "gridsearch",
            "gptuner": "gp",
            "evolutiontuner": "evolution",
            "tpetuner": "tpe",
            "randomtuner": "random",
        }.get(key, key)
        if key in ("tpe", "random", "evolution", "gp", "hyperband", "bohb"):
            tuner = _optuna_tuner(key, args, seed, cpath)
        elif key == "gridsearch":
            tuner = GridSearchTuner(_mode(args, cpath))
            if args:
                raise ConfigError(
                    f"GridSearch takes only optimize_mode, not {', '.join(sorted(args))}.",
                    path=f"{cpath}.{sorted(args)[0]}",
                )
        elif key == "batchtuner":
            tuner = BatchTuner(_mode(args, cpath))
            if args:
                raise ConfigError(
                    f"BatchTuner takes no classArgs besides optimize_mode, not {', '.join(args)}.",
                    path=f"{cpath}.{sorted(args)[0]}",
                )
        else:
            raise _unsupported(name, "tuner", SUPPORTED_TUNERS, path)
    tuner.update_search_space(search_space)
    return tuner


def create_assessor(
    name: str | None = None,
    *,
    class_name: str | None = None,
    code_directory: str | None = None,
    class_args: dict[str, Any] | None = None,
    tuner: Tuner | None = None,
    path: str = "assessor",
) -> Assessor:
    """An assessor from a config section. Hyperband/BOHB name the tuner's own pruning."""
    args = dict(class_args or {})
    cpath = f"{path}.classArgs"
    if class_name is not None:
        cls = _load_class(class_name, code_directory, path)
        obj = _construct(cls, args, cpath, class_name)
        if not callable(getattr(obj, "assess_trial", None)):
            raise ConfigError(f"{class_name} is not an NNI assessor: it lacks assess_trial.", path=f"{path}.className")
        return obj if isinstance(obj, Assessor) else _AssessorAdapter(obj)
    if name is None:
        raise ConfigError("give the assessor a name (Medianstop) or a className.", path=path)
    key = name.lower()
    if key == "medianstop":
        from .optuna_tuners import MedianStopAssessor

        mode = _mode(args, cpath)

        def medianstop(start_step: int = 0) -> MedianStopAssessor:
            return MedianStopAssessor(mode, start_step=int(start_step))

        assessor: Assessor = _construct(medianstop, args, cpath, "Medianstop")
        return assessor
    if key in ("hyperband", "bohb"):
        builtin = getattr(tuner, "builtin_assessor", None)
        if builtin is None:
            raise ConfigError(f"the {name} assessor only works with the {name} tuner (advisor).", path=f"{path}.name")
        return builtin  # type: ignore[no-any-return]
    raise _unsupported(name, "assessor", SUPPORTED_ASSESSORS, path)
