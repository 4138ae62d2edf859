"""Keeping trials away from the service: who they run as, what they see, and files that never follow links.

With ``--trial-user NAME`` (or a template such as ``nni-{user}``, one OS user per service user) the
service, running as root, starts each trial as that unprivileged OS user:

* the data directory is ``0711`` (it can be crossed, not listed), its databases ``0600``;
* a service user's workspace tree ``workspaces/<user>`` is ``root:<trial group> 0750``: the trials of
  that user read their code, the trials of others (another OS user) cannot even enter it; only a
  trial's own directory is handed to the trial's user;
* the trial's environment is built from an allow-list (``PATH``, locale, ``HOME`` of the trial user and
  the names given with ``--trial-env``), never copied from the service (whose environment may hold
  the database URL).

Every path the service writes or reads below a workspace on a user's behalf is resolved one component
at a time with ``O_NOFOLLOW``: a trial (which owns its directory) or an upload cannot plant a symlink
that makes the service write or read outside the workspace.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import UserError
from ..platforms.local import TrialIdentity

__all__ = [
    "DEFAULT_TRIAL_ENV",
    "SymlinkRefused",
    "check_trial_user",
    "read_file_nofollow",
    "secure_data_dir",
    "secure_workspace_root",
    "trial_identity",
    "write_file_nofollow",
]

#: Environment variables a trial inherits from the service by default (none of them a secret).
DEFAULT_TRIAL_ENV = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "CUDA_HOME",
    "LD_LIBRARY_PATH",
)
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class SymlinkRefused(OSError):
    """A path component is a symbolic link (or not a directory) where the service will not follow it."""


def _os_user(template: str, user: str) -> pwd.struct_passwd:
    name = template.format(user=user)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UserError(
            f"The service runs {user}'s trials as the OS user {name!r}, which does not exist; "
            f"the administrator creates it (useradd --system {name})."
        ) from None
    if entry.pw_uid == 0:
        raise UserError(f"--trial-user names {name!r}, which is root; trials must run as an unprivileged user.")
    return entry


def check_trial_user(template: str | None) -> None:
    """Refuse a ``--trial-user`` the service cannot use (not root itself, a bad template, a root user)."""
    if template is None:
        return
    try:
        template.format(user="x")
    except (KeyError, IndexError, ValueError):
        raise UserError(f"--trial-user {template!r}: the only placeholder allowed is {{user}}.") from None
    if os.geteuid() != 0:
        raise UserError("--trial-user needs the service to run as root (it starts trials as another OS user).")
    if "{user}" not in template:
        _os_user(template, "")


def trial_identity(template: str | None, user: str, allow: Sequence[str] = ()) -> TrialIdentity:
    """The OS identity and base environment of ``user``'s trials. Raises UserError."""
    env = {k: os.environ[k] for k in (*DEFAULT_TRIAL_ENV, *allow) if k in os.environ}
    if template is None:
        for key in ("HOME", "USER", "LOGNAME", "SHELL"):
            if key in os.environ:
                env[key] = os.environ[key]
        return TrialIdentity(env=env)
    entry = _os_user(template, user)
    env.setdefault("PATH", _SAFE_PATH)
    env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name, SHELL="/bin/sh")
    groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != entry.pw_gid)
    return TrialIdentity(env=env, uid=entry.pw_uid, gid=entry.pw_gid, groups=groups, umask=0o077)


def secure_data_dir(data_dir: Path, files: Iterable[Path]) -> None:
    """The data directory can be crossed but not listed; the databases are the service's alone."""
    os.chmod(data_dir, 0o711)
    workspaces = data_dir / "workspaces"
    workspaces.mkdir(exist_ok=True)
    os.chmod(workspaces, 0o711)
    for path in files:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{path}{suffix}", 0o600)


def secure_workspace_root(root: Path, identity: TrialIdentity) -> None:
    """``workspaces/<user>``: root-owned, readable by the user's trial group only."""
    root.mkdir(parents=True, exist_ok=True)
    if identity.gid is None:
        return
    st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise SymlinkRefused(f"{root} is not a directory")
    if st.st_uid != os.geteuid() or st.st_gid != identity.gid:
        os.chown(root, os.geteuid(), identity.gid, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != 0o750:
        os.chmod(root, 0o750, follow_symlinks=False)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(root: Path, parts: Sequence[str], *, create: bool) -> int:
    """A descriptor of ``root/parts...`` reached without following any link below ``root``."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:  # ELOOP (a link) or ENOTDIR
                raise SymlinkRefused(exc.errno, f"{part!r} is a symbolic link or not a directory") from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_file_nofollow(root: Path, parts: Sequence[str], data: bytes) -> None:
    """Write ``root/parts...`` atomically; every component below ``root`` must be a real directory
    (created if missing) and the file itself is replaced, never written through a link."""
    *dirs, name = parts
    fd = _open_dir(root, dirs, create=True)
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=fd)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
        finally:
            os.close(out)
        try:
            st = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                os.unlink(tmp, dir_fd=fd)
                raise IsADirectoryError(21, "Is a directory")
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)  # replaces a link, never writes through it
    finally:
        os.close(fd)


def read_file_nofollow(root: Path, parts: Sequence[str], tail: int | None) -> bytes:
    """The (last ``tail``) bytes of ``root/parts...``; empty when missing, a link or not a regular file."""
    *dirs, name = parts
    try:
        fd = _open_dir(root, dirs, create=False)
    except OSError:
        return b""
    try:
        try:
            ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return b""
        with open(ffd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(ffd).st_mode):
                return b""
            if tail is not None:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - tail))
            return fh.read()
    finally:
        os.close(fd)
