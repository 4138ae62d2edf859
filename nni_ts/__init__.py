"""nni-ts: run hyperparameter-search trials anywhere, behind one asyncio TrainingService contract.

The heavy parts (the experiment loop, platforms, tuners) are imported lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    InvalidStateError,
    MetricRefused,
    NniTsError,
    PlatformError,
    ProtocolError,
    SearchSpaceError,
    StoreError,
    TemporaryError,
    TrainingServiceError,
    TrialNotFoundError,
    TrialStateError,
    UserError,
)
from .models import (
    HyperParameters,
    PlacementConstraint,
    TrialJobApplicationForm,
    TrialJobDetail,
    TrialJobMetric,
    TrialJobStatus,
)
from .training_service import TrainingService, TrialReporter

if TYPE_CHECKING:
    from .experiment import Experiment
    from .platforms.local import LocalTrainingService

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Experiment",
    "HyperParameters",
    "InvalidStateError",
    "LocalTrainingService",
    "MetricRefused",
    "NniTsError",
    "PlacementConstraint",
    "PlatformError",
    "ProtocolError",
    "SearchSpaceError",
    "StoreError",
    "TemporaryError",
    "TrainingService",
    "TrainingServiceError",
    "TrialJobApplicationForm",
    "TrialJobDetail",
    "TrialJobMetric",
    "TrialJobStatus",
    "TrialNotFoundError",
    "TrialReporter",
    "TrialStateError",
    "UserError",
    "__version__",
]

_LAZY = {
    "Experiment": "nni_ts.experiment",
    "LocalTrainingService": "nni_ts.platforms.local",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nni_ts' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
