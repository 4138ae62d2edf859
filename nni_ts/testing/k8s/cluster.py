"""``FakeCluster``: the API server, the store, the scheduler and kubelet and the simulated operators,
started and stopped together."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from ...tasks import TaskSupervisor
from .api import Api
from .apiserver import ApiServer
from .builtin_crds import BUILTIN_CRDS
from .faults import Faults
from .kubelet import Kubelet, Node
from .resources import ResourceType
from .store import Store
from .tls import make_certificate, server_context
from .util import JSON, ApiError

__all__ = ["FakeCluster", "load_yaml_documents"]

log = logging.getLogger(__name__)

CONTROLLERS = (
    "job-controller",
    "deployment-controller",
    "jobset-controller",
    "trainjob-controller",
    "tf-operator",
    "pytorch-operator",
    "frameworkcontroller",
)


_YAML_CACHE: dict[tuple[str, float], list[JSON]] = {}

#: The files, under the shared CRD directory (``shared/crds``), of Kubeflow Trainer v2.3.0's and JobSet
#: v0.12.0's CRDs: what a cluster for ``platform: trainjob`` loads (large; parsed once per process).
TRAINER_CRD_FILES = (
    "next/jobset.x-k8s.io_jobsets.yaml",
    "next/trainer.kubeflow.org_trainjobs.yaml",
    "next/trainer.kubeflow.org_clustertrainingruntimes.yaml",
    "next/trainer.kubeflow.org_trainingruntimes.yaml",
)


def trainer_crds(crd_dir: Path | str) -> list[Path]:
    """The paths of :data:`TRAINER_CRD_FILES` under ``crd_dir``."""
    return [Path(crd_dir) / name for name in TRAINER_CRD_FILES]


def load_yaml_documents(path: Path | str) -> list[JSON]:
    """The non-empty YAML documents of a file (``kind: List`` items are expanded). Parsed files are cached
    (the real CRDs are large), and every call returns fresh copies."""
    key = (str(Path(path).resolve()), os.stat(path).st_mtime)
    if key not in _YAML_CACHE:
        loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.load_all(f, Loader=loader) if d]
        out: list[JSON] = []
        for doc in docs:
            if doc.get("kind") == "List":
                out.extend(doc.get("items") or [])
            else:
                out.append(doc)
        _YAML_CACHE[key] = out
    return copy.deepcopy(_YAML_CACHE[key])


class FakeCluster:
    """A fake Kubernetes cluster speaking the real REST API on ``127.0.0.1``. Use it as an async context
    manager; see docs/fake-cluster.md."""

    def __init__(
        self,
        state_dir: Path | str,
        *,
        crd_files: Iterable[Path | str] = (),
        builtin_crds: bool = True,
        nodes: Sequence[Node] | None = None,
        nfs_exports: dict[tuple[str, str], Path | str] | None = None,
        token: str | None = None,
        tokens: dict[str, list[str] | None] | None = None,
        namespaces: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        controllers: Iterable[str] = CONTROLLERS,
        missing_images: Iterable[str] = (),
        grace_cap: float = 2.0,
        history_size: int = 20000,
        enforce_memory_limits: bool = True,
        image_backoff: float = 0.3,
        restart_backoff: float = 0.1,
        tls: bool = False,
        volume_mode: str = "rewrite",
        container_log_max_size: int | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.api = Api(Store(history_size))
        self.store = self.api.store
        if builtin_crds:
            for crd in BUILTIN_CRDS:
                self.api.load_crd(crd)
        for path in crd_files:
            for doc in load_yaml_documents(path):
                if doc.get("kind") != "CustomResourceDefinition":
                    raise ValueError(f"{path} holds a {doc.get('kind')!r}, not a CustomResourceDefinition.")
                self.api.load_crd(doc)
        ns_type = self.api.rtype("", "v1", "namespaces")
        for ns in namespaces:
            with contextlib.suppress(ApiError):
                self.api.create(ns_type, "", {"metadata": {"name": ns}})
        self.nodes = list(nodes) if nodes is not None else [Node("fake-node-1")]
        node_type = self.api.rtype("", "v1", "nodes")
        for node in self.nodes:
            self.api.create(node_type, "", node.object())
        all_tokens = dict(tokens or {})
        if token is not None:
            all_tokens[token] = None
        self.token = token
        self.ca_file: Path | None = None
        ssl_context = None
        if tls:
            self.ca_file, key_file = make_certificate(self.state_dir / "pki", host)
            ssl_context = server_context(self.ca_file, key_file)
        self.server = ApiServer(self.api, host=host, port=port, tokens=all_tokens or None, ssl_context=ssl_context)
        self.kubelet = Kubelet(
            self.api,
            self.state_dir,
            nfs_exports={k: Path(v) for k, v in (nfs_exports or {}).items()},
            missing_images=set(missing_images),
            grace_cap=grace_cap,
            enforce_memory_limits=enforce_memory_limits,
            image_backoff=image_backoff,
            restart_backoff=restart_backoff,
            volume_mode=volume_mode,
            container_log_max_size=container_log_max_size,
        )
        self.server.log_source = self.kubelet.logs
        self.faults = Faults(self)
        self.controller_names = list(controllers)
        self._controllers: list[Any] = []
        self._tasks = TaskSupervisor("fake-cluster")
        self.kubeconfig = self.state_dir / "kubeconfig"
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeCluster:
        from .controllers import make_controllers

        await self.server.start()
        self.kubelet.api_port = self.server.port
        self._write_kubeconfig()
        self._tasks.spawn(self.api.run_gc(), name="gc")
        self._tasks.spawn(self.kubelet.run(), name="kubelet")
        self._controllers = make_controllers(self.api, self.controller_names)
        for ctl in self._controllers:
            self._tasks.spawn(ctl.run(), name=ctl.name)
        self.kubelet._wake.set()  # noqa: SLF001 - schedule pods created before start
        self._started = True
        return self

    async def close(self) -> None:
        """Stop the controllers, kill every pod's processes and stop the API server."""
        tasks, self._tasks = self._tasks, TaskSupervisor("fake-cluster")
        await tasks.stop(5)
        await self.kubelet.close()
        await self.server.stop()
        self._started = False

    async def __aenter__(self) -> FakeCluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def kueue(self) -> Any:
        """The simulated Kueue (``controllers=[..., "kueue"]``), e.g. ``cluster.kueue.preempt(ns, workload)``."""
        for ctl in self._controllers:
            if ctl.name == "kueue":
                return ctl
        raise LookupError("This fake cluster runs no simulated Kueue: add 'kueue' to controllers.")

    def service_account_token(self, namespace: str, name: str) -> str:
        """A new token bound to the ServiceAccount ``namespace/name`` (created if missing): requests with it
        are allowed only what the Roles and ClusterRoles bound to it grant (see docs/fake-cluster.md)."""
        sa_type = self.api.rtype("", "v1", "serviceaccounts")
        if self.store.get(("", "serviceaccounts"), namespace, name) is None:
            self.api.create(sa_type, namespace, {"metadata": {"name": name}})
        return str(self.server.issue_token(namespace, name)["status"]["token"])

    def write_kubeconfig(self, path: Path | str, *, token: str | None = None, namespace: str = "default") -> Path:
        """Write a kubeconfig for this cluster with ``token`` (e.g. a service account's) to ``path``."""
        self._write_kubeconfig(Path(path), token, namespace)
        return Path(path)

    def _write_kubeconfig(self, path: Path | None = None, token: str | None = None, namespace: str = "default") -> None:
        token = token or self.token
        user: JSON = {"token": token} if token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [
                {
                    "name": "fake",
                    "cluster": {
                        "server": self.url,
                        **({"certificate-authority": str(self.ca_file)} if self.ca_file is not None else {}),
                    },
                }
            ],
            "users": [{"name": "fake-user", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake-user", "namespace": namespace}}],
            "current-context": "fake",
        }
        (path or self.kubeconfig).write_text(yaml.safe_dump(config, sort_keys=False))

    # ------------------------------------------------------------------ conveniences

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def request_counts(self) -> Counter[tuple[str, str]]:
        """Requests seen by the server, by ``(verb, resource)``: verbs are get, list, watch, create, update,
        patch, delete, deletecollection; resources are plurals (``pods``, ``tfjobs``, ``pods/log``)."""
        return self.server.request_counts

    def resource(self, name: str) -> ResourceType:
        """A served resource type by plural, singular, kind or short name (``tfjobs``, ``Pod``, ``po``)."""
        return self.api.find(name)

    def get(self, resource: str, name: str, namespace: str = "default") -> JSON | None:
        """The stored object, or None."""
        rtype = self.resource(resource)
        return self.store.get((rtype.group, rtype.plural), namespace if rtype.namespaced else "", name)

    def list(self, resource: str, namespace: str | None = "default", label_selector: str | None = None) -> list[JSON]:
        return self.api.list(self.resource(resource), namespace, label_selector)

    def create(self, obj: JSON, namespace: str | None = None) -> JSON:
        """Create ``obj`` (its apiVersion and kind choose the resource) with the server's semantics."""
        rtype = self.api.for_object(obj)
        return self.api.create(rtype, namespace or obj.get("metadata", {}).get("namespace") or "default", obj)

    def apply_file(self, path: Path | str, namespace: str | None = None) -> builtins.list[JSON]:
        """Create (or replace) every object of a YAML file."""
        out = []
        for doc in load_yaml_documents(path):
            if doc.get("kind") == "CustomResourceDefinition":
                out.append(self.api.load_crd(doc))
            else:
                out.append(self.create(doc, namespace))
        return out

    def patch(
        self,
        resource: str,
        name: str,
        body: Any,
        namespace: str = "default",
        content_type: str = "application/merge-patch+json",
    ) -> JSON:
        """Patch an object (a JSON merge patch by default), as a client would."""
        rtype = self.resource(resource)
        return self.api.patch(rtype, namespace if rtype.namespaced else "", name, body, content_type)

    def delete(self, resource: str, name: str, namespace: str = "default", propagation: str | None = None) -> JSON:
        return self.api.delete(self.resource(resource), namespace, name, propagation=propagation)

    def pod_log(self, name: str, namespace: str = "default", container: str | None = None) -> str:
        """The output (stdout and stderr) of a pod's container so far."""
        pod = self.get("pods", name, namespace)
        if pod is None:
            raise ApiError.not_found("pods", name)
        runner = self.kubelet.runners.get(pod["metadata"]["uid"])
        if runner is None:
            return ""
        container = container or pod["spec"]["containers"][0]["name"]
        c = runner.containers[container]
        path = runner.log_path(container, c.restarts)
        return path.read_text(errors="replace") if path.exists() else ""

    async def wait_for(self, predicate: Callable[[FakeCluster], Any], timeout: float = 10.0, message: str = "") -> Any:
        """Wait until ``predicate(cluster)`` returns a truthy value (checked after every change) and return
        it; raise ``TimeoutError`` naming ``message`` after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    value = predicate(self)
                    if value:
                        return value
                    fut = self.store.changed()
                    try:
                        await asyncio.wait_for(asyncio.shield(fut), 0.5)
                    except TimeoutError:
                        pass
        except TimeoutError:
            raise TimeoutError(
                f"The fake cluster did not reach the expected state within {timeout} s"
                + (f": {message}." if message else ".")
            ) from None

    async def wait_for_object(
        self,
        resource: str,
        name: str,
        predicate: Callable[[JSON], Any],
        namespace: str = "default",
        timeout: float = 10.0,
    ) -> JSON:
        """Wait until the object exists and ``predicate(obj)`` holds; return the object."""

        def check(c: FakeCluster) -> JSON | None:
            obj = c.get(resource, name, namespace)
            return obj if obj is not None and predicate(obj) else None

        result: JSON = await self.wait_for(check, timeout, f"{resource} {namespace}/{name}")
        return result

    async def wait_deleted(self, resource: str, name: str, namespace: str = "default", timeout: float = 10.0) -> None:
        await self.wait_for(
            lambda c: c.get(resource, name, namespace) is None, timeout, f"{resource} {namespace}/{name} to be deleted"
        )
