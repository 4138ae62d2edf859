"""The experiment configuration: one pydantic model, NNI v2 names (v1 files are converted on load)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from ..errors import ConfigError
from .base import ConfigModel, TrainingServiceConfig

__all__ = ["AlgorithmConfig", "ExperimentConfig", "parse_duration", "platform_config_class"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | int | float, *, path: str = "duration") -> float:
    """``"1h"``, ``"30m"``, ``"1.5d"``, ``"90s"``, ``90`` (seconds) -> seconds."""
    if isinstance(value, bool):
        raise ConfigError("expected a duration such as 90, '30m', '1h' or '2d'.", path=path)
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(
                f"expected a duration such as 90 (seconds), '30m', '1h' or '2d', got {value!r}.", path=path
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds <= 0:
        raise ConfigError(f"a duration must be positive, got {value!r}.", path=path)
    return seconds


def _duration_validator(value: Any) -> Any:
    if value is None:
        return None
    try:
        parse_duration(value)
    except ConfigError as exc:
        raise ValueError(str(exc).removeprefix("at duration: ")) from None
    return value


class AlgorithmConfig(ConfigModel):
    """A tuner, assessor or advisor: a built-in ``name``, or a ``className`` (module.Class)."""

    name: str | None = Field(None, description="A built-in algorithm name, e.g. TPE, Random, Medianstop.")
    class_name: str | None = Field(
        None, description="A custom algorithm: 'package.module.ClassName' (NNI's customized tuner)."
    )
    code_directory: str | None = Field(
        None, description="A directory added to sys.path to import className from (relative to the config file)."
    )
    class_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the algorithm, passed through (optimize_mode...)."
    )

    @model_validator(mode="after")
    def _one_of(self) -> AlgorithmConfig:
        if (self.name is None) == (self.class_name is None):
            raise ValueError("give exactly one of name (a built-in algorithm) or className (your own class)")
        return self


def platform_config_class(platform: str) -> type[TrainingServiceConfig]:
    """The config model of a platform: the built-ins here, any other from its registered class."""
    from .batchjob import KubernetesJobConfig
    from .frameworkcontroller import FrameworkControllerConfig
    from .kubeflow import KubeflowConfig
    from .local import LocalConfig
    from .remote import RemoteConfig
    from .trainjob import TrainJobConfig

    builtins: dict[str, type[TrainingServiceConfig]] = {
        "local": LocalConfig,
        "remote": RemoteConfig,
        "kubeflow": KubeflowConfig,
        "frameworkcontroller": FrameworkControllerConfig,
        "kubernetes": KubernetesJobConfig,
        "trainjob": TrainJobConfig,
    }
    if platform in builtins:
        return builtins[platform]
    from ..registry import get_platform_class

    return get_platform_class(platform).config_class


_INHERITED = ("trial_command", "trial_code_directory", "trial_gpu_number", "nni_manager_ip", "debug")
#: Experiment-level keys copied into the platform section only when its model has them (a platform that
#: enforces them itself, e.g. maxTrialDuration as a Job's activeDeadlineSeconds).
_INHERITED_IF_KNOWN = ("max_trial_duration",)
#: Platforms whose own section gives (or checks) the trial's command.
_ROLE_PLATFORMS = ("kubeflow", "frameworkcontroller", "kubernetes")


def inherited_training_service(
    data: dict[str, Any], ts: dict[str, Any], model: type[TrainingServiceConfig] | None = None
) -> dict[str, Any]:
    """The platform section with the experiment-level trial keys copied in where it leaves them unset
    (and those of ``_INHERITED_IF_KNOWN`` that ``model`` has)."""
    ts = dict(ts)
    known = tuple(k for k in _INHERITED_IF_KNOWN if model is not None and k in model.model_fields)
    for key in _INHERITED + known:
        camel = "".join(w.capitalize() if i else w for i, w in enumerate(key.split("_")))
        for name in (camel, key):
            if name in data and data[name] is not None and camel not in ts and key not in ts:
                if key == "max_trial_duration":
                    try:
                        _duration_validator(data[name])
                    except ValueError:
                        continue  # reported once, at the experiment's own key
                ts[camel] = data[name]
    return ts


class ExperimentConfig(ConfigModel):
    """An experiment, as an NNI v2 config file describes it (plus a few nni-ts keys)."""

    experiment_name: str | None = Field(None, description="A name for people; not unique.")
    search_space: dict[str, Any] | None = Field(None, description="The search space, inline (NNI format).")
    search_space_file: str | None = Field(
        None, description="A JSON or YAML file holding the search space (relative to the config file)."
    )
    trial_command: str | None = Field(None, description="The shell command that runs one trial.")
    trial_code_directory: str = Field(".", description="The trial code directory (relative to the config file).")
    trial_concurrency: int = Field(ge=1, description="How many trials run at the same time.")
    trial_gpu_number: int | None = Field(None, ge=0, description="GPUs each trial needs (0 or unset: CPU).")
    max_experiment_duration: str | int | float | None = Field(
        None, description="Stop starting trials after this long: 90 (seconds), '30m', '1h', '2d'."
    )
    max_trial_number: int | None = Field(None, ge=1, description="How many parameter sets to try.")
    max_trial_duration: str | int | float | None = Field(
        None, description="A trial running longer is cancelled: 90, '30m', '1h'."
    )
    max_failed_trial_number: int | None = Field(
        None, ge=1, description="Stop the experiment once this many trials failed (nni-ts; unset: no limit)."
    )
    max_infra_retries: int = Field(
        3, ge=0, description="Re-runs of a trial whose platform failed it (lost host, evicted pod) (nni-ts)."
    )
    nni_manager_ip: str | None = Field(None, description="The address trials use to reach the manager.")
    use_annotation: bool = Field(False, description="NNI annotations; not supported (must be false).")
    debug: bool = Field(False, description="Keep more logs.")
    log_level: str | None = Field(None, description="Accepted for NNI compatibility (trace/debug/info/...).")
    experiment_working_directory: str | None = Field(
        None, description="Where experiment files go (default: $NNI_TS_HOME/experiments)."
    )
    tuner_gpu_indices: Any = Field(None, description="Accepted for NNI compatibility; ignored.")
    seed: int | None = Field(None, description="Seed for the built-in tuners, when classArgs gives none (nni-ts).")
    tuner: AlgorithmConfig | None = Field(None, description="The tuner.")
    assessor: AlgorithmConfig | None = Field(None, description="The assessor (early stopping).")
    advisor: AlgorithmConfig | None = Field(None, description="An NNI advisor (Hyperband, BOHB): used as the tuner.")
    shared_storage: dict[str, Any] | None = Field(None, description="Accepted for NNI compatibility; unused.")
    experiment_type: str | None = Field(None, description="Accepted for NNI 3.0 compatibility: must be 'hpo'.")
    training_service: SerializeAsAny[TrainingServiceConfig] = Field(
        description="Where trials run: {platform: local, ...}."
    )

    _dur = field_validator("max_experiment_duration", "max_trial_duration", mode="before")(
        classmethod(lambda cls, v: _duration_validator(v))
    )

    @field_validator("use_annotation")
    @classmethod
    def _no_annotation(cls, v: bool) -> bool:
        if v:
            raise ValueError("NNI annotations are not supported; use nni.get_next_parameter() in the trial code")
        return v

    @field_validator("experiment_type")
    @classmethod
    def _hpo_only(cls, v: str | None) -> str | None:
        if v not in (None, "hpo"):
            raise ValueError(f"only 'hpo' experiments are supported, not {v!r}")
        return v

    @field_validator("search_space")
    @classmethod
    def _search_space(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        from ..search_space import validate_search_space

        try:
            return validate_search_space(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _platform(cls, data: Any) -> Any:
        """Validate ``trainingService`` with its platform's model, after copying inherited keys."""
        if not isinstance(data, dict):
            return data
        ts = data.get("trainingService", data.get("training_service"))
        if isinstance(ts, list):
            raise ValueError(
                "trainingService is a list (NNI's hybrid mode), which nni-ts does not support; give one platform"
            )
        if isinstance(ts, TrainingServiceConfig) or not isinstance(ts, dict):
            return data
        platform = ts.get("platform")
        if not isinstance(platform, str):
            return data  # pydantic reports the missing or wrong platform
        model = platform_config_class(platform)
        data = dict(data)
        data["trainingService"] = model.model_validate(inherited_training_service(data, ts, model))
        data.pop("training_service", None)
        return data

    @model_validator(mode="after")
    def _complete(self) -> ExperimentConfig:
        if self.search_space is None and self.search_space_file is None:
            raise ValueError("the experiment needs a search space: set searchSpace or searchSpaceFile")
        platform = self.training_service.platform
        if platform not in _ROLE_PLATFORMS and not (self.trial_command or self.training_service.trial_command):
            raise ValueError("trialCommand is required: the shell command that runs one trial")
        if self.tuner is not None and self.advisor is not None:
            raise ValueError("give a tuner or an advisor, not both")
        return self

    @property
    def max_experiment_seconds(self) -> float | None:
        """``maxExperimentDuration`` in seconds."""
        if self.max_experiment_duration is None:
            return None
        return parse_duration(self.max_experiment_duration, path="maxExperimentDuration")

    @property
    def max_trial_seconds(self) -> float | None:
        """``maxTrialDuration`` in seconds."""
        if self.max_trial_duration is None:
            return None
        return parse_duration(self.max_trial_duration, path="maxTrialDuration")
