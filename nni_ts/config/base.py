"""Base classes of every configuration model.

Field names are snake_case in Python and camelCase in files (NNI v2 style); both are accepted on input.
Unknown keys are errors.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = ["ConfigModel", "TrainingServiceConfig"]


class ConfigModel(BaseModel):
    """A configuration model: camelCase aliases, unknown keys rejected, assignments validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )

    def to_camel_dict(self) -> dict[str, Any]:
        """The model as a JSON-ready dict with camelCase keys, as a v2 config file would hold it."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class TrainingServiceConfig(ConfigModel):
    """What every platform's configuration has. Platforms subclass it and fix ``platform``.

    The ``trial*`` fields mirror NNI v2: they default to the experiment-level values, which the
    experiment config copies in when the platform config leaves them unset.
    """

    platform_name: ClassVar[str] = ""

    platform: str = Field(description="The platform name, as registered in the nni_ts.platforms entry points.")
    trial_command: str | None = Field(
        None, description="The shell command that runs one trial, executed in the trial code directory."
    )
    trial_code_directory: str = Field(".", description="The directory holding the trial code.")
    trial_gpu_number: int = Field(0, ge=0, description="GPUs each trial needs; 0 runs trials on the CPU.")
    trial_prepare_command: str | None = Field(
        None, description="A shell command run before each trial command (for example activating a venv)."
    )
    nni_manager_ip: str | None = Field(
        None, description="The address trials use to reach the manager; detected when not given."
    )
    hyperparameters_as_args: bool = Field(
        False,
        description="Also append the hyper-parameters to the command as --name=value arguments "
        "(cube-studio style). Values are shell-quoted.",
    )
    debug: bool = Field(False, description="Keep more logs and trial files.")
