"""Putting trial code and trial directories on the storage the pods mount, without ``sudo mount``.

Layout under the NFS export (the pods mount the export at :data:`MOUNT_PATH`)::

    nni-ts/<experiment>/code/            the trial code, uploaded once per experiment (dotfiles included)
    nni-ts/<experiment>/keeper/          the trial_keeper package (standard library only)
    nni-ts/<experiment>/trials/<trial>/  parameter.cfg; the keeper's stdout, stderr and journal

Two ways to reach the export from the manager:

* :class:`LocalStager`: the export is already mounted on the manager's host (``storage.localMountPath``),
  or the NFS server is this host and the exported path is used directly;
* :class:`SftpStager`: files go over SFTP (paramiko) to the NFS server's host (``storage.upload``).

Every blocking call runs in a thread. Reading a trial's journal back (when its keeper could not reach
the manager) goes through :func:`trial_keeper.journal.read_attempt` (``recover_records`` and ``read_exit``).
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
import posixpath
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

import trial_keeper
from trial_keeper.journal import EXIT_NAME, JOURNAL_NAME, STATE_DIR, read_attempt

from ...errors import ConfigError, PlatformError

__all__ = ["MOUNT_PATH", "LocalStager", "SftpStager", "Stager", "keeper_source_files"]

#: Where the pods mount the shared storage.
MOUNT_PATH = "/nni-ts-storage"
_SKIP = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def keeper_source_files() -> list[tuple[Path, str]]:
    """The trial_keeper package's files as ``(local path, path relative to the keeper dir)``."""
    root = Path(trial_keeper.__file__).resolve().parent
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not (set(path.relative_to(root).parts) & _SKIP) and path.suffix != ".pyc":
            out.append((path, posixpath.join("trial_keeper", *path.relative_to(root).parts)))
    return out


def _code_files(code_dir: Path) -> list[tuple[Path, str]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(code_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP)
        base = Path(dirpath)
        for name in sorted(filenames):
            path = base / name
            rel = path.relative_to(code_dir)
            out.append((path, posixpath.join(*rel.parts)))
    return out


class Stager(abc.ABC):
    """The experiment's directory on the shared storage, as seen from the manager."""

    #: Whether :meth:`read_back` reads the pods' logs (no shared storage): worth calling as soon as the
    #: reporting pod's container ended, before a controller deletes the pod.
    reads_pod_logs = False

    def __init__(self, experiment_id: str) -> None:
        self.experiment_id = experiment_id
        self.rel_root = posixpath.join("nni-ts", experiment_id)
        self._snapshot: dict[str, tuple[int, int]] = {}

    # paths inside the pods
    @property
    def pod_root(self) -> str:
        return posixpath.join(MOUNT_PATH, self.rel_root)

    def pod_code_dir(self) -> str:
        return posixpath.join(self.pod_root, "code")

    def pod_keeper_dir(self) -> str:
        return posixpath.join(self.pod_root, "keeper")

    def pod_trial_dir(self, trial_id: str) -> str:
        return posixpath.join(self.pod_root, "trials", trial_id)

    @abc.abstractmethod
    def trial_location(self, trial_id: str) -> str:
        """Where the trial's directory is, for people (a local path or an sftp:// URL)."""

    def pod_env(self, trial_id: str) -> dict[str, str]:
        """Environment variables the storage mode gives the trial's containers (none for shared storage)."""
        return {}

    def serve(self, server: Any) -> None:  # noqa: B027 - optional
        """Called once the cluster server runs: a mode without shared storage serves the pods' files."""

    def keeper_lost(self, trial_id: str, attempt: int | None, pod: str) -> None:  # noqa: B027 - optional
        """The trial's keeper stopped reporting (its pods may still run). Shared storage keeps the journal
        until the job ends; a mode without it starts reading the pod's log now."""

    async def prepare(self, code_dir: Path) -> bool:
        """Upload the code and the keeper once per experiment. Returns False when already there (resume)."""
        if not code_dir.is_dir():
            raise ConfigError(f"the trial code directory {code_dir} does not exist or is not a directory.")
        return await asyncio.to_thread(self._prepare, code_dir)

    async def refresh(self, code_dir: Path) -> int:
        """Upload the code files that changed since the last upload (none, usually); returns how many.

        The code goes up once per experiment; a file added or edited later reaches the trials submitted
        after the change, as on the local platform.
        """
        return await asyncio.to_thread(self._refresh, code_dir)

    def _changed(self, code_dir: Path) -> list[tuple[Path, str]]:
        changed = []
        for src, rel in _code_files(code_dir):
            try:
                st = src.lstat()
            except OSError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            if self._snapshot.get(rel) != key:
                self._snapshot[rel] = key
                changed.append((src, rel))
        return changed

    def _refresh(self, code_dir: Path) -> int:
        changed = self._changed(code_dir)
        if changed:
            self._upload_code(changed)
        return len(changed)

    @abc.abstractmethod
    def _upload_code(self, files: list[tuple[Path, str]]) -> None: ...

    async def write_trial(self, trial_id: str, files: dict[str, bytes]) -> None:
        await asyncio.to_thread(self._write_trial, trial_id, files)

    async def read_back(
        self, trial_id: str, attempt: int | None, pod: str | None = None
    ) -> tuple[list[tuple[int, str]], dict[str, Any] | None]:
        """The records and the exit the trial's keeper left in its directory (``pod``, the reporting pod,
        matters only without shared storage: see :mod:`.podstorage`)."""
        return await asyncio.to_thread(self._read_back, trial_id, attempt)

    async def read_file(self, trial_id: str, name: str, tail: int | None, pod: str | None = None) -> bytes:
        """The (last ``tail``) bytes of a file in the trial's directory (``pod``: see :mod:`.podstorage`)."""
        return await asyncio.to_thread(self._read_file, trial_id, name, tail)

    async def remove_experiment(self) -> None:
        await asyncio.to_thread(self._remove_experiment)

    async def close(self) -> None:  # noqa: B027 - optional
        pass

    @abc.abstractmethod
    def _prepare(self, code_dir: Path) -> bool: ...

    @abc.abstractmethod
    def _write_trial(self, trial_id: str, files: dict[str, bytes]) -> None: ...

    @abc.abstractmethod
    def _read_back(self, trial_id: str, attempt: int | None) -> tuple[list[tuple[int, str]], dict[str, Any] | None]: ...

    @abc.abstractmethod
    def _read_file(self, trial_id: str, name: str, tail: int | None) -> bytes: ...

    @abc.abstractmethod
    def _remove_experiment(self) -> None: ...


class LocalStager(Stager):
    """The export is visible on this host at ``base`` (a mount, or the exported directory itself)."""

    def __init__(self, experiment_id: str, base: Path) -> None:
        super().__init__(experiment_id)
        self.base = base
        self.root = base / self.rel_root

    def trial_location(self, trial_id: str) -> str:
        return str(self.root / "trials" / trial_id)

    def _prepare(self, code_dir: Path) -> bool:
        if not self.base.is_dir():
            raise ConfigError(
                f"the shared storage is expected at {self.base} on this host, but that is not a directory. "
                "Mount the NFS export there (storage.localMountPath), or use storage.upload for SFTP."
            )
        marker = self.root / ".staged"
        changed = self._changed(code_dir)
        if marker.exists():
            return False
        code = self.root / "code"
        keeper = self.root / "keeper"
        self._upload_code(changed)
        code.mkdir(parents=True, exist_ok=True)
        for src, rel in keeper_source_files():
            dst = keeper / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        (self.root / "trials").mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"code": str(code_dir), "keeper": trial_keeper.__version__}))
        return True

    def _upload_code(self, files: list[tuple[Path, str]]) -> None:
        code = self.root / "code"
        for src, rel in files:
            dst = code / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():
                if dst.is_symlink() or dst.exists():
                    dst.unlink()
                dst.symlink_to(os.readlink(src))
            else:
                shutil.copy2(src, dst)

    def _write_trial(self, trial_id: str, files: dict[str, bytes]) -> None:
        d = self.root / "trials" / trial_id
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o777)  # the pods may run as another user than the manager
        for name, data in files.items():
            (d / name).write_bytes(data)

    def _read_back(self, trial_id: str, attempt: int | None) -> tuple[list[tuple[int, str]], dict[str, Any] | None]:
        d = str(self.root / "trials" / trial_id)
        return read_attempt(d, trial_id, attempt)

    def _read_file(self, trial_id: str, name: str, tail: int | None) -> bytes:
        path = self.root / "trials" / trial_id / name
        try:
            with open(path, "rb") as fh:
                if tail is not None:
                    fh.seek(0, 2)
                    fh.seek(max(0, fh.tell() - tail))
                return fh.read()
        except FileNotFoundError:
            return b""

    def _remove_experiment(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class SftpStager(Stager):
    """Files go over SFTP to the NFS server's host, where the export lives at ``export_path``."""

    def __init__(
        self,
        experiment_id: str,
        *,
        host: str,
        port: int,
        user: str,
        export_path: str,
        key_file: str | None = None,
        password: str | None = None,
        known_hosts: str | None = None,
    ) -> None:
        super().__init__(experiment_id)
        self.host, self.port, self.user = host, port, user
        self.key_file, self.password = key_file, password
        self.known_hosts = known_hosts
        self.root = posixpath.join(export_path.rstrip("/") or "/", self.rel_root)
        self._lock = threading.Lock()
        self._ssh: Any = None
        self._sftp: Any = None

    def trial_location(self, trial_id: str) -> str:
        return f"sftp://{self.user}@{self.host}:{self.port}{posixpath.join(self.root, 'trials', trial_id)}"

    def _connect(self) -> Any:
        if self._sftp is not None:
            return self._sftp
        import paramiko

        ssh = paramiko.SSHClient()
        if self.known_hosts:
            ssh.load_host_keys(self.known_hosts)
        else:
            ssh.load_system_host_keys()
            # The NFS server is named by the user in the config; accept its key on first use, like NNI did.
            ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            ssh.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=os.path.expanduser(self.key_file) if self.key_file else None,
                password=self.password,
                look_for_keys=self.key_file is None and self.password is None,
                allow_agent=False,
                timeout=15,
            )
        except (paramiko.SSHException, OSError) as exc:
            ssh.close()
            raise PlatformError(
                f"Cannot open SFTP to the NFS server's host {self.user}@{self.host}:{self.port} (storage.upload): {exc}"
            ) from exc
        self._ssh = ssh
        self._sftp = ssh.open_sftp()
        return self._sftp

    def _mkdirs(self, sftp: Any, path: str, mode: int = 0o755) -> None:
        parts = []
        while path not in ("", "/"):
            try:
                sftp.stat(path)
                break
            except FileNotFoundError:
                parts.append(path)
                path = posixpath.dirname(path)
        for p in reversed(parts):
            try:
                sftp.mkdir(p, mode)
            except OSError:
                sftp.stat(p)  # created meanwhile: fine; else the error stands

    def _exists(self, sftp: Any, path: str) -> bool:
        try:
            sftp.stat(path)
            return True
        except FileNotFoundError:
            return False

    def _put_tree(self, sftp: Any, files: list[tuple[Path, str]], dest: str) -> None:
        made: set[str] = set()
        for src, rel in files:
            target = posixpath.join(dest, rel)
            parent = posixpath.dirname(target)
            if parent not in made:
                self._mkdirs(sftp, parent)
                made.add(parent)
            if src.is_symlink():
                try:
                    sftp.remove(target)
                except OSError:
                    pass
                sftp.symlink(os.readlink(src), target)
                continue
            sftp.put(str(src), target)
            sftp.chmod(target, stat.S_IMODE(src.stat().st_mode))

    def _prepare(self, code_dir: Path) -> bool:
        with self._lock:
            sftp = self._connect()
            marker = posixpath.join(self.root, ".staged")
            changed = self._changed(code_dir)
            if self._exists(sftp, marker):
                return False
            self._put_tree(sftp, changed, posixpath.join(self.root, "code"))
            self._mkdirs(sftp, posixpath.join(self.root, "code"))
            self._put_tree(sftp, keeper_source_files(), posixpath.join(self.root, "keeper"))
            self._mkdirs(sftp, posixpath.join(self.root, "trials"))
            with sftp.open(marker, "w") as fh:
                fh.write(json.dumps({"code": str(code_dir), "keeper": trial_keeper.__version__}))
            return True

    def _upload_code(self, files: list[tuple[Path, str]]) -> None:
        with self._lock:
            self._put_tree(self._connect(), files, posixpath.join(self.root, "code"))

    def _write_trial(self, trial_id: str, files: dict[str, bytes]) -> None:
        with self._lock:
            sftp = self._connect()
            d = posixpath.join(self.root, "trials", trial_id)
            self._mkdirs(sftp, d, 0o777)
            sftp.chmod(d, 0o777)
            for name, data in files.items():
                with sftp.open(posixpath.join(d, name), "wb") as fh:
                    fh.write(data)

    def _read_back(self, trial_id: str, attempt: int | None) -> tuple[list[tuple[int, str]], dict[str, Any] | None]:
        with self._lock:
            sftp = self._connect()
            d = posixpath.join(self.root, "trials", trial_id)
            with tempfile.TemporaryDirectory(prefix="nni-ts-readback-") as tmp:
                os.makedirs(os.path.join(tmp, STATE_DIR), exist_ok=True)
                for rel in (JOURNAL_NAME, posixpath.join(STATE_DIR, EXIT_NAME), "stdout"):
                    try:
                        sftp.get(posixpath.join(d, rel), os.path.join(tmp, *rel.split("/")))
                    except FileNotFoundError:
                        pass
                return read_attempt(tmp, trial_id, attempt)

    def _read_file(self, trial_id: str, name: str, tail: int | None) -> bytes:
        with self._lock:
            sftp = self._connect()
            path = posixpath.join(self.root, "trials", trial_id, name)
            try:
                with sftp.open(path, "rb") as fh:
                    if tail is not None:
                        size = fh.stat().st_size
                        fh.seek(max(0, size - tail))
                    data: bytes = fh.read()
                    return data
            except FileNotFoundError:
                return b""

    def _remove_experiment(self) -> None:
        with self._lock:
            sftp = self._connect()

            def rm(path: str) -> None:
                for entry in sftp.listdir_attr(path):
                    child = posixpath.join(path, entry.filename)
                    if stat.S_ISDIR(entry.st_mode or 0):
                        rm(child)
                    else:
                        sftp.remove(child)
                sftp.rmdir(path)

            try:
                rm(self.root)
            except FileNotFoundError:
                pass

    async def close(self) -> None:
        def _close() -> None:
            with self._lock:
                if self._sftp is not None:
                    self._sftp.close()
                if self._ssh is not None:
                    self._ssh.close()
                self._sftp = self._ssh = None

        await asyncio.to_thread(_close)
