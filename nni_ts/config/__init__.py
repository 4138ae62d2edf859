"""Configuration models: one pydantic model per section, NNI v2 names, v1 files converted on load."""

from .base import ConfigModel, TrainingServiceConfig
from .local import LocalConfig

__all__ = ["ConfigModel", "LocalConfig", "TrainingServiceConfig"]
