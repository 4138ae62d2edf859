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
  through the same de-duplication);
* the job's final state and the pods' problems (evicted: an infrastructure failure; OOMKilled, a wrong
  image, an unschedulable pod: a message saying what to change);
* a cancel, or the pending time-out (``pendingTimeout``: reported, then the job is stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiohttp

from ...config.kubernetes import KubernetesPlatformConfig
from ...errors import ConfigError, MetricRefused, PlatformError, TemporaryError
from ...models import TrialJobDetail, TrialJobStatus
from ...server import ClusterServer
from ...training_service import TrainingService
from . import manifest as mf
from .client import JSON, KubeApiError, KubeClient, load_client
from .names import LABEL_TRIAL, label_value, secret_name
from .staging import LocalStager, SftpStager, Stager
from .status import JobView, PodProblem, pod_phase, pod_problem, terminated_exit_code
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


@dataclass(eq=False)
class _Trial:
    """The platform's bookkeeping for one trial."""

    detail: TrialJobDetail
    job: str
    attempt: int = 1
    primary_pod: str = ""
    label: str = ""
    job_created: bool = False
    job_obj: JSON | None = None
    job_final: JobView | None = None
    job_vanished: bool = False
    job_deleted: bool = False
    pods: dict[str, JSON] = field(default_factory=dict)
    problem: PodProblem | None = None
    primary_exit: int | None = None
    keeper_exit: tuple[int, int] | None = None
    cancel_status: TrialJobStatus | None = None
    forced: tuple[str, bool] | None = None  # (message, infrastructure) of a failure the platform decided
    stopping: bool = False
    concluded: bool = False
    finalizing: bool = False
    log_tail: str = ""
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return self.detail.id

    def cancel_timers(self) -> None:
        for t in self.timers:
            t.cancel()
        self.timers.clear()


class _Sink:
    """The ClusterServer's sink for one trial: every keeper event goes back to the service."""

    def __init__(self, service: KubernetesTrainingService[Any], trial: _Trial) -> None:
        self.service = service
        self.trial = trial

    async def on_started(self, start_time_ms: int, host: str, pid: int) -> None:
        self.service._keeper_started(self.trial, start_time_ms, host)

    async def on_records(self, records: list[tuple[int, str]]) -> int:
        accepted = 0
        for _seq, data in records:
            try:
                await self.service.reporter.metric(self.trial.id, data)
            except MetricRefused as exc:
                log.warning("%s", exc)
                break
            accepted += 1
        return accepted

    async def on_exited(self, exit_code: int, end_time_ms: int) -> None:
        self.service._keeper_exited(self.trial, exit_code, end_time_ms)

    async def on_lost(self, message: str) -> None:
        self.service._keeper_lost(self.trial, message)

    async def on_heartbeat(self) -> None:
        if self.service.reporter.status(self.trial.id) is TrialJobStatus.UNKNOWN:
            self.service.reporter.running(self.trial.id, message="The trial's keeper is back.")

    async def on_rejected(self, message: str) -> None:
        self.service._force_failure(self.trial, message, infrastructure=True)


class KubernetesTrainingService(TrainingService[ConfigT]):
    """The shared machinery of the Kubernetes platforms (see the module docstring).

    Keyword arguments beyond the contract's, for tests and embedding:
    ``server``: a running ClusterServer to use (else the service starts its own);
    ``keeper_server_url``: the URL given to the pods instead of the server's own (tests make the manager
    unreachable with it); ``settle_timeout``: seconds to wait for the job's final state after a keeper
    reported a non-zero exit.
    """

    #: The custom resource: API group, version, plural and kind. Set by subclasses (may depend on config).
    group: ClassVar[str] = ""
    version: ClassVar[str] = "v1"

    def __init__(
        self,
        config: Any = None,
        *,
        server: ClusterServer | None = None,
        keeper_server_url: str | None = None,
        settle_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self._server = server
        self._own_server = server is None
        self.keeper_server_url = keeper_server_url
        self.settle_timeout = settle_timeout
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
        self._tasks: set[asyncio.Task[Any]] = set()
        self._swept = False
        #: Jobs deleted because no trial owned them (a crashed earlier run's leftovers).
        self.orphans_swept: list[str] = []

    # ------------------------------------------------------------------ for subclasses

    @property
    def plural(self) -> str:
        raise NotImplementedError

    @property
    def kind(self) -> str:
        raise NotImplementedError

    def _job_name(self, trial_id: str) -> str:
        raise NotImplementedError

    def _primary_pod(self, job: str) -> str:
        raise NotImplementedError

    def _build_job(self, trial: _Trial, keeper: mf.KeeperSpec) -> JSON:
        raise NotImplementedError

    def _job_view(self, obj: JSON) -> JobView:
        raise NotImplementedError

    async def _stop_job(self, trial: _Trial) -> bool:
        """Stop and delete the trial's job; return False if it did not exist any more."""
        raise NotImplementedError

    def _registry_auth_paths(self) -> list[str]:
        return []

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
        self._job_watch = Watcher(self.kube, self._collection(), selector, self._on_job_event, name=self.plural)
        self._pod_watch = Watcher(self.kube, self._collection("pods"), selector, self._on_pod_event, name="pods")
        self._watchers = [self._job_watch, self._pod_watch]
        for w in self._watchers:
            w.start()
        try:
            await self._job_watch.wait_synced(60)
        except KubeApiError as exc:
            if exc.status == 404:
                raise PlatformError(
                    f"The cluster does not serve {self.plural}.{self.group}/{self.version} in namespace "
                    f"{self.namespace}: {self._missing_crd_hint()} ({exc.api_message})"
                ) from exc
            raise
        await self._pod_watch.wait_synced(60)
        self.anchor = await self._ensure_anchor()
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
        await self._start_server()

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
            secret = bytes.fromhex(state["secret"]) if "secret" in state else secrets.token_bytes(32)
            port = cfg.cluster_server_port or int(state.get("port") or 0)
            bind = advertised if _is_local_address(advertised) else "0.0.0.0"
            heartbeat_timeout = max(3 * cfg.keeper_heartbeat, 5.0)
            self._server = ClusterServer(bind, port, secret=secret, heartbeat_timeout=heartbeat_timeout)
            try:
                await self._server.start()
            except OSError as exc:
                if not port or cfg.cluster_server_port:
                    raise PlatformError(
                        f"Cannot listen on {bind}:{port} for the trial keepers (trainingService.clusterServerPort, "
                        f"nniManagerIp): {exc.strerror or exc}."
                    ) from exc
                log.warning("Port %d is taken; the trial keepers of a previous run will use the journal.", port)
                self._server = ClusterServer(bind, 0, secret=secret, heartbeat_timeout=heartbeat_timeout)
                await self._server.start()
            path = self._server_state_file()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps({"port": self._server.port, "secret": secret.hex()}))

    def _keeper_url(self) -> str:
        if self.keeper_server_url:
            return self.keeper_server_url
        host = self._advertised
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.server.port}"

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
            token=self.server.token_for(trial.id),
            heartbeat=cfg.keeper_heartbeat,
            grace=cfg.cancel_grace_period,
            report_timeout=cfg.report_timeout,
            env=dict(trial.detail.form.env),
        )

    def _command_for(self, base: str, detail: TrialJobDetail) -> str:
        cfg = self.config
        return mf.trial_command(
            base,
            detail.form.hyper_parameters.value,
            prepare=cfg.trial_prepare_command,
            as_args=cfg.hyperparameters_as_args,
        )

    async def _submit(self, detail: TrialJobDetail) -> None:
        assert self.stager is not None
        if not self._swept:
            self._swept = True
            self._spawn(self._sweep_orphans(), f"nni-ts-{self.platform_name}-sweep")
        trial = _Trial(detail=detail, job=self._job_name(detail.id))
        detail.working_directory = self.stager.trial_location(detail.id)
        detail.platform_data = {"job": trial.job, "namespace": self.namespace, "kind": self.plural, "attempt": 1}
        try:
            await self.stager.refresh(Path(self.config.trial_code_directory).expanduser().resolve())
            await self.stager.write_trial(detail.id, {"parameter.cfg": detail.form.hyper_parameters.value.encode()})
        except OSError as exc:
            raise PlatformError(
                f"Cannot write trial {detail.id}'s directory {detail.working_directory} on the shared storage: {exc}"
            ) from exc
        self._track(trial)
        self.server.register(detail.id, _Sink(self, trial), attempt=trial.attempt)
        body = self._build_job(trial, self._keeper_spec(trial))
        try:
            await self.kube.request("POST", self._collection(), body=body)
        except KubeApiError as exc:
            if exc.status != 409:  # 409: a retried create whose first answer was lost
                self._untrack(trial)
                if exc.status in (400, 403, 422):
                    trial.concluded = True
                    self._set_status(
                        detail.id,
                        TrialJobStatus.FAILED,
                        message=f"The cluster refused the {self.kind} of this trial: {exc.api_message}",
                    )
                    return
                raise
        except TemporaryError:
            self._untrack(trial)
            raise
        trial.job_created = True
        loop = asyncio.get_running_loop()
        trial.timers.append(loop.call_later(self.config.pending_timeout, self._pending_expired, trial))
        # Events that arrived before the trial was tracked (a fast watch) are in the caches.
        self._replay_cached(trial)

    def _untrack(self, trial: _Trial) -> None:
        self._by_job.pop(trial.job, None)
        self._by_label.pop(trial.label, None)
        self.server.unregister(trial.id)
        trial.cancel_timers()

    def _replay_cached(self, trial: _Trial) -> None:
        if self._job_watch is not None and trial.job in self._job_watch.cache:
            self._on_job_event("MODIFIED", self._job_watch.cache[trial.job])
        if self._pod_watch is not None:
            for pod in list(self._pod_watch.cache.values()):
                if (pod["metadata"].get("labels") or {}).get(LABEL_TRIAL) == trial.label:
                    self._on_pod_event("MODIFIED", pod)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("Background task %s failed.", t.get_name(), exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def _sweep_orphans(self) -> None:
        """Delete the jobs of this experiment that no trial owns: leftovers of a run that crashed."""
        assert self._job_watch is not None
        for name in list(self._job_watch.cache):
            if name in self._by_job:
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
        self.server.register(detail.id, _Sink(self, trial), attempt=trial.attempt, next_seq=metrics_delivered)
        assert self._job_watch is not None
        if job in self._job_watch.cache:
            self._replay_cached(trial)
            loop = asyncio.get_running_loop()
            if trial.detail.status is TrialJobStatus.WAITING:
                trial.timers.append(loop.call_later(self.config.pending_timeout, self._pending_expired, trial))
        else:
            trial.job_vanished = True
            self._spawn(self._finalize(trial), f"nni-ts-{self.platform_name}-finalize-{detail.id}")

    # ------------------------------------------------------------------ events

    def _trial_of_pod(self, pod: JSON) -> _Trial | None:
        label = (pod.get("metadata", {}).get("labels") or {}).get(LABEL_TRIAL)
        return self._by_label.get(label) if label else None

    def _on_job_event(self, kind: str, obj: JSON) -> None:
        name = obj.get("metadata", {}).get("name", "")
        trial = self._by_job.get(name)
        if trial is None or trial.concluded and not trial.stopping:
            return
        if kind == "DELETED":
            trial.job_obj = None
            trial.job_deleted = True
            if trial.job_created and not trial.stopping and not trial.concluded:
                trial.job_vanished = True
                self._spawn(self._finalize(trial), f"nni-ts-{self.platform_name}-finalize-{trial.id}")
            self._check_gone(trial)
            return
        trial.job_obj = obj
        view = self._job_view(obj)
        if view.phase == "running":
            self._mark_running(trial)
        if view.finished and trial.job_final is None:
            trial.job_final = view
            if not trial.stopping:
                self._spawn(self._finalize(trial), f"nni-ts-{self.platform_name}-finalize-{trial.id}")

    def _on_pod_event(self, kind: str, pod: JSON) -> None:
        trial = self._trial_of_pod(pod)
        if trial is None:
            return
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            trial.pods.pop(name, None)
            self._check_gone(trial)
            if trial.stopping or trial.concluded:
                return
        else:
            trial.pods[name] = pod
        problem = pod_problem(pod)
        if problem is not None and (trial.problem is None or problem.kind in ("evicted", "oom")):
            trial.problem = problem
            if trial.detail.status is TrialJobStatus.WAITING:
                trial.detail.message = f"Waiting: {problem.message}"
        if name == trial.primary_pod:
            code = terminated_exit_code(pod)
            if code is not None:
                trial.primary_exit = code
        if kind != "DELETED" and pod_phase(pod) in ("Running", "Succeeded", "Failed") and problem is None:
            self._mark_running(trial)
        if problem is not None and problem.kind == "evicted" and not trial.concluded and not trial.stopping:
            # An evicted pod does not come back; its job may not say so for a while (a restart policy).
            self._spawn(self._finalize(trial), f"nni-ts-{self.platform_name}-finalize-{trial.id}")

    def _check_gone(self, trial: _Trial) -> None:
        if trial.job_deleted and not trial.pods:
            trial.gone.set()

    def _mark_running(self, trial: _Trial) -> None:
        if trial.detail.status is TrialJobStatus.WAITING:
            self._set_status(trial.id, TrialJobStatus.RUNNING, message="")
            trial.detail.message = None

    def _keeper_started(self, trial: _Trial, start_ms: int, host: str) -> None:
        if host and trial.detail.host is None:
            trial.detail.host = host
        if trial.detail.status is TrialJobStatus.WAITING:
            self._set_status(trial.id, TrialJobStatus.RUNNING, when=start_ms)
            trial.detail.message = None

    def _keeper_exited(self, trial: _Trial, code: int, end_ms: int) -> None:
        trial.keeper_exit = (code, end_ms)
        if trial.stopping or trial.concluded:
            return
        if code == 0 or trial.job_final is not None or trial.job_vanished:
            self._conclude(trial)
            return
        # A non-zero exit: wait (bounded) for the job's and pods' final word (OOMKilled, evicted...).
        loop = asyncio.get_running_loop()
        trial.timers.append(loop.call_later(self.settle_timeout, self._conclude, trial))

    def _keeper_lost(self, trial: _Trial, message: str) -> None:
        if trial.concluded or trial.stopping:
            return
        running = [p for p in trial.pods.values() if pod_phase(p) == "Running"]
        if running and all(w.error is None for w in self._watchers):
            # The pods run, as the watch says: the network between them and the manager is the problem,
            # and the journal will bring the metrics when the job ends.
            log.warning("Trial %s: %s; its pods still run, the journal will be read when it ends.", trial.id, message)
            trial.detail.message = f"{message} The pods still run; metrics will be read from the journal."
            return
        self._set_status(trial.id, TrialJobStatus.UNKNOWN, message=message)

    def _pending_expired(self, trial: _Trial) -> None:
        if trial.concluded or trial.stopping or trial.detail.status is not TrialJobStatus.WAITING:
            return
        limit = self.config.pending_timeout
        why = trial.problem.message if trial.problem else "no pod of the trial started"
        self._force_failure(
            trial,
            f"The trial's pods stayed Pending for {limit:g} s (trainingService.pendingTimeout), so the "
            f"{self.kind} {trial.job} was deleted. {why}",
            infrastructure=False,
        )

    def _force_failure(self, trial: _Trial, message: str, *, infrastructure: bool) -> None:
        if trial.concluded or trial.stopping:
            return
        trial.forced = (message, infrastructure)
        self._spawn(self._stop_trial(trial), f"nni-ts-{self.platform_name}-stop-{trial.id}")

    # ------------------------------------------------------------------ the end of a trial

    async def _finalize(self, trial: _Trial) -> None:
        """The job finished (or vanished, or a pod was evicted): read back what the keeper could not
        report, then decide."""
        if trial.concluded or trial.finalizing or trial.stopping:
            return
        trial.finalizing = True
        try:
            if trial.keeper_exit is None:
                await self._read_back(trial)
            if trial.keeper_exit is None and trial.job_final is None and trial.problem is not None:
                if trial.problem.kind == "evicted":
                    # Stop what is left of the job so that nothing runs on after the trial failed.
                    trial.forced = (trial.problem.message, True)
                    await self._stop_trial(trial)
                    return
            if trial.keeper_exit is None and trial.job_final is not None and trial.job_final.phase == "failed":
                # The keeper could not even record an exit (no python in the image, killed...): the launcher
                # may have left the reason on the share; else the pod's last lines usually say why (one
                # request, on this failure path only).
                assert self.stager is not None
                with contextlib.suppress(OSError, PlatformError):
                    reason = await self.stager.read_file(trial.id, "launcher-error", 4096)
                    trial.log_tail = reason.decode("utf-8", "replace").strip()
                if not trial.log_tail:
                    trial.log_tail = await self._pod_log_tail(trial.primary_pod)
            self._conclude(trial)
        finally:
            trial.finalizing = False

    async def _pod_log_tail(self, pod: str, lines: int = 10) -> str:
        try:
            async with asyncio.timeout(10):
                body = await self.kube.request_text(
                    "GET", f"{self._collection('pods')}/{pod}/log", query={"tailLines": lines, "limitBytes": 4096}
                )
        except (KubeApiError, TemporaryError, TimeoutError, aiohttp.ClientError) as exc:
            log.info("No log for pod %s: %s", pod, exc)
            return ""
        return body.strip()

    async def _read_back(self, trial: _Trial) -> None:
        assert self.stager is not None
        try:
            records, ended = await self.stager.read_back(trial.id, trial.attempt)
        except (OSError, PlatformError) as exc:
            log.warning("Could not read trial %s's directory back: %s", trial.id, exc)
            return
        try:
            channel = self.server.channel(trial.id)
        except KeyError:
            return
        if records:
            await channel.feed(records)
        if ended is not None:
            await channel.finish(int(ended["exit_code"]), int(ended["end_time_ms"]), int(ended["record_count"]))

    async def _stop_trial(self, trial: _Trial) -> None:
        """Stop the job, wait until its pods are gone, deliver what is left, then conclude."""
        if trial.stopping:
            await trial.gone.wait()
            return
        trial.stopping = True
        trial.cancel_timers()
        try:
            if trial.job_created and not trial.job_deleted:
                try:
                    if not await self._stop_job(trial):
                        trial.job_deleted = True  # it was gone already
                except (KubeApiError, TemporaryError) as exc:
                    log.warning("Could not stop %s %s: %s", self.kind, trial.job, exc)
                    trial.job_deleted = True
                self._check_gone(trial)
                try:
                    async with asyncio.timeout(self.config.cancel_grace_period + 30):
                        await trial.gone.wait()
                except TimeoutError:
                    log.warning("The pods of %s %s are still there after the grace period.", self.kind, trial.job)
            await self._read_back(trial)
        finally:
            trial.gone.set()
            self._conclude(trial)

    def _conclude(self, trial: _Trial) -> None:
        """Decide the trial's terminal status from what is known (see the module docstring)."""
        if trial.concluded:
            return
        trial.concluded = True
        trial.cancel_timers()
        detail = trial.detail
        with contextlib.suppress(KeyError):
            self.server.unregister(trial.id)
        if detail.status.is_terminal:
            return
        status, message, code, infra = self._decide(trial)
        end = trial.keeper_exit[1] if trial.keeper_exit else None
        self._set_status(trial.id, status, message=message, exit_code=code, infrastructure_failure=infra, when=end)

    def _decide(self, trial: _Trial) -> tuple[TrialJobStatus, str | None, int | None, bool]:
        keeper_code = trial.keeper_exit[0] if trial.keeper_exit else None
        if trial.forced is not None:
            message, infra = trial.forced
            return TrialJobStatus.FAILED, message, keeper_code, infra
        if trial.cancel_status is not None:
            return trial.cancel_status, "Cancelled.", keeper_code, False
        problem, view = trial.problem, trial.job_final
        if problem is not None and problem.kind == "evicted":
            return TrialJobStatus.FAILED, problem.message, keeper_code, True
        if keeper_code == 0:
            return TrialJobStatus.SUCCEEDED, None, 0, False
        if view is not None and view.infrastructure and keeper_code is None:
            return TrialJobStatus.FAILED, view.message, view.exit_code, True
        if keeper_code is not None:
            message = f"The trial command exited with code {keeper_code}."
            if problem is not None and problem.kind == "oom":
                message += f" {problem.message}"
            elif view is not None and view.phase == "failed" and view.message:
                message += f" {view.message}"
            return TrialJobStatus.FAILED, message, keeper_code, False
        code = view.exit_code if view is not None and view.exit_code is not None else trial.primary_exit
        if trial.job_vanished and view is None:
            return (
                TrialJobStatus.FAILED,
                f"The {self.kind} {trial.job} was deleted outside nni-ts before the trial ended.",
                code,
                True,
            )
        if view is not None and view.phase == "succeeded":
            return (
                TrialJobStatus.FAILED,
                f"The {self.kind} {trial.job} succeeded, but the trial keeper left no exit record in "
                f"{trial.detail.working_directory}: the pods may not see the storage the manager writes to "
                "(check trainingService.storage: server, path, localMountPath).",
                code,
                False,
            )
        parts = [view.message if view is not None and view.message else f"The {self.kind} {trial.job} failed."]
        if problem is not None:
            parts.append(problem.message)
        parts.append("The trial keeper did not record an exit (it was killed with the trial, or never started).")
        if trial.log_tail:
            parts.append(f"From pod {trial.primary_pod}: {trial.log_tail}")
        return TrialJobStatus.FAILED, " ".join(parts), code, False

    # ------------------------------------------------------------------ cancel, files, clean-up

    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        trial = self._k8s.get(detail.id)
        if trial is None:
            return
        if trial.cancel_status is None and trial.forced is None:
            trial.cancel_status = status
        await self._stop_trial(trial)

    async def _read_trial_file(self, detail: TrialJobDetail, name: str, tail: int | None) -> bytes:
        if self.stager is None:
            return b""
        return await self.stager.read_file(detail.id, name, tail)

    async def _clean_up(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(self.config.cancel_grace_period + 40):
                    await asyncio.shield(task)
        if self.client is not None and self.anchor is not None:
            # Deleting the anchor garbage-collects every job, pod and Secret of the experiment.
            try:
                await self._delete(self._collection("configmaps"), self.anchor["metadata"]["name"], "Background")
            except (KubeApiError, TemporaryError) as exc:
                log.warning("Could not delete the experiment's anchor ConfigMap: %s", exc)
        await self._close_resources()

    async def _close_resources(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
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
