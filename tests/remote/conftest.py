"""Fixtures of the remote-platform tests: real sshd processes on 127.0.0.1 (nni_ts.testing.sshd)."""

from __future__ import annotations

from nni_ts.testing.sshd import sshd_cluster

__all__ = ["sshd_cluster"]
