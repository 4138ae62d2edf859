"""One pooled SSH connection per host: exec channels, SFTP and a reverse tunnel over one transport.

paramiko is blocking; every call here runs in the service's own thread pool (``executor``), never
on the event loop. A host allows a limited number of channels per connection (OpenSSH's
``MaxSessions``, 10 by default): exec channels are limited by a semaphore to ``max_channels`` (one
more is the SFTP session).

Secrets (password, passphrase) are handed to paramiko and never appear in a message, a log line or
a ``repr``: every error message passes through :meth:`HostConnection.redact`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paramiko

from ...config.remote import RemoteMachineConfig
from ...errors import PlatformError

__all__ = [
    "AgentRefused",
    "AgentTimeout",
    "ExecResult",
    "HostAgent",
    "HostConnection",
    "HostKeyError",
    "SshConnectError",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between SSH keep-alive messages: a dead peer is noticed within a few of them.
KEEPALIVE = 5


class SshConnectError(PlatformError):
    """A host could not be reached or refused to log us in."""


class HostKeyError(SshConnectError):
    """A host's key is unknown or differs from the one in known_hosts."""


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """Accept a host not yet in known_hosts and append it there (OpenSSH's accept-new)."""

    def __init__(self, known_hosts: Path | None) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        if self.known_hosts is not None:
            try:
                self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
                with open(self.known_hosts, "a") as fh:
                    fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            except OSError as exc:
                log.warning("Could not add the key of %s to %s: %s", hostname, self.known_hosts, exc)
        log.warning("Accepted the new host key of %s (%s %s).", hostname, key.get_name(), key.fingerprint)


class _Reject(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: Path | None) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        where = str(self.known_hosts) if self.known_hosts else "~/.ssh/known_hosts or /etc/ssh/ssh_known_hosts"
        raise HostKeyError(
            f"The host key of {hostname} ({key.get_name()} {key.fingerprint}) is not in {where}. "
            f"Add it (for example with ssh-keyscan), or set acceptNewHostKeys: true to accept new hosts."
        )


class _Pump(threading.Thread):
    """Copies bytes between forwarded SSH channels and sockets to a local address (one thread per host)."""

    def __init__(self, target: tuple[str, int], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.target = target
        self._lock = threading.Lock()
        self._peer: dict[Any, Any] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopped = False

    def add(self, chan: paramiko.Channel) -> None:
        try:
            sock = socket.create_connection(self.target, timeout=5)
        except OSError as exc:
            log.warning("The tunnel could not reach the cluster server at %s:%d: %s", *self.target, exc)
            chan.close()
            return
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._stopped:
                sock.close()
                chan.close()
                return
            self._peer[chan] = sock
            self._peer[sock] = chan
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._wake()

    def _drop(self, end: Any) -> None:
        with self._lock:
            other = self._peer.pop(end, None)
            if other is not None:
                self._peer.pop(other, None)
        for x in (end, other):
            if x is not None:
                _close_quietly(x)

    def run(self) -> None:
        try:
            while not self._stopped:
                with self._lock:
                    ends = list(self._peer)
                try:
                    readable, _, _ = select.select([self._wake_r, *ends], [], [], 1.0)
                except (OSError, ValueError):
                    # An end was closed under us: drop the closed ones.
                    for end in ends:
                        if getattr(end, "closed", False) or (isinstance(end, socket.socket) and end.fileno() < 0):
                            self._drop(end)
                    continue
                for end in readable:
                    if end is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                        continue
                    with self._lock:
                        other = self._peer.get(end)
                    if other is None:
                        continue
                    try:
                        data = end.recv(65536)
                        if not data:
                            self._drop(end)
                            continue
                        other.sendall(data)
                    except (OSError, EOFError, paramiko.SSHException):
                        self._drop(end)
        finally:
            with self._lock:
                self._stopped = True
                ends = list(self._peer)
                self._peer.clear()
            for end in ends:
                _close_quietly(end)
            self._wake_r.close()
            self._wake_w.close()


def _guard_sftp_prefetch() -> None:
    """paramiko's ``SFTPFile.prefetch()`` sends a file's read requests from a thread of its own, which
    dies with an uncaught OSError (a traceback on stderr) when the connection closes before it is
    done. The read itself then fails and is reported as the connection's loss; the thread's error is
    that same failure, so the thread ends quietly instead (logged at debug level)."""
    from paramiko.sftp_file import SFTPFile

    original = SFTPFile._prefetch_thread  # type: ignore[attr-defined]
    if getattr(original, "nni_ts_guarded", False):
        return

    def guarded(self: SFTPFile, chunks: Any, max_concurrent_requests: Any) -> None:
        try:
            original(self, chunks, max_concurrent_requests)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.debug("An SFTP read-ahead ended with its connection: %s", exc)

    guarded.nni_ts_guarded = True  # type: ignore[attr-defined]
    SFTPFile._prefetch_thread = guarded  # type: ignore[attr-defined]


_guard_sftp_prefetch()


def _close_quietly(thing: Any) -> None:
    """Close a socket, channel, SFTP session or client that may be broken already."""
    try:
        thing.close()
    except (OSError, EOFError, paramiko.SSHException):
        pass


def _load_key(label: str, path: str, passphrase: str | None) -> paramiko.PKey:
    """The private key of ``path``, or an SshConnectError naming the file (never the passphrase)."""
    try:
        secret: Any = passphrase.encode("utf-8") if passphrase else None  # paramiko wants bytes here
        return paramiko.PKey.from_path(path, secret)
    except (paramiko.SSHException, ValueError, TypeError, OSError) as exc:
        if passphrase:
            raise SshConnectError(
                f"The key file {path} of {label} could not be opened with the given passphrase: the passphrase "
                f"is wrong, or the file is not a private key. Check sshKeyFile and sshPassphrase of this machine."
            ) from None
        if "password" in str(exc).lower() or isinstance(exc, paramiko.PasswordRequiredException):
            raise SshConnectError(
                f"The key file {path} of {label} is protected by a passphrase; set sshPassphrase for this machine."
            ) from None
        raise SshConnectError(
            f"The key file {path} of {label} is not a private key paramiko can read ({type(exc).__name__})."
        ) from None


class HostConnection:
    """The pooled connection to one machine of ``machineList``.

    ``label`` names the host in every message (``user@host:port``). ``connect()`` may be called
    again after the connection dropped; everything else needs a live connection.
    """

    def __init__(
        self,
        machine: RemoteMachineConfig,
        *,
        executor: Executor,
        known_hosts: Path | None = None,
        accept_new_host_keys: bool = False,
        max_channels: int = 8,
        connect_timeout: float = 10.0,
    ) -> None:
        self.machine = machine
        self.label = f"{machine.user}@{machine.host}:{machine.port}"
        self.executor = executor
        self.known_hosts = known_hosts
        self.accept_new_host_keys = accept_new_host_keys
        self.connect_timeout = connect_timeout
        self._channels = asyncio.Semaphore(max_channels)
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.Lock()
        self._pump: _Pump | None = None
        self.tunnel_port: int | None = None
        #: The user's home directory on the host (known once connected).
        self.home: str | None = None

    def __repr__(self) -> str:
        return f"HostConnection({self.label!r}, connected={self.connected})"

    # ------------------------------------------------------------------ helpers

    def redact(self, text: str) -> str:
        """``text`` with the host's password and passphrase replaced by ``***``."""
        for secret in (self.machine.password, self.machine.ssh_passphrase):
            if secret:
                text = text.replace(secret, "***")
        return text

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @property
    def connected(self) -> bool:
        client = self._client
        if client is None:
            return False
        transport = client.get_transport()
        return transport is not None and transport.is_active()

    def _transport(self) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client is not None else None
        if transport is None or not transport.is_active():
            raise SshConnectError(f"The connection to {self.label} is down.")
        return transport

    # ------------------------------------------------------------------ connect / close

    async def connect(self) -> None:
        """Open the connection (host key checked, logged in), its SFTP session and home directory."""
        await self._call(self._connect_sync)

    def _connect_sync(self) -> None:
        self._close_sync()
        m = self.machine
        client = paramiko.SSHClient()
        if self.known_hosts is not None:
            if self.known_hosts.exists():
                client.load_host_keys(str(self.known_hosts))
        else:
            with contextlib.suppress(OSError):
                client.load_system_host_keys()
            if os.path.exists("/etc/ssh/ssh_known_hosts"):
                with contextlib.suppress(OSError):
                    client.get_host_keys().load("/etc/ssh/ssh_known_hosts")
        policy_cls = _AcceptNew if self.accept_new_host_keys else _Reject
        default_known = Path("~/.ssh/known_hosts").expanduser()
        client.set_missing_host_key_policy(policy_cls(self.known_hosts or default_known))
        key_file: str | None = None
        look_for_keys = False
        if m.ssh_key_file:
            path = Path(m.ssh_key_file).expanduser()
            if path.exists():
                key_file = str(path)
            elif m.ssh_key_file != "~/.ssh/id_rsa":
                raise SshConnectError(f"The sshKeyFile of {self.label}, {m.ssh_key_file}, does not exist.")
            elif m.password is None:
                look_for_keys = True  # the default ~/.ssh/id_rsa is missing: try the usual keys and the agent
        pkey = _load_key(self.label, key_file, m.ssh_passphrase) if key_file else None
        try:
            # Our own socket, with TCP_NODELAY: small SSH packets (reports through the tunnel, agent
            # requests) must not wait for delayed ACKs (40 ms each without it).
            sock = socket.create_connection((m.host, m.port), timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            client.close()
            raise SshConnectError(f"Cannot connect to {self.label}: {exc or type(exc).__name__}.") from None
        try:
            client.connect(
                m.host,
                port=m.port,
                sock=sock,
                username=m.user,
                password=m.password,
                pkey=pkey,
                look_for_keys=look_for_keys,
                allow_agent=look_for_keys,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
            )
        except HostKeyError:
            client.close()
            sock.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            sock.close()
            where = self.known_hosts or "known_hosts"
            raise HostKeyError(
                f"The host key of {self.label} does not match {where}: the host offered "
                f"{exc.key.get_name()} {exc.key.fingerprint}, known is {exc.expected_key.fingerprint}. "
                f"Someone may be intercepting the connection, or the host was reinstalled; "
                f"check it and update {where}."
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            sock.close()
            what = f"the key {key_file}" if key_file else ("the password" if m.password else "the default keys")
            raise SshConnectError(
                f"{self.label} refused to log in with {what}: {self.redact(str(exc))} "
                f"Check user, sshKeyFile, password and passphrase of this machine."
            ) from None
        except Exception as exc:  # paramiko raises many kinds (SSHException, OSError, EOFError, ValueError...)
            client.close()
            sock.close()
            reason = self.redact(str(exc)) or type(exc).__name__
            raise SshConnectError(f"Cannot connect to {self.label}: {reason}.") from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE)
        try:
            sftp = client.open_sftp()
            self.home = sftp.normalize(".")
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            raise SshConnectError(f"{self.label} refused an SFTP session: {self.redact(str(exc))}.") from None
        self._client = client
        self._sftp = sftp

    async def close(self) -> None:
        await self._call(self.detach())

    def _close_sync(self) -> None:
        self.detach()()

    def detach(self) -> Callable[[], None]:
        """Forget the current connection at once (``connected`` is False from now on); return the
        blocking function that closes it. A ``connect()`` after this opens a new one that the
        returned function leaves alone."""
        pump, sftp, client = self._pump, self._sftp, self._client
        self._pump = self._sftp = self._client = None

        def close() -> None:
            if client is not None:
                _close_quietly(client)  # the transport first: nothing waits on a silent peer after it
            if pump is not None:
                pump.stop()
                pump.join(5)
            if sftp is not None:
                _close_quietly(sftp)
            if client is not None:
                transport = client.get_transport()
                if transport is not None and transport is not threading.current_thread():
                    transport.join(5)

        return close

    # ------------------------------------------------------------------ exec

    async def run(self, command: str, *, stdin: bytes | None = None, timeout: float = 120.0) -> ExecResult:
        """Run ``command`` (a shell command line for the user's shell) and return its result."""
        async with self._channels:
            return await self._call(self._run_sync, command, stdin, timeout)

    def _run_sync(self, command: str, stdin: bytes | None, timeout: float) -> ExecResult:
        transport = self._transport()
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshConnectError(f"{self.label} refused a new channel: {exc or type(exc).__name__}.") from None
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out = bytearray()
            err = bytearray()
            while True:
                data = chan.recv(65536)  # blocks until data, EOF or the timeout
                if not data:
                    break
                out += data
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
            while True:
                data = chan.recv_stderr(65536)
                if not data:
                    break
                err += data
            code = chan.recv_exit_status()
            if code == -1 and not transport.is_active():
                raise SshConnectError(f"The connection to {self.label} dropped during a command.")
            return ExecResult(code, bytes(out), bytes(err))
        except TimeoutError:
            raise PlatformError(f"A command on {self.label} did not finish within {timeout:g} s.") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshConnectError(f"The connection to {self.label} failed during a command: {exc}.") from None
        finally:
            chan.close()

    async def check(self, command: str, *, stdin: bytes | None = None, timeout: float = 120.0, what: str) -> str:
        """Run ``command``; raise PlatformError (naming the host and ``what``) unless it exits 0."""
        result = await self.run(command, stdin=stdin, timeout=timeout)
        if result.exit_code != 0:
            detail = result.stderr.decode("utf-8", "replace").strip()[-2000:]
            raise PlatformError(f"Could not {what} on {self.label} (exit code {result.exit_code}): {detail}")
        return result.text()

    # ------------------------------------------------------------------ SFTP

    def _sftp_client(self) -> paramiko.SFTPClient:
        self._transport()
        if self._sftp is None:
            raise SshConnectError(f"The connection to {self.label} is down.")
        return self._sftp

    async def put(self, local: Path, remote: str) -> None:
        def go() -> None:
            with self._sftp_lock:
                self._sftp_client().put(str(local), remote)

        await self._wrap_sftp(go, f"upload {local} to {remote}")

    async def put_bytes(self, data: bytes, remote: str) -> None:
        """Write ``data`` to the file ``remote`` on the host."""

        def go() -> None:
            with self._sftp_lock:
                self._sftp_client().putfo(io.BytesIO(data), remote, file_size=len(data))

        await self._wrap_sftp(go, f"upload {remote}")

    async def read(self, remote: str, *, tail: int | None = None, missing_ok: bool = True) -> bytes:
        """The content of a file on the host (its last ``tail`` bytes); b'' if it does not exist."""

        def go() -> bytes:
            with self._sftp_lock:
                sftp = self._sftp_client()
                try:
                    with sftp.open(remote, "rb") as fh:
                        if tail is not None:
                            size = fh.stat().st_size or 0
                            fh.seek(max(0, size - tail))
                        fh.prefetch()
                        return bytes(fh.read())
                except FileNotFoundError:
                    if missing_ok:
                        return b""
                    raise

        return await self._wrap_sftp(go, f"read {remote}")

    async def makedirs(self, *paths: str) -> None:
        """``mkdir -p`` over SFTP (no shell involved)."""

        def go() -> None:
            with self._sftp_lock:
                sftp = self._sftp_client()
                for path in paths:
                    parts = [p for p in path.split("/") if p]
                    current = ""
                    for part in parts:
                        current += "/" + part
                        try:
                            sftp.stat(current)
                        except FileNotFoundError:
                            try:
                                sftp.mkdir(current, 0o700)
                            except OSError:
                                sftp.stat(current)  # made meanwhile by someone else, or a real error

        await self._wrap_sftp(go, f"create {', '.join(paths)}")

    async def exists(self, remote: str) -> bool:
        def go() -> bool:
            with self._sftp_lock:
                try:
                    self._sftp_client().stat(remote)
                    return True
                except FileNotFoundError:
                    return False

        return await self._wrap_sftp(go, f"stat {remote}")

    async def is_dir(self, remote: str) -> bool:
        def go() -> bool:
            with self._sftp_lock:
                try:
                    return stat.S_ISDIR(self._sftp_client().stat(remote).st_mode or 0)
                except FileNotFoundError:
                    return False

        return await self._wrap_sftp(go, f"stat {remote}")

    async def _wrap_sftp(self, fn: Callable[[], T], what: str) -> T:
        try:
            return await self._call(fn)
        except SshConnectError:
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if not self.connected:
                raise SshConnectError(f"The connection to {self.label} failed (could not {what}).") from None
            raise PlatformError(f"Could not {what} on {self.label}: {exc}.") from None

    async def local_address(self) -> str:
        """This machine's address on the route to the host (what the host can reach us at)."""
        return str(self._transport().sock.getsockname()[0])  # type: ignore[union-attr]

    # ------------------------------------------------------------------ reverse tunnel

    async def open_tunnel(self, target: tuple[str, int], port: int = 0) -> int:
        """Listen on the host's 127.0.0.1 ``port`` (0: any) and forward every connection to ``target``.

        Returns the port on the host. Raises SshConnectError if the host refuses (for example
        ``AllowTcpForwarding no`` or the port is taken).
        """

        def go() -> int:
            transport = self._transport()
            if self._pump is not None:
                self._pump.stop()
            pump = _Pump(target, name=f"nni-ts-tunnel-{self.label}")
            pump.start()
            self._pump = pump

            def handler(chan: paramiko.Channel, origin: Any, server: Any) -> None:
                pump.add(chan)

            try:
                bound = transport.request_port_forward("127.0.0.1", port, handler)
            except paramiko.SSHException as exc:
                raise SshConnectError(
                    f"{self.label} refused a reverse tunnel on its 127.0.0.1:{port or 'any port'} ({exc}); "
                    f"allow TCP forwarding in its sshd_config, or set keeperReporting: direct."
                ) from None
            return int(bound)

        self.tunnel_port = await self._call(go)
        return self.tunnel_port


def expand_remote(home: str, path: str | None, default: str) -> str:
    """A path on the host: ``~`` and relative paths resolve against ``home``."""
    p = path or default
    if p == "~":
        return home
    if p.startswith("~/"):
        p = p[2:]
    if not p.startswith("/"):
        p = home.rstrip("/") + "/" + p
    return os.path.normpath(p)


class AgentTimeout(SshConnectError):
    """The host agent did not answer in time: the host is treated as unreachable (a silent peer)."""


class HostAgent:
    """The client of the host agent (:mod:`.agent`) over one long-lived exec channel.

    Requests are JSON lines matched by ``rid``; a reader thread resolves their futures on the loop.
    If the channel closes, every pending and later request raises :class:`SshConnectError` and
    ``on_close`` is called on the loop. A request that gets no answer within its time-out raises
    :class:`AgentTimeout` (the caller closes the connection: the peer is silent).
    """

    def __init__(self, conn: HostConnection, *, on_close: Callable[[], None] | None = None) -> None:
        self.conn = conn
        self.on_close = on_close
        self._chan: paramiko.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._send_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.closed = False
        #: The agent's pid on the host.
        self.pid: int | None = None
        #: The host's clock minus ours, in seconds (measured at start, to within the round trip).
        self.clock_offset = 0.0
        #: Lines the start command printed before the agent's first line.
        self.preamble: list[str] = []
        #: The start command's exit code, if it ended.
        self.exit_code: int | None = None
        #: The end of what the agent wrote on stderr, once it ended.
        self.why = ""

    async def start(self, command: str, *, timeout: float = 30.0) -> list[str]:
        """Run ``command`` (which ends by exec'ing the agent); return what it printed before the agent."""
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._pending[-1] = ready
        try:
            await self.conn._call(self._open, command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshConnectError(f"{self.conn.label} refused a new channel: {exc or type(exc).__name__}.") from None
        sent = time.time()
        try:
            async with asyncio.timeout(timeout):
                hello = await ready
        except TimeoutError:
            await self.close()
            raise PlatformError(f"The nni-ts agent on {self.conn.label} did not start within {timeout:g} s.") from None
        now = time.time()
        self.pid = int(hello.get("pid") or 0) or None
        if isinstance(hello.get("time"), int | float):
            self.clock_offset = float(hello["time"]) - (sent + now) / 2
        return self.preamble

    def _open(self, command: str) -> None:
        transport = self.conn._transport()
        chan = transport.open_session(timeout=self.conn.connect_timeout)
        chan.exec_command(command)
        self._chan = chan
        self._reader = threading.Thread(target=self._read, name=f"nni-ts-agent-{self.conn.label}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        chan = self._chan
        assert chan is not None and self._loop is not None
        fh = chan.makefile("rb")
        err_tail = b""
        try:
            while True:
                line = fh.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                    if not isinstance(msg, dict):
                        raise ValueError
                except ValueError:
                    if self.pid is None and -1 in self._pending:
                        self.preamble.append(line.decode("utf-8", "replace").rstrip("\n"))
                    continue
                rid = -1 if msg.get("ready") else msg.get("rid")
                if isinstance(rid, int):
                    self._loop.call_soon_threadsafe(self._resolve, rid, msg)
        except (paramiko.SSHException, OSError, EOFError):  # the connection went away
            pass
        finally:
            try:
                while chan.recv_stderr_ready():
                    err_tail = (err_tail + chan.recv_stderr(65536))[-2000:]
                if chan.status_event.wait(1.0):
                    self.exit_code = chan.exit_status
            except (paramiko.SSHException, OSError, EOFError):
                pass
            self.closed = True
            try:
                self._loop.call_soon_threadsafe(self._fail_all, err_tail.decode("utf-8", "replace").strip())
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def _resolve(self, rid: int, msg: dict[str, Any]) -> None:
        fut = self._pending.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _fail_all(self, why: str) -> None:
        self.why = why
        reason = f"The nni-ts agent on {self.conn.label} ended" + (f": {why}" if why else ".")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(SshConnectError(reason))
        self._pending.clear()
        if self.on_close is not None:
            self.on_close()

    async def request(self, op: str, *, timeout: float = 60.0, **payload: Any) -> dict[str, Any]:
        """Send one request and wait for its answer (at most ``timeout`` seconds)."""
        if self.closed or self._chan is None or self._loop is None:
            raise SshConnectError(f"The nni-ts agent on {self.conn.label} is not running.")
        self._next += 1
        rid = self._next
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._pending[rid] = fut
        data = (json.dumps({"op": op, "rid": rid, **payload}) + "\n").encode("utf-8")
        chan = self._chan

        def send() -> None:
            with self._send_lock:
                chan.sendall(data)

        try:
            async with asyncio.timeout(timeout):
                try:
                    await self.conn._call(send)
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    raise SshConnectError(f"The connection to {self.conn.label} failed: {exc}.") from None
                answer = await fut
        except TimeoutError:
            raise AgentTimeout(f"The nni-ts agent on {self.conn.label} did not answer within {timeout:g} s.") from None
        finally:
            self._pending.pop(rid, None)
        if "error" in answer:
            raise AgentRefused(f"The nni-ts agent on {self.conn.label} failed to {op}: {answer['error']}", answer)
        return answer

    async def close(self) -> None:
        self.closed = True
        chan = self._chan
        if chan is not None:
            await self.conn._call(chan.close)


class AgentRefused(PlatformError):
    """The host agent answered a request with an error (``answer`` holds its whole answer)."""

    def __init__(self, message: str, answer: dict[str, Any]) -> None:
        super().__init__(message)
        self.answer = answer
