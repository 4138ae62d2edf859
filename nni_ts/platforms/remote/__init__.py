"""The remote platform: trials on SSH hosts (paramiko), each under a detached trial keeper.

See :mod:`nni_ts.platforms.remote.service` and ``docs/remote.md``.
"""

from __future__ import annotations

from .code import IgnoreRules, build_archive
from .service import RemoteTrainingService
from .ssh import HostConnection, HostKeyError, SshConnectError

__all__ = ["HostConnection", "HostKeyError", "IgnoreRules", "RemoteTrainingService", "SshConnectError", "build_archive"]
