"""What the Kubeflow and FrameworkController platforms share: the cluster connection, the watches, the
staging, the trial keeper's server and the rules that decide a trial's final status.

A platform subclass says which custom resource a trial is (:attr:`KubernetesTrainingService.plural`),
builds it (:meth:`_build_job`), reads its state (:meth:`_job_view`) and stops it (:meth:`_stop_job`).

How a trial goes
----------------
``_submit`` writes ``parameter.cfg`` into the trial's directory on the shared storage, registers the
trial with the ClusterServer and creates the job (one request). From then on everything arrives by
events: the job watch and the pod watch (one each per experiment, filtered by the experiment's label)
and the keeper's reports. RUNNING comes from the first of: the keeper's first report, a pod Running,
the job running. The terminal status is decided once the facts are in (:meth:`_conclude`):

* the keeper's exit (reported, or read back from its journal on the shared storage once the job has
  finished: the manager may be unreachable from the pods, and then the journal delivers the metrics,
  through the same de-duplication; without shared storage, from the frames in the pod's log, see
  :mod:`.podstorage`);
* the job's final state and the pods' problems (evicted: an infrastructure failure; OOMKilled, a wrong
  image, an unschedulable pod: a message saying what to change);
* a cancel, or the pending time-out (``pendingTimeout``: reported, then the job is stopped).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiohttp

from ...config.kubernetes import KubernetesPlatformConfig
from ...errors import ConfigError, MetricRefused, PlatformError, TemporaryError
from ...models import TrialJobDetail, TrialJobStatus
from ...server import ClusterServer
from ...training_service import TrainingService, trial_shell_command
from . import kueue as kq
from . import kueue_trials as kt
from . import manifest as mf
from . import podsettings as ps
from .client import JSON, KubeApiError, KubeClient, load_client
from .lifecycle import (
    Facts,
    Names,
    Phase,
    check_transition,
    decide,
    pending_timeout_applies,
    running_signal_counts,
)
from .names import LABEL_TRIAL, label_value, secret_name
from .staging import LocalStager, SftpStager, Stager
from .status import JobView, pod_phase, pod_problem, terminated_exit_code
from .watch import Watcher

__all__ = ["KubernetesTrainingService", "detect_manager_address"]

log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=KubernetesPlatformConfig)

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def detect_manager_address(api_server_host: str) -> str:
    """The local address the pods most likely reach the manager at: the one that routes to the API
    server (127.0.0.1 when the API server is on this host)."""
    if _is_loopback(api_server_host):
        return "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((api_server_host, 443))  # no packet is sent for UDP
            return str(s.getsockname()[0])
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def _is_local_address(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class _Event:
    """One thing that happened to a trial; its queue hands them to the trial's worker one at a time."""

    kind: str
    obj: JSON | None = None
    text: str = ""
    status: TrialJobStatus | None = None


@dataclass(eq=False)
class _Trial:
    """The platform's bookkeeping for one trial: its phase (see :mod:`.lifecycle`), the facts gathered so
    far, the cached pods, and the queue of events its worker handles one at a time."""

    detail: TrialJobDetail
    job: str
    attempt: int = 1
    primary_pod: str = ""
    label: str = ""
    phase: Phase = Phase.ACTIVE
    facts: Facts = field(default_factory=Facts)
    #: The job was created (a create that failed leaves nothing to stop).
    job_created: bool = False
    #: The job's DELETED event came (whoever deleted it).
    job_gone: bool = False
    end_ms: int | None = None
    pods: dict[str, JSON] = field(default_factory=dict)
    queue: asyncio.Queue[_Event] = field(default_factory=asyncio.Queue)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Kueue: the trial's Workload as last seen, and the uids of an evicted run's pods still being deleted.
    workload: JSON | None = None
    evicted_pods: set[str] = field(default_factory=set)
    sink: _Sink | None = None

    @property
    def id(self) -> str:
        return self.detail.id

    def move(self, phase: Phase) -> None:
        check_transition(self.phase, phase)
        self.phase = phase

    def cancel_timers(self) -> None:
        for t in self.timers:
            t.cancel()
        self.timers.clear()


class _Sink:
    """The ClusterServer's sink for one trial: metrics are delivered at once, in order; everything else
    goes to the trial's queue. The keeper's exit is recorded as a fact right away, because a journal
    read back by the trial's own worker delivers it while that worker waits."""

    def __init__(self, service: KubernetesTrainingService[Any], trial: _Trial) -> None:
        self.service = service
        self.trial = trial
        #: The run it reported for was evicted by Kueue: what its keeper says now is not the trial's.
        self.retired = False
        trial.sink = self

    async def on_started(self, start_time_ms: int, host: str, pid: int) -> None:
        if self.retired:
            return
        reporter = self.service.reporter
        if host and reporter.detail(self.trial.id).host is None:
            reporter.note(self.trial.id, host=host)
        self.service._post(self.trial, _Event("keeper_started", text=str(start_time_ms)))

    async def on_records(self, records: list[tuple[int, str]]) -> int:
        accepted = 0
        for _seq, data in records:
            if self.retired:
                break
            try:
                await self.service.reporter.metric(self.trial.id, data)
            except MetricRefused as exc:
                log.warning("%s", exc)
                break
            accepted += 1
        return accepted

    async def on_exited(self, exit_code: int, end_time_ms: int) -> None:
        if self.retired:
            return
        if self.trial.facts.keeper_exit is None:
            self.trial.facts.keeper_exit = exit_code
            self.trial.end_ms = end_time_ms
        self.service._post(self.trial, _Event("keeper_exited"))

    async def on_lost(self, message: str) -> None:
        if self.retired:
            return
        self.service._post(self.trial, _Event("keeper_lost", text=message))

    async def on_heartbeat(self) -> None:
        if self.retired:
            return
        self.service._post(self.trial, _Event("heartbeat"))

    async def on_rejected(self, message: str) -> None:
        self.service._post(self.trial, _Event("fail", text=message, status=TrialJobStatus.FAILED))


class KubernetesTrainingService(TrainingService[ConfigT]):
    """The shared machinery of the Kubernetes platforms (see the module docstring).

    Keyword arguments beyond the contract's, for tests and embedding:
    ``server``: a running ClusterServer to use (else the service starts its own);
    ``keeper_server_url``: the URL given to the pods instead of the server's own (tests make the manager
    unreachable with it); ``settle_timeout``: seconds to wait for the job's final state after a keeper
    reported its exit (then the job is stopped); ``resync``: seconds of silence after which the job and
    pod watches re-list while trials run.
    """

    #: The custom resource: API group, version, plural and kind. Set by subclasses (may depend on config).
    group: ClassVar[str] = ""
    version: ClassVar[str] = "v1"
    #: The trial's object may replace a disrupted pod with a new one that runs the trial again (a batch
    #: Job): each keeper then takes its own attempt number (``auto``), the trial's channel accepts the
    #: attempt that reports, and the journal is read back from the latest attempt.
    pods_replaced: ClassVar[bool] = False

    def __init__(
        self,
        config: Any = None,
        *,
        server: ClusterServer | None = None,
        keeper_server_url: str | None = None,
        settle_timeout: float = 30.0,
        resync: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self._server = server
        self._own_server = server is None
        self.keeper_server_url = keeper_server_url
        self.settle_timeout = settle_timeout
        self.resync = resync
        self.client: KubeClient | None = None
        self.stager: Stager | None = None
        self.anchor: JSON | None = None
        self._registry_secrets: dict[str, str] = {}
        self._k8s: dict[str, _Trial] = {}
        self._by_job: dict[str, _Trial] = {}
        self._by_label: dict[str, _Trial] = {}
        self._watchers: list[Watcher] = []
        self._job_watch: Watcher | None = None
        self._pod_watch: Watcher | None = None
        self._anchor_watch: Watcher | None = None
        self._event_watch: Watcher | None = None
        self._workload_watch: Watcher | None = None
        self._anchor_task: asyncio.Task[Any] | None = None
        self._anchor_error: str | None = None
        self._token_secret_ready = False
        self._token_lock = asyncio.Lock()
        #: Tokens waiting for the next write of the token Secret (see _add_token).
        self._token_pending: dict[str, str] = {}
        self._closing = False
        self._ca_pem: bytes | None = None
        self._swept = False
        #: Jobs deleted because no trial owned them (a crashed earlier run's leftovers).
        self.orphans_swept: list[str] = []

    # ------------------------------------------------------------------ for subclasses

    @property
    @abc.abstractmethod
    def plural(self) -> str:
        """The custom resource's plural (``tfjobs``, ``frameworks``...)."""

    @property
    @abc.abstractmethod
    def kind(self) -> str:
        """The custom resource's kind, as messages name it."""

    @abc.abstractmethod
    def _job_name(self, trial_id: str) -> str:
        """The name of the trial's job."""

    @abc.abstractmethod
    def _primary_pod(self, job: str) -> str:
        """The name of the pod whose keeper reports to the manager."""

    @abc.abstractmethod
    def _build_job(self, trial: _Trial, keeper: mf.KeeperSpec) -> JSON:
        """The trial's job, ready to create."""

    @abc.abstractmethod
    def _job_view(self, obj: JSON) -> JobView:
        """The job's state as a trial sees it (a pure function of the object)."""

    @abc.abstractmethod
    async def _stop_job(self, trial: _Trial) -> bool:
        """Stop and delete the trial's job; return False if it did not exist any more."""

    def _registry_auth_paths(self) -> list[str]:
        return []

    # ------------------------------------------------------------------ the trial objects' shared parts
    # Every platform's builder takes these three from here, so that what all Kubernetes platforms share
    # (pod settings, Kueue's labels, the parameters annotation, the storage mode) is decided in one place.

    def trial_metadata(self, trial: _Trial) -> JSON:
        """The metadata of a trial's top object (the TFJob, Framework, Job or TrainJob): its name,
        namespace, labels, annotations (the trial id and sequence id) and the owner reference to the anchor."""
        assert self.anchor is not None, "the service is not started"
        detail = trial.detail
        meta = {
            "name": trial.job,
            "namespace": self.namespace,
            "labels": {**mf.trial_labels(self.experiment_id, detail.id), **kq.kueue_labels(self.config)},
            "annotations": mf.trial_annotations(detail.id, detail.sequence_id),
            "ownerReferences": [mf.owner_reference(self.anchor)],
        }
        # The user's labels and annotations, and the trial's parameters (a rebuild from the cluster reads them).
        return ps.object_metadata(self.config, meta, detail)

    def pod_template(self, trial: _Trial, spec: JSON, *, role: str | None = None) -> JSON:
        """A pod template of a trial's object, ``{"metadata": ..., "spec": spec}``: the trial's labels
        (with ``role``) on the pods, and the pod settings of the configuration (the platform's, then the
        role's section: :mod:`nni_ts.config.podsettings`)."""
        template = {"metadata": {"labels": mf.trial_labels(self.experiment_id, trial.detail.id, role)}, "spec": spec}
        return ps.apply_pod_settings(self.config, template, role)

    def storage_volume(self) -> JSON:
        """The volume the pods mount at ``MOUNT_PATH``: the trial directory, the code and the keeper."""
        return mf.storage_volume(self.config.storage, self._azure_secret_name())

    def _azure_secret_name(self) -> str | None:
        """The Secret holding the Azure storage account's name and key (azureStorage only)."""
        if self.config.storage.storage_type != "azureStorage":
            return None
        return secret_name(self.experiment_id, "azure-storage")

    # ------------------------------------------------------------------ paths

    @property
    def namespace(self) -> str:
        return self.config.namespace

    def _collection(self, plural: str | None = None) -> str:
        if plural is None or plural == self.plural:
            return f"/apis/{self.group}/{self.version}/namespaces/{self.namespace}/{self.plural}"
        return f"/api/v1/namespaces/{self.namespace}/{plural}"

    @property
    def server(self) -> ClusterServer:
        assert self._server is not None, "the service is not started"
        return self._server

    @property
    def kube(self) -> KubeClient:
        assert self.client is not None, "the service is not started"
        return self.client

    # ------------------------------------------------------------------ start

    def _make_stager(self) -> Stager:
        storage = self.config.storage
        if storage.storage_type == "none":
            from .podstorage import PodStager

            return PodStager(self, storage)
        if storage.storage_type == "azureStorage":
            from .azure import AzureStager

            return AzureStager(self.experiment_id, storage)
        if storage.local_mount_path:
            return LocalStager(self.experiment_id, Path(storage.local_mount_path).expanduser())
        if storage.upload is not None:
            up = storage.upload
            return SftpStager(
                self.experiment_id,
                host=up.host or str(storage.server),
                port=up.port,
                user=up.user,
                export_path=str(storage.path),
                key_file=up.ssh_key_file,
                password=up.password,
                known_hosts=up.known_hosts_file,
            )
        if storage.server and _is_loopback(storage.server) or storage.server == socket.gethostname():
            return LocalStager(self.experiment_id, Path(str(storage.path)))
        raise ConfigError(
            f"the NFS export {storage.server}:{storage.path} is not reachable from the manager: give "
            "storage.localMountPath (where it is mounted on this host) or storage.upload (SFTP to the NFS "
            "server's host). nni-ts never runs `sudo mount`.",
            path="trainingService.storage",
        )

    async def _start(self) -> None:
        cfg = self.config
        self.client = await load_client(cfg.kubeconfig, cfg.context)
        try:
            await self._start_inner()
        except KubeApiError as exc:
            await self._close_resources()
            if exc.status == 403:
                # The credentials lack a right the platform needs: the user's (or the admin's) to fix.
                raise ConfigError(
                    f"the cluster refused a request of the {self.platform_name} platform: {exc.api_message}. The "
                    f"credentials (kubeconfig, context) need the Role shown in docs/kubernetes.md in namespace "
                    f"{self.namespace}.",
                    path="trainingService.kubeconfig",
                ) from exc
            raise
        except BaseException:
            await self._close_resources()
            raise

    async def _start_inner(self) -> None:
        cfg = self.config
        self.stager = self._make_stager()
        # One cheap request first: an unreachable API server is reported in seconds, by its address.
        await self.kube.request("GET", "/version", timeout=10)
        code_dir = Path(cfg.trial_code_directory).expanduser().resolve()
        await self.stager.prepare(code_dir)
        selector = mf.experiment_selector(self.experiment_id)
        self._job_watch = Watcher(
            self.kube,
            self._collection(),
            selector,
            self._on_job_event,
            name=self.plural,
            resync=self.resync,
            busy=self._busy,
        )
        self._pod_watch = Watcher(
            self.kube,
            self._collection("pods"),
            selector,
            self._on_pod_event,
            name="pods",
            resync=self.resync,
            busy=self._busy,
        )
        self._watchers = [self._job_watch, self._pod_watch]
        for w in self._watchers:
            w.start()
        try:
            await self._job_watch.wait_synced(60)
        except KubeApiError as exc:
            if exc.status == 404:
                # The cluster is not set up for this platform: the user's to fix (the CLI exits 2).
                raise ConfigError(
                    f"the cluster does not serve {self.plural}.{self.group}/{self.version} in namespace "
                    f"{self.namespace}: {self._missing_crd_hint()} ({exc.api_message})",
                    path="trainingService.platform",
                ) from exc
            raise
        await self._pod_watch.wait_synced(60)
        if self.config.queue_name:
            await kt.start(self)
        await self._ensure_owned_objects()
        self._anchor_watch = Watcher(
            self.kube, self._collection("configmaps"), selector, self._on_anchor_event, name="configmaps"
        )
        self._event_watch = Watcher(
            self.kube,
            self._collection("events"),
            "",
            self._on_warning_event,
            name="events",
            field_selector="type=Warning",
            keep_cache=False,
        )
        for w in (self._anchor_watch, self._event_watch):
            self._watchers.append(w)
            w.start()
        await self._anchor_watch.wait_synced(60)
        await self._start_server()
        self.stager.serve(self.server)

    async def _ensure_owned_objects(self) -> None:
        """The anchor ConfigMap and the Secrets it owns (tokens, registry credentials, storage keys)."""
        self.anchor = await self._ensure_anchor()
        self._registry_secrets.clear()
        for path in self._registry_auth_paths():
            await self._ensure_registry_secret(path)
        azure_secret = self._azure_secret_name()
        if azure_secret is not None:
            from .azure import AzureStager

            assert isinstance(self.stager, AzureStager)
            body = self.stager.secret(azure_secret, self.namespace, mf.owner_reference(self.anchor))
            try:
                await self.kube.request("POST", self._collection("secrets"), body=body)
            except KubeApiError as exc:
                if exc.status != 409:
                    raise
        self._token_secret_ready = False

    def _on_anchor_event(self, kind: str, obj: JSON) -> None:
        if (
            self._closing
            or self.anchor is None
            or obj.get("metadata", {}).get("name") != self.anchor["metadata"]["name"]
        ):
            return
        if kind == "DELETED" or obj["metadata"].get("deletionTimestamp"):
            if self._anchor_task is None or self._anchor_task.done():
                self._anchor_task = self.tasks.spawn(self._anchor_lost(), name=f"nni-ts-{self.platform_name}-anchor")

    async def _anchor_recovered(self) -> None:
        """Make sure the anchor exists with the uid new jobs will name; recreate it if it is gone."""
        assert self.anchor is not None
        path = f"{self._collection('configmaps')}/{self.anchor['metadata']['name']}"
        try:
            current = await self.kube.request("GET", path)
        except KubeApiError as exc:
            if exc.status != 404:
                raise
        else:
            if current["metadata"].get("uid") == self.anchor["metadata"].get("uid"):
                return
        if self._anchor_task is None or self._anchor_task.done():
            self._anchor_task = self.tasks.spawn(self._anchor_lost(), name=f"nni-ts-{self.platform_name}-anchor")
        await asyncio.shield(self._anchor_task)
        if self._anchor_error is not None:
            raise PlatformError(self._anchor_error)

    async def _anchor_lost(self) -> None:
        """Someone deleted the experiment's anchor: its jobs are being garbage-collected. Recreate it (and
        the Secrets it owned) so that new trials are not garbage-collected at once; the running trials'
        jobs are lost, and end as infrastructure failures (the experiment re-runs them)."""
        assert self.anchor is not None
        name = self.anchor["metadata"]["name"]
        log.warning(
            "The experiment's anchor ConfigMap %s/%s was deleted outside nni-ts: the jobs of the running trials "
            "are garbage-collected with it. Recreating it.",
            self.namespace,
            name,
        )
        path = f"{self._collection('configmaps')}/{name}"
        try:
            async with asyncio.timeout(60):
                while True:  # wait until the old one is really gone (its finalizers, if any, ran)
                    try:
                        await self.kube.request("GET", path)
                    except KubeApiError as exc:
                        if exc.status == 404:
                            break
                        raise
                    await asyncio.sleep(0.2)
            await self._ensure_owned_objects()
        except (KubeApiError, TemporaryError, TimeoutError, PlatformError) as exc:
            self._anchor_error = (
                f"The experiment's anchor ConfigMap {self.namespace}/{name} was deleted outside nni-ts and "
                f"could not be recreated ({exc}); no more trials can run. Stop the experiment and check the "
                "namespace."
            )
            log.error("%s", self._anchor_error)
            for trial in list(self._k8s.values()):
                self._post(trial, _Event("fail", text=self._anchor_error))
            return
        for trial in list(self._k8s.values()):
            trial.facts.warnings.append(f"The experiment's anchor ConfigMap {name} was deleted outside nni-ts.")

    async def _add_token(self, trial: _Trial) -> None:
        """Put the trial's token in the experiment's token Secret (owned by the anchor): the job and pod
        specs reference it (secretKeyRef), so that reading them does not give the token away.

        Concurrent submissions share requests: a token waiting while another write is in flight goes out
        with the next one, so a burst of N submissions costs far fewer than N writes (one create, then
        merge patches). Returns once the Secret holds the token."""
        key = mf.token_key(trial.id)
        self._token_pending[key] = self.server.token_for(trial.id)
        async with self._token_lock:
            if key not in self._token_pending:
                return  # written by the batch that held the lock before us
            batch = dict(self._token_pending)
            self._token_pending.clear()
            try:
                await self._write_tokens(batch)
            except BaseException:
                for k, v in batch.items():  # the others waiting retry with them
                    self._token_pending.setdefault(k, v)
                raise

    async def _write_tokens(self, batch: dict[str, str], recovered: bool = False) -> None:
        name = self._token_secret_name()
        if not self._token_secret_ready:
            assert self.anchor is not None
            tokens = {
                mf.token_key(t.id): self.server.token_for(t.id)
                for t in self._k8s.values()
                if t.phase is not Phase.CONCLUDED
            }
            tokens.update(batch)
            batch = {**batch, **self._server_state_keys()}  # kept current in the cluster (resume -c reads them)
            tokens.update(batch)
            body = mf.token_secret(name, self.namespace, self.experiment_id, tokens, mf.owner_reference(self.anchor))
            try:
                await self.kube.request("POST", self._collection("secrets"), body=body)
            except KubeApiError as exc:
                if exc.status != 409:
                    raise
            else:
                self._token_secret_ready = True
                return
            self._token_secret_ready = True
        data = {k: base64.b64encode(v.encode()).decode() for k, v in batch.items()}
        try:
            await self.kube.request(
                "PATCH",
                f"{self._collection('secrets')}/{name}",
                body={"data": data},
                content_type="application/merge-patch+json",
            )
        except KubeApiError as exc:
            if exc.status != 404 or recovered:
                raise
            # The Secret is gone: so is the anchor, most likely (an API server back with a fresh store, the
            # anchor deleted before the watch said so). Recreate them before the job, or the job would be
            # garbage-collected at once for want of its owner.
            await self._anchor_recovered()
            self._token_secret_ready = False
            await self._write_tokens(batch, recovered=True)

    def _token_secret_name(self) -> str:
        return secret_name(self.experiment_id, "tokens")

    def _busy(self) -> bool:
        """Whether some trial's job is expected to change (its watch should not stay silent)."""
        return bool(self._by_job)

    def _missing_crd_hint(self) -> str:
        return "install its operator."

    async def _ensure_anchor(self) -> JSON:
        body = mf.anchor_configmap(self.experiment_id, self.namespace)
        try:
            return await self.kube.request("POST", self._collection("configmaps"), body=body)
        except KubeApiError as exc:
            if exc.status == 409:
                path = f"{self._collection('configmaps')}/{body['metadata']['name']}"
                return await self.kube.request("GET", path)
            if exc.status == 404:
                raise PlatformError(f"The namespace {self.namespace!r} does not exist in the cluster.") from exc
            raise

    async def _ensure_registry_secret(self, path: str) -> str:
        if path in self._registry_secrets:
            return self._registry_secrets[path]
        file = Path(path).expanduser()
        try:
            data = file.read_bytes()
            json.loads(data)
        except OSError as exc:
            raise ConfigError(f"cannot read privateRegistryAuthPath {file}: {exc.strerror}.") from exc
        except ValueError as exc:
            raise ConfigError(
                f"privateRegistryAuthPath {file} is not a docker config.json (JSON expected): {exc}."
            ) from exc
        name = secret_name(self.experiment_id, "registry", str(file))
        owner = mf.owner_reference(self.anchor) if self.anchor else None
        body = mf.registry_secret(name, self.namespace, self.experiment_id, data, owner)
        try:
            await self.kube.request("POST", self._collection("secrets"), body=body)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
        self._registry_secrets[path] = name
        return name

    def _server_state_file(self) -> Path:
        return self.experiment_dir / "k8s-cluster-server.json"

    async def _start_server(self) -> None:
        cfg = self.config
        advertised = cfg.nni_manager_ip or detect_manager_address(self.kube.server_host)
        self._advertised = advertised
        if self._server is None:
            state: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(self._server_state_file().read_text())
            if not state and self._job_watch is not None and self._job_watch.cache:
                # Trials of this experiment are in the cluster, but the manager's data directory was lost:
                # their keepers know the port and hold tokens of the secret kept in the token Secret.
                state = await self._cluster_server_state()
            secret = bytes.fromhex(state["secret"]) if "secret" in state else secrets.token_bytes(32)
            port = cfg.cluster_server_port or int(state.get("port") or 0)
            bind = advertised if _is_local_address(advertised) else "0.0.0.0"
            heartbeat_timeout = max(3 * cfg.keeper_heartbeat, 5.0)
            tls = self._server_tls()
            self._server = ClusterServer(
                bind, port, secret=secret, heartbeat_timeout=heartbeat_timeout, ssl_context=tls
            )
            try:
                await self._server.start()
            except OSError as exc:
                if not port or cfg.cluster_server_port:
                    raise PlatformError(
                        f"Cannot listen on {bind}:{port} for the trial keepers (trainingService.clusterServerPort, "
                        f"nniManagerIp): {exc.strerror or exc}."
                    ) from exc
                log.warning("Port %d is taken; the trial keepers of a previous run will use the journal.", port)
                self._server = ClusterServer(
                    bind, 0, secret=secret, heartbeat_timeout=heartbeat_timeout, ssl_context=tls
                )
                await self._server.start()
            path = self._server_state_file()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps({"port": self._server.port, "secret": secret.hex()}))

    async def _cluster_server_state(self) -> dict[str, Any]:
        """The cluster server's port and secret as the experiment's token Secret keeps them (``{}`` if it
        does not): the keepers of running trials know that port and hold tokens made with that secret, so a
        manager whose data directory was lost still hears them (one request, only then)."""
        try:
            body = await self.kube.request("GET", f"{self._collection('secrets')}/{self._token_secret_name()}")
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            return {}
        data = body.get("data") or {}
        try:
            return {
                "port": int(base64.b64decode(data[mf.SERVER_PORT_KEY]).decode()),
                "secret": base64.b64decode(data[mf.SERVER_SECRET_KEY]).decode(),
            }
        except (KeyError, ValueError):
            return {}

    def _server_state_keys(self) -> dict[str, str]:
        """The cluster server's port and secret, as the token Secret keeps them (written with the first
        token of each run of the manager: no request of its own)."""
        if self._server is None or not self._server.port:
            return {}
        return {mf.SERVER_PORT_KEY: str(self._server.port), mf.SERVER_SECRET_KEY: self._server.secret.hex()}

    def _server_tls(self) -> ssl.SSLContext | None:
        """The cluster server's TLS context (clusterServerCertFile and KeyFile), and the CA the keepers
        will trust (staged in each trial's directory), or None for plain http://."""
        cfg = self.config
        if cfg.cluster_server_cert_file is None or cfg.cluster_server_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca = cfg.cluster_server_ca_file or cfg.cluster_server_cert_file
        try:
            context.load_cert_chain(
                str(Path(cfg.cluster_server_cert_file).expanduser()),
                str(Path(cfg.cluster_server_key_file).expanduser()),
            )
            self._ca_pem = Path(ca).expanduser().read_bytes()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot use the cluster server's certificate {cfg.cluster_server_cert_file}, key "
                f"{cfg.cluster_server_key_file} and CA {ca}: {exc}.",
                path="trainingService.clusterServerCertFile",
            ) from exc
        return context

    def _keeper_url(self) -> str:
        if self.keeper_server_url:
            return self.keeper_server_url
        host = self._advertised
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.server.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.server.port}"

    # ------------------------------------------------------------------ submit

    def _track(self, trial: _Trial) -> None:
        trial.label = label_value(trial.id)
        trial.primary_pod = self._primary_pod(trial.job)
        self._k8s[trial.id] = trial
        self._by_job[trial.job] = trial
        self._by_label[trial.label] = trial

    def _keeper_spec(self, trial: _Trial) -> mf.KeeperSpec:
        cfg = self.config
        assert self.stager is not None
        return mf.KeeperSpec(
            trial_id=trial.id,
            experiment_id=self.experiment_id,
            sequence_id=trial.detail.sequence_id,
            platform=self.platform_name,
            trial_dir=self.stager.pod_trial_dir(trial.id),
            code_dir=self.stager.pod_code_dir(),
            keeper_dir=self.stager.pod_keeper_dir(),
            server_url=self._keeper_url(),
            token_secret=self._token_secret_name(),
            ca_file=f"{self.stager.pod_trial_dir(trial.id)}/{mf.CA_FILE}" if self._ca_pem is not None else None,
            token_key=mf.token_key(trial.id),
            heartbeat=cfg.keeper_heartbeat,
            grace=cfg.cancel_grace_period,
            report_timeout=cfg.report_timeout,
            env=dict(trial.detail.form.env),
            storage_env=self.stager.pod_env(trial.id),
            attempt="auto" if self._reruns else str(trial.attempt),
        )

    def _role_command(self, base: str, detail: TrialJobDetail) -> str:
        """The shell command of one role: the reporting role runs :meth:`trial_command` (the form's
        command, else its own), the others their role's command, with the same prepare command and
        arguments."""
        cfg = self.config
        return trial_shell_command(
            base,
            detail.form.parameters(),
            prepare=cfg.trial_prepare_command,
            as_args=cfg.hyperparameters_as_args,
        )

    async def _submit(self, detail: TrialJobDetail) -> None:
        assert self.stager is not None
        if self._anchor_error is not None:
            raise PlatformError(self._anchor_error)
        if self._anchor_task is not None and not self._anchor_task.done():
            await asyncio.shield(self._anchor_task)  # new jobs need the new anchor's uid
        if not self._swept:
            self._swept = True
            self.tasks.spawn(self._sweep_orphans(), name=f"nni-ts-{self.platform_name}-sweep")
        trial = _Trial(detail=detail, job=self._job_name(detail.id))
        detail.working_directory = self.stager.trial_location(detail.id)
        detail.platform_data = {"job": trial.job, "namespace": self.namespace, "kind": self.plural, "attempt": 1}
        try:
            await self.stager.refresh(Path(self.config.trial_code_directory).expanduser().resolve())
            files = {"parameter.cfg": detail.form.hyper_parameters.value.encode()}
            if self._ca_pem is not None:
                files[mf.CA_FILE] = self._ca_pem
            await self.stager.write_trial(detail.id, files)
        except OSError as exc:
            raise PlatformError(
                f"Cannot write trial {detail.id}'s directory {detail.working_directory} on the shared storage: {exc}"
            ) from exc
        self._track(trial)
        self._register(trial, attempt=self._channel_attempt(trial))
        try:
            await self._add_token(trial)
            body = self._build_job(trial, self._keeper_spec(trial))
            await self.kube.request("POST", self._collection(), body=body)
        except KubeApiError as exc:
            if exc.status != 409:  # 409: a retried create whose first answer was lost
                self._untrack(trial)
                if exc.status in (400, 403, 422):
                    trial.phase = Phase.CONCLUDED
                    await self.reporter.ended(
                        detail.id,
                        TrialJobStatus.FAILED,
                        message=f"The cluster refused the {self.kind} of this trial: {exc.api_message}",
                    )
                    return
                raise
        except BaseException:
            self._untrack(trial)
            raise
        trial.job_created = True
        self._after(trial, self.config.pending_timeout, "pending_timeout")
        self._start_worker(trial)

    def _register(self, trial: _Trial, *, attempt: int | None, next_seq: int = 0) -> None:
        """Accept the reports of the trial's keeper (``attempt``: the one accepted, None: the first that reports)."""
        self.server.register(trial.id, self._sink(trial), attempt=attempt, next_seq=next_seq)

    def _start_worker(self, trial: _Trial) -> None:
        self.tasks.spawn(self._run_trial(trial), name=f"nni-ts-{self.platform_name}-trial-{trial.id}")

    def _sink(self, trial: _Trial) -> _Sink:
        """The ClusterServer sink of the trial's channel."""
        return _Sink(self, trial)

    @property
    def _reruns(self) -> bool:
        """Whether a trial may run again in a new pod: a Job replacing a disrupted pod, or Kueue readmitting a
        preempted trial (``queueName``). Each keeper then takes its own attempt number (``auto``)."""
        return self.pods_replaced or bool(self.config.queue_name)

    def _channel_attempt(self, trial: _Trial) -> int | None:
        """The keeper attempt the trial's channel accepts (None: whichever reports; see _reruns)."""
        return None if self._reruns else trial.attempt

    def _untrack(self, trial: _Trial) -> None:
        self._by_job.pop(trial.job, None)
        self._by_label.pop(trial.label, None)
        self.server.unregister(trial.id)
        trial.cancel_timers()

    def _replay_cached(self, trial: _Trial) -> None:
        kt.replay_workload(self, trial)
        # The pods first: a job that finished while no manager watched is concluded at its event, and its
        # read-back needs the reporting pod's name (a batch Job's or a TrainJob's pods have random suffixes;
        # without shared storage the metrics are in that pod's log).
        if self._pod_watch is not None:
            for pod in list(self._pod_watch.cache.values()):
                if (pod["metadata"].get("labels") or {}).get(LABEL_TRIAL) == trial.label:
                    self._on_pod_event("MODIFIED", pod)
        if self._job_watch is not None and trial.job in self._job_watch.cache:
            self._on_job_event("MODIFIED", self._job_watch.cache[trial.job])

    async def _sweep_orphans(self) -> None:
        """Delete the jobs of this experiment that no trial owns: leftovers of a run that crashed."""
        assert self._job_watch is not None
        for name, obj in list(self._job_watch.cache.items()):
            if name in self._by_job or self._job_view(obj).finished:
                # A finished job holds nothing; it is the record of its trial in the cluster (a rebuild of
                # the experiment reads it), deleted with the anchor when the experiment ends.
                continue
            log.warning("Deleting %s %s: no trial of experiment %s owns it.", self.kind, name, self.experiment_id)
            try:
                await self._delete(self._collection(), name)
                self.orphans_swept.append(name)
            except (KubeApiError, TemporaryError) as exc:
                log.warning("Could not delete the orphan %s %s: %s", self.kind, name, exc)

    async def _delete(self, collection: str, name: str, propagation: str = "Background") -> bool:
        """Delete one object; False if it did not exist."""
        try:
            await self.kube.request(
                "DELETE",
                f"{collection}/{name}",
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation},
            )
            return True
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            return False

    # ------------------------------------------------------------------ re-attach

    async def _reattach(self, detail: TrialJobDetail, metrics_delivered: int) -> None:
        data = detail.platform_data or {}
        job = str(data.get("job") or self._job_name(detail.id))
        if data.get("namespace") not in (None, self.namespace):
            raise PlatformError(
                f"Trial {detail.id} runs in namespace {data.get('namespace')!r}, not {self.namespace!r}; "
                "resume the experiment with the namespace it was started with."
            )
        trial = _Trial(detail=detail, job=job, attempt=int(data.get("attempt") or 1), job_created=True)
        self._track(trial)
        if not kt.reattached_while_evicted(self, trial):
            self._register(trial, attempt=self._channel_attempt(trial), next_seq=metrics_delivered)
        self._start_worker(trial)
        assert self._job_watch is not None
        if job in self._job_watch.cache:
            self._replay_cached(trial)
            if trial.detail.status is TrialJobStatus.WAITING:
                self._after(trial, self.config.pending_timeout, "pending_timeout")
        else:
            self._post(trial, _Event("job", {"type": "DELETED", "metadata": {"name": job}}, text="DELETED"))

    async def recover_trial_jobs(self) -> list[TrialJobDetail]:
        """The experiment's trials as its trial objects in the cluster tell them (trial id, sequence id,
        parameters: :func:`.podsettings.recovered_detail`), oldest first, as WAITING trials to re-attach
        to: re-attaching gives each its status, and a finished one its metrics from its journal. For
        ``nni-ts resume -c`` when the manager's store lost the experiment. The service must be running."""
        assert self._job_watch is not None and self.stager is not None, "the service is not started"
        objects = sorted(
            self._job_watch.cache.values(),
            key=lambda o: (str(o["metadata"].get("creationTimestamp") or ""), o["metadata"]["name"]),
        )
        out: list[TrialJobDetail] = []
        for obj in objects:
            cfg: str | None = None
            trial_id = ps.annotated_trial_id(obj)
            if trial_id and ps.ANNOTATION_PARAMETERS not in (obj["metadata"].get("annotations") or {}):
                with contextlib.suppress(OSError, PlatformError):
                    cfg = (await self.stager.read_file(trial_id, "parameter.cfg", None)).decode("utf-8", "replace")
            detail = ps.recovered_detail(obj, namespace=self.namespace, plural=self.plural, parameter_cfg=cfg)
            if detail is None:
                log.warning(
                    "The %s %s does not say which trial it runs, or with which parameters; it is not rebuilt.",
                    self.kind,
                    obj["metadata"]["name"],
                )
                continue
            detail.working_directory = self.stager.trial_location(detail.id)
            out.append(detail)
        return out

    # ------------------------------------------------------------------ events: routing

    def _trial_of_pod(self, pod: JSON) -> _Trial | None:
        label = (pod.get("metadata", {}).get("labels") or {}).get(LABEL_TRIAL)
        return self._by_label.get(label) if label else None

    def _post_event(self, trial: _Trial, kind: str, obj: JSON | None = None) -> None:
        self._post(trial, _Event(kind, obj))

    def _post(self, trial: _Trial, event: _Event) -> None:
        if trial.phase is not Phase.CONCLUDED:
            trial.queue.put_nowait(event)

    def _after(self, trial: _Trial, delay: float, kind: str) -> None:
        loop = asyncio.get_running_loop()
        trial.timers.append(loop.call_later(delay, self._post, trial, _Event(kind)))

    def _on_job_event(self, kind: str, obj: JSON) -> None:
        trial = self._by_job.get(obj.get("metadata", {}).get("name", ""))
        if trial is not None:
            self._post(trial, _Event("job", obj, text=kind))

    def _on_pod_event(self, kind: str, pod: JSON) -> None:
        trial = self._trial_of_pod(pod)
        if trial is not None:
            self._post(trial, _Event("pod", pod, text=kind))

    def _on_warning_event(self, kind: str, event: JSON) -> None:
        """A Warning event: FailedCreatePod on a job, FailedScheduling on a pod, a quota or a webhook..."""
        if kind == "DELETED":
            return
        involved = event.get("involvedObject") or {}
        name = str(involved.get("name") or "")
        trial = self._by_job.get(name)
        if trial is None and self._pod_watch is not None and name in self._pod_watch.cache:
            trial = self._trial_of_pod(self._pod_watch.cache[name])
        if trial is None:
            return
        self._post(trial, _Event("warning", event, text=str(event.get("reason") or "")))

    async def _run_trial(self, trial: _Trial) -> None:
        """The trial's worker: its events, one at a time, until it is concluded."""
        while trial.phase is not Phase.CONCLUDED:
            event = await trial.queue.get()
            try:
                await self._handle(trial, event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Trial %s: handling a %s event failed; the trial fails.", trial.id, event.kind)
                if not trial.done.is_set():
                    trial.facts.forced = (f"nni-ts failed while handling a {event.kind} event of the trial.", True)
                    await self._conclude(trial)

    # ------------------------------------------------------------------ events: one trial's worker

    #: The phases in which a trial's job may still run (a cancel stops it).
    _LIVE = frozenset({Phase.ACTIVE, Phase.SETTLING, Phase.REQUEUED})
    #: The events a REQUEUED trial handles (the others concern the run Kueue evicted).
    _WHILE_REQUEUED = frozenset({"workload", "job", "pod", "fail", "cancel", "stop_timeout"})

    #: Warning event reasons that mean the job cannot create its pods (a wrong spec, a quota, a webhook).
    _CANNOT_CREATE = frozenset({"FailedCreatePod", "FailedCreate", "PodCreationFailed"})

    async def _handle(self, trial: _Trial, ev: _Event) -> None:
        phase = trial.phase
        facts = trial.facts
        if phase is Phase.REQUEUED and ev.kind not in self._WHILE_REQUEUED:
            return  # the evicted run's keeper, its timers and its pods' warnings: not the trial's
        if ev.kind == "workload":
            assert ev.obj is not None
            await kt.on_workload(self, trial, ev.obj)
        elif ev.kind == "job":
            assert ev.obj is not None
            await self._on_job(trial, ev.text, ev.obj)
        elif ev.kind == "pod":
            assert ev.obj is not None
            await self._on_pod(trial, ev.text, ev.obj)
        elif ev.kind == "warning":
            assert ev.obj is not None
            message = f"{ev.text}: {ev.obj.get('message') or ''}".strip()
            if message not in facts.warnings:
                facts.warnings.append(message)
            self.reporter.waiting(trial.id, f"Waiting: {message}")
            kind = (ev.obj.get("involvedObject") or {}).get("kind")
            if ev.text in self._CANNOT_CREATE and kind == self.kind and phase is Phase.ACTIVE:
                facts.cannot_create = str(ev.obj.get("message") or ev.text)
                if facts.keeper_exit is None:
                    await self._stop(trial)
        elif ev.kind == "keeper_started":
            facts.queued, facts.admitted = None, True  # a keeper runs: whatever a queue said, it was admitted
            self._mark_running(trial, int(ev.text) if ev.text else None)
        elif ev.kind == "keeper_exited":
            if phase is Phase.ACTIVE:
                if facts.job_final is not None or trial.job_gone:
                    await self._conclude(trial)
                else:
                    # Wait (bounded) for the job's final state: the trial holds its slot until its job has
                    # ended, and an OOM kill or an eviction is not missed.
                    trial.move(Phase.SETTLING)
                    self._after(trial, self.settle_timeout, "settle_timeout")
        elif ev.kind == "settle_timeout":
            if phase is Phase.SETTLING:
                await self._stop(trial)
        elif ev.kind == "keeper_lost":
            if phase is Phase.ACTIVE:
                self._keeper_lost(trial, ev.text)
                assert self.stager is not None
                self.stager.keeper_lost(trial.id, self._channel_attempt(trial), trial.primary_pod)
        elif ev.kind == "heartbeat":
            if self.reporter.status(trial.id) is TrialJobStatus.UNKNOWN:
                self.reporter.running(trial.id, message="The trial's keeper is back.")
        elif ev.kind == "pending_timeout":
            if pending_timeout_applies(phase, facts) and self.reporter.status(trial.id) is TrialJobStatus.WAITING:
                limit = self.config.pending_timeout
                why = facts.problem.message if facts.problem else facts.warnings[-1] if facts.warnings else None
                facts.forced = (
                    f"The trial's pods stayed Pending for {limit:g} s (trainingService.pendingTimeout), so the "
                    f"{self.kind} {trial.job} was deleted. {why or 'No pod of the trial started.'}",
                    False,
                )
                await self._stop(trial)
        elif ev.kind == "fail":
            if phase in self._LIVE and facts.forced is None and facts.cancel_status is None:
                facts.forced = (ev.text, True)
                await self._stop(trial)
        elif ev.kind == "cancel":
            assert ev.status is not None
            if facts.cancel_status is None and facts.forced is None:
                facts.cancel_status = ev.status
            if phase in self._LIVE:
                await self._stop(trial)
        elif ev.kind == "stop_timeout":
            if phase is Phase.STOPPING:
                log.warning("The pods of %s %s are still there after the grace period.", self.kind, trial.job)
                await self._read_back(trial)
                await self._conclude(trial)

    async def _on_job(self, trial: _Trial, kind: str, obj: JSON) -> None:
        facts = trial.facts
        if kind == "DELETED":
            trial.job_gone = True
            if trial.phase in self._LIVE and facts.job_final is None:
                facts.job_vanished = True
                await self._finish(trial)
            elif trial.phase is Phase.STOPPING:
                await self._stopped_if_gone(trial)
            return
        kt.held_if_suspended(self, trial, obj)
        view = self._job_view(obj)
        if view.phase == "running":
            self._mark_running(trial)
        if view.finished and facts.job_final is None:
            facts.job_final = view
            if trial.phase is Phase.SETTLING:
                await self._conclude(trial)
            elif trial.phase in (Phase.ACTIVE, Phase.REQUEUED):
                await self._finish(trial)

    async def _on_pod(self, trial: _Trial, kind: str, pod: JSON) -> None:
        facts = trial.facts
        name = pod["metadata"]["name"]
        if trial.phase is Phase.REQUEUED:
            await kt.on_evicted_pod(self, trial, kind, pod)
            return
        if (
            pod["metadata"].get("deletionTimestamp")
            and trial.phase in (Phase.ACTIVE, Phase.SETTLING)
            and facts.pod_deleted is None
            and pod_phase(pod) == "Running"
            and not any(pod_phase(p) in ("Succeeded", "Failed") for p in trial.pods.values())
        ):
            # A running pod deleted while no pod of the trial had ended: not by its controller cleaning up
            # after a finished replica, so by someone else (kubectl delete pod, a drain's eviction). Only the
            # pod watch's own order is relied upon: the keeper's exit report and the job's final state may
            # well be handled before this event (other connections). decide() then takes a signal exit
            # (143) for the deletion's consequence, and any other exit for the trial's own.
            facts.pod_deleted = name
        if kind == "DELETED":
            trial.pods.pop(name, None)
            if trial.phase is Phase.STOPPING:
                await self._stopped_if_gone(trial)
                return
            if trial.phase is not Phase.ACTIVE:
                return
        else:
            trial.pods[name] = pod
        problem = pod_problem(pod)
        if problem is not None and (facts.problem is None or problem.kind in ("evicted", "oom")):
            facts.problem = problem
            self.reporter.waiting(trial.id, f"Waiting: {problem.message}")
        if name == trial.primary_pod:
            code = terminated_exit_code(pod)
            if code is not None:
                first, facts.primary_exit = facts.primary_exit is None, code
                if first and facts.keeper_exit is None and self.stager is not None and self.stager.reads_pod_logs:
                    await self._read_back(trial)  # the pod's log, before a controller deletes the pod
        if kind != "DELETED" and pod_phase(pod) in ("Running", "Succeeded", "Failed") and problem is None:
            self._mark_running(trial)
        if problem is not None and problem.kind == "evicted" and trial.phase is Phase.ACTIVE:
            # An evicted pod does not come back; its job may not say so for a while (a restart policy).
            await self._read_back(trial)
            if facts.keeper_exit is None and facts.job_final is None:
                await self._stop(trial)

    def _mark_running(self, trial: _Trial, when: int | None = None) -> None:
        if when is None and not running_signal_counts(trial.phase, trial.facts):
            return  # a pod of a run Kueue evicted, or a stale event while Kueue holds the trial
        if self.reporter.status(trial.id) is TrialJobStatus.WAITING:
            self.reporter.running(trial.id, message="", when=when)

    def _keeper_lost(self, trial: _Trial, message: str) -> None:
        running = [p for p in trial.pods.values() if pod_phase(p) == "Running"]
        if running and all(w.error is None for w in self._watchers):
            # The pods run, as the watch says: the network between them and the manager is the problem,
            # and the journal will bring the metrics when the job ends.
            log.warning("Trial %s: %s; its pods still run, the journal will be read when it ends.", trial.id, message)
            self.reporter.note(
                trial.id, message=f"{message} The pods still run; metrics will be read from the journal."
            )
            return
        self.reporter.unknown(trial.id, message)

    # ------------------------------------------------------------------ the end of a trial

    async def _finish(self, trial: _Trial) -> None:
        """The job finished or vanished: read back what the keeper could not report, then conclude."""
        trial.move(Phase.FINISHING)
        trial.cancel_timers()
        facts = trial.facts
        if facts.keeper_exit is None:
            await self._read_back(trial)
        if facts.keeper_exit is None and facts.job_final is not None and facts.job_final.phase == "failed":
            # The keeper could not even record an exit (no python in the image, killed...): the launcher
            # may have left the reason on the share; else the pod's last lines usually say why (one
            # request, on this failure path only).
            assert self.stager is not None
            with contextlib.suppress(OSError, PlatformError):
                reason = await self.stager.read_file(trial.id, "launcher-error", 4096)
                facts.log_tail = reason.decode("utf-8", "replace").strip()
            if not facts.log_tail and trial.primary_pod:
                facts.log_tail = await self._pod_log_tail(trial.primary_pod)
        if trial.pods and facts.keeper_exit is not None and not trial.job_gone and facts.job_final is None:
            await self._stop(trial)  # a vanished job leaves no pods running: only defensive
            return
        await self._conclude(trial)

    async def _pod_log_tail(self, pod: str, lines: int = 10, limit: int = 4096) -> str:
        """The pod's last ``lines`` lines, at most their last ``limit`` bytes (streamed: ``limitBytes``
        would keep the *first* bytes of those lines, where the reason a trial failed is at the end)."""
        tail = bytearray()
        path = f"{self._collection('pods')}/{pod}/log"
        try:
            async with asyncio.timeout(10):
                async for chunk in self.kube.stream_bytes(path, {"tailLines": lines}):
                    tail += chunk
                    del tail[:-limit]
        except (KubeApiError, TemporaryError, TimeoutError, aiohttp.ClientError) as exc:
            log.info("No log for pod %s: %s", pod, exc)
            return ""
        return tail.decode("utf-8", "replace").strip()

    async def _read_back(self, trial: _Trial) -> None:
        assert self.stager is not None
        try:
            records, ended = await self.stager.read_back(trial.id, kt.attempt_of(self, trial), pod=trial.primary_pod)
        except (OSError, PlatformError) as exc:
            log.warning("Could not read trial %s's directory back: %s", trial.id, exc)
            return
        try:
            channel = self.server.channel(trial.id)
        except KeyError:
            return
        try:
            if records:
                await channel.feed(records)
        except ValueError as exc:  # far beyond a gap: those records cannot come in order anyway
            log.warning("Trial %s: the records read back from its pod's log are not delivered: %s", trial.id, exc)
        if ended is not None:
            code, end_ms = int(ended["exit_code"]), int(ended["end_time_ms"])
            if not await channel.finish(code, end_ms, int(ended["record_count"])):
                # Records before the exit are in no log (rotated out): the exit still says how the trial ended.
                trial.facts.log_exit = (code, channel.next_seq)
                trial.end_ms = trial.end_ms or end_ms

    async def _stop(self, trial: _Trial) -> None:
        """Stop and delete the job; the trial is concluded once its pods are gone (the pod watch says so)
        or after the grace period."""
        trial.move(Phase.STOPPING)
        trial.cancel_timers()
        if trial.job_created and not trial.job_gone:
            try:
                if not await self._stop_job(trial):
                    trial.job_gone = True  # it was gone already
            except (KubeApiError, TemporaryError) as exc:
                log.warning("Could not stop %s %s: %s", self.kind, trial.job, exc)
                trial.job_gone = True
        else:
            trial.job_gone = True
        if not await self._stopped_if_gone(trial):
            self._after(trial, self.config.cancel_grace_period + 30, "stop_timeout")

    async def _stopped_if_gone(self, trial: _Trial) -> bool:
        if trial.phase is not Phase.STOPPING or not trial.job_gone or trial.pods:
            return False
        await self._read_back(trial)
        await self._conclude(trial)
        return True

    async def _conclude(self, trial: _Trial) -> None:
        """Decide the trial's terminal status from the facts (:func:`.lifecycle.decide`) and report it."""
        trial.move(Phase.CONCLUDED)
        trial.cancel_timers()
        trial.done.set()
        self._by_job.pop(trial.job, None)
        self._by_label.pop(trial.label, None)
        with contextlib.suppress(KeyError):
            self.server.unregister(trial.id)
        if self.reporter.status(trial.id).is_terminal:
            return
        names = Names(
            self.kind,
            trial.job,
            trial.detail.working_directory,
            trial.primary_pod,
            shared_storage=self.config.storage.storage_type != "none",
        )
        d = decide(trial.facts, names)
        known = trial.facts.keeper_exit is not None or trial.facts.log_exit is not None
        end = trial.end_ms if known else None
        await self.reporter.ended(
            trial.id,
            d.status,
            message=d.message,
            exit_code=d.exit_code,
            infrastructure_failure=d.infrastructure,
            when=end,
        )

    # ------------------------------------------------------------------ cancel, files, clean-up

    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        trial = self._k8s.get(detail.id)
        if trial is None or trial.phase is Phase.CONCLUDED:
            return
        self._post(trial, _Event("cancel", status=status))
        await trial.done.wait()

    async def _read_trial_file(self, detail: TrialJobDetail, name: str, tail: int | None) -> bytes:
        if self.stager is None:
            return b""
        trial = self._k8s.get(detail.id)
        return await self.stager.read_file(detail.id, name, tail, pod=trial.primary_pod if trial else None)

    async def _clean_up(self) -> None:
        # The live trials were cancelled (concluded) before this: their workers have ended.
        self._closing = True
        if self.client is not None and self.anchor is not None:
            # Deleting the anchor garbage-collects every job, pod and Secret of the experiment.
            try:
                await self._delete(self._collection("configmaps"), self.anchor["metadata"]["name"], "Background")
            except (KubeApiError, TemporaryError) as exc:
                log.warning("Could not delete the experiment's anchor ConfigMap: %s", exc)
        await self._close_resources()

    async def _close_resources(self) -> None:
        await self.tasks.stop(timeout=self.config.cancel_grace_period + 40)
        for w in self._watchers:
            await w.stop()
        for trial in self._k8s.values():
            trial.cancel_timers()
        if self._own_server and self._server is not None:
            await self._server.close()
        if self.stager is not None:
            await self.stager.close()
        if self.client is not None:
            await self.client.close()
            self.client = None

    # ------------------------------------------------------------------ introspection

    def request_count(self) -> int:
        """API requests this service sent so far (the benchmark compares it with the server's count)."""
        return self.client.sent if self.client is not None else 0
