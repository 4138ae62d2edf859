"""A fake Kubernetes cluster for tests: the real REST API over real HTTP, with simulated tf-operator,
pytorch-operator and FrameworkController that run pod commands as local processes.

    from nni_ts.testing.k8s import FakeCluster, Node

    async with FakeCluster(tmp_path, nodes=[Node("node-1", cpu=8, memory="32Gi", gpus=2)]) as cluster:
        ...  # point kubernetes_asyncio / kubectl at cluster.url or cluster.kubeconfig

See docs/fake-cluster.md. ``python -m nni_ts.testing.k8s serve --port N --state-dir D`` runs one by hand.
"""

from __future__ import annotations

from .api import Api
from .builtin_crds import BUILTIN_CRDS
from .cluster import TRAINER_CRD_FILES, FakeCluster, load_yaml_documents, trainer_crds
from .faults import Faults
from .kubelet import Node
from .threaded import ThreadedCluster
from .util import ApiError

__all__ = [
    "BUILTIN_CRDS",
    "TRAINER_CRD_FILES",
    "Api",
    "ApiError",
    "FakeCluster",
    "Faults",
    "Node",
    "ThreadedCluster",
    "load_yaml_documents",
    "trainer_crds",
]
