"""Loading experiment files: NNI v2 YAML/JSON directly, v1 converted; paths resolved; precise errors."""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

import pydantic
import yaml

from ..errors import ConfigError
from .base import TrainingServiceConfig
from .errors import format_loc
from .experiment import (
    _ROLE_PLATFORMS,
    AlgorithmConfig,
    ExperimentConfig,
    inherited_training_service,
    platform_config_class,
)
from .v1 import convert_v1, is_v1

__all__ = ["YamlLoader", "check_algorithms", "config_from_dict", "load_experiment_config", "read_structured_file"]


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-6`` and ``1E+3`` as floats (YAML 1.2), as NNI users expect."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _line_map(text: str) -> dict[str, int]:
    """Key path (``a.b[0].c``) -> 1-based line, from the YAML node tree. Empty if it cannot be built."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node: yaml.Node | None, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = str(key_node.value)
                sub = f"{path}.{key}" if path else key
                lines[sub] = key_node.start_mark.line + 1
                walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = f"{path}[{i}]"
                lines[sub] = item.start_mark.line + 1
                walk(item, sub)

    walk(root, "")
    return lines


def read_structured_file(path: Path, *, what: str) -> tuple[Any, str]:
    """Parse a YAML or JSON file; errors name the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"the {what} file {path} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"the {what} file {path} is a directory, not a file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc}.") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text), text
        except ValueError as exc:
            if what != "search space":
                raise ConfigError(f"{path}: not valid JSON: {exc}.") from None
            json_error = exc
        # NNI reads a search space file that is not strict JSON (a trailing comma) as YAML; so do we
        try:
            return yaml.load(text, Loader=YamlLoader), text  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            raise ConfigError(f"{path}: not valid JSON: {json_error}.") from None
    try:
        return yaml.load(text, Loader=YamlLoader), text  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML or JSON{where}: {problem}.") from None


def load_experiment_config(path: str | os.PathLike[str]) -> ExperimentConfig:
    """Load an NNI v1 or v2 experiment file (YAML or JSON). Relative paths resolve against its directory."""
    file = Path(path).expanduser()
    data, text = read_structured_file(file, what="experiment config")
    if data is None:
        raise ConfigError(f"{file}: the file is empty; expected an NNI experiment config.")
    return config_from_dict(data, source=str(file), base_dir=file.resolve().parent, _lines=_line_map(text))


def check_algorithms(config: ExperimentConfig, path: str | os.PathLike[str]) -> None:
    """Build the tuner, advisor and assessor sections of a loaded file as the experiment will, and
    report every problem at once (with their lines): what ``nni-ts create`` checks before it starts."""
    file = Path(path).expanduser()
    data, text = read_structured_file(file, what="experiment config")
    lines = _line_map(text)
    space = config.search_space
    problems = [
        p
        for key in ("tuner", "advisor", "assessor")
        if (algo := getattr(config, key)) is not None
        and (p := _algorithm_problem(key, algo, space, config.seed)) is not None
    ]
    if problems:
        raise ConfigError(_explain(problems, str(file), lines, is_v1(data), config.training_service.platform))


def config_from_dict(
    data: Any,
    *,
    source: str = "<dict>",
    base_dir: Path | None = None,
    _lines: dict[str, int] | None = None,
) -> ExperimentConfig:
    """Validate a config given as a dict (v1 or v2). Relative paths resolve against ``base_dir``
    (default: the current directory)."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected a mapping of config keys at the top level, got {type(data).__name__}.", source=source
        )
    lines = _lines or {}
    v1 = is_v1(data)
    if v1:
        data = convert_v1(data, source=source)
    base = base_dir or Path.cwd()
    data = _resolve_paths(dict(data), base)
    if data.get("searchSpace") is None and data.get("searchSpaceFile"):
        ss_path = Path(data["searchSpaceFile"])
        space, _ = read_structured_file(ss_path, what="search space")
        if not isinstance(space, dict):
            raise ConfigError(
                f"the search space file {ss_path} must hold a mapping of parameter names to "
                f"{{_type, _value}}, got {type(space).__name__}.",
                source=source,
                path="searchSpacePath" if v1 else "searchSpaceFile",
            )
        data["searchSpace"] = space
    errors: list[Any] = []
    ts = data.get("trainingService")
    platform = ts.get("platform") if isinstance(ts, dict) else None
    if isinstance(ts, dict) and isinstance(platform, str):
        # The platform section first, so that its problems and the rest's are reported together.
        try:
            model = platform_config_class(platform)
            model.model_validate(inherited_training_service(data, ts, model))
        except ConfigError as exc:
            # An unknown platform: report it with the rest (the rest is checked against a stand-in).
            errors.append(_problem(("trainingService", "platform"), exc.reason))
            data = dict(data, trainingService=TrainingServiceConfig.model_construct(platform=platform))
        except pydantic.ValidationError as exc:
            errors += [dict(e, loc=("trainingService", *e["loc"])) for e in exc.errors(include_url=False)]
            data = dict(data, trainingService=model.model_construct(platform=platform))
    try:
        config = ExperimentConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        errors += exc.errors(include_url=False)
    except ConfigError as exc:
        if exc.source is None:
            raise ConfigError(str(exc), source=source) from None
        raise
    if errors:
        errors += _more_problems(data, errors)
        raise ConfigError(_explain(errors, source, lines, v1, platform))
    return config


def _problem(loc: tuple[Any, ...], msg: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": "value_error"}


def _more_problems(data: dict[str, Any], found: list[Any]) -> list[dict[str, Any]]:
    """Problems pydantic does not reach once a field is invalid: the checks across keys, and the
    tuner, assessor and advisor sections (built as the experiment would build them). So that a file
    with several mistakes shows them all in one run."""
    seen = {format_loc(e["loc"]) for e in found}
    more: list[dict[str, Any]] = []
    if "searchSpace" not in seen and data.get("searchSpace") is None and not data.get("searchSpaceFile"):
        more.append(
            _problem(("searchSpace",), "the experiment needs a search space: set searchSpace or searchSpaceFile")
        )
    ts = data.get("trainingService")
    platform = ts.get("platform") if isinstance(ts, dict) else getattr(ts, "platform", None)
    ts_command = ts.get("trialCommand") if isinstance(ts, dict) else getattr(ts, "trial_command", None)
    if platform not in _ROLE_PLATFORMS and not (data.get("trialCommand") or ts_command):
        if "trialCommand" not in seen:
            more.append(_problem(("trialCommand",), "required key is missing: the shell command that runs one trial"))
    if data.get("tuner") is not None and data.get("advisor") is not None:
        more.append(_problem(("advisor",), "give a tuner or an advisor, not both"))
    space = data.get("searchSpace")
    for key in ("tuner", "advisor", "assessor"):
        if key in seen or not isinstance(data.get(key), dict):
            continue
        try:
            algo = AlgorithmConfig.model_validate(data[key])
        except pydantic.ValidationError:
            continue  # already reported by the experiment model
        problem = _algorithm_problem(key, algo, space if isinstance(space, dict) else None, data.get("seed"))
        if problem is not None:
            more.append(problem)
    return more


def _algorithm_problem(
    key: str, algo: AlgorithmConfig, space: dict[str, Any] | None, seed: Any
) -> dict[str, Any] | None:
    """Build one built-in algorithm section as the experiment would; its ConfigError as a problem, else None.

    A user's class (className, or a name registered with ``nni-ts algo``) is not built here: building it
    may be costly or have effects; the experiment builds it once, before it starts.
    """
    from ..algorithms import resolve
    from ..tuners import create_assessor, create_tuner

    kind = "assessor" if key == "assessor" else "tuner"
    try:
        if algo.class_name is not None or algo.name is None or resolve(algo.name, kind) is not None:
            return None
        if kind == "assessor":
            if algo.name.lower() in ("hyperband", "bohb"):
                return None  # pairs with its tuner; checked when the experiment runs
            create_assessor(algo.name, class_args=dict(algo.class_args), path=key)
        elif space is not None:
            create_tuner(
                algo.name,
                class_args=dict(algo.class_args),
                search_space=space,
                seed=seed if isinstance(seed, int) else None,
                path=key,
            )
    except ConfigError as exc:
        loc = tuple((exc.path or key).split("."))
        return _problem(loc, exc.reason.rstrip("."))
    return None


def _known_keys(model: type[pydantic.BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def _explain(errors: list[Any], source: str, lines: dict[str, int], v1: bool, platform: Any) -> str:
    problems = []
    for err in errors:
        loc = [p for p in err["loc"] if not (isinstance(p, str) and (p.startswith("function-") or "[" in p))]
        path = format_loc(loc)
        if err["type"] == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            msg = f"unknown key {key!r}"
            close = _suggest(key, loc, platform)
            if close:
                msg += f"; did you mean {close!r}?"
            else:
                msg += " (it is not a key of this section)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ").rstrip(".")
            if msg.startswith(f"at {path}"):  # a search-space error carries its own, deeper path
                path, _, msg = msg[3:].partition(": ")
            if "input" in err and not isinstance(err["input"], dict | list):
                shown = repr(err["input"])
                if shown not in msg:  # a message that quotes the value already does not say it twice
                    msg += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
        line = lines.get(path) or lines.get(_v1_path(path, platform) if v1 else path)
        where = f"{path}" + (f" (line {line})" if line else "")
        if v1 and path != "(top level)" and _v1_path(path, platform) != path:
            where += f" (v1 key {_v1_path(path, platform)})"
        problems.append(f"{where}: {msg}")
    head = f"{source}: invalid experiment config"
    if len(problems) == 1:
        return f"{head}: at {problems[0]}."
    return head + ":\n  " + "\n  ".join(problems)


def _suggest(key: str, loc: list[Any], platform: Any) -> str | None:
    """A close known key for a misspelt one, from the section's model."""
    from .experiment import AlgorithmConfig, platform_config_class

    model: type[pydantic.BaseModel] | None = None
    if len(loc) == 1:
        model = ExperimentConfig
    elif len(loc) == 2 and loc[0] == "trainingService" and isinstance(platform, str):
        try:
            model = platform_config_class(platform)
        except ConfigError:
            model = None
    elif len(loc) == 2 and loc[0] in ("tuner", "assessor", "advisor"):
        model = AlgorithmConfig
    if model is None:
        return None
    close = difflib.get_close_matches(key, sorted(_known_keys(model)), n=1, cutoff=0.75)
    return close[0] if close else None


_V1_PREFIXES = [
    ("trainingService.machineList", "machineList"),
    ("trainingService.worker", "trial.worker"),
    ("trainingService.ps", "trial.ps"),
    ("trainingService.master", "trial.master"),
    ("trainingService.taskRoles", "trial.taskRoles"),
    ("trainingService.storage", "kubeflowConfig/frameworkcontrollerConfig"),
    ("trialCommand", "trial.command"),
    ("trialCodeDirectory", "trial.codeDir"),
    ("trialGpuNumber", "trial.gpuNum"),
    ("maxExperimentDuration", "maxExecDuration"),
    ("maxTrialNumber", "maxTrialNum"),
    ("searchSpaceFile", "searchSpacePath"),
    ("searchSpace", "searchSpacePath"),
    ("trainingService", "localConfig"),
]
_V1_LEAVES = {
    "memorySize": "memoryMB",
    "gpuNumber": "gpuNum",
    "cpuNumber": "cpuNum",
    "dockerImage": "image",
    "taskNumber": "taskNum",
    "host": "ip",
    "user": "username",
    "sshKeyFile": "sshKeyPath",
    "maxTrialNumberPerGpu": "maxTrialNumPerGpu",
    "password": "passwd",
}


#: The v1 section that holds a platform's own keys (``trainingService.X`` in v2).
_V1_SECTIONS = {
    "kubeflow": "kubeflowConfig",
    "frameworkcontroller": "frameworkcontrollerConfig",
    "remote": "remoteConfig",
}


def _v1_path(path: str, platform: Any = None) -> str:
    section = _V1_SECTIONS.get(platform) if isinstance(platform, str) else None
    if section is not None and (path == "trainingService" or path.startswith("trainingService.")):
        top = path.split(".")[1] if "." in path else ""
        if top not in ("machineList", "worker", "ps", "master", "taskRoles"):
            return section + path[len("trainingService") :]
    for new, old in _V1_PREFIXES:
        if path == new or path.startswith((new + ".", new + "[")):
            path = old + path[len(new) :]
            break
    head, _, leaf = path.rpartition(".")
    if leaf in _V1_LEAVES:
        path = f"{head}.{_V1_LEAVES[leaf]}" if head else _V1_LEAVES[leaf]
    return path


def _abs(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or not value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make every path in the config absolute (relative to the config file's directory)."""
    for key in ("searchSpaceFile", "experimentWorkingDirectory"):
        if key in data:
            data[key] = _abs(data[key], base)
    data["trialCodeDirectory"] = _abs(data.get("trialCodeDirectory", "."), base)
    for key in ("tuner", "assessor", "advisor"):
        algo = data.get(key)
        if isinstance(algo, dict) and algo.get("codeDirectory"):
            data[key] = dict(algo, codeDirectory=_abs(algo["codeDirectory"], base))
    ts = data.get("trainingService")
    if isinstance(ts, dict):
        ts = dict(ts)
        if "trialCodeDirectory" in ts:
            ts["trialCodeDirectory"] = _abs(ts["trialCodeDirectory"], base)
        machines = ts.get("machineList")
        if isinstance(machines, list):
            ts["machineList"] = [
                dict(m, sshKeyFile=_abs(m["sshKeyFile"], base)) if isinstance(m, dict) and m.get("sshKeyFile") else m
                for m in machines
            ]
        for role in ("worker", "ps", "master"):
            r = ts.get(role)
            if isinstance(r, dict) and r.get("privateRegistryAuthPath"):
                ts[role] = dict(r, privateRegistryAuthPath=_abs(r["privateRegistryAuthPath"], base))
        storage = ts.get("storage")
        if isinstance(storage, dict) and storage.get("localMountPath"):
            ts["storage"] = dict(storage, localMountPath=_abs(storage["localMountPath"], base))
        data["trainingService"] = ts
    return data
