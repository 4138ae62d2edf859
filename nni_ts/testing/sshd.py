"""Real OpenSSH ``sshd`` processes on 127.0.0.1, for tests of anything that talks SSH or SFTP.

Each :class:`SshHost` is one ``sshd -D`` on a free loopback port with its own generated host key,
a per-host ``authorized_keys`` holding the generated client key, a ``known_hosts`` line for it, and
a ``bin`` directory first on the PATH of every session (holding a fake ``nvidia-smi``)::

    from nni_ts.testing.sshd import SshdCluster, sshd_available

    with SshdCluster(tmp_path / "ssh", count=2) as cluster:
        a, b = cluster.hosts
        a.set_gpus([(0, 0, 16000, 0), (1, 0, 16000, 0)])   # index, MiB used, MiB total, util %
        config = {"platform": "remote", "knownHostsFile": str(cluster.known_hosts),
                  "machineList": [a.machine(), b.machine()]}
        ...
        a.stop()      # the listener AND every session: connections really drop
        a.start()     # same port, same host key: clients reconnect
        b.replace_host_key()  # now known_hosts no longer matches

A pytest fixture is provided as :func:`sshd_cluster` (two hosts; register the module as a plugin
with ``pytest_plugins = ["nni_ts.testing.sshd"]`` or import the fixture). When OpenSSH's server is
not installed, :func:`sshd_available` says why and the fixture skips with that reason.

Notes: as root, sshd needs ``/run/sshd`` (created here); keys live under the given directory, so
the config says ``StrictModes no``; the user is the current user (root logs in with a key only:
``PermitRootLogin prohibit-password``). ``MaxSessions`` keeps OpenSSH's default of 10 channels per
connection, like a real host, unless ``max_sessions`` is given. Processes the sessions leave behind
on purpose (``setsid`` daemons) are not sshd processes and are not killed by :meth:`SshHost.stop`.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

__all__ = ["SSHD", "SshHost", "SshdCluster", "free_port", "generate_key", "sshd_available", "sshd_cluster"]

#: The OpenSSH server binary.
SSHD = os.environ.get("NNI_TS_SSHD", "/usr/sbin/sshd")
#: Seconds :meth:`SshHost.start` waits for the port to accept connections.
START_TIMEOUT = 10.0


def sshd_available() -> str | None:
    """None if sshd and ssh-keygen can be used here, otherwise the reason they cannot."""
    if not os.access(SSHD, os.X_OK):
        return f"OpenSSH's server is not installed ({SSHD} is missing); install openssh-server."
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is not installed; install openssh-client."
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def generate_key(path: Path, *, kind: str = "ed25519", passphrase: str = "", comment: str = "nni-ts-test") -> str:
    """Generate an OpenSSH key pair at ``path`` (and ``path.pub``); return the public key line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, path.with_name(path.name + ".pub")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.chmod(path, 0o600)
    return path.with_name(path.name + ".pub").read_text().strip()


def _nvidia_smi_script(csv_path: Path) -> str:
    return (
        "#!/bin/sh\n"
        "# fake nvidia-smi written by nni_ts.testing.sshd: prints the CSV of --query-gpu\n"
        f'if [ -f "{csv_path}" ]; then cat "{csv_path}"; exit 0; fi\n'
        'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver." >&2\n'
        "exit 9\n"
    )


def _wait_dead(procs: list[psutil.Process], timeout: float) -> None:
    """Wait (bounded) until every process is gone or a zombie (orphans may wait for init to reap them)."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        while time.monotonic() < deadline:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.Error:
                break
            time.sleep(0.01)


class SshHost:
    """One sshd on 127.0.0.1 acting as a separate host. See the module docstring.

    Attributes: ``name``, ``host`` ("127.0.0.1"), ``port``, ``user``, ``dir`` (its private
    directory), ``client_key`` (private key file that may log in), ``known_hosts`` (a file with
    just this host's key), ``bin_dir`` (first on the sessions' PATH), ``work_dir`` (an empty
    directory meant for the remote side's files), ``log_file`` (sshd's own log).
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        client_key: Path | None = None,
        port: int | None = None,
        max_sessions: int | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.host = "127.0.0.1"
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.port = port or free_port()
        self.bin_dir = self.dir / "bin"
        self.bin_dir.mkdir(exist_ok=True)
        self.work_dir = self.dir / "work"
        self.work_dir.mkdir(exist_ok=True)
        self.log_file = self.dir / "sshd.log"
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.host_key_line = generate_key(self.host_key, comment=f"host-{name}")
        if client_key is None:
            client_key = self.dir / "client_key"
            generate_key(client_key, comment=f"client-{name}")
        self.client_key = Path(client_key)
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text(self.client_key.with_name(self.client_key.name + ".pub").read_text())
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(self.known_hosts_line() + "\n")
        self.gpu_csv = self.dir / "gpus.csv"
        self.max_sessions = max_sessions
        self.extra_config = list(extra_config)
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_config()
        self.set_gpus(None)

    # ------------------------------------------------------------------ set-up

    def known_hosts_line(self) -> str:
        """This host's line for a known_hosts file (``[127.0.0.1]:port ssh-ed25519 AAAA...``)."""
        kind, key = self.host_key_line.split()[:2]
        return f"[{self.host}]:{self.port} {kind} {key}"

    def _write_config(self) -> None:
        path_env = f"{self.bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "AllowTcpForwarding yes",
            "GatewayPorts no",
            "PrintMotd no",
            "MaxStartups 200",
            "LogLevel ERROR",
            f"SetEnv PATH={path_env} NNI_TS_TEST_HOST={self.name}",
            "Subsystem sftp internal-sftp",
        ]
        if self.max_sessions is not None:
            lines.append(f"MaxSessions {self.max_sessions}")
        lines += self.extra_config
        self.config_file = self.dir / "sshd_config"
        self.config_file.write_text("\n".join(lines) + "\n")

    def machine(self, **extra: Any) -> dict[str, Any]:
        """This host as a v2 ``machineList`` entry (camelCase), plus ``extra`` keys."""
        return {"host": self.host, "port": self.port, "user": self.user, "sshKeyFile": str(self.client_key), **extra}

    def machine_v1(self, **extra: Any) -> dict[str, Any]:
        """This host as an NNI v1 ``machineList`` entry, plus ``extra`` keys."""
        return {"ip": self.host, "port": self.port, "username": self.user, "sshKeyPath": str(self.client_key), **extra}

    def set_gpus(self, gpus: Sequence[tuple[int, float, float, float]] | None) -> None:
        """Make the host's fake ``nvidia-smi`` report these GPUs ``(index, MiB used, MiB total, util %)``.

        ``None`` makes it fail like a machine without a driver; an empty list reports no GPU.
        """
        script = self.bin_dir / "nvidia-smi"
        script.write_text(_nvidia_smi_script(self.gpu_csv))
        script.chmod(0o755)
        if gpus is None:
            with contextlib.suppress(FileNotFoundError):
                self.gpu_csv.unlink()
        else:
            self.gpu_csv.write_text("".join(f"{i}, {u:g}, {t:g}, {p:g}\n" for i, u, t, p in gpus))

    def authorize(self, public_key_line: str) -> None:
        """Also let the holder of this public key log in."""
        with open(self.authorized_keys, "a") as fh:
            fh.write(public_key_line.strip() + "\n")

    def replace_host_key(self) -> None:
        """Give the host a new host key (restarting it if it runs): known_hosts files no longer match."""
        running = self.running
        if running:
            self.stop()
        self.host_key_line = generate_key(self.host_key, comment=f"host-{self.name}-new")
        if running:
            self.start()

    # ------------------------------------------------------------------ processes

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> None:
        """Start sshd on :attr:`port` and wait (bounded) until it accepts connections."""
        if self.running:
            return
        reason = sshd_available()
        if reason:
            raise RuntimeError(reason)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(self.log_file, "ab")
        try:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"sshd for test host {self.name} exited with code {self._proc.returncode}: "
                    f"{self.log_file.read_text(errors='replace')[-2000:]}"
                )
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5) as s:
                if s.recv(4).startswith(b"SSH-"):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd for test host {self.name} did not accept connections on port {self.port}.")
            time.sleep(0.02)

    def sshd_processes(self) -> list[psutil.Process]:
        """The listener and every sshd session process under it (not what sessions started)."""
        if self._proc is None:
            return []
        try:
            root = psutil.Process(self._proc.pid)
            procs = [root]
            for child in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.name().startswith("sshd") or child.exe() == SSHD:
                        procs.append(child)
            return procs
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """SIGKILL the listener and every session of this host: its connections really drop.

        Processes started by sessions in their own session (``setsid``) keep running, as they would
        on a real host whose sshd restarted.
        """
        if self._proc is None:
            return
        # Sessions first, while the listener still lives to reap them; then the listener.
        sessions = self.sshd_processes()[1:]
        for proc in sessions:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        _wait_dead(sessions, timeout=5)
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        # Sessions that started while the listener was dying.
        for proc in self.sshd_processes()[1:]:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        self._proc = None

    def __repr__(self) -> str:
        return f"SshHost({self.name!r}, port={self.port}, running={self.running})"


class SshdCluster:
    """Several :class:`SshHost` sharing one client key and one known_hosts file.

    ``count`` hosts named ``host0``, ``host1``... under ``directory``. A context manager: the hosts
    are started on entry and stopped on exit.
    """

    def __init__(self, directory: Path, count: int = 2, *, max_sessions: int | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.client_key = self.dir / "client_key"
        self.client_key_line = generate_key(self.client_key, comment="nni-ts-test-client")
        self.hosts = [
            SshHost(self.dir / f"host{i}", f"host{i}", client_key=self.client_key, max_sessions=max_sessions)
            for i in range(count)
        ]
        self.known_hosts = self.dir / "known_hosts"
        self.write_known_hosts()

    def write_known_hosts(self) -> None:
        """(Re)write the shared known_hosts file with every host's current key."""
        self.known_hosts.write_text("".join(h.known_hosts_line() + "\n" for h in self.hosts))

    def start(self) -> None:
        for h in self.hosts:
            h.start()

    def stop(self) -> None:
        for h in self.hosts:
            h.stop()

    def __enter__(self) -> SshdCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


try:
    import pytest
except ImportError:  # pragma: no cover - the helper also works without pytest
    pass
else:

    @pytest.fixture
    def sshd_cluster(tmp_path: Path) -> Iterator[SshdCluster]:
        """Two running sshd hosts (``cluster.hosts``) with a shared client key and known_hosts file."""
        reason = sshd_available()
        if reason:
            pytest.skip(reason)
        with SshdCluster(tmp_path / "sshd", count=2) as cluster:
            yield cluster
