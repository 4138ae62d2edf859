"""The sshd test helper itself: hosts accept the client key, expose the fake nvidia-smi, drop for real."""

from __future__ import annotations

import paramiko
import pytest

from nni_ts.testing.sshd import SshdCluster

pytestmark = pytest.mark.slow  # seconds per test (a real sshd): scripts/test --fast leaves it out


def _client(cluster: SshdCluster, index: int) -> paramiko.SSHClient:
    host = cluster.hosts[index]
    client = paramiko.SSHClient()
    client.load_host_keys(str(cluster.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.host, host.port, host.user, key_filename=str(cluster.client_key), look_for_keys=False, allow_agent=False
    )
    return client


def _run(client: paramiko.SSHClient, command: str) -> str:
    _, out, _ = client.exec_command(command)
    return out.read().decode()


def test_two_hosts_with_fake_gpus_and_a_real_drop(sshd_cluster: SshdCluster) -> None:
    a, b = sshd_cluster.hosts
    assert a.port != b.port
    a.set_gpus([(0, 0, 16000, 0), (1, 900, 16000, 30)])
    b.set_gpus(None)
    ca, cb = _client(sshd_cluster, 0), _client(sshd_cluster, 1)
    try:
        assert _run(ca, "echo $NNI_TS_TEST_HOST").strip() == "host0"
        assert _run(cb, "echo $NNI_TS_TEST_HOST").strip() == "host1"
        assert _run(ca, "nvidia-smi").splitlines() == ["0, 0, 16000, 0", "1, 900, 16000, 30"]
        assert _run(cb, "nvidia-smi; echo rc=$?").strip().endswith("rc=9")
        a.stop()
        transport = ca.get_transport()
        assert transport is not None
        transport.join(5)  # the reader thread ends once the connection is gone
        assert not transport.is_active()
        assert cb.get_transport() is not None and cb.get_transport().is_active()  # type: ignore[union-attr]
        a.start()
        ca.close()
        ca = _client(sshd_cluster, 0)
        assert _run(ca, "echo back").strip() == "back"
    finally:
        ca.close()
        cb.close()


def test_replaced_host_key_is_rejected(sshd_cluster: SshdCluster) -> None:
    b = sshd_cluster.hosts[1]
    b.replace_host_key()
    client = paramiko.SSHClient()
    client.load_host_keys(str(sshd_cluster.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        try:
            client.connect(b.host, b.port, b.user, key_filename=str(sshd_cluster.client_key), look_for_keys=False)
        except paramiko.BadHostKeyException:
            pass
        else:
            raise AssertionError("a changed host key was accepted")
    finally:
        client.close()
