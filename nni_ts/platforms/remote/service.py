"""The remote platform: trials on SSH hosts, each under a detached trial keeper.

How a trial runs
----------------
* One pooled paramiko connection per host (:mod:`.ssh`): the host agent's channel, SFTP and the
  reverse tunnel share it; no handshake per trial. paramiko runs in the service's thread pool.
* The host agent (:mod:`.agent`, Python 3.8+, started once per connection) is the one protocol:
  it launches, probes, polls, kills and stops keepers. A host without Python 3.8 is refused with a
  message saying so.
* On the first trial a host gets, the trial code directory goes up as a tarball (``.nniignore``
  honoured, dotfiles kept) into ``<work>/code/<content hash>`` (a second experiment with the same
  code uploads nothing) and is hard-linked into ``<work>/experiments/<exp>/code``; the
  ``trial_keeper`` package goes to ``<work>/keeper/<hash>`` the same way. Everything is owner-only.
* Every launch is its own attempt with its own directory ``<work>/experiments/<exp>/trials/<id>``
  (attempt 1) or ``<id>.<attempt>``, holding ``parameter.cfg`` and the token (sent in the agent's
  request, never on a command line). A launch whose answer is lost is *in doubt*: the trial waits
  for its host, which is asked (``probe``) whether the attempt started once it answers again; if it
  did, the trial goes on as that attempt; if not, the attempt is fenced (it can never start) and the
  trial is launched again as the next attempt. A launch request also expires on the host after the
  launch time-out, so one held up by a partition never starts late.
* Keepers report to the manager's :class:`~nni_ts.server.ClusterServer` through a reverse tunnel
  on each host's 127.0.0.1 (``keeperReporting: tunnel``), or over HTTP to ``nniManagerIp``
  (``direct``). Every host is polled in one agent request every ``poll_interval`` seconds: a
  keeper that ended without reporting (tunnel down) has its journal read back over SFTP and fed
  through the server's de-duplication; a keeper that died without recording the trial's end has
  its attempt's processes killed and the trial fails as an infrastructure failure.
* Liveness: a watchdog pings each host's agent at least every third of ``heartbeatTimeout``; a host
  that does not answer within the rest of it is lost: its connection is closed, it leaves
  scheduling (:class:`HostState`), its trials turn UNKNOWN, and it is reconnected with back-off.
* Cancel: SIGTERM to the keeper, which TERMs then KILLs its trial's processes (the process group and
  every process carrying the attempt's marker); if the keeper is gone, they are killed directly.
* ``platform_data`` holds the host, attempt, trial directory, keeper pid and start time and the
  GPUs, so a restarted manager re-attaches (the experiment's secret and tunnel ports are kept in
  ``<experiment dir>/remote-state.json``).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import secrets
import shlex
import time
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
from .ssh import AgentRefused, HostAgent, HostConnection, SshConnectError, expand_remote

__all__ = ["HOST_TRANSITIONS", "HostState", "RemoteTrainingService"]

log = logging.getLogger(__name__)

DEFAULT_WORK_DIR = "~/nni-ts"
AGENT_FILE = "nni_ts_agent.py"
STATE_FILE = "remote-state.json"
#: The exit code of the agent's start command when the host has no usable python3.
NO_PYTHON = 3

# Run on each host before the agent starts (after pythonPath and preCommand): python3 3.8+, GPUs.
_HOST_CHECKS = [
    "umask 077",
    "command -v python3 >/dev/null 2>&1 || { echo 'python3 is not on the PATH' >&2; exit 3; }",
    "python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)' "
    '|| { echo "python3 is older than 3.8: $(python3 -V 2>&1)" >&2; exit 3; }',
    f"{' '.join(NVIDIA_SMI_QUERY)} 2>/dev/null && echo nni-ts-gpu-ok",
]


class HostState(enum.Enum):
    """Where a machine of ``machineList`` is; only READY machines get trials."""

    CONNECTING = "connecting"  # connecting and setting up (the first time, or again after a loss)
    READY = "ready"  # connected and its agent answers
    LOST = "lost"  # the connection dropped or the host went silent; reconnecting with back-off
    CLOSED = "closed"  # the service is shutting down


#: The allowed moves between host states.
HOST_TRANSITIONS: dict[HostState, frozenset[HostState]] = {
    HostState.CONNECTING: frozenset({HostState.READY, HostState.LOST, HostState.CLOSED}),
    HostState.READY: frozenset({HostState.LOST, HostState.CLOSED}),
    HostState.LOST: frozenset({HostState.CONNECTING, HostState.CLOSED}),
    HostState.CLOSED: frozenset(),
}


@dataclass(frozen=True)
class _Attempt:
    """One launch of a trial on a host: what to probe, fence or kill there later."""

    trial_id: str
    attempt: int
    trial_dir: str
    keeper_pid: int | None = None
    keeper_start: str | None = None


@dataclass(frozen=True)
class _Paths:
    work: str
    exp_dir: str
    keeper_dir: str

    @property
    def code_dir(self) -> str:
        return f"{self.exp_dir}/code"


@dataclass(eq=False)
class _Host:
    index: int
    machine: RemoteMachineConfig
    conn: HostConnection
    state: HostState = HostState.CONNECTING
    error: str | None = None
    paths: _Paths | None = None
    agent: HostAgent | None = None
    gpus: GpuScheduler | None = None
    gpu_known: bool = False
    code_ready: bool = False
    url_host: str = "127.0.0.1"
    #: Trials placed on the host (launching, in doubt or running).
    trials: set[str] = field(default_factory=set)
    #: Attempts to stop (or fence, if they never started) as soon as the host answers again.
    revoke: list[_Attempt] = field(default_factory=list)
    exit_seen: dict[str, int] = field(default_factory=dict)
    #: Set when the host needs its monitor: a drop, a reconnection, a trial to poll soon.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    code_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def label(self) -> str:
        return self.conn.label

    @property
    def ready(self) -> bool:
        return self.state is HostState.READY

    def move(self, state: HostState, error: str | None = None) -> bool:
        """Go to ``state`` if HOST_TRANSITIONS allows it (False, and nothing changes, if not)."""
        if state not in HOST_TRANSITIONS[self.state]:
            return False
        self.state = state
        self.error = error
        self.wake.set()
        return True

    def live_agent(self) -> HostAgent:
        agent = self.agent
        if self.state is not HostState.READY or agent is None or agent.closed:
            raise SshConnectError(f"{self.label} is not connected.")
        return agent


@dataclass(eq=False)
class _Run:
    detail: TrialJobDetail
    sink: ServiceSink
    host: _Host | None = None
    attempt: int = 1
    remote_dir: str = ""
    keeper_pid: int | None = None
    keeper_start: str | None = None
    gpus: list[int] = field(default_factory=list)
    launch: asyncio.Task[None] | None = None
    #: The launch request got no answer: whether this attempt started is asked when the host answers.
    in_doubt: bool = False
    doubt_timer: asyncio.TimerHandle | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    registered: bool = False

    def current(self) -> _Attempt:
        return _Attempt(self.detail.id, self.attempt, self.remote_dir, self.keeper_pid, self.keeper_start)


class RemoteTrainingService(TrainingService[RemoteConfig]):
    """Trials on the SSH hosts of ``machineList`` (NNI's ``remote`` training service).

    Keyword arguments beyond the contract's: ``poll_interval`` (seconds between the batched status
    polls of each host), ``reconnect_max`` (longest back-off between reconnection attempts),
    ``connect_timeout`` (seconds for one SSH connection attempt).
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
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self.poll_interval = poll_interval
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        self._server: ClusterServer | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._hosts: list[_Host] = []
        self._runs: dict[str, _Run] = {}
        self._queue: deque[_Run] = deque()
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

    @property
    def answer_timeout(self) -> float:
        """Seconds a host's agent has to answer a request before the host counts as lost."""
        return self.config.heartbeat_timeout * 2 / 3

    @property
    def ping_interval(self) -> float:
        """Seconds between liveness checks: a silent host is noticed within ``heartbeatTimeout``."""
        return self.config.heartbeat_timeout / 3

    def host_status(self) -> list[dict[str, Any]]:
        """Each machine's label, state, whether it takes trials, its last error and its trials."""
        return [
            {"host": h.label, "state": h.state.value, "ready": h.ready, "error": h.error, "trials": sorted(h.trials)}
            for h in self._hosts
        ]

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
        bind = "127.0.0.1" if cfg.keeper_reporting == "tunnel" else (cfg.nni_manager_ip or "0.0.0.0")
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
                errors.append(f"  - {h.label}: {h.error}")
        if len(errors) == len(self._hosts):
            raise PlatformError("No machine of machineList could be used:\n" + "\n".join(errors))
        for h in self._hosts:
            if h.error:
                log.warning(
                    "Machine %s is unreachable; trials go to the others while it is retried: %s", h.label, h.error
                )
            self.tasks.spawn(self._monitor(h), name=f"monitor-{h.label}")
            self.tasks.spawn(self._watchdog(h), name=f"watchdog-{h.label}")

    async def _bring_up(self, host: _Host) -> None:
        """Connect, make the experiment's directories, start the agent (checks python3 and GPUs), open the tunnel.

        On failure the host is LOST with the reason in ``host.error``, and the error is raised.
        """
        host.move(HostState.CONNECTING)
        try:
            await self._connect_and_set_up(host)
        except Exception as exc:
            host.move(HostState.LOST, str(exc))
            host.agent = None
            await self._close_quietly(host)
            raise
        if not host.move(HostState.READY):
            raise PlatformError(f"{host.label} is {host.state.value}.")

    async def _connect_and_set_up(self, host: _Host) -> None:
        conn = host.conn
        await conn.connect()
        assert conn.home is not None
        m = host.machine
        work = expand_remote(conn.home, m.work_directory, DEFAULT_WORK_DIR)
        exp_dir = f"{work}/experiments/{self.experiment_id}"
        await conn.makedirs(f"{exp_dir}/trials", f"{work}/code", f"{work}/keeper")
        keeper = await self._keeper_archive()
        host.paths = _Paths(work, exp_dir, f"{work}/keeper/{keeper.digest}")
        await self._upload(host, keeper, host.paths.keeper_dir, "the trial keeper")
        out = await self._start_agent(host)
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

    async def _close_quietly(self, host: _Host) -> None:
        try:
            await host.conn.close()
        except (OSError, RuntimeError) as exc:  # RuntimeError: the executor is shut down
            log.debug("Closing the connection to %s: %s", host.label, exc)

    async def _start_agent(self, host: _Host) -> str:
        """Check python3 and the GPUs, then start the host agent, in one command; return what the checks printed."""
        assert host.paths is not None
        q = shlex.quote
        kd = host.paths.keeper_dir
        script = "\n".join(
            [
                *self._env_prelude(host.machine),
                *_HOST_CHECKS,
                f"PYTHONPATH={q(kd)}${{PYTHONPATH:+:$PYTHONPATH}}; export PYTHONPATH",
                f"exec python3 -u {q(kd + '/' + AGENT_FILE)}",
            ]
        )

        def closed() -> None:
            self._host_lost(host, "the nni-ts agent ended" + (f" ({agent.why})" if agent.why else ""), agent)

        agent = HostAgent(host.conn, on_close=closed)
        try:
            preamble = await agent.start(self._shell(script, host.machine))
        except (PlatformError, SshConnectError) as exc:
            if agent.exit_code == NO_PYTHON:
                raise PlatformError(
                    f"{host.label} cannot run trials: {exc} nni-ts needs Python 3.8 or newer on each host "
                    "(python3 on the PATH, or pythonPath in its machineList entry)."
                ) from None
            raise
        host.agent = agent
        return "\n".join(preamble) + "\n"

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
        elif self.config.nni_manager_ip:
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
        # minutes: every trial is delivered by now, so its lingering keepers are stopped. Attempts
        # to revoke on a host that answers are revoked now.
        async def settle(h: _Host) -> None:
            keepers = [
                [r.keeper_pid, r.keeper_start]
                for r in self._runs.values()
                if r.host is h and r.keeper_pid is not None and r.detail.exit_code is not None
            ]
            agent = h.live_agent()
            if keepers:
                await agent.request("stop", keepers=keepers, timeout=self.answer_timeout)
            await self._revoke(h, agent)

        ready = [h for h in self._hosts if h.ready]
        results = await asyncio.gather(*(settle(h) for h in ready), return_exceptions=True)
        for h, res in zip(ready, results, strict=True):
            if isinstance(res, Exception):
                log.warning("Could not stop the leftover keepers on %s: %s", h.label, res)
        for h in self._hosts:
            h.move(HostState.CLOSED)
            if h.revoke:
                log.warning(
                    "Machine %s is unreachable: the processes of trials %s could not be stopped; "
                    "they end by themselves or when killed on the host (their trial directories are under %s).",
                    h.label,
                    ", ".join(sorted({a.trial_id for a in h.revoke})),
                    h.paths.exp_dir if h.paths else (h.machine.work_directory or DEFAULT_WORK_DIR),
                )
        for run in self._runs.values():
            if run.doubt_timer is not None:
                run.doubt_timer.cancel()
        # The monitors, watchdogs and launches stop before their connections close.
        await self.tasks.stop(self.task_stop_timeout)
        await asyncio.gather(*(self._close_quietly(h) for h in self._hosts))
        if self._server is not None:
            await self._server.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ host monitor

    async def _wait_wake(self, host: _Host, seconds: float) -> None:
        """Sleep ``seconds``, or less if the host's wake event fires; clear it."""
        try:
            async with asyncio.timeout(seconds):
                await host.wake.wait()
        except TimeoutError:
            pass
        host.wake.clear()

    async def _monitor(self, host: _Host) -> None:
        """Reconnect the host when it is lost; poll its trials every ``poll_interval`` seconds."""
        delay = 0.5
        while host.state is not HostState.CLOSED:
            if host.state is HostState.LOST:
                try:
                    await self._bring_up(host)
                except (PlatformError, OSError):
                    log.warning(
                        "Machine %s is still unreachable (next try in %.1f s): %s", host.label, delay, host.error
                    )
                    self._note_waiting()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.reconnect_max)
                    continue
                delay = 0.5
                log.info("Connected to machine %s.", host.label)
                await self._after_reconnect(host)
                self._schedule_dispatch()
                continue
            await self._wait_wake(host, self.poll_interval)
            agent = host.agent
            if host.ready:
                try:
                    if host.revoke:
                        await self._revoke(host, host.live_agent())
                    await self._poll(host)
                except SshConnectError as exc:
                    self._host_lost(host, str(exc), agent)
                except PlatformError as exc:
                    log.warning("Polling machine %s failed; trying again: %s", host.label, exc)

    async def _watchdog(self, host: _Host) -> None:
        """Ping the host's agent: a host silent for ``answer_timeout`` is lost (its connection closed)."""
        while host.state is not HostState.CLOSED:
            await asyncio.sleep(self.ping_interval)
            agent = host.agent
            if not host.ready or agent is None:
                continue
            try:
                await agent.request("ping", timeout=self.answer_timeout)
            except SshConnectError as exc:
                self._host_lost(host, str(exc), agent)

    def _host_lost(self, host: _Host, reason: str, agent: HostAgent | None = None) -> None:
        """The host dropped or went silent: out of scheduling, its connection closed, its trials UNKNOWN.

        ``agent``: the agent whose request failed; nothing happens if the host has another one by now
        (the failure belongs to a connection that was replaced already).
        """
        if agent is not None and host.agent is not agent:
            return
        if not host.move(HostState.LOST, f"lost the connection ({reason})"):
            return
        host.agent = None
        log.warning("Lost the connection to machine %s (%s); reconnecting.", host.label, reason)
        for tid in list(host.trials):
            run = self._runs.get(tid)
            if run is None or run.detail.status.is_terminal or run.keeper_pid is None:
                continue
            self.reporter.unknown(
                tid, f"Lost the connection to {host.label}; reconnecting. The trial keeps running there."
            )
        close = host.conn.detach()
        if not self.tasks.closed:
            self.tasks.spawn(asyncio.to_thread(close), name=f"close-{host.label}")

    async def _after_reconnect(self, host: _Host) -> None:
        """Stop what was revoked, settle launches in doubt, then poll the host's trials."""
        agent = host.agent
        try:
            agent = host.live_agent()
            await self._revoke(host, agent)
            for run in [self._runs[t] for t in sorted(host.trials) if t in self._runs]:
                if run.in_doubt and run.host is host:
                    await self._settle_doubt(run, host, agent)
            await self._poll(host)
        except SshConnectError as exc:
            self._host_lost(host, str(exc), agent)
        except PlatformError as exc:
            log.warning("Settling machine %s after reconnecting failed; trying again later: %s", host.label, exc)

    async def _revoke(self, host: _Host, agent: HostAgent) -> None:
        """Fence or kill (SIGKILL, keeper and trial) every attempt the host must not run any more."""
        while host.revoke:
            attempt = host.revoke[0]
            found = await agent.request("probe", dir=attempt.trial_dir, fence=True, timeout=self.answer_timeout)
            if found.get("state") == "launched":
                pid = attempt.keeper_pid or found.get("pid")
                start = attempt.keeper_start or found.get("start")
                await agent.request(
                    "kill", pid=pid, start=start, dir=attempt.trial_dir, hard=True, timeout=self.answer_timeout
                )
                log.info("Stopped attempt %d of trial %s on %s.", attempt.attempt, attempt.trial_id, host.label)
            host.revoke.pop(0)

    async def _settle_doubt(self, run: _Run, host: _Host, agent: HostAgent) -> None:
        """Ask the host whether the attempt whose launch got no answer started: adopt it, or fence and relaunch."""
        found = await agent.request("probe", dir=run.remote_dir, fence=True, timeout=self.answer_timeout)
        if not run.in_doubt or run.detail.status.is_terminal:
            return
        self._clear_doubt(run)
        if found.get("state") == "launched" and found.get("pid"):
            run.keeper_pid = int(found["pid"])
            run.keeper_start = found.get("start")
            self._adopted(run, host)
            log.info("Attempt %d of trial %s did start on %s; it goes on.", run.attempt, run.detail.id, host.label)
            return
        log.info(
            "Attempt %d of trial %s never started on %s; it is launched again as attempt %d.",
            run.attempt,
            run.detail.id,
            host.label,
            run.attempt + 1,
        )
        self._requeue(run, host)

    def _clear_doubt(self, run: _Run) -> None:
        run.in_doubt = False
        if run.doubt_timer is not None:
            run.doubt_timer.cancel()
            run.doubt_timer = None

    def _doubt_expired(self, run: _Run) -> None:
        run.doubt_timer = None
        host = run.host
        if not run.in_doubt or run.detail.status.is_terminal or host is None:
            return
        run.in_doubt = False
        host.revoke.append(run.current())
        message = (
            f"The launch on {host.label} got no answer and the machine has not answered for "
            f"{self.unknown_timeout:g} s; if the trial started there, it is stopped when the machine answers again."
        )
        if not self.tasks.closed:
            self.tasks.spawn(self._fail(run.detail.id, message), name=f"doubt-{run.detail.id}")

    async def _fail(self, trial_id: str, message: str) -> None:
        """End a trial as FAILED by an infrastructure failure."""
        await self.reporter.ended(trial_id, TrialJobStatus.FAILED, message=message, infrastructure_failure=True)

    def _note_waiting(self) -> None:
        down = [f"{h.label} ({h.error})" for h in self._hosts if not h.ready and h.error]
        if not down:
            return
        note = "Waiting for a machine; unreachable: " + "; ".join(down)
        for run in self._queue:
            self.reporter.waiting(run.detail.id, note)

    # ------------------------------------------------------------------ polling

    async def _poll(self, host: _Host) -> None:
        """One agent request for every live trial of the host: exit recorded? keeper alive?"""
        live = [
            self._runs[t]
            for t in sorted(host.trials)
            if t in self._runs and not self._runs[t].detail.status.is_terminal and self._runs[t].keeper_pid is not None
        ]
        if not live:
            return
        agent = host.live_agent()
        trials = [[r.detail.id, r.keeper_pid, r.keeper_start, r.remote_dir] for r in live]
        answer = await agent.request("poll", trials=trials, timeout=self.answer_timeout)
        seen = {tid: (bool(exited), bool(alive)) for tid, (exited, alive) in answer["status"].items()}
        for run in live:
            tid = run.detail.id
            if tid not in seen or run.detail.status.is_terminal:
                continue
            exited, alive = seen[tid]
            if alive:
                if run.detail.status is TrialJobStatus.UNKNOWN and host.ready:
                    self.reporter.running(tid, message=f"{host.label} is back.")
                if exited:
                    host.exit_seen[tid] = host.exit_seen.get(tid, 0) + 1
                    if host.exit_seen[tid] >= 2 and await self._recover(run, host):
                        # The keeper is still trying to report an end that is now delivered: stop it.
                        await agent.request(
                            "stop", keepers=[[run.keeper_pid, run.keeper_start]], timeout=self.answer_timeout
                        )
                continue
            await self._recover(run, host)
            if exited or run.detail.status.is_terminal:
                continue
            # The keeper is gone and never recorded the trial's end: it was killed (or never ran).
            await agent.request("kill", pid=None, start=None, dir=run.remote_dir, timeout=self.answer_timeout)
            why = (await host.conn.read(f"{run.remote_dir}/.nni-ts/keeper.out", tail=2000)).decode("utf-8", "replace")
            message = f"The trial keeper on {host.label} ended without recording the trial's end (killed?)."
            if why.strip():
                message += f" Its output: {why.strip()[-500:]}"
            await self._fail(tid, message)

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
        if not self._queue or self.tasks.closed:
            return
        need = self.config.trial_gpu_number
        for run in list(self._queue):
            if run.detail.status.is_terminal:
                self._queue.remove(run)
                continue
            impossible = self._impossible(need)
            if impossible:
                self._queue.remove(run)
                self.tasks.spawn(self._fail(run.detail.id, impossible), name=f"no-gpus-{run.detail.id}")
                continue
            host = self._pick_host(run, need)
            if host is None:
                continue
            self._queue.remove(run)
            run.host = host
            host.trials.add(run.detail.id)
            run.launch = self.tasks.spawn(self._launch(run, host), name=f"launch-{run.detail.id}")
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

    def _release(self, run: _Run) -> None:
        """Take the trial off its host (and its GPUs)."""
        host = run.host
        if host is not None:
            host.trials.discard(run.detail.id)
            host.exit_seen.pop(run.detail.id, None)
            if host.gpus is not None:
                host.gpus.release(run.detail.id)
        run.host = None
        run.gpus = []

    def _requeue(self, run: _Run, host: _Host) -> None:
        """Put the trial back in the queue as a new attempt (this one never started, or is fenced)."""
        self._release(run)
        run.attempt += 1
        run.remote_dir = ""
        run.keeper_pid = run.keeper_start = None
        self.server.register(run.detail.id, run.sink, attempt=run.attempt)
        self._queue.appendleft(run)
        self._schedule_dispatch()

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
        self._clear_doubt(run)
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
        """Unpack ``archive`` into ``dest`` on the host (owner-only) unless a complete copy is there already."""
        assert host.paths is not None
        if await host.conn.exists(f"{dest}/.nni-ts-complete"):
            log.info("Machine %s already has %s (%s).", host.label, what, archive.digest)
            return
        q = shlex.quote
        tmp_tar = f"{host.paths.work}/.upload-{secrets.token_hex(6)}.tar.gz"
        await host.conn.put_bytes(archive.data, tmp_tar)
        tmp_dir = f"{dest}.tmp-{secrets.token_hex(6)}"
        script = "\n".join(
            [
                "umask 077",
                f"t={q(tmp_tar)}; d={q(dest)}; x={q(tmp_dir)}",
                'mkdir -p "$x" "$(dirname "$d")" || exit 4',
                'tar -xzf "$t" -C "$x" || { rm -rf "$x" "$t"; exit 5; }',
                'chmod -R go= "$x" || exit 5',  # tar keeps the archive's modes when run as root
                'rm -f "$t"; touch "$x/.nni-ts-complete"',
                'if [ -e "$d/.nni-ts-complete" ]; then rm -rf "$x"; else rm -rf "$d"; mv "$x" "$d"; fi',
            ]
        )
        await host.conn.check(self._shell(script), what=f"unpack {what}")
        log.info("Uploaded %s to %s (%d bytes).", what, host.label, len(archive.data))

    async def _ensure_code(self, host: _Host) -> None:
        if host.code_ready:
            return
        async with host.code_lock:
            if host.code_ready:
                return
            assert host.paths is not None
            code = await self._code_archive()
            q = shlex.quote
            cache = f"{host.paths.work}/code/{code.digest}"
            await self._upload(host, code, cache, "the trial code")
            script = (
                f"umask 077; e={q(host.paths.code_dir)}; c={q(cache)}\n"
                '[ -d "$e" ] || cp -al "$c" "$e" 2>/dev/null || { rm -rf "$e"; cp -a "$c" "$e"; } || exit 6'
            )
            await host.conn.check(self._shell(script), what="link the trial code into the experiment")
            host.code_ready = True

    def _keeper_args(self, host: _Host, run: _Run) -> list[str]:
        assert host.paths is not None
        cfg = self.config
        detail = run.detail
        return [
            "--trial-id", detail.id,
            "--attempt", str(run.attempt),
            "--trial-dir", run.remote_dir,
            "--code-dir", host.paths.code_dir,
            "--server-url", self._server_url(host),
            "--token-file", f"{run.remote_dir}/.nni-ts/token",
            "--platform", "remote",
            "--experiment-id", self.experiment_id,
            "--sequence-id", str(detail.sequence_id),
            "--heartbeat", f"{cfg.keeper_heartbeat:g}",
            "--grace", f"{cfg.cancel_grace_period:g}",
            "--no-passthrough",
            "--quiet-start",  # the launch's answer says the trial runs
            "--", self.trial_command(detail),
        ]  # fmt: skip

    def _attempt_dir(self, host: _Host, run: _Run) -> str:
        assert host.paths is not None
        suffix = "" if run.attempt == 1 else f".{run.attempt}"
        return f"{host.paths.exp_dir}/trials/{run.detail.id}{suffix}"

    async def _launch(self, run: _Run, host: _Host) -> None:
        detail = run.detail
        agent = host.agent
        try:
            agent = host.live_agent()
            run.remote_dir = self._attempt_dir(host, run)
            await self._ensure_code(host)
            env = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in run.gpus)}
            for key, value in detail.form.env.items():
                if not key.isidentifier():
                    raise ConfigError(f"The environment variable name {key!r} of trial {detail.id} is not valid.")
                env[key] = value
            argv = self._keeper_args(host, run)
        except (SshConnectError, PlatformError) as exc:
            if not isinstance(exc, SshConnectError) and host.ready:
                if not detail.status.is_terminal:
                    await self._fail(detail.id, str(exc))
                return
            # Nothing was sent and the host is gone: the trial waits for a machine, as a new attempt.
            if detail.status.is_terminal:
                return
            log.warning("Could not start trial %s on %s (%s); it waits for a machine.", detail.id, host.label, exc)
            self._requeue(run, host)
            self._host_lost(host, str(exc), agent)
            return
        except ConfigError as exc:
            if not detail.status.is_terminal:
                await self._fail(detail.id, str(exc))
            return
        self.reporter.note(detail.id, host=host.machine.host, platform_data=self._platform_data(run, host))
        timeout = self.config.heartbeat_timeout
        try:
            answer = await agent.request(
                "launch",
                dir=run.remote_dir,
                attempt=run.attempt,
                not_after=time.time() + agent.clock_offset + timeout,
                files={
                    "parameter.cfg": detail.form.hyper_parameters.value,
                    ".nni-ts/token": self.server.token_for(detail.id),
                },
                argv=argv,
                env=env,
                timeout=timeout,
            )
        except SshConnectError as exc:
            if detail.status.is_terminal:
                host.revoke.append(run.current())
                return
            # The request may have reached the host: whether the attempt started is asked when it answers.
            run.in_doubt = True
            run.doubt_timer = asyncio.get_running_loop().call_later(self.unknown_timeout, self._doubt_expired, run)
            self.reporter.waiting(
                detail.id,
                f"The launch on {host.label} got no answer ({exc}); the machine is asked whether it started "
                "once it answers again.",
            )
            self._host_lost(host, str(exc), agent)
            return
        except AgentRefused as exc:
            if not detail.status.is_terminal:
                message = f"The keeper of trial {detail.id} did not start on {host.label}: {exc}"
                await self._fail(detail.id, message)
            return
        run.keeper_pid = int(answer["pid"])
        run.keeper_start = answer.get("start")
        if detail.status.is_terminal:  # cancelled meanwhile: stop what just started (the monitor does)
            host.revoke.append(run.current())
            host.wake.set()
            return
        self._adopted(run, host)

    def _adopted(self, run: _Run, host: _Host) -> None:
        """The attempt runs on ``host``: record its keeper."""
        tid = run.detail.id
        message = f"Started on {host.label} (attempt {run.attempt})."
        self.reporter.note(tid, host=host.machine.host, platform_data=self._platform_data(run, host), message=message)
        # The keeper is forked and starts the trial: RUNNING now, as the local platform does once it
        # spawned the trial (the keeper's first report would come one tunnel round trip later).
        self.reporter.running(tid, message=message)

    def _platform_data(self, run: _Run, host: _Host) -> dict[str, Any]:
        """What a restarted manager needs to find the attempt again."""
        data: dict[str, Any] = {
            "machine": host.index,
            "host": host.label,
            "trial_dir": run.remote_dir,
            "attempt": run.attempt,
            "gpus": run.gpus,
        }
        if run.keeper_pid is not None:
            data.update(keeper_pid=run.keeper_pid, keeper_start=run.keeper_start)
        return data

    async def _kill(self, host: _Host, attempt: _Attempt) -> str:
        """SIGTERM the attempt's keeper if it lives, else SIGKILL its processes. Returns which."""
        agent = host.live_agent()
        answer = await agent.request(
            "kill",
            pid=attempt.keeper_pid,
            start=attempt.keeper_start,
            dir=attempt.trial_dir,
            timeout=self.answer_timeout,
        )
        return str(answer["how"])

    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        run = self._runs.get(detail.id)
        if run is None:
            return
        run.sink.cancel_status = status
        if run in self._queue:
            self._queue.remove(run)
            await self.reporter.ended(detail.id, status, message="Cancelled before it started.")
            return
        if run.launch is not None and not run.launch.done():
            await asyncio.wait({run.launch})
        host = run.host
        if host is not None and run.in_doubt:
            self._clear_doubt(run)
            host.revoke.append(run.current())
            await self.reporter.ended(
                detail.id, status, message=f"Cancelled; if it started on {host.label}, it is stopped there."
            )
            return
        if host is None or run.keeper_pid is None:
            await self.reporter.ended(detail.id, status, message="Cancelled.")
            return
        try:
            how = await self._kill(host, run.current())
        except SshConnectError:
            host.revoke.append(run.current())
            await self.reporter.ended(
                detail.id,
                status,
                message=f"Cancelled; {host.label} is unreachable, its processes are killed when it answers again.",
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
        try:
            await self._recover(run, host)
        except PlatformError as exc:
            log.warning("Could not read back the journal of cancelled trial %s: %s", detail.id, exc)
        if not detail.status.is_terminal:
            await self.reporter.ended(detail.id, status, message="Cancelled.")

    async def _forget_lost(self, detail: TrialJobDetail) -> None:
        run = self._runs.get(detail.id)
        if run is None or run.host is None or run.keeper_pid is None:
            return
        host = run.host
        try:
            await self._kill(host, run.current())
        except PlatformError as exc:
            log.info("Trial %s is stopped when %s answers again (%s).", detail.id, host.label, exc)
            host.revoke.append(run.current())
            host.wake.set()

    async def _reattach(self, detail: TrialJobDetail, metrics_delivered: int) -> None:
        data = detail.platform_data or {}
        index = data.get("machine")
        host = self._hosts[index] if isinstance(index, int) and 0 <= index < len(self._hosts) else None
        if host is None or host.label != data.get("host") or not data.get("trial_dir"):
            await self._fail(
                detail.id,
                f"Cannot re-attach: the trial ran on {data.get('host') or 'an unknown machine'}, "
                "which is not in machineList any more.",
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
            # The manager stopped while the launch was in flight: ask the host when it answers.
            run.in_doubt = True
            run.doubt_timer = asyncio.get_running_loop().call_later(self.unknown_timeout, self._doubt_expired, run)
            if host.ready:
                try:
                    await self._settle_doubt(run, host, host.live_agent())
                except SshConnectError as exc:
                    self._host_lost(host, str(exc))
            return
        if host.ready:
            try:
                await self._poll(host)
            except SshConnectError as exc:
                self._host_lost(host, str(exc))
        elif detail.status is TrialJobStatus.RUNNING:
            self.reporter.unknown(detail.id, f"{host.label} is unreachable; reconnecting.")

    async def _read_trial_file(self, detail: TrialJobDetail, name: str, tail: int | None) -> bytes:
        run = self._runs.get(detail.id)
        if run is not None and run.host is not None and run.remote_dir and run.host.ready:
            try:
                return await run.host.conn.read(f"{run.remote_dir}/{name}", tail=tail)
            except SshConnectError:
                pass
        return await super()._read_trial_file(detail, name, tail)
