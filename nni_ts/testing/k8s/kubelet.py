"""The simulated scheduler and kubelet: pods are placed on nodes by their cpu, memory and nvidia.com/gpu
requests, and each container's command runs as a real local process in its own process group.

Volumes are mapped to local directories by rewriting paths: every occurrence of a container's
``mountPath`` in its command, args, env values and workingDir is replaced by the local directory that
stands in for the volume (an NFS export from ``nfs_exports``, an emptyDir under the state directory, a
hostPath as is, configMaps and secrets written as files). Images are not pulled: the host's programs
(``python3`` on PATH) run; an image named in ``missing_images`` or containing ``doesnotexist`` never
pulls (ErrImagePull, then ImagePullBackOff).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import psutil

from ...processes import killpg, wait_pid
from ...tasks import TaskSupervisor
from .api import Api, mark_disruption
from .util import JSON, ApiError, LabelSelector, now_iso, parse_quantity

__all__ = ["Kubelet", "Node"]

log = logging.getLogger(__name__)

RESOURCES = ("cpu", "memory", "nvidia.com/gpu")
HOST_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "SYSTEMROOT", "TZ")


@dataclass
class Node:
    """A simulated node: its capacity decides which pods fit."""

    name: str
    cpu: float | str = 16
    memory: str | int = "64Gi"
    gpus: int = 0
    pods: int = 1000
    labels: dict[str, str] = field(default_factory=dict)

    def object(self) -> JSON:
        capacity = {
            "cpu": str(self.cpu),
            "memory": str(self.memory),
            "nvidia.com/gpu": str(self.gpus),
            "pods": str(self.pods),
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", **self.labels},
            },
            "spec": {},
            "status": {
                "capacity": capacity,
                "allocatable": dict(capacity),
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": now_iso(),
                        "lastTransitionTime": now_iso(),
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.name},
                ],
                "nodeInfo": {
                    "kubeletVersion": "v1.32.0-fake",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "fake://1.0",
                },
            },
        }


def pod_requests(pod: JSON) -> dict[str, float]:
    """The pod's requests (limits stand in for missing requests), summed over its containers."""
    total = dict.fromkeys(RESOURCES, 0.0)
    for c in pod.get("spec", {}).get("containers") or []:
        res = c.get("resources") or {}
        for name in RESOURCES:
            value = (res.get("requests") or {}).get(name, (res.get("limits") or {}).get(name))
            if value is not None:
                with contextlib.suppress(ValueError):
                    total[name] += parse_quantity(value)
    return total


def _node_ready(node: JSON) -> bool:
    for cond in node.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _terminal(pod: JSON) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


@dataclass
class _Container:
    name: str
    proc: _Process | None = None
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    started_at: str = ""
    finished_at: str = ""
    oom: bool = False
    waiting: tuple[str, str] | None = None


class PodRunner:
    """Runs one pod's containers and reports its status."""

    def __init__(self, kubelet: Kubelet, pod: JSON) -> None:
        self.kubelet = kubelet
        self.namespace = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.uid = pod["metadata"]["uid"]
        self.pod = pod
        self.dir: Path = kubelet.state_dir / "pods" / self.namespace / f"{self.name}-{self.uid[:8]}"
        self.containers = {c["name"]: _Container(c["name"]) for c in pod["spec"]["containers"]}
        self.init_containers: list[_Container] = []
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.stop_reason: tuple[str, str, str] | None = None  # (phase, reason, message)
        #: Deleted gracefully (the API's deletion hook): the containers' end and the terminal phase are
        #: written before the object goes, as a real kubelet (1.27+) does.
        self.deleted = False
        self.done = asyncio.Event()
        self.log_written = asyncio.Event()

    # ------------------------------------------------------------- status writes

    def _current(self) -> JSON | None:
        pod = self.kubelet.api.store.get(("", "pods"), self.namespace, self.name)
        if pod is None or pod["metadata"]["uid"] != self.uid:
            return None
        return pod

    def write_status(self, **changes: Any) -> None:
        pod = self._current()
        if pod is None:
            return
        status = copy.deepcopy(pod.get("status") or {})
        kept = [c for c in status.get("conditions") or [] if c.get("type") == "DisruptionTarget"]
        status.update(changes)
        if kept and "conditions" in changes:  # the kubelet's own conditions do not replace a disruption
            status["conditions"] = [*status["conditions"], *kept]
        self.kubelet.api.update_status(self.kubelet.pods_type, self.namespace, self.name, status)

    def container_statuses(self, waiting: tuple[str, str] | None = None) -> list[JSON]:
        out = []
        for spec in self.pod["spec"]["containers"]:
            c = self.containers[spec["name"]]
            state: JSON
            last: JSON | None = None
            if waiting is not None:
                state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
            elif c.waiting is not None:
                state = {"waiting": {"reason": c.waiting[0], "message": c.waiting[1]}}
                last = {
                    "terminated": {
                        "exitCode": c.exit_code,
                        "reason": c.reason,
                        "startedAt": c.started_at,
                        "finishedAt": c.finished_at,
                    }
                }
            elif c.exit_code is not None:
                state = {
                    "terminated": {
                        "exitCode": c.exit_code,
                        "reason": c.reason,
                        "startedAt": c.started_at,
                        "finishedAt": c.finished_at,
                        "containerID": f"fake://{self.uid}-{c.name}",
                    }
                }
            elif c.proc is not None:
                state = {"running": {"startedAt": c.started_at}}
            else:
                state = {"waiting": {"reason": "ContainerCreating"}}
            entry: JSON = {
                "name": c.name,
                "image": spec.get("image", ""),
                "imageID": f"fake://{spec.get('image', '')}",
                "ready": "running" in state,
                "started": "running" in state,
                "restartCount": c.restarts,
                "state": state,
                "containerID": f"fake://{self.uid}-{c.name}",
            }
            if last is not None:
                entry["lastState"] = last
            out.append(entry)
        return out

    def _conditions(self, ready: bool, scheduled_time: str | None = None) -> list[JSON]:
        now = now_iso()
        value = "True" if ready else "False"
        return [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled_time or now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": value, "lastTransitionTime": now},
            {"type": "Ready", "status": value, "lastTransitionTime": now},
        ]

    # ------------------------------------------------------------- running

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            await self._kill_all(signal.SIGKILL)
            self._reap_all()
            raise
        except Exception:  # noqa: BLE001 - a broken pod must not take the kubelet down
            log.exception("The fake kubelet failed to run pod %s/%s.", self.namespace, self.name)
            self.write_status(phase="Failed", reason="KubeletError", message="the fake kubelet failed")
        finally:
            self.done.set()

    async def _run(self) -> None:
        kubelet = self.kubelet
        api = kubelet.api
        for spec in self.pod["spec"]["containers"]:
            image = str(spec.get("image", ""))
            if kubelet.image_missing(image):
                msg = (
                    f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and unpack '
                    f'image "{image}": not found'
                )
                self.write_status(containerStatuses=self.container_statuses(("ErrImagePull", msg)))
                api.record_event(self.pod, "Failed", msg, "Warning", "kubelet")
                await asyncio.sleep(kubelet.image_backoff)
                if self.stopping:
                    return
                self.write_status(
                    containerStatuses=self.container_statuses(("ImagePullBackOff", f'Back-off pulling image "{image}"'))
                )
                api.record_event(self.pod, "BackOff", f'Back-off pulling image "{image}"', "Warning", "kubelet")
                await self.done.wait()
                return
        try:
            mounts = self._volumes()
            env_per_container = {
                c["name"]: {k: v if k in HOST_ENV else self._map(v, mounts) for k, v in self._env(c).items()}
                for c in self.pod["spec"]["containers"]
            }
        except _ConfigError as exc:
            self.write_status(containerStatuses=self.container_statuses(("CreateContainerConfigError", str(exc))))
            api.record_event(self.pod, "Failed", f"Error: {exc}", "Warning", "kubelet")
            await self.done.wait()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for spec in self.pod["spec"].get("initContainers") or []:
            env = {k: v if k in HOST_ENV else self._map(v, mounts) for k, v in self._env(spec).items()}
            if not await self._run_init(spec, env, mounts):
                return
        policy = self.pod["spec"].get("restartPolicy", "Always")
        loops = [
            self._container_loop(spec, env_per_container[spec["name"]], mounts, policy)
            for spec in self.pod["spec"]["containers"]
        ]
        await asyncio.gather(*loops)
        if self.stopping and self.stop_reason is None and not self.deleted:
            return
        codes = [c.exit_code for c in self.containers.values()]
        if self.stop_reason is not None:
            phase, reason, message = self.stop_reason
            self.write_status(
                phase=phase,
                reason=reason,
                message=message,
                containerStatuses=self.container_statuses(),
                conditions=self._conditions(False, self._scheduled_time()),
            )
            return
        phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
        self.write_status(
            phase=phase,
            containerStatuses=self.container_statuses(),
            conditions=self._conditions(False, self._scheduled_time()),
        )

    def _scheduled_time(self) -> str | None:
        pod = self._current()
        for cond in (pod or {}).get("status", {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled":
                return str(cond.get("lastTransitionTime"))
        return None

    async def _container_loop(
        self, spec: JSON, env: dict[str, str], mounts: list[tuple[str, Path]], policy: str
    ) -> None:
        c = self.containers[spec["name"]]
        kubelet = self.kubelet
        while not self.stopping:
            argv, cwd = self._command(spec, mounts)
            log_path = self.log_path(c.name, c.restarts)
            c.exit_code, c.reason = None, ""
            if not argv:
                code, reason = 128, "ContainerCannotRun"
                log_path.write_text("the fake kubelet runs commands only: this container has no command or args\n")
                c.started_at = c.finished_at = now_iso()
            else:
                code, reason = await self._spawn(c, argv, env, cwd, log_path, spec)
            c.exit_code, c.reason, c.finished_at = code, reason, now_iso()
            c.proc = None
            if self.stopping:
                return
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if not restart:
                running_left = any(o.proc is not None for o in self.containers.values())
                if running_left:
                    self.write_status(containerStatuses=self.container_statuses())
                return
            # Back off before the restart as the kubelet does (doubling, capped at 16 times the first delay).
            delay = kubelet.restart_backoff * min(2**c.restarts, 16)
            c.waiting = (
                "CrashLoopBackOff",
                f"back-off {delay:g}s restarting failed container={c.name} "
                f"pod={self.name}_{self.namespace}({self.uid})",
            )
            self.write_status(containerStatuses=self.container_statuses())
            await asyncio.sleep(delay)
            c.waiting = None
            c.restarts += 1

    async def _run_init(self, spec: JSON, env: dict[str, str], mounts: list[tuple[str, Path]]) -> bool:
        """Run one init container to completion; False (and the pod Failed) if it fails. The
        FrameworkController's ``frameworkbarrier`` is simulated: it writes ``injector.sh`` (exporting
        ``FB_<ROLE>_IPS`` and ``FB_<ROLE>_ADDRESSES`` for every task role) into its volume mounts."""
        c = _Container(spec["name"])
        self.init_containers.append(c)
        c.started_at = now_iso()
        image = str(spec.get("image", ""))
        code, reason = 0, "Completed"
        if "frameworkbarrier" in image:
            script = self._barrier_script()
            for mount in spec.get("volumeMounts") or []:
                target = Path(_rewrite(str(mount["mountPath"]).rstrip("/"), mounts))
                target.mkdir(parents=True, exist_ok=True)
                (target / "injector.sh").write_text(script)
        else:
            argv, cwd = self._command(spec, mounts)
            if argv:
                code, reason = await self._spawn(c, argv, env, cwd, self.log_path(c.name, 0), spec, init=True)
        c.exit_code, c.reason, c.finished_at, c.proc = code, reason, now_iso(), None
        if self.stopping:
            return False
        if code != 0:
            self.write_status(
                phase="Failed",
                initContainerStatuses=self._init_statuses(),
                containerStatuses=self.container_statuses(("PodInitializing", "")),
            )
            return False
        self.write_status(initContainerStatuses=self._init_statuses())
        return True

    def _init_statuses(self) -> list[JSON]:
        out = []
        for c in self.init_containers:
            state: JSON = (
                {
                    "terminated": {
                        "exitCode": c.exit_code,
                        "reason": c.reason,
                        "startedAt": c.started_at,
                        "finishedAt": c.finished_at,
                    }
                }
                if c.exit_code is not None
                else {"running": {"startedAt": c.started_at}}
            )
            out.append(
                {
                    "name": c.name,
                    "ready": c.exit_code == 0,
                    "restartCount": 0,
                    "state": state,
                    "image": "",
                    "imageID": "",
                }
            )
        return out

    def _barrier_script(self) -> str:
        labels = self.pod["metadata"].get("labels") or {}
        fw = self.kubelet.api.store.get(
            ("frameworkcontroller.microsoft.com", "frameworks"), self.namespace, labels.get("FC_FRAMEWORK_NAME", "")
        )
        lines = ["#!/bin/sh", "# written by the fake cluster's simulated frameworkbarrier"]
        for role in ((fw or {}).get("spec") or {}).get("taskRoles") or []:
            key = re.sub(r"[^A-Za-z0-9]", "_", str(role.get("name", ""))).upper()
            ips = ",".join(["127.0.0.1"] * int(role.get("taskNumber", 1)))
            lines.append(f"export FB_{key}_IPS={ips}")
            lines.append(f"export FB_{key}_ADDRESSES={ips}")
        return "\n".join(lines) + "\n"

    def _map(self, value: str, mounts: list[tuple[str, Path]]) -> str:
        """A string as the process sees it: mount paths rewritten, unless volumes are bind-mounted."""
        return value if self.kubelet.bind_mounts else _rewrite(value, mounts)

    def _command(self, spec: JSON, mounts: list[tuple[str, Path]]) -> tuple[list[str], Path]:
        """The argv and working directory of a container, with its volumes mapped."""
        argv = [str(a) for a in [*(spec.get("command") or []), *(spec.get("args") or [])]]
        workdir = spec.get("workingDir")
        if not argv or not self.kubelet.bind_mounts:
            return [_rewrite(a, mounts) for a in argv], Path(_rewrite(workdir, mounts)) if workdir else self.dir
        # A private mount namespace: each volume bind-mounted at its mountPath (created on the host when
        # missing), then the working directory, then the command.
        names = {m["mountPath"].rstrip("/") or "/" for m in spec.get("volumeMounts") or []}
        mkdir, mount = shlex.quote(_TOOLS["mkdir"]), shlex.quote(_TOOLS["mount"])
        steps = [
            f"{mkdir} -p {shlex.quote(mp)} && {mount} --bind {shlex.quote(str(local))} {shlex.quote(mp)} || exit 126"
            for mp, local in sorted(mounts, key=lambda m: len(m[0]))
            if mp in names and mp != "/"
        ]
        if workdir:
            steps.append(f"{mkdir} -p {shlex.quote(workdir)} && cd {shlex.quote(workdir)} || exit 126")
        script = "; ".join([*steps, 'exec "$@"'])
        return [
            _TOOLS["unshare"],
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            script,
            "fake-kubelet",
            *argv,
        ], self.dir

    def log_path(self, container: str, restart: int) -> Path:
        return Path(self.dir / f"{container}-{restart}.log")

    async def _spawn(
        self,
        c: _Container,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        spec: JSON,
        init: bool = False,
    ) -> tuple[int, str]:
        pump: _LogPump | None = None
        try:
            with open(log_path, "ab") as out:
                try:
                    cwd.mkdir(parents=True, exist_ok=True)
                    if self.kubelet.container_log_max_size is None:
                        c.proc = _Process(argv, out, cwd, env, self.kubelet.tasks)
                    else:  # the output goes through the kubelet, which rotates the file (as a container runtime)
                        pump = await _LogPump.open(log_path, self.kubelet)
                        try:
                            c.proc = _Process(argv, pump.write_fd, cwd, env, self.kubelet.tasks)
                        finally:
                            pump.child_started()
                except (OSError, ValueError) as exc:
                    out.write(f"failed to start the container command {argv!r}: {exc}\n".encode())
                    c.started_at = now_iso()
                    return 128, "StartError"
            return await self._run_container(c, spec, init, pump)
        finally:
            if pump is not None:
                pump.close()

    async def _run_container(self, c: _Container, spec: JSON, init: bool, pump: _LogPump | None) -> tuple[int, str]:
        assert c.proc is not None
        c.started_at = now_iso()
        self.log_written.set()
        if init:
            self.write_status(initContainerStatuses=self._init_statuses(), podIP="127.0.0.1", hostIP="127.0.0.1")
        else:
            self.write_status(
                phase="Running",
                podIP="127.0.0.1",
                hostIP="127.0.0.1",
                startTime=(self._current() or {}).get("status", {}).get("startTime") or now_iso(),
                containerStatuses=self.container_statuses(),
                conditions=self._conditions(True, self._scheduled_time()),
            )
            if c.restarts == 0:
                self.kubelet.api.record_event(self.pod, "Started", f"Started container {c.name}", "Normal", "kubelet")
        watcher = None
        limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
        if limit is not None and self.kubelet.enforce_memory_limits:
            watcher = self.kubelet.tasks.spawn(self._watch_memory(c, parse_quantity(limit)), name=f"oom-{self.name}")
        try:
            code = await c.proc.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.wait([watcher])
        # The container ends when its main process does; take its process group down with it.
        c.proc.signal_all(signal.SIGKILL)
        if pump is not None:  # the log is complete before the container is reported terminated
            await pump.drained(2.0)
        if code < 0:
            code = 128 - code
        if c.oom:
            return 137, "OOMKilled"
        return code, "Completed" if code == 0 else "Error"

    async def _watch_memory(self, c: _Container, limit: float) -> None:
        assert c.proc is not None
        pid = c.proc.pid
        while True:
            await asyncio.sleep(0.2)
            try:
                procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs)
            except psutil.Error:
                return
            if rss > limit:
                c.oom = True
                c.proc.signal_all(signal.SIGKILL)
                return

    async def _kill_all(self, sig: int) -> None:
        for c in [*self.init_containers, *self.containers.values()]:
            if c.proc is not None and c.proc.returncode is None:
                c.proc.signal_all(sig)

    def _reap_all(self) -> None:
        """Collect the exit of every killed container process whose wait was cancelled (the cluster is
        stopping): a child never reaped warns "still running" when its Popen is collected."""
        for c in [*self.init_containers, *self.containers.values()]:
            if c.proc is not None and c.proc.returncode is None:
                c.proc.reap()

    async def stop(self, grace: float, result: tuple[str, str, str] | None = None) -> None:
        """Stop the pod's processes: SIGTERM, then SIGKILL after ``grace`` seconds."""
        try:
            await self._stop(grace, result)
        except asyncio.CancelledError:  # the cluster stops meanwhile: kill and reap, then go
            await self._kill_all(signal.SIGKILL)
            self._reap_all()
            raise

    async def _stop(self, grace: float, result: tuple[str, str, str] | None) -> None:
        self.stopping = True
        self.stop_reason = result
        await self._kill_all(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        if grace > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    while any(
                        c.proc is not None and c.proc.returncode is None
                        for c in [*self.init_containers, *self.containers.values()]
                    ):
                        await asyncio.sleep(0.02)
            await self._kill_all(signal.SIGKILL)
        self.done.set()
        if self.task is not None:
            await asyncio.wait([self.task], timeout=5)  # never raises; the caller's cancellation still does
        for c in [*self.init_containers, *self.containers.values()]:
            if c.proc is not None and c.proc.returncode is None:
                c.proc.signal_all(signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        await c.proc.wait()

    # ------------------------------------------------------------- env and volumes

    def _env(self, spec: JSON) -> dict[str, str]:
        env = {k: os.environ[k] for k in HOST_ENV if k in os.environ}
        env["PATH"] = _host_path()
        env["HOSTNAME"] = self.name
        env["KUBERNETES_SERVICE_HOST"] = "127.0.0.1"
        env["KUBERNETES_SERVICE_PORT"] = str(self.kubelet.api_port)
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self._lookup("configmaps", source["configMapRef"], None)
                env.update({prefix + k: str(v) for k, v in (data or {}).get("data", {}).items()})
            if "secretRef" in source:
                data = self._lookup("secrets", source["secretRef"], None)
                env.update(
                    {
                        prefix + k: base64.b64decode(v).decode(errors="replace")
                        for k, v in (data or {}).get("data", {}).items()
                    }
                )
        for item in spec.get("env") or []:
            name = item.get("name")
            if "value" in item or "valueFrom" not in item:
                value = str(item.get("value", ""))
                env[name] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)
                continue
            source = item["valueFrom"]
            if "fieldRef" in source:
                env[name] = self._field(source["fieldRef"].get("fieldPath", ""))
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self._lookup("secrets", ref, ref.get("key"))
                if secret is not None:
                    env[name] = base64.b64decode(secret["data"][ref["key"]]).decode(errors="replace")
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                cm = self._lookup("configmaps", ref, ref.get("key"))
                if cm is not None:
                    env[name] = str(cm["data"][ref["key"]])
            elif "resourceFieldRef" in source:
                env[name] = str(
                    ((spec.get("resources") or {}).get("limits") or {}).get(
                        source["resourceFieldRef"].get("resource", "").split(".", 1)[-1], "0"
                    )
                )
        gpus = self.kubelet.gpu_assignment.get(self.uid)
        if gpus is not None:
            env.setdefault("NVIDIA_VISIBLE_DEVICES", ",".join(map(str, gpus)) or "void")
        return env

    def _lookup(self, plural: str, ref: JSON, key: str | None) -> JSON | None:
        obj = self.kubelet.api.store.get(("", plural), self.namespace, ref.get("name", ""))
        kind = "secret" if plural == "secrets" else "configmap"
        if obj is None or (key is not None and key not in (obj.get("data") or {})):
            if ref.get("optional"):
                return None
            if obj is None:
                raise _ConfigError(f'{kind} "{ref.get("name")}" not found')
            raise _ConfigError(f"couldn't find key {key} in {kind.capitalize()} {self.namespace}/{ref.get('name')}")
        return obj

    def _field(self, path: str) -> str:
        pod = self._current() or self.pod
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path])
        match = re.match(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        return ""

    def _volumes(self) -> list[tuple[str, Path]]:
        kubelet = self.kubelet
        local: dict[str, Path] = {}
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol.get("name", "")
            if "nfs" in vol:
                local[name] = kubelet.nfs_dir(str(vol["nfs"].get("server", "")), str(vol["nfs"].get("path", "/")))
            elif "hostPath" in vol:
                local[name] = Path(vol["hostPath"].get("path", "/"))
            elif "configMap" in vol or "secret" in vol:
                target = self.dir / "volumes" / name
                target.mkdir(parents=True, exist_ok=True)
                if "configMap" in vol:
                    obj = self._lookup("configmaps", vol["configMap"], None)
                    for k, v in ((obj or {}).get("data") or {}).items():
                        (target / k).write_text(str(v))
                else:
                    ref = {"name": vol["secret"].get("secretName"), "optional": vol["secret"].get("optional")}
                    obj = self._lookup("secrets", ref, None)
                    for k, v in ((obj or {}).get("data") or {}).items():
                        (target / k).write_bytes(base64.b64decode(v))
                local[name] = target
            else:  # emptyDir and anything else: a fresh directory
                local[name] = self.dir / "volumes" / name
            local[name].mkdir(parents=True, exist_ok=True)
        mounts: list[tuple[str, Path]] = []
        for spec in [*(self.pod["spec"].get("initContainers") or []), *self.pod["spec"]["containers"]]:
            for mount in spec.get("volumeMounts") or []:
                base = local.get(mount.get("name", ""))
                if base is None:
                    raise _ConfigError(f"volume {mount.get('name')!r} is mounted but not defined in spec.volumes")
                target = base / mount["subPath"] if mount.get("subPath") else base
                target.mkdir(parents=True, exist_ok=True)
                mounts.append((str(mount["mountPath"]).rstrip("/") or "/", target))
        mounts.sort(key=lambda m: -len(m[0]))
        return mounts


class _ConfigError(Exception):
    pass


#: Bytes a log read sends at once.
LOG_CHUNK = 64 * 1024


def _open_log(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the reader
    except FileNotFoundError:
        return None


def _rotated_log(path: Path, generation: int) -> Path:
    """Where the ``generation``-th rotation (from 1) moved a container's log file."""
    return path.with_name(f"{path.name}.{generation}")


def _tail_offset(f: BinaryIO, lines: int) -> int:
    """Where the last ``lines`` lines of the open file start (read backwards, block by block)."""
    end = f.seek(0, os.SEEK_END)
    if lines <= 0 or end == 0:
        return end
    f.seek(end - 1)
    pos = end - 1 if f.read(1) == b"\n" else end  # a final newline ends the last line, it starts none
    while pos > 0:
        size = min(LOG_CHUNK, pos)
        f.seek(pos - size)
        block = f.read(size)
        i = len(block)
        while (i := block.rfind(b"\n", 0, i)) >= 0:
            lines -= 1
            if lines == 0:
                return pos - size + i + 1
        pos -= size
    return 0


class _LogPump(asyncio.Protocol):
    """A container's stdout and stderr through a pipe into its log file, rotated as a kubelet rotates a
    container's log (``containerLogMaxSize``): when output comes while the file is over the size, the file
    is renamed to ``<name>.<n>`` (n = 1, 2, ...: every rotated file is kept) and the output goes to a new
    file. ``kubelet.log_generations[path]`` counts the rotations (a follower goes from file to file)."""

    def __init__(self, path: Path, kubelet: Kubelet) -> None:
        self.path = path
        self.kubelet = kubelet
        self.write_fd = -1
        self._out = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._transport: asyncio.BaseTransport | None = None
        self._eof = asyncio.Event()

    @classmethod
    async def open(cls, path: Path, kubelet: Kubelet) -> _LogPump:
        pump = cls(path, kubelet)
        read_fd, pump.write_fd = os.pipe()
        try:
            loop = asyncio.get_running_loop()
            pump._transport, _ = await loop.connect_read_pipe(lambda: pump, os.fdopen(read_fd, "rb", buffering=0))
        except BaseException:
            os.close(pump.write_fd)
            pump.close()
            raise
        return pump

    def child_started(self) -> None:
        """The child has its end of the pipe: close ours, so that the pipe ends with the container."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def data_received(self, data: bytes) -> None:
        limit = self.kubelet.container_log_max_size
        if limit is not None and self._out.tell() > limit:
            self._out.close()
            generation = self.kubelet.log_generations.get(self.path, 0) + 1
            os.replace(self.path, _rotated_log(self.path, generation))
            self._out = open(self.path, "ab")  # noqa: SIM115 - closed by close()
            self.kubelet.log_generations[self.path] = generation
        self._out.write(data)
        self._out.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof.set()

    async def drained(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until every process holding the pipe has gone and all is written."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._eof.wait()

    def close(self) -> None:
        self.child_started()
        if self._transport is not None:
            self._transport.close()
        self._out.close()


class _Process:
    """A child process in its own session, awaited through a pidfd (no watcher thread per child) where
    the platform has them, else through a thread (``nni_ts.processes.wait_pid``)."""

    def __init__(self, argv: list[str], out: Any, cwd: Path, env: dict[str, str], tasks: TaskSupervisor) -> None:
        # Every process of the container inherits this marker, so that, like a container runtime, the
        # kubelet can kill them all, including those that started their own session or were orphaned.
        self.marker = uuid.uuid4().hex
        env = {**env, CONTAINER_MARKER: self.marker}
        self._popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=str(cwd), env=env, start_new_session=True
        )
        self.pid = self._popen.pid
        self.returncode: int | None = None
        self._tasks = tasks
        self._waiter: asyncio.Task[int | None] | None = None

    async def wait(self) -> int:
        if self.returncode is not None:
            return self.returncode
        if self._waiter is None:
            self._waiter = self._tasks.spawn(wait_pid(self._popen, self.pid), name=f"wait-{self.pid}")
        code = await asyncio.shield(self._waiter)
        self.returncode = code if code is not None else self._popen.wait()
        return self.returncode

    def reap(self, timeout: float = 2.0) -> None:
        """After a SIGKILL, collect the exit status now (bounded): for a process whose wait was cancelled."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.returncode = self._popen.wait(timeout=timeout)  # as wait() keeps it: negative for a signal

    def signal_all(self, sig: int) -> None:
        """``sig`` to the container's process group; SIGKILL also reaches every other process it started."""
        killpg(self.pid, sig)
        if sig == signal.SIGKILL:
            for pid in _pids_marked(self.marker):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


_BIND_PROBE: list[bool] = []
#: Absolute paths of the tools bind mode needs (a container's PATH may not find them).
_TOOLS: dict[str, str] = {}


def _can_bind_mount() -> bool:
    """Whether this process may create private mount namespaces and bind-mount in them (probed once)."""
    if not _BIND_PROBE:
        ok = False
        for tool in ("unshare", "mount", "mkdir"):
            found = shutil.which(tool)
            if found:
                _TOOLS[tool] = found
        if hasattr(os, "geteuid") and os.geteuid() == 0 and len(_TOOLS) == 3:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                probe = subprocess.run(
                    [
                        _TOOLS["unshare"],
                        "--mount",
                        "--propagation",
                        "private",
                        "--",
                        "/bin/sh",
                        "-c",
                        f"{_TOOLS['mount']} -t tmpfs none /mnt",
                    ],
                    capture_output=True,
                    timeout=10,
                )
                ok = probe.returncode == 0
        _BIND_PROBE.append(ok)
    return _BIND_PROBE[0]


def _host_path() -> str:
    """The host's PATH, led by the directory of this interpreter when it has a ``python3``: the pods'
    ``python3`` is the interpreter running the cluster (its packages, e.g. trial_keeper, included)."""
    path = os.environ.get("PATH", os.defpath)
    here = os.path.dirname(sys.executable)
    if here and os.path.exists(os.path.join(here, "python3")) and path.split(os.pathsep)[0] != here:
        path = here + os.pathsep + path
    return path


def _rewrite(text: str, mounts: list[tuple[str, Path]]) -> str:
    for mount_path, local in mounts:
        if mount_path == "/":
            continue
        pattern = r"(?<![\w.-])" + re.escape(mount_path) + r"(?=/|$|[\s'\";&|)<>:])"
        replacement = str(local).replace("\\", "\\\\")
        text = re.sub(pattern, replacement, text)
    return text


CONTAINER_MARKER = "NNI_TS_FAKE_CONTAINER"


def _pids_marked(marker: str) -> list[int]:
    """The processes whose environment holds ``CONTAINER_MARKER=marker`` (read from /proc: psutil's
    per-process objects made this scan cost half the fake's throughput)."""
    needle = f"\0{CONTAINER_MARKER}={marker}\0".encode()
    me = os.getpid()
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:  # no procfs: the slower portable way
        return [p.pid for p in psutil.process_iter() if _environ_marker(p) == marker and p.pid != me]
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                if needle in b"\0" + fh.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


def _environ_marker(proc: psutil.Process) -> str | None:
    try:
        value: str | None = proc.environ().get(CONTAINER_MARKER)
    except psutil.Error:
        return None
    return value


class Kubelet:
    """Scheduler and kubelet for every node of the fake cluster."""

    def __init__(
        self,
        api: Api,
        state_dir: Path,
        *,
        nfs_exports: dict[tuple[str, str], Path] | None = None,
        missing_images: set[str] | None = None,
        grace_cap: float = 2.0,
        image_backoff: float = 0.3,
        restart_backoff: float = 0.1,
        enforce_memory_limits: bool = True,
        api_port: int = 0,
        volume_mode: str = "rewrite",
        container_log_max_size: int | None = None,
    ) -> None:
        self.api = api
        #: ``containerLogMaxSize`` in bytes (None: logs are never rotated); a container started while it is
        #: None writes its log file directly, one started with a size through the kubelet, which rotates it.
        self.container_log_max_size = container_log_max_size
        #: How many times each container log file was rotated.
        self.log_generations: dict[Path, int] = {}
        self.state_dir = state_dir
        self.nfs_exports = {(s, p.rstrip("/") or "/"): Path(d) for (s, p), d in (nfs_exports or {}).items()}
        self.missing_images = missing_images if missing_images is not None else set()
        self.grace_cap = grace_cap
        self.image_backoff = image_backoff
        self.restart_backoff = restart_backoff
        self.enforce_memory_limits = enforce_memory_limits
        self.api_port = api_port
        if volume_mode not in ("rewrite", "bind", "auto"):
            raise ValueError(f"volume_mode {volume_mode!r} is not one of 'rewrite', 'bind' or 'auto'.")
        can_bind = _can_bind_mount()
        if volume_mode == "bind" and not can_bind:
            raise ValueError("volume_mode 'bind' needs root and a working `unshare --mount`; use 'rewrite' or 'auto'.")
        #: True when volumes are bind-mounted in a private mount namespace per container, False when paths
        #: are rewritten.
        self.bind_mounts = volume_mode == "bind" or (volume_mode == "auto" and can_bind)
        self.pods_type = api.rtype("", "v1", "pods")
        self.runners: dict[str, PodRunner] = {}
        self.gpu_assignment: dict[str, list[int]] = {}
        self._wake = asyncio.Event()
        self.pending: dict[str, tuple[str, str]] = {}
        self.to_start: dict[str, tuple[str, str]] = {}
        self.bound: dict[str, tuple[str, dict[str, float]]] = {}
        self.usage: dict[str, dict[str, float]] = {}
        self.count: dict[str, int] = {}
        self._unschedulable_reason: dict[str, str] = {}
        #: Owns the pods' runners, their memory watchers and process waiters, and pod stops.
        self.tasks = TaskSupervisor("fake-kubelet")
        api.pod_deletion_hook = self._on_delete
        api.store.subscribe(self._on_event)

    def image_missing(self, image: str) -> bool:
        return image in self.missing_images or "doesnotexist" in image

    def nfs_dir(self, server: str, path: str) -> Path:
        path = path.rstrip("/") or "/"
        for (s, export), local in sorted(self.nfs_exports.items(), key=lambda kv: -len(kv[0][1])):
            if s == server and (path == export or path.startswith(export.rstrip("/") + "/")):
                rel = path[len(export) :].lstrip("/")
                return Path(local / rel) if rel else Path(local)
        return self.state_dir / "nfs" / server / path.lstrip("/")

    # ------------------------------------------------------------- events

    def _on_event(self, event: Any) -> None:
        if event.gr == ("", "pods"):
            obj = event.obj
            uid = obj["metadata"]["uid"]
            if event.type == "DELETED":
                runner = self.runners.pop(uid, None)
                self.gpu_assignment.pop(uid, None)
                self._unschedulable_reason.pop(uid, None)
                self.pending.pop(uid, None)
                self._unbind(uid)
                if runner is not None and not runner.stopping:
                    self._spawn_stop(runner, 0)
                self._wake.set()
                return
            node = obj["spec"].get("nodeName")
            terminal = _terminal(obj)
            deleting = bool(obj["metadata"].get("deletionTimestamp"))
            if not node:
                if not terminal and not deleting:
                    if uid not in self.pending:
                        self.pending[uid] = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                        self._wake.set()
                else:
                    self.pending.pop(uid, None)
                return
            self.pending.pop(uid, None)
            if terminal:
                if self._unbind(uid):
                    self._wake.set()
                return
            if uid not in self.bound:
                self.bound[uid] = (node, pod_requests(obj))
                usage = self.usage.setdefault(node, dict.fromkeys(RESOURCES, 0.0))
                for k, v in self.bound[uid][1].items():
                    usage[k] += v
                self.count[node] = self.count.get(node, 0) + 1
            if uid not in self.runners and not deleting:
                self.to_start[uid] = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                self._wake.set()
        elif event.gr == ("", "nodes"):
            self._wake.set()

    def _unbind(self, uid: str) -> bool:
        entry = self.bound.pop(uid, None)
        if entry is None:
            return False
        node, requests = entry
        usage = self.usage.setdefault(node, dict.fromkeys(RESOURCES, 0.0))
        for k, v in requests.items():
            usage[k] -= v
        self.count[node] = self.count.get(node, 1) - 1
        return True

    def _on_delete(self, pod: JSON, grace: int) -> bool:
        runner = self.runners.get(pod["metadata"]["uid"])
        if runner is None:
            return False
        if runner.stopping:
            return True
        # Graceful deletion: SIGTERM, the grace period, SIGKILL; then the containers' terminated state (143
        # after a SIGTERM, 137 after the SIGKILL) and the terminal phase are written (watchers see MODIFIED),
        # and only then is the object removed (DELETED), as a real kubelet does since Kubernetes 1.27.
        runner.deleted = True
        self._spawn_stop(runner, min(float(grace), self.grace_cap), remove=True)
        return True

    def _spawn_stop(
        self, runner: PodRunner, grace: float, remove: bool = False, result: tuple[str, str, str] | None = None
    ) -> asyncio.Task[None]:
        async def stop() -> None:
            await runner.stop(grace, result)
            if remove:
                pod = self.api.store.get(("", "pods"), runner.namespace, runner.name)
                if pod is not None and pod["metadata"]["uid"] == runner.uid:
                    self.api.remove_now(self.pods_type, runner.namespace, runner.name)

        return self.tasks.spawn(stop(), name=f"stop-{runner.name}")

    # ------------------------------------------------------------- scheduling

    async def run(self) -> None:
        """Schedule pending pods and start scheduled ones whenever pods or nodes change."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._schedule()
            except Exception:  # noqa: BLE001
                log.exception("The fake scheduler failed.")
            await asyncio.sleep(0)

    def _schedule(self) -> None:
        store = self.api.store
        nodes = store.list(("", "nodes"))
        failed: set[tuple[float, ...]] = set()
        for uid, (ns, name) in list(self.pending.items()):
            pod = store.get(("", "pods"), ns, name)
            if pod is None or pod["metadata"]["uid"] != uid:
                self.pending.pop(uid, None)
                continue
            want = pod_requests(pod)
            shape = (*want.values(), hash(json.dumps(pod["spec"].get("nodeSelector") or {}, sort_keys=True)))
            if shape in failed and uid in self._unschedulable_reason:
                continue  # an identical pod did not fit in this pass, and this one already says why
            if not self._place(pod, want, nodes):
                failed.add(shape)
        for uid, (ns, name) in list(self.to_start.items()):
            del self.to_start[uid]
            pod = store.get(("", "pods"), ns, name)
            if (
                pod is None
                or pod["metadata"]["uid"] != uid
                or uid in self.runners
                or _terminal(pod)
                or pod["metadata"].get("deletionTimestamp")
            ):
                continue
            node = store.get(("", "nodes"), "", pod["spec"]["nodeName"])
            if node is None or not _node_ready(node):
                continue
            runner = PodRunner(self, pod)
            self.runners[uid] = runner
            runner.task = self.tasks.spawn(runner.run(), name=f"pod-{name}")

    def _place(self, pod: JSON, want: dict[str, float], nodes: list[JSON]) -> bool:
        selector = pod["spec"].get("nodeSelector") or {}
        reasons: dict[str, int] = {}
        for node in nodes:
            name = node["metadata"]["name"]
            if not _node_ready(node):
                key = "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"
                reasons[key] = reasons.get(key, 0) + 1
                continue
            if not LabelSelector.from_dict({"matchLabels": selector}).matches(node["metadata"].get("labels")):
                key = "node(s) didn't match Pod's node affinity/selector"
                reasons[key] = reasons.get(key, 0) + 1
                continue
            alloc = node["status"].get("allocatable") or {}
            used = self.usage.get(name) or dict.fromkeys(RESOURCES, 0.0)
            short = []
            for res in RESOURCES:
                cap = parse_quantity(alloc.get(res, "0"))
                if want[res] > 0 and used[res] + want[res] > cap + 1e-9:
                    short.append(f"Insufficient {res}")
            if self.count.get(name, 0) + 1 > int(parse_quantity(alloc.get("pods", "110"))):
                short.append("Too many pods")
            if short:
                for s in short:
                    reasons[s] = reasons.get(s, 0) + 1
                continue
            ngpu = int(want["nvidia.com/gpu"])
            if ngpu:
                taken = {i for uid, (n, _) in self.bound.items() if n == name for i in self.gpu_assignment.get(uid, [])}
                free = [i for i in range(int(parse_quantity(alloc.get("nvidia.com/gpu", "0")))) if i not in taken]
                self.gpu_assignment[pod["metadata"]["uid"]] = free[:ngpu]
            self._bind(pod, name)
            return True
        message = (
            f"0/{len(nodes)} nodes are available: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + "."
        )
        uid = pod["metadata"]["uid"]
        if self._unschedulable_reason.get(uid) == message:
            return False
        self._unschedulable_reason[uid] = message
        status = copy.deepcopy(pod.get("status") or {})
        status["phase"] = "Pending"
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastTransitionTime": now_iso(),
            }
        ]
        self.api.update_status(self.pods_type, pod["metadata"]["namespace"], pod["metadata"]["name"], status)
        self.api.record_event(pod, "FailedScheduling", message, "Warning", "default-scheduler")
        return False

    def _bind(self, pod: JSON, node: str) -> None:
        self._unschedulable_reason.pop(pod["metadata"]["uid"], None)
        new = copy.deepcopy(pod)
        new["spec"]["nodeName"] = node
        status = new.setdefault("status", {})
        status["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_iso()}]
        status["hostIP"] = "127.0.0.1"
        self.api.store.put(("", "pods"), new, added=False)
        self.api.record_event(
            new,
            "Scheduled",
            f"Successfully assigned {pod['metadata']['namespace']}/{pod['metadata']['name']} to {node}",
            "Normal",
            "default-scheduler",
        )

    # ------------------------------------------------------------- faults

    def fail_pod(
        self, namespace: str, name: str, reason: str, message: str, phase: str = "Failed", oom: bool = False
    ) -> asyncio.Task[None] | None:
        pod = self.api.store.get(("", "pods"), namespace, name)
        if pod is None:
            raise ApiError.not_found("pods", name)
        if reason == "Evicted":  # node-pressure eviction: the kubelet marks the pod as disrupted
            mark_disruption(self.api, namespace, name, "TerminationByKubelet", message)
            pod = self.api.store.get(("", "pods"), namespace, name) or pod
        runner = self.runners.get(pod["metadata"]["uid"])
        if runner is None:
            status = copy.deepcopy(pod.get("status") or {})
            status.update(phase=phase, reason=reason, message=message)
            self.api.update_status(self.pods_type, namespace, name, status)
            return None
        if oom:
            for c in runner.containers.values():
                c.oom = True
            for c in runner.containers.values():
                if c.proc is not None:
                    c.proc.signal_all(signal.SIGKILL)
            return None
        return self._spawn_stop(runner, 0, result=(phase, reason, message))

    # ------------------------------------------------------------- logs

    async def logs(
        self, pod: JSON, container: str, follow: bool, tail: int | None, previous: bool
    ) -> AsyncIterator[bytes]:
        runner = self.runners.get(pod["metadata"]["uid"])
        if runner is None or container not in runner.containers or not runner.log_path(container, 0).exists():
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            waiting = next(
                (
                    s["state"]["waiting"].get("reason")
                    for s in statuses
                    if s.get("name") == container and "waiting" in (s.get("state") or {})
                ),
                None,
            )
            reason = {
                "ErrImagePull": "trying and failing to pull image",
                "ImagePullBackOff": "trying and failing to pull image",
            }.get(waiting or "", waiting)
            raise ApiError.bad_request(
                f'container "{container}" in pod "{pod["metadata"]["name"]}" is waiting to '
                f"start: {reason or 'ContainerCreating'}"
            )
        c = runner.containers[container]
        index = c.restarts - 1 if previous else c.restarts
        if index < 0:
            raise ApiError.bad_request(
                f'previous terminated container "{container}" in pod "{pod["metadata"]["name"]}" not found'
            )
        yield b""  # the request is valid: the answer starts
        # Like a real kubelet, only the current file is read: what rotation moved out is not served.
        path = runner.log_path(container, index)
        generation = self.log_generations.get(path, 0)  # of the file read (the current one, first)
        f = _open_log(path)
        try:
            if f is not None:
                f.seek(_tail_offset(f, tail) if tail is not None else 0)
                while chunk := f.read(LOG_CHUNK):
                    yield chunk
            if not follow or previous:
                return
            while True:
                finished = runner.done.is_set() or (c.proc is None and c.exit_code is not None and c.restarts == index)
                if f is None:
                    f = _open_log(path)
                if f is not None:
                    chunk = f.read(LOG_CHUNK)
                    if chunk:
                        yield chunk
                        continue
                    if self.log_generations.get(path, 0) > generation:
                        # The file read was rotated and read to its end: on with the next one, which
                        # may have been rotated meanwhile too (a follower loses nothing).
                        generation += 1
                        f.close()
                        current = generation == self.log_generations.get(path, 0)
                        f = _open_log(path if current else _rotated_log(path, generation + 1))
                        continue
                if finished or runner.stopping or c.restarts != index:
                    return
                await asyncio.sleep(0.05)
        finally:
            if f is not None:
                f.close()

    # ------------------------------------------------------------- shutdown

    async def close(self) -> None:
        """Kill every pod's processes (their whole process groups) and wait for them."""
        runners = list(self.runners.values())
        self.runners.clear()
        results = await asyncio.gather(*(r.stop(0) for r in runners), return_exceptions=True)
        for runner, result in zip(runners, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("Stopping pod %s failed: %r", runner.name, result)
        # A fresh owner for a kubelet started again (an API server restart keeps the kubelet).
        tasks, self.tasks = self.tasks, TaskSupervisor("fake-kubelet")
        await tasks.stop(5)
