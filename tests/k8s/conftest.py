"""Fixtures for the fake cluster's tests: a cluster with the real CRDs, kubectl, and client helpers."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from k8s_support import Kubectl

from nni_ts.testing.k8s import FakeCluster

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = (REPO / ".." / "shared" / "crds").resolve()


@pytest.fixture
def crd_files() -> list[Path]:
    """The real CRDs, from ../shared/crds beside the repository."""
    if not CRD_DIR.is_dir():
        pytest.skip(f"The real CRDs are not available: {CRD_DIR} does not exist.")
    return sorted(CRD_DIR.glob("*.yaml"))


@pytest.fixture
async def cluster(tmp_path: Path, crd_files: list[Path]) -> AsyncIterator[FakeCluster]:
    async with FakeCluster(tmp_path / "cluster", crd_files=crd_files) as c:
        yield c


@pytest.fixture
def kubectl(cluster: FakeCluster, tmp_path: Path) -> Kubectl:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (CI installs Debian's kubernetes-client).")
    return Kubectl(cluster.kubeconfig, tmp_path / "kube-cache")
