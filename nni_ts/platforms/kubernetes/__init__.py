"""The Kubernetes platforms: ``kubeflow`` (TFJob, PyTorchJob) and ``frameworkcontroller`` (Framework).

Shared code lives in this package's common modules (client, watch, staging, manifest, status, service);
the two platforms never import each other. See docs/kubernetes.md.
"""

from __future__ import annotations

from .client import KubeApiError, KubeClient, load_client
from .service import KubernetesTrainingService, detect_manager_address

__all__ = ["KubeApiError", "KubeClient", "KubernetesTrainingService", "detect_manager_address", "load_client"]
