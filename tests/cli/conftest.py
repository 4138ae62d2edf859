"""Fixtures of the CLI tests: real sshd processes on 127.0.0.1 for `platform clean` on remote machines."""

from __future__ import annotations

from nni_ts.testing.sshd import sshd_cluster

__all__ = ["sshd_cluster"]
