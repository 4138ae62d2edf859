"""Configuration models: one pydantic model per section, NNI v2 names, v1 files converted on load."""

from .base import ConfigModel, TrainingServiceConfig

__all__ = ["ConfigModel", "TrainingServiceConfig"]
