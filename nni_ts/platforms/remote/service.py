"""The remote platform: trials on SSH hosts, each under a detached trial keeper.

How a trial runs
----------------
* One pooled paramiko connection per host (:mod:`.ssh`): exec channels, SFTP and the reverse
  tunnel share it; no handshake per trial. paramiko runs in the service's thread pool.
* On the first trial a host gets, the trial code directory goes up as a tarball (``.nniignore``
  honoured, dotfiles kept) into ``<work>/code/<content hash>`` (a second experiment with the same
  code uploads nothing) and is hard-linked into ``<work>/experiments/<exp>/code``; the
  ``trial_keeper`` package goes to ``<work>/keeper/<hash>`` the same way.
* Each trial gets ``<work>/experiments/<exp>/trials/<id>`` with ``parameter.cfg`` and its token
  (both sent on the launch command's stdin, never on a command line). The keeper starts with
  ``setsid`` (its own session, stdin/stdout detached), so it outlives the SSH connection.
* Keepers report to the manager's :class:`~nni_ts.server.ClusterServer` through a reverse tunnel
  on each host's 127.0.0.1 (``keeperReporting: tunnel``), or over HTTP to ``nniManagerIp``
  (``direct``). Every host is polled in one batch command every ``poll_interval`` seconds: a
  keeper that ended without reporting (tunnel down) has its journal read back over SFTP and fed
  through the server's de-duplication; a keeper that died without recording the trial's end has
  its trial's process group killed and the trial fails as an infrastructure failure.
* Cancel: SIGTERM to the keeper, which TERMs then KILLs its trial's process group; if the keeper is
  gone, the trial's process group is killed directly.
* A lost connection turns the host's trials UNKNOWN (FAILED as infrastructure failures after
  ``unknown_timeout``); the host is reconnected with back-off; new trials go to other hosts.
* ``platform_data`` holds the host, trial directory, keeper pid and start time and the GPUs, so a
  restarted manager re-attaches (the experiment's secret and tunnel ports are kept in
  ``<experiment dir>/remote-state.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shlex
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import trial_keeper
from trial_keeper.journal import read_exit, recover_records

from ...config.remote import RemoteConfig, RemoteMachineConfig
from ...errors import ConfigError, PlatformError
from ...models import TrialJobDetail, TrialJobStatus
from ...server import ClusterServer, ServiceSink
from ...training_service import TrainingService
from ..gpu import NVIDIA_SMI_QUERY, GpuScheduler, parse_nvidia_smi
from .code import CodeArchive, build_archive
from .ssh import HostAgent, HostConnection, SshConnectError, expand_remote

__all__ = ["RemoteTrainingService"]

log = logging.getLogger(__name__)

DEFAULT_WORK_DIR = "~/nni-ts"
AGENT_FILE = "nni_ts_agent.py"
STATE_FILE = "remote-state.json"

# Run on each host at connection (after pythonPath and preCommand): python3 3.8+, then the GPUs.
_HOST_CHECKS = [
    "command -v python3 >/dev/null 2>&1 || { echo 'python3 is not on the PATH' >&2; exit 3; }",
    "python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)' "
    '|| { echo "python3 is older than 3.8: $(python3 -V 2>&1)" >&2; exit 3; }',
    f"{' '.join(NVIDIA_SMI_QUERY)} 2>/dev/null && echo nni-ts-gpu-ok",
    "exit 0",
]
# ka PID START: whether the keeper with this pid and start time (field 22 of /proc/PID/stat) lives.
_ALIVE_FN = (
    'ka() { if [ -z "$1" ]; then return 1; fi; '
    'if [ -n "$2" ] && [ -r "/proc/$1/stat" ]; then [ "$(cut -d" " -f22 "/proc/$1/stat" 2>/dev/null)" = "$2" ]; '
    'else kill -0 "$1" 2>/dev/null; fi; }'
)
# tp DIR: the pid (= process group) of the trial its keeper started: from the keeper's pid file,
# else from its log.
_TRIAL_PID_FN = (
    'tp() { p=$(sed -n \'s/.*"trial_pgid": *\\([0-9][0-9]*\\).*/\\1/p\' "$1/.nni-ts/pid" 2>/dev/null); '
    '[ -n "$p" ] || p=$(sed -n \'s/.* started: pid \\([0-9][0-9]*\\)\\..*/\\1/p\' "$1/.nni-ts/keeper.log" '
    '2>/dev/null | tail -n 1); echo "$p"; }'
)


@dataclass(eq=False)
class _Host:
    index: int
    machine: RemoteMachineConfig
    conn: HostConnection
    ready: bool = False
    error: str | None = None
    work: str = ""
    exp_dir: str = ""
    code_dir: str = ""
    keeper_dir: str = ""
    code_ready: bool = False
    gpus: GpuScheduler | None = None
    gpu_known: bool = False
    trials: set[str] = field(default_factory=set)
    pending_kills: list[tuple[str, int | None, str | None, str]] = field(default_factory=list)
    exit_seen: dict[str, int] = field(default_factory=dict)
    url_host: str = "127.0.0.1"
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    code_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    lost_at_start: bool = False
    agent: HostAgent | None = None

    @property
    def label(self) -> str:
        return self.conn.label


@dataclass(eq=False)
class _Run:
    detail: TrialJobDetail
    sink: ServiceSink
    host: _Host | None = None
    remote_dir: str = ""
    keeper_pid: int | None = None
    keeper_start: str | None = None
    gpus: list[int] = field(default_factory=list)
    attempt: int = 1
    launch: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    registered: bool = False


class RemoteTrainingService(TrainingService[RemoteConfig]):
    """Trials on the SSH hosts of ``machineList`` (NNI's ``remote`` training service).

    Keyword arguments beyond the contract's: ``poll_interval`` (seconds between the batched status
    polls of each host), ``reconnect_max`` (longest back-off between reconnection attempts),
    ``connect_timeout`` (seconds for one SSH connection attempt), ``use_agent`` (False: start,
    poll and kill keepers with one shell command each instead of through the host agent).
    """

    platform_name: ClassVar[str] = "remote"
    config_class: ClassVar[type[RemoteConfig]] = RemoteConfig

    def __init__(
        self,
        config: RemoteConfig | dict[str, Any] | None = None,
        *,
        poll_interval: float = 5.0,
        reconnect_max: float = 30.0,
        connect_timeout: float = 10.0,
        use_agent: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self.use_agent = use_agent
        self.poll_interval = poll_interval
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        self._server: ClusterServer | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._hosts: list[_Host] = []
        self._runs: dict[str, _Run] = {}
        self._queue: deque[_Run] = deque()
        self._monitors: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._code: CodeArchive | None = None
        self._keeper: CodeArchive | None = None
        self._archive_lock = asyncio.Lock()
        self._state_data: dict[str, Any] = {}
        self._dispatch_scheduled = False
        self.events.on("trial_status", self._on_status)

    # ------------------------------------------------------------------ properties

    @property
    def server(self) -> ClusterServer:
        if self._server is None:
            raise PlatformError("The remote training service is not started.")
        return self._server

    def host_status(self) -> list[dict[str, Any]]:
        """Each machine's label, whether it is connected and set up, its last error and its trials."""
        return [{"host": h.label, "ready": h.ready, "error": h.error, "trials": sorted(h.trials)} for h in self._hosts]

    async def get_cluster_metadata(self, key: str) -> str:
        """As the contract's, with passwords and passphrases of ``machineList`` shown as ``***``."""
        text = await super().get_cluster_metadata(key)
        value = json.loads(text)
        if isinstance(value, list) and key in ("machineList", "machine_list"):
            for entry in value:
                if isinstance(entry, dict):
                    for field_name in ("password", "ssh_passphrase", "sshPassphrase"):
                        if entry.get(field_name):
                            entry[field_name] = "***"
            return json.dumps(value)
        return text

    # ------------------------------------------------------------------ lifecycle

    def _state_path(self) -> Path:
        return self.experiment_dir / STATE_FILE

    def _load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state_path().read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        path = self._state_path()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self._state_data, fh)
        os.replace(tmp, path)

    async def _start(self) -> None:
        cfg = self.config
        code_dir = Path(cfg.trial_code_directory).expanduser()
        if not code_dir.is_dir():
            raise ConfigError(f"trialCodeDirectory {str(code_dir)!r} is not a directory.", path="trialCodeDirectory")
        if cfg.keeper_reporting == "direct" and not cfg.nni_manager_ip:
            log.info(
                "keeperReporting is direct and nniManagerIp is unset: each host gets the address it is reached from."
            )
        state = self._load_state()
        secret_hex = state.get("secret")
        secret = bytes.fromhex(secret_hex) if isinstance(secret_hex, str) else secrets.token_bytes(32)
        self._state_data = {"secret": secret.hex(), "tunnels": dict(state.get("tunnels") or {})}
        if cfg.keeper_reporting == "tunnel":
            bind = "127.0.0.1"
        else:
            bind = cfg.nni_manager_ip or "0.0.0.0"
        port = int(state.get("server_port") or 0)
        self._executor = ThreadPoolExecutor(
            max_workers=8 + 10 * len(cfg.machine_list), thread_name_prefix=f"nni-ts-ssh-{self.experiment_id}"
        )
        server = ClusterServer(bind, port, secret=secret, heartbeat_timeout=cfg.heartbeat_timeout)
        try:
            await server.start()
        except OSError:
            if not port:
                raise
            server = ClusterServer(bind, 0, secret=secret, heartbeat_timeout=cfg.heartbeat_timeout)
            await server.start()
        self._server = server
        self._state_data["server_port"] = server.port
        self._save_state()
        known = Path(cfg.known_hosts_file).expanduser() if cfg.known_hosts_file else None
        for i, m in enumerate(cfg.machine_list):
            conn = HostConnection(
                m,
                executor=self._executor,
                known_hosts=known,
                accept_new_host_keys=cfg.accept_new_host_keys,
                connect_timeout=self.connect_timeout,
            )
            self._hosts.append(_Host(i, m, conn))
        results = await asyncio.gather(*(self._bring_up(h) for h in self._hosts), return_exceptions=True)
        errors = []
        for h, res in zip(self._hosts, results, strict=True):
            if isinstance(res, BaseException):
                if not isinstance(res, Exception):
                    raise res
                h.error = str(res)
                h.lost_at_start = True
                errors.append(f"  - {h.label}: {h.error}")
        if len(errors) == len(self._hosts):
            await self._shutdown()
            raise PlatformError("No machine of machineList could be used:\n" + "\n".join(errors))
        for h in self._hosts:
            if h.error:
                log.warning(
                    "Machine %s is unreachable; trials go to the others while it is retried: %s", h.label, h.error
                )
            task = asyncio.get_running_loop().create_task(self._monitor(h), name=f"nni-ts-remote-monitor-{h.label}")
            self._monitors.append(task)

    async def _bring_up(self, host: _Host) -> None:
        """Connect, check python3, make the experiment's directories, query GPUs, open the tunnel."""
        conn = host.conn
        await conn.connect()
        assert conn.home is not None
        m = host.machine
        host.work = expand_remote(conn.home, m.work_directory, DEFAULT_WORK_DIR)
        host.exp_dir = f"{host.work}/experiments/{self.experiment_id}"
        await conn.makedirs(f"{host.exp_dir}/trials", f"{host.work}/code", f"{host.work}/keeper")
        await self._ensure_keeper(host)
        out: str | None = None
        if self.use_agent:
            out = await self._start_agent(host)  # the checks below run in the same command
        if out is None:
            out = await conn.check(
                self._shell("\n".join([*self._env_prelude(m), *_HOST_CHECKS]), m),
                what="check python3 and the GPUs",
            )
        host.gpu_known = True
        # On a reconnection the first inventory stays: our own trials now make their GPUs look busy.
        if host.gpus is None and out.rstrip().endswith("nni-ts-gpu-ok"):
            gpus = parse_nvidia_smi(out.rstrip()[: -len("nni-ts-gpu-ok")])
            host.gpus = GpuScheduler(gpus, m.gpu_indices, m.max_trial_number_per_gpu, m.use_active_gpu)
            for tid in host.trials:  # re-attached trials keep their GPUs
                run = self._runs.get(tid)
                if run is not None and run.gpus and tid not in host.gpus._owner:
                    host.gpus.assign_exact(tid, run.gpus)
        await self._open_reporting(host)
        host.ready = True
        host.error = None

    async def _open_reporting(self, host: _Host) -> None:
        server = self.server
        if self.config.keeper_reporting == "tunnel":
            tunnels: dict[str, int] = self._state_data.setdefault("tunnels", {})
            wanted = int(tunnels.get(host.label) or 0)
            try:
                port = await host.conn.open_tunnel((server.host, server.port), wanted)
            except SshConnectError:
                if not wanted:
                    raise
                log.warning(
                    "Port %d on %s is taken; its running keepers cannot report until they end.", wanted, host.label
                )
                port = await host.conn.open_tunnel((server.host, server.port), 0)
            if port != wanted:
                tunnels[host.label] = port
                self._save_state()
        else:
            if self.config.nni_manager_ip:
                host.url_host = self.config.nni_manager_ip
            else:
                host.url_host = await host.conn.local_address()

    def _server_url(self, host: _Host) -> str:
        if self.config.keeper_reporting == "tunnel":
            return f"http://127.0.0.1:{host.conn.tunnel_port}"
        h = host.url_host
        return f"http://[{h}]:{self.server.port}" if ":" in h else f"http://{h}:{self.server.port}"

    async def _clean_up(self) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        # A keeper whose exit report was answered just as the tunnel closed would retry it for
        # minutes: every trial is delivered by now, so its lingering keepers are stopped.
        stops = []
        for h in self._hosts:
            if h.ready and h.agent is not None and not h.agent.closed:
                keepers = [
                    [r.keeper_pid, r.keeper_start]
                    for r in self._runs.values()
                    if r.host is h and r.keeper_pid is not None and r.detail.exit_code is not None
                ]
                if keepers:
                    stops.append(h.agent.request("stop", keepers=keepers, timeout=10))
        if stops:
            await asyncio.gather(*stops, return_exceptions=True)
        for h in self._hosts:
            if h.pending_kills:
                log.warning(
                    "Machine %s is unreachable: the processes of trials %s could not be killed; "
                    "they end by themselves or when killed on the host (their trial directories are under %s).",
                    h.label,
                    ", ".join(t for t, *_ in h.pending_kills),
                    h.exp_dir or h.machine.work_directory or DEFAULT_WORK_DIR,
                )
        for task in [*self._monitors, *self._tasks]:
            task.cancel()
        for task in [*self._monitors, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._monitors.clear()
        self._tasks.clear()
        await asyncio.gather(*(h.conn.close() for h in self._hosts), return_exceptions=True)
        if self._server is not None:
            await self._server.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ host monitor

    async def _monitor(self, host: _Host) -> None:
        delay = 0.5
        while True:
            if not host.ready:
                try:
                    await self._bring_up(host)
                except Exception as exc:
                    host.error = str(exc)
                    log.warning("Machine %s is still unreachable (next try in %.1f s): %s", host.label, delay, exc)
                    self._note_waiting()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.reconnect_max)
                    continue
                delay = 0.5
                log.info("Connected to machine %s.", host.label)
                await self._after_reconnect(host)
                self._schedule_dispatch()
            try:
                async with asyncio.timeout(self.poll_interval):
                    while host.conn.connected and not host.wake.is_set():
                        await asyncio.sleep(min(0.5, self.poll_interval))
            except TimeoutError:
                pass
            host.wake.clear()
            if not host.conn.connected:
                self._host_lost(host, "the connection dropped")
                continue
            try:
                if host.agent is not None and host.agent.closed:
                    log.warning("The nni-ts agent on %s ended; starting it again.", host.label)
                    await self._start_agent(host)
                await self._poll(host)
            except SshConnectError as exc:
                self._host_lost(host, str(exc))
            except Exception:
                log.exception("Polling machine %s failed; trying again.", host.label)

    def _host_lost(self, host: _Host, reason: str) -> None:
        if not host.ready:
            return
        host.ready = False
        host.agent = None
        host.error = f"lost the connection ({reason})"
        log.warning("Lost the connection to machine %s (%s); reconnecting.", host.label, reason)
        for tid in list(host.trials):
            run = self._runs.get(tid)
            if run is None or run.detail.status.is_terminal or run.keeper_pid is None:
                continue
            self._set_status(
                tid,
                TrialJobStatus.UNKNOWN,
                message=f"Lost the connection to {host.label}; reconnecting. The trial keeps running there.",
            )
        task = asyncio.get_running_loop().create_task(host.conn.close(), name=f"nni-ts-remote-close-{host.label}")
        self._track(task)

    async def _after_reconnect(self, host: _Host) -> None:
        kills, host.pending_kills = host.pending_kills, []
        for tid, pid, start, rdir in kills:
            with contextlib.suppress(Exception):
                await self._kill_remote(host, pid, start, rdir, tid)
        try:
            await self._poll(host)
        except SshConnectError as exc:
            self._host_lost(host, str(exc))
        except Exception:
            log.exception("Polling machine %s after reconnecting failed; trying again later.", host.label)

    def _note_waiting(self) -> None:
        down = [f"{h.label} ({h.error})" for h in self._hosts if not h.ready and h.error]
        if not down:
            return
        note = "Waiting for a machine; unreachable: " + "; ".join(down)
        for run in self._queue:
            run.detail.message = note

    # ------------------------------------------------------------------ polling

    async def _poll(self, host: _Host) -> None:
        """One batch command for every live trial of the host: exit recorded? keeper alive?"""
        live = [
            self._runs[t]
            for t in sorted(host.trials)
            if t in self._runs and not self._runs[t].detail.status.is_terminal and self._runs[t].keeper_pid is not None
        ]
        if not live:
            return
        seen: dict[str, tuple[bool, bool]] = {}
        agent = host.agent
        if agent is not None and not agent.closed:
            trials = [[r.detail.id, r.keeper_pid, r.keeper_start, r.remote_dir] for r in live]
            answer = await agent.request("poll", trials=trials)
            for tid, (exited, alive) in answer["status"].items():
                seen[tid] = (bool(exited), bool(alive))
        else:
            q = shlex.quote
            lines = [
                _ALIVE_FN,
                'c() { e=0; [ -f "$4/.nni-ts/exit" ] && e=1; a=0; ka "$2" "$3" && a=1; echo "$1 $e $a"; }',
            ]
            for run in live:
                pid, start = q(str(run.keeper_pid)), q(run.keeper_start or "")
                lines.append(f"c {q(run.detail.id)} {pid} {start} {q(run.remote_dir)}")
            result = await host.conn.run(self._shell("\n".join(lines)), timeout=60)
            for line in result.text().splitlines():
                parts = line.split()
                if len(parts) == 3:
                    seen[parts[0]] = (parts[1] == "1", parts[2] == "1")
        for run in live:
            tid = run.detail.id
            if tid not in seen or run.detail.status.is_terminal:
                continue
            exited, alive = seen[tid]
            if alive:
                if run.detail.status is TrialJobStatus.UNKNOWN and host.conn.connected:
                    self._set_status(tid, TrialJobStatus.RUNNING, message=f"{host.label} is back.")
                if exited:
                    host.exit_seen[tid] = host.exit_seen.get(tid, 0) + 1
                    if host.exit_seen[tid] >= 2 and await self._recover(run, host):
                        # The keeper is still trying to report an end that is now delivered: stop it.
                        await self._stop_keeper(host, run)
                continue
            if exited:
                await self._recover(run, host)
                continue
            # The keeper is gone and never recorded the trial's end: it was killed (or never ran).
            await self._recover(run, host)
            if run.detail.status.is_terminal:
                continue
            await self._kill_remote(host, None, None, run.remote_dir, tid)
            why = (await host.conn.read(f"{run.remote_dir}/.nni-ts/keeper.out", tail=2000)).decode("utf-8", "replace")
            message = f"The trial keeper on {host.label} ended without recording the trial's end (killed?)."
            if why.strip():
                message += f" Its output: {why.strip()[-500:]}"
            self._set_status(tid, TrialJobStatus.FAILED, message=message, infrastructure_failure=True)

    async def _recover(self, run: _Run, host: _Host) -> bool:
        """Read the trial's journal and exit over SFTP; deliver them through the server's de-duplication."""
        tid = run.detail.id
        journal = await host.conn.read(f"{run.remote_dir}/.nni-ts/journal")
        ended_raw = await host.conn.read(f"{run.remote_dir}/.nni-ts/exit")
        if run.detail.status.is_terminal or not run.registered:
            return True
        local = Path(run.detail.working_directory)

        def write_and_read() -> tuple[list[tuple[int, str]], dict[str, Any] | None]:
            state = local / ".nni-ts"
            state.mkdir(parents=True, exist_ok=True)
            (state / "journal").write_bytes(journal)
            if ended_raw:
                (state / "exit").write_bytes(ended_raw)
            return recover_records(str(local), tid, run.attempt), read_exit(str(local), tid, run.attempt)

        records, ended = await asyncio.to_thread(write_and_read)
        channel = self.server.channel(tid)
        await channel.feed(records)
        if ended is not None:
            await channel.finish(int(ended["exit_code"]), int(ended["end_time_ms"]), int(ended["record_count"]))
            return True
        return False

    # ------------------------------------------------------------------ scheduling

    def _schedule_dispatch(self) -> None:
        if self._dispatch_scheduled:
            return
        self._dispatch_scheduled = True
        asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        if not self._queue:
            return
        need = self.config.trial_gpu_number
        for run in list(self._queue):
            if run.detail.status.is_terminal:
                self._queue.remove(run)
                continue
            impossible = self._impossible(need)
            if impossible:
                self._queue.remove(run)
                self._set_status(run.detail.id, TrialJobStatus.FAILED, message=impossible, infrastructure_failure=True)
                continue
            host = self._pick_host(run, need)
            if host is None:
                continue
            self._queue.remove(run)
            run.host = host
            host.trials.add(run.detail.id)
            task = asyncio.get_running_loop().create_task(
                self._launch(run, host), name=f"nni-ts-remote-launch-{run.detail.id}"
            )
            run.launch = task
            self._track(task)
        if self._queue:
            self._note_waiting()

    def _pick_host(self, run: _Run, need: int) -> _Host | None:
        ready = [h for h in self._hosts if h.ready]
        if not ready:
            return None
        ready.sort(key=lambda h: (len(h.trials), h.index))
        if need <= 0:
            return ready[0]
        for h in ready:
            if h.gpus is None:
                continue
            chosen = h.gpus.try_assign(run.detail.id, need)
            if chosen is not None:
                run.gpus = chosen
                return h
        return None

    def _impossible(self, need: int) -> str | None:
        """Why no machine can ever give ``need`` GPUs, once every machine's GPUs are known."""
        if need <= 0 or not all(h.gpu_known for h in self._hosts):
            return None
        best = max((h.gpus.capacity() if h.gpus else 0) for h in self._hosts)
        if best >= need:
            return None
        return (
            f"The trial needs {need} GPU(s) but the largest machine offers {best} (after gpuIndices and useActiveGpu)."
        )

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Background task %s failed.", task.get_name(), exc_info=task.exception())

    # ------------------------------------------------------------------ trials

    async def _submit(self, detail: TrialJobDetail) -> None:
        run = _Run(detail, ServiceSink(self, detail.id))
        self._runs[detail.id] = run
        self.server.register(detail.id, run.sink, attempt=1)
        run.registered = True
        self._queue.append(run)
        self._schedule_dispatch()

    def _on_status(self, detail: TrialJobDetail) -> None:
        if not detail.status.is_terminal:
            return
        run = self._runs.get(detail.id)
        if run is None:
            return
        run.ended.set()
        host = run.host
        if host is not None:
            host.trials.discard(detail.id)
            host.exit_seen.pop(detail.id, None)
            if host.gpus is not None:
                host.gpus.release(detail.id)
        if run.registered:
            run.registered = False
            asyncio.get_running_loop().call_soon(self._unregister, detail.id)
        self._schedule_dispatch()

    def _unregister(self, trial_id: str) -> None:
        if self._server is not None:
            self._server.unregister(trial_id)

    def _shell(self, script: str, machine: RemoteMachineConfig | None = None) -> str:
        """A command line that runs ``script`` with a POSIX shell whatever the user's login shell is.

        With a pre-command, bash runs it when the host has bash (pre-commands often ``source``).
        """
        q = shlex.quote(script)
        if machine is not None and machine.pre_command:
            return f"if command -v bash >/dev/null 2>&1; then exec bash -c {q}; else exec /bin/sh -c {q}; fi"
        return f"exec /bin/sh -c {q}"

    def _env_prelude(self, m: RemoteMachineConfig) -> list[str]:
        lines = []
        if m.python_path:
            lines.append(f'PATH={shlex.quote(m.python_path)}:"$PATH"; export PATH')
        if m.pre_command:
            lines.append(m.pre_command)
        return lines

    async def _keeper_archive(self) -> CodeArchive:
        async with self._archive_lock:
            if self._keeper is None:
                keeper_root = Path(trial_keeper.__file__).resolve().parent
                agent = Path(__file__).with_name("agent.py").read_bytes()
                self._keeper = await asyncio.to_thread(
                    build_archive,
                    keeper_root,
                    use_ignore_file=False,
                    exclude_names=("__pycache__",),
                    prefix="trial_keeper/",
                    extra={AGENT_FILE: agent},
                )
            return self._keeper

    async def _code_archive(self) -> CodeArchive:
        async with self._archive_lock:
            if self._code is None:
                code_dir = Path(self.config.trial_code_directory).expanduser().resolve()
                code = await asyncio.to_thread(build_archive, code_dir)
                self._code = code
                log.info("Trial code: %d files, %d bytes packed (hash %s).", code.files, len(code.data), code.digest)
            return self._code

    async def _upload(self, host: _Host, archive: CodeArchive, dest: str, what: str) -> None:
        """Unpack ``archive`` into ``dest`` on the host unless a complete copy is there already."""
        if await host.conn.exists(f"{dest}/.nni-ts-complete"):
            log.info("Machine %s already has %s (%s).", host.label, what, archive.digest)
            return
        q = shlex.quote
        tmp_tar = f"{host.work}/.upload-{secrets.token_hex(6)}.tar.gz"
        await host.conn.put_bytes(archive.data, tmp_tar)
        tmp_dir = f"{dest}.tmp-{secrets.token_hex(6)}"
        script = "\n".join(
            [
                f"t={q(tmp_tar)}; d={q(dest)}; x={q(tmp_dir)}",
                'mkdir -p "$x" "$(dirname "$d")" || exit 4',
                'tar -xzf "$t" -C "$x" || { rm -rf "$x" "$t"; exit 5; }',
                'rm -f "$t"; touch "$x/.nni-ts-complete"',
                'if [ -e "$d/.nni-ts-complete" ]; then rm -rf "$x"; else rm -rf "$d"; mv "$x" "$d"; fi',
            ]
        )
        await host.conn.check(self._shell(script), what=f"unpack {what}")
        log.info("Uploaded %s to %s (%d bytes).", what, host.label, len(archive.data))

    async def _ensure_keeper(self, host: _Host) -> None:
        keeper = await self._keeper_archive()
        host.keeper_dir = f"{host.work}/keeper/{keeper.digest}"
        await self._upload(host, keeper, host.keeper_dir, "the trial keeper")

    async def _start_agent(self, host: _Host) -> str | None:
        """Check python3 and the GPUs, then start the host agent, in one command.

        Returns what the checks printed, or None when the agent could not start for a reason other
        than the checks (the shell path is used then).
        """
        if not self.use_agent:
            return None
        q = shlex.quote
        kd = host.keeper_dir
        script = "\n".join(
            [
                *self._env_prelude(host.machine),
                *_HOST_CHECKS[:-1],
                f"PYTHONPATH={q(kd)}${{PYTHONPATH:+:$PYTHONPATH}}; export PYTHONPATH",
                f"exec python3 -u {q(kd + '/' + AGENT_FILE)}",
            ]
        )
        agent = HostAgent(host.conn)
        try:
            preamble = await agent.start(self._shell(script, host.machine))
        except (PlatformError, SshConnectError) as exc:
            if not host.conn.connected:
                raise
            if agent.exit_code == 3:  # python3 missing or too old: the host cannot run trials
                raise PlatformError(f"{host.label} cannot run trials: {exc}") from None
            log.warning("The nni-ts agent did not start on %s (%s); trials start through the shell.", host.label, exc)
            host.agent = None
            return None
        host.agent = agent
        return "\n".join(preamble) + "\n"

    async def _ensure_code(self, host: _Host) -> None:
        if host.code_ready:
            return
        async with host.code_lock:
            if host.code_ready:
                return
            code = await self._code_archive()
            q = shlex.quote
            cache = f"{host.work}/code/{code.digest}"
            await self._upload(host, code, cache, "the trial code")
            exp_code = f"{host.exp_dir}/code"
            script = (
                f"e={q(exp_code)}; c={q(cache)}\n"
                '[ -d "$e" ] || cp -al "$c" "$e" 2>/dev/null || { rm -rf "$e"; cp -a "$c" "$e"; } || exit 6'
            )
            await host.conn.check(self._shell(script), what="link the trial code into the experiment")
            host.code_dir = exp_code
            host.code_ready = True

    def _trial_command(self, detail: TrialJobDetail) -> str:
        cfg = self.config
        command = detail.form.command or cfg.trial_command or ""
        if not command:
            raise ConfigError("trialCommand is not set.", path="trialCommand")
        if cfg.hyperparameters_as_args:
            args = []
            for k, v in detail.form.parameters().items():
                args.append(shlex.quote(f"--{k}={v if isinstance(v, str) else json.dumps(v)}"))
            command = " ".join([command, *args])
        if cfg.trial_prepare_command:
            command = f"{cfg.trial_prepare_command}\n{command}"
        return command

    def _keeper_args(self, host: _Host, run: _Run) -> list[str]:
        cfg = self.config
        detail = run.detail
        return [
            "--trial-id", detail.id,
            "--attempt", str(run.attempt),
            "--trial-dir", run.remote_dir,
            "--code-dir", host.code_dir,
            "--server-url", self._server_url(host),
            "--token-file", f"{run.remote_dir}/.nni-ts/token",
            "--platform", "remote",
            "--experiment-id", self.experiment_id,
            "--sequence-id", str(detail.sequence_id),
            "--heartbeat", f"{cfg.keeper_heartbeat:g}",
            "--grace", f"{cfg.cancel_grace_period:g}",
            "--no-passthrough",
            "--", self._trial_command(detail),
        ]  # fmt: skip

    async def _launch_with_agent(self, host: _Host, agent: HostAgent, run: _Run) -> str:
        detail = run.detail
        env = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in run.gpus)}
        for key, value in detail.form.env.items():
            if not key.isidentifier():
                raise ConfigError(f"The environment variable name {key!r} of trial {detail.id} is not valid.")
            env[key] = value
        token = self.server.token_for(detail.id)
        answer = await agent.request(
            "launch",
            dir=run.remote_dir,
            files={"parameter.cfg": detail.form.hyper_parameters.value, ".nni-ts/token": token},
            private=[".nni-ts/token"],
            argv=self._keeper_args(host, run),
            env=env,
        )
        return f"nni-ts-keeper {answer['pid']} {answer.get('start') or ''}"

    def _launch_script(self, host: _Host, run: _Run) -> str:
        q = shlex.quote
        detail = run.detail
        lines = [
            f"d={q(run.remote_dir)}",
            'mkdir -p "$d/.nni-ts" || exit 90',
            'cd "$d" || exit 90',
            "IFS= read -r tok || exit 91",
            '(umask 077 && printf %s "$tok" > .nni-ts/token) || exit 91',
            "cat > parameter.cfg || exit 91",
            *self._env_prelude(host.machine),
        ]
        for key, value in detail.form.env.items():
            if not key.isidentifier():
                raise ConfigError(f"The environment variable name {key!r} of trial {detail.id} is not valid.")
            lines.append(f"{key}={q(value)}; export {key}")
        cvd = ",".join(str(g) for g in run.gpus)
        argv = ["python3", "-m", "trial_keeper", *self._keeper_args(host, run)]
        lines.append(
            f"CUDA_VISIBLE_DEVICES={q(cvd)} PYTHONPATH={q(host.keeper_dir)}${{PYTHONPATH:+:$PYTHONPATH}} "
            f"setsid {' '.join(q(a) for a in argv)} </dev/null >.nni-ts/keeper.out 2>&1 &"
        )
        lines.append('p=$!; s=$(cut -d" " -f22 "/proc/$p/stat" 2>/dev/null); echo "nni-ts-keeper $p $s"')
        return "\n".join(lines)

    async def _launch(self, run: _Run, host: _Host) -> None:
        detail = run.detail
        run.remote_dir = f"{host.exp_dir}/trials/{detail.id}"
        detail.host = host.machine.host
        detail.platform_data = {
            "machine": host.index,
            "host": host.label,
            "trial_dir": run.remote_dir,
            "attempt": run.attempt,
            "gpus": run.gpus,
        }
        try:
            await self._ensure_code(host)
            if host.agent is not None and not host.agent.closed:
                out = await self._launch_with_agent(host, host.agent, run)
            else:
                script = self._launch_script(host, run)
                token = self.server.token_for(detail.id).encode()
                stdin = token + b"\n" + detail.form.hyper_parameters.value.encode()
                out = await host.conn.check(
                    self._shell(script, host.machine), stdin=stdin, what=f"start trial {detail.id}"
                )
        except SshConnectError as exc:
            if detail.status.is_terminal:
                return
            # The host dropped before the keeper could start: give the trial to another host.
            log.warning(
                "Could not start trial %s on %s (%s); it waits for another machine.", detail.id, host.label, exc
            )
            host.trials.discard(detail.id)
            if host.gpus is not None:
                host.gpus.release(detail.id)
            run.host = None
            run.gpus = []
            self._queue.appendleft(run)
            self._host_lost(host, str(exc))
            return
        except (PlatformError, ConfigError) as exc:
            if not detail.status.is_terminal:
                self._set_status(detail.id, TrialJobStatus.FAILED, message=str(exc), infrastructure_failure=True)
            return
        for line in out.splitlines():
            parts = line.split()
            if parts[:1] == ["nni-ts-keeper"] and len(parts) >= 2:
                run.keeper_pid = int(parts[1])
                run.keeper_start = parts[2] if len(parts) > 2 else None
        if run.keeper_pid is None:
            if not detail.status.is_terminal:
                self._set_status(
                    detail.id,
                    TrialJobStatus.FAILED,
                    message=f"The keeper of trial {detail.id} did not start on {host.label}: {out.strip()[-500:]}",
                    infrastructure_failure=True,
                )
            return
        detail.platform_data.update({"keeper_pid": run.keeper_pid, "keeper_start": run.keeper_start})

    async def _stop_keeper(self, host: _Host, run: _Run) -> None:
        """SIGKILL a keeper that has nothing left to do but report (its trial's end is delivered)."""
        agent = host.agent
        if agent is not None and not agent.closed:
            await agent.request("stop", pid=run.keeper_pid, start=run.keeper_start)
            return
        q = shlex.quote
        script = "\n".join(
            [
                _ALIVE_FN,
                f"p={q(str(run.keeper_pid or ''))}; s={q(run.keeper_start or '')}",
                'if ka "$p" "$s"; then kill -s KILL "$p"; fi; exit 0',
            ]
        )
        await host.conn.run(self._shell(script), timeout=30)

    async def _kill_remote(self, host: _Host, pid: int | None, start: str | None, remote_dir: str, tid: str) -> str:
        """SIGTERM the keeper if it lives, else SIGKILL the trial's process group. Returns which."""
        agent = host.agent
        if agent is not None and not agent.closed:
            answer = await agent.request("kill", pid=pid, start=start, dir=remote_dir)
            return str(answer["how"])
        q = shlex.quote
        script = "\n".join(
            [
                _ALIVE_FN,
                _TRIAL_PID_FN,
                f"p={q(str(pid or ''))}; s={q(start or '')}; d={q(remote_dir)}",
                'if ka "$p" "$s"; then kill -TERM "$p" && echo keeper; exit 0; fi',
                't=$(tp "$d"); if [ -n "$t" ]; then kill -s KILL -- "-$t" 2>/dev/null; fi; echo group',
            ]
        )
        out = await host.conn.run(self._shell(script), timeout=30)
        return out.text().strip()

    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        run = self._runs.get(detail.id)
        if run is None:
            return
        run.sink.cancel_status = status
        if run in self._queue:
            self._queue.remove(run)
            self._set_status(detail.id, status, message="Cancelled before it started.")
            return
        if run.launch is not None and not run.launch.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(run.launch)
        host = run.host
        if host is None or run.keeper_pid is None:
            if run in self._queue:
                self._queue.remove(run)
            self._set_status(detail.id, status, message="Cancelled.")
            return
        if not host.ready:
            host.pending_kills.append((detail.id, run.keeper_pid, run.keeper_start, run.remote_dir))
            self._set_status(
                detail.id,
                status,
                message=f"Cancelled; {host.label} is unreachable, its processes are killed on reconnection.",
            )
            return
        try:
            how = await self._kill_remote(host, run.keeper_pid, run.keeper_start, run.remote_dir, detail.id)
        except SshConnectError:
            host.pending_kills.append((detail.id, run.keeper_pid, run.keeper_start, run.remote_dir))
            self._set_status(
                detail.id, status, message=f"Cancelled; {host.label} dropped, its processes are killed on reconnection."
            )
            return
        if how == "keeper":
            try:
                async with asyncio.timeout(self.config.cancel_grace_period + 10):
                    await run.ended.wait()
                return
            except TimeoutError:
                pass
        # No keeper reported the end: take what its journal holds, then end the trial.
        with contextlib.suppress(Exception):
            await self._recover(run, host)
        if not detail.status.is_terminal:
            self._set_status(detail.id, status, message="Cancelled.")

    async def _forget_lost(self, detail: TrialJobDetail) -> None:
        run = self._runs.get(detail.id)
        if run is None or run.host is None or run.keeper_pid is None:
            return
        host = run.host
        if host.ready:
            with contextlib.suppress(Exception):
                await self._kill_remote(host, run.keeper_pid, run.keeper_start, run.remote_dir, detail.id)
                return
        host.pending_kills.append((detail.id, run.keeper_pid, run.keeper_start, run.remote_dir))

    async def _reattach(self, detail: TrialJobDetail, metrics_delivered: int) -> None:
        data = detail.platform_data or {}
        index = data.get("machine")
        host = self._hosts[index] if isinstance(index, int) and 0 <= index < len(self._hosts) else None
        if host is None or host.label != data.get("host") or not data.get("trial_dir"):
            self._set_status(
                detail.id,
                TrialJobStatus.FAILED,
                message=f"Cannot re-attach: the trial ran on {data.get('host') or 'an unknown machine'}, "
                "which is not in machineList any more.",
                infrastructure_failure=True,
            )
            return
        run = _Run(detail, ServiceSink(self, detail.id), host=host)
        run.remote_dir = str(data["trial_dir"])
        run.keeper_pid = int(data["keeper_pid"]) if data.get("keeper_pid") is not None else None
        run.keeper_start = data.get("keeper_start")
        run.attempt = int(data.get("attempt") or 1)
        run.gpus = [int(g) for g in data.get("gpus") or []]
        self._runs[detail.id] = run
        self.server.register(detail.id, run.sink, attempt=run.attempt, next_seq=metrics_delivered)
        run.registered = True
        host.trials.add(detail.id)
        if host.gpus is not None and run.gpus:
            host.gpus.assign_exact(detail.id, run.gpus)
        if run.keeper_pid is None:
            self._set_status(
                detail.id,
                TrialJobStatus.FAILED,
                message="Cannot re-attach: the trial's keeper had not started when the manager stopped.",
                infrastructure_failure=True,
            )
            return
        if host.ready:
            try:
                await self._poll(host)
            except SshConnectError as exc:
                self._host_lost(host, str(exc))
        elif detail.status is TrialJobStatus.RUNNING:
            self._set_status(detail.id, TrialJobStatus.UNKNOWN, message=f"{host.label} is unreachable; reconnecting.")

    async def _read_trial_file(self, detail: TrialJobDetail, name: str, tail: int | None) -> bytes:
        run = self._runs.get(detail.id)
        if run is not None and run.host is not None and run.remote_dir and run.host.ready:
            try:
                return await run.host.conn.read(f"{run.remote_dir}/{name}", tail=tail)
            except SshConnectError:
                pass
        return await super()._read_trial_file(detail, name, tail)
