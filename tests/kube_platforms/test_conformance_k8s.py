"""The conformance kit on the Kubernetes platforms (kubeflow, frameworkcontroller, kubernetes), against the
fake cluster with the real CRDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nni_ts.testing.conformance import TrainingServiceConformance
from nni_ts.testing.k8s import FakeCluster

from .conftest import Factory

pytestmark = pytest.mark.slow  # the kit end to end through the fake cluster: scripts/test --fast leaves it out


class TestKubeflowConformance(TrainingServiceConformance):
    timeout = 60.0
    concurrency = 20

    @pytest.fixture
    def platform(self) -> str:
        return "kubeflow"

    @pytest.fixture
    def service_factory(self, make_service: Factory, cluster: FakeCluster) -> Any:
        def make(code_dir: Path, command: str, **overrides: Any) -> Any:
            return make_service(code_dir, command, **overrides)

        return make


class TestFrameworkControllerConformance(TestKubeflowConformance):
    @pytest.fixture
    def platform(self) -> str:
        return "frameworkcontroller"


class TestKubernetesJobConformance(TestKubeflowConformance):
    @pytest.fixture
    def platform(self) -> str:
        return "kubernetes"


class TestTrainJobConformance(TestKubeflowConformance):
    @pytest.fixture
    def platform(self) -> str:
        return "trainjob"
