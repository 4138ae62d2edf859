"""Simulated controllers of the fake cluster: the Job controller, tf-operator, pytorch-operator and
FrameworkController."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..api import Api

__all__ = ["make_controllers"]


def make_controllers(api: Api, names: Iterable[str]) -> list[Any]:
    from .deployment import DeploymentController
    from .framework import FrameworkController
    from .job import JobController
    from .kubeflow import PyTorchOperator, TFOperator
    from .kueue import Kueue
    from .trainer import JobSetController, TrainJobController

    known = {
        "job-controller": JobController,
        "deployment-controller": DeploymentController,
        "jobset-controller": JobSetController,
        "trainjob-controller": TrainJobController,
        "tf-operator": TFOperator,
        "pytorch-operator": PyTorchOperator,
        "frameworkcontroller": FrameworkController,
        "kueue": Kueue,
    }
    out = []
    for name in names:
        if name not in known:
            raise ValueError(f"Unknown simulated controller {name!r}; expected one of {', '.join(sorted(known))}.")
        out.append(known[name](api))
    return out
