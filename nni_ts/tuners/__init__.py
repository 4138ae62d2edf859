"""Tuners and assessors: every built-in name of NNI 3.0, and NNI-style custom classes.

``create_tuner`` and ``create_assessor`` build them from a config's ``tuner`` / ``assessor`` section.
See ``docs/tuners.md`` for the mapping and the supported ``classArgs``.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NniTsError
from .base import Assessor, AssessResult, NoMoreTrialError, Tuner, extract_scalar
from .grid import GridSearchTuner

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
    "tuner_key",
]

#: Built-in tuner names of NNI 3.0 (case-insensitive; NNI's aliases too) -> what they are built on.
SUPPORTED_TUNERS = {
    "TPE": "optuna TPESampler (constant liar for parallel trials)",
    "TPE_legacy": "hyperopt's tpe.suggest (NNI's HyperoptTuner with algorithm_name tpe)",
    "Random": "optuna RandomSampler",
    "Anneal": "hyperopt's anneal.suggest (NNI's HyperoptTuner with algorithm_name anneal)",
    "Evolution": "optuna NSGAIISampler (a genetic algorithm; population_size)",
    "RegularizedEvolutionTuner": "nni-ts aging evolution (Real et al. 2019) on hyperparameter spaces",
    "GridSearch": "nni-ts, as NNI 3.0: discrete values enumerated, continuous ranges refined epoch by epoch",
    "Batch": "nni-ts: each value of combine_params once (alias BatchTuner)",
    "GP": "scikit-learn Gaussian process + EI/UCB/POI (alias GPTuner; no PyTorch needed)",
    "SMAC": "nni-ts SMAC: scikit-learn random forest + EI + local search (Hutter et al. 2011)",
    "Metis": "nni-ts Metis: scikit-learn GP + mixture-model candidates + outlier re-runs (alias MetisTuner)",
    "DNGO": "nni-ts DNGO: scikit-learn MLP basis + Bayesian linear regression (alias DNGOTuner)",
    "PBT": "nni-ts Population Based Training with NNI's checkpoint directories (alias PBTTuner)",
    "Hyperband": "optuna RandomSampler + HyperbandPruner (advisor; early stopping built in)",
    "BOHB": "optuna TPESampler + HyperbandPruner (advisor; early stopping built in)",
}
SUPPORTED_ASSESSORS = {
    "Medianstop": "optuna MedianPruner rule, beside any tuner",
    "Curvefitting": "nni-ts learning-curve extrapolation (Domhan et al. 2015), scipy least squares",
}
#: A name lower-cased without ``_`` and ``-`` -> the built-in it names (NNI's names and aliases).
_TUNER_KEYS = {
    "tpe": "tpe",
    "tpetuner": "tpe",
    "tpelegacy": "tpe_legacy",
    "random": "random",
    "randomtuner": "random",
    "anneal": "anneal",
    "evolution": "evolution",
    "evolutiontuner": "evolution",
    "regularizedevolutiontuner": "regularized_evolution",
    "regularizedevolution": "regularized_evolution",
    "gridsearch": "gridsearch",
    "gridsearchtuner": "gridsearch",
    "batch": "batch",
    "batchtuner": "batch",
    "gp": "gp",
    "gptuner": "gp",
    "smac": "smac",
    "smactuner": "smac",
    "metis": "metis",
    "metistuner": "metis",
    "dngo": "dngo",
    "dngotuner": "dngo",
    "pbt": "pbt",
    "pbttuner": "pbt",
    "hyperband": "hyperband",
    "bohb": "bohb",
}
_PPO = (
    "PPO is a reinforcement-learning tuner for neural architecture search: it samples NNI's NAS mutables "
    "(layer_choice, input_choice), which a hyperparameter search space does not have"
)
_MORPH = (
    "NetworkMorphism is neural architecture search: it generates network graphs by morphing the best "
    "network so far, and its trials receive a network, not hyperparameters"
)
#: NAS-only names of NNI 3.0 -> why nni-ts refuses them.
NAS_ONLY = {"ppo": _PPO, "ppotuner": _PPO, "networkmorphism": _MORPH, "networkmorphismtuner": _MORPH}


def tuner_key(name: str) -> str | None:
    """The built-in a tuner name means (NNI's names and aliases, any case), or None."""
    return _TUNER_KEYS.get(name.lower().replace("_", "").replace("-", ""))


class BatchTuner(Tuner):
    """NNI's BatchTuner: the search space is ``{"combine_params": {"_type": "choice", "_value": [...]}}``."""

    def __init__(self, optimize_mode: str = "maximize") -> None:
        self.optimize_mode = optimize_mode
        self._values: list[Any] = []

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        spec = search_space.get("combine_params") if isinstance(search_space, dict) else None
        if set(search_space) != {"combine_params"} or not isinstance(spec, dict) or spec.get("_type") != "choice":
            raise ConfigError(
                "the Batch tuner needs a search space of exactly one key, combine_params, of _type choice, "
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
    """Wraps an NNI-style tuner object (duck-typed): optional methods default to no-ops.

    A tuner with NNI's ``generate_multiple_parameters`` is asked through it with an ``st_callback``,
    as NNI's dispatcher does: parameters it sends later through that callback (NNI's PBTTuner does,
    when a population epoch ends) are handed out on the next requests, and the results of those
    trials reach the tuner under the parameter id it chose.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._sent: collections.deque[tuple[int, Any]] = collections.deque()
        self._alias: dict[int, int] = {}

    def _send(self, parameter_id: int, parameters: Any, *args: Any, **kwargs: Any) -> None:
        self._sent.append((parameter_id, parameters))

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        self.inner.update_search_space(search_space)

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        if self._sent:
            inner_id, params = self._sent.popleft()
            self._alias[parameter_id] = inner_id
            return _plain(params)  # type: ignore[no-any-return]
        multi = getattr(self.inner, "generate_multiple_parameters", None)
        try:
            if multi is not None:
                got = multi([parameter_id], st_callback=self._send)
                if not got:
                    raise NoMoreTrialError(f"{type(self.inner).__name__} has no parameters now")
                params = got[0]
            else:
                params = self.inner.generate_parameters(parameter_id, **kwargs)
        except Exception as exc:
            if type(exc).__name__ == "NoMoreTrialError" and not isinstance(exc, NoMoreTrialError):
                raise NoMoreTrialError(str(exc)) from exc
            raise
        return _plain(params)  # type: ignore[no-any-return]

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        self.inner.receive_trial_result(self._alias.get(parameter_id, parameter_id), parameters, value, **kwargs)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        inner_id = self._alias.pop(parameter_id, parameter_id)
        fn = getattr(self.inner, "trial_end", None)
        if fn is not None:
            fn(inner_id, success, **kwargs)

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
    reason = NAS_ONLY.get(name.lower().replace("_", "").replace("-", "")) if kind == "tuner" else None
    if reason:
        return ConfigError(
            f"the {kind} {name!r} is not supported: {reason}. nni-ts runs hyperparameter searches only; "
            f"for a hyperparameter search use one of: {', '.join(supported)}.",
            path=f"{path}.name",
        )
    names = ", ".join(supported)
    return ConfigError(
        f"the {kind} {name!r} is not one of NNI's built-in {kind}s. Built-in {kind}s: {names}. Any NNI-style "
        f"{kind} class works too, with className: module.Class (for example NNI's own, when nni is installed).",
        path=f"{path}.name",
    )


def _builtin_tuner(
    key: str, name: str, args: dict[str, Any], seed: int | None, path: str, experiment_dir: str | None
) -> Tuner:
    cpath = f"{path}.classArgs"
    if key in ("tpe", "random", "evolution", "hyperband", "bohb"):
        return _optuna_tuner(key, args, seed, cpath)
    if key == "gridsearch":
        mode = _mode(args, cpath)
        if args:
            raise ConfigError(
                f"GridSearch takes only optimize_mode, not {', '.join(sorted(args))}.",
                path=f"{cpath}.{sorted(args)[0]}",
            )
        return GridSearchTuner(mode)
    if key == "batch":
        mode = _mode(args, cpath)
        if args:
            raise ConfigError(
                f"the Batch tuner takes no classArgs besides optimize_mode, not {', '.join(sorted(args))}.",
                path=f"{cpath}.{sorted(args)[0]}",
            )
        return BatchTuner(mode)
    factory: Callable[..., Any]
    if key in ("anneal", "tpe_legacy"):
        from .hyperopt_tuners import HyperoptTuner

        algorithm = "anneal" if key == "anneal" else "tpe"
        given = args.pop("algorithm_name", algorithm)
        if given != algorithm:
            raise ConfigError(
                f"{name} runs hyperopt's {algorithm}; algorithm_name cannot be {given!r}.",
                path=f"{cpath}.algorithm_name",
            )
        mode = _mode(args, cpath)
        args.setdefault("seed", seed)
        return _construct(  # type: ignore[no-any-return]
            lambda **kw: HyperoptTuner(algorithm, mode, **kw), args, cpath, name
        )
    if key in ("gp", "smac", "metis", "dngo"):
        from . import model_based

        factory = {
            "gp": model_based.GPTuner,
            "smac": model_based.SMACTuner,
            "metis": model_based.MetisTuner,
            "dngo": model_based.DNGOTuner,
        }[key]
    elif key == "pbt":
        from .population import PBTTuner

        factory = PBTTuner
        if not args.get("all_checkpoint_dir"):
            if experiment_dir is not None:
                args["all_checkpoint_dir"] = str(Path(experiment_dir) / "checkpoint")
            elif not os.environ.get("NNI_CHECKPOINT_DIRECTORY"):
                # built before its experiment (the service checks a config this way): a directory of its own
                import uuid

                from ..paths import home

                args["all_checkpoint_dir"] = str(home() / "checkpoints" / uuid.uuid4().hex[:12])
    else:  # regularized_evolution
        from .population import RegularizedEvolutionTuner

        factory = RegularizedEvolutionTuner
    mode = _mode(args, cpath)
    args.setdefault("seed", seed)
    return _construct(factory, {"optimize_mode": mode, **args}, cpath, name)  # type: ignore[no-any-return]


def create_tuner(
    name: str | None = None,
    *,
    class_name: str | None = None,
    code_directory: str | None = None,
    class_args: dict[str, Any] | None = None,
    search_space: dict[str, Any],
    seed: int | None = None,
    path: str = "tuner",
    experiment_dir: str | os.PathLike[str] | None = None,
) -> Tuner:
    """A tuner from a config section, with the search space already given to it.

    ``experiment_dir`` is where PBT keeps its checkpoints (``<experiment_dir>/checkpoint``, NNI's
    ``NNI_CHECKPOINT_DIRECTORY``) unless ``all_checkpoint_dir`` is given.
    """
    args = dict(class_args or {})
    cpath = f"{path}.classArgs"
    exp_dir = str(experiment_dir) if experiment_dir is not None else None
    if class_name is not None:
        label = f"className {class_name}"
        cls = _load_class(class_name, code_directory, path)
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        if "all_checkpoint_dir" in params and not args.get("all_checkpoint_dir") and exp_dir is not None:
            # NNI's PBTTuner reads NNI_CHECKPOINT_DIRECTORY, which NNI's manager sets; we pass it instead
            args["all_checkpoint_dir"] = str(Path(exp_dir) / "checkpoint")
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
        where = f"{path}.className"
    else:
        if name is None:
            raise ConfigError("give the tuner a name (TPE, Random, ...) or a className.", path=path)
        key = tuner_key(name)
        if key is None:
            raise _unsupported(name, "tuner", SUPPORTED_TUNERS, path)
        label = f"the {name} tuner"
        tuner = _builtin_tuner(key, name, args, seed, path, exp_dir)
        where = f"{path}.name"
    try:
        tuner.update_search_space(search_space)
    except NniTsError:
        raise
    except Exception as exc:
        raise ConfigError(f"{label} cannot take this search space: {type(exc).__name__}: {exc}.", path=where) from None
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
        raise ConfigError("give the assessor a name (Medianstop, Curvefitting) or a className.", path=path)
    key = name.lower()
    if key in ("medianstop", "medianstopassessor"):
        from .optuna_tuners import MedianStopAssessor

        mode = _mode(args, cpath)

        def medianstop(start_step: int = 0) -> MedianStopAssessor:
            return MedianStopAssessor(mode, start_step=int(start_step))

        assessor: Assessor = _construct(medianstop, args, cpath, "Medianstop")
        return assessor
    if key in ("curvefitting", "curvefittingassessor"):
        from .curvefitting import CurvefittingAssessor

        return _construct(CurvefittingAssessor, args, cpath, "Curvefitting")  # type: ignore[no-any-return]
    if key in ("hyperband", "bohb"):
        builtin = getattr(tuner, "builtin_assessor", None)
        if builtin is None:
            raise ConfigError(f"the {name} assessor only works with the {name} tuner (advisor).", path=f"{path}.name")
        return builtin  # type: ignore[no-any-return]
    raise _unsupported(name, "assessor", SUPPORTED_ASSESSORS, path)
