"""Staging trial code and trial directories on the shared storage: a local mount, and SFTP to the NFS
server's host (a real sshd on 127.0.0.1), including a whole trial on the fake cluster over SFTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from nni_ts.errors import ConfigError
from nni_ts.models import TrialJobMetric, TrialJobStatus
from nni_ts.platforms.kubernetes.kubeflow import KubeflowTrainingService
from nni_ts.platforms.kubernetes.staging import LocalStager, SftpStager, Stager
from nni_ts.testing.conformance import KIT_TRIAL, form, wait_for_status
from nni_ts.testing.k8s import FakeCluster, Node
from nni_ts.testing.sshd import SshHost, sshd_available

from .conftest import crd_files


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "kit_trial.py").write_text(KIT_TRIAL, encoding="utf-8")
    (code / ".hidden").write_text("dotfiles too")
    (code / "pkg" / "data.txt").write_text("nested")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "x.pyc").write_bytes(b"skip me")
    return code


@pytest.fixture
def ssh_host(tmp_path: Path) -> Iterator[SshHost]:
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    host = SshHost(tmp_path / "ssh", "nfs-host")
    host.start()
    try:
        yield host
    finally:
        host.stop()


def _check_stager(stager: Stager, code_dir: Path, root: Path) -> None:
    """``root``: where the experiment's directory appears on this machine."""
    assert (root / "code" / ".hidden").read_text() == "dotfiles too"
    assert (root / "code" / "pkg" / "data.txt").read_text() == "nested"
    assert not (root / "code" / "__pycache__").exists()
    assert (root / "keeper" / "trial_keeper" / "__main__.py").is_file()
    assert (root / "keeper" / "trial_keeper" / "_light" / "nni" / "__init__.py").is_file()
    assert not list((root / "keeper").rglob("*.pyc"))


async def test_local_stager(tmp_path: Path, code_dir: Path) -> None:
    mount = tmp_path / "mount"
    mount.mkdir()
    stager = LocalStager("ExpA", mount)
    assert await stager.prepare(code_dir) is True
    root = mount / "nni-ts" / "ExpA"
    _check_stager(stager, code_dir, root)
    assert stager.pod_trial_dir("t1") == "/nni-ts-storage/nni-ts/ExpA/trials/t1"
    # A resumed experiment finds its code there and does not upload it again.
    assert await LocalStager("ExpA", mount).prepare(code_dir) is False
    # Files changed later reach later trials; nothing changed, nothing goes up.
    assert await stager.refresh(code_dir) == 0
    (code_dir / "new.py").write_text("print(1)")
    assert await stager.refresh(code_dir) == 1
    assert (root / "code" / "new.py").read_text() == "print(1)"
    await stager.write_trial("t1", {"parameter.cfg": b"{}"})
    assert (root / "trials" / "t1" / "parameter.cfg").read_bytes() == b"{}"
    assert await stager.read_file("t1", "parameter.cfg", tail=1) == b"}"
    assert await stager.read_file("t1", "stdout", tail=None) == b""
    assert await stager.read_back("t1", 1) == ([], None)


async def test_local_stager_without_the_mount_says_what_to_do(tmp_path: Path, code_dir: Path) -> None:
    with pytest.raises(ConfigError, match="localMountPath"):
        await LocalStager("ExpA", tmp_path / "not-mounted").prepare(code_dir)


async def test_sftp_stager(ssh_host: SshHost, code_dir: Path) -> None:
    export = ssh_host.work_dir / "export"
    export.mkdir()
    stager = SftpStager(
        "ExpB",
        host=ssh_host.host,
        port=ssh_host.port,
        user=ssh_host.user,
        export_path=str(export),
        key_file=str(ssh_host.client_key),
        known_hosts=str(ssh_host.known_hosts),
    )
    try:
        assert await stager.prepare(code_dir) is True
        root = export / "nni-ts" / "ExpB"
        _check_stager(stager, code_dir, root)
        assert await stager.prepare(code_dir) is False
        (code_dir / "later.py").write_text("x = 1")
        assert await stager.refresh(code_dir) == 1
        assert (root / "code" / "later.py").read_text() == "x = 1"
        await stager.write_trial("t9", {"parameter.cfg": b'{"a": 1}'})
        assert json.loads((root / "trials" / "t9" / "parameter.cfg").read_text()) == {"a": 1}
        # What a keeper that could not reach the manager leaves behind is read back over SFTP.
        state = root / "trials" / "t9" / ".nni-ts"
        state.mkdir()
        record = {"parameter_id": 0, "trial_job_id": "t9", "type": "FINAL", "sequence": 0, "value": "1"}
        (state / "journal").write_text(
            json.dumps({"trial": "t9", "attempt": 1, "seq": 0, "data": json.dumps(record)}) + "\n"
        )
        (state / "exit").write_text(
            json.dumps({"trial": "t9", "attempt": 1, "exit_code": 0, "end_time_ms": 5, "record_count": 1})
        )
        (root / "trials" / "t9" / "stdout").write_bytes(b"hello\nworld\n")
        records, ended = await stager.read_back("t9", 1)
        assert [seq for seq, _ in records] == [0] and json.loads(records[0][1]) == record
        assert ended is not None and ended["exit_code"] == 0
        assert await stager.read_file("t9", "stdout", tail=6) == b"world\n"
        assert stager.trial_location("t9").startswith("sftp://")
    finally:
        await stager.close()


@pytest.mark.slow
async def test_a_trial_staged_over_sftp_with_an_unreachable_manager(
    tmp_path: Path, ssh_host: SshHost, code_dir: Path
) -> None:
    """No mount on the manager's side at all: code up over SFTP, metrics back from the journal over SFTP."""
    export = ssh_host.work_dir / "export"
    export.mkdir()
    async with FakeCluster(
        tmp_path / "cluster",
        crd_files=crd_files(),
        nodes=[Node("n1", cpu=16, memory="64Gi")],
        nfs_exports={("nfs.example", str(export)): export},
    ) as cluster:
        config = {
            "platform": "kubeflow",
            "operator": "tf-operator",
            "trialCodeDirectory": str(code_dir),
            "kubeconfig": str(cluster.kubeconfig),
            "storage": {
                "storageType": "nfs",
                "server": "nfs.example",
                "path": str(export),
                "upload": {
                    "host": ssh_host.host,
                    "port": ssh_host.port,
                    "user": ssh_host.user,
                    "sshKeyFile": str(ssh_host.client_key),
                    "knownHostsFile": str(ssh_host.known_hosts),
                },
            },
            "worker": {
                "replicas": 1,
                "command": "python3 kit_trial.py",
                "memorySize": "512m",
                "cpuNumber": 1,
                "dockerImage": "python:3.11",
            },
            "reportTimeout": 0.5,
            "cancelGracePeriod": 2,
        }
        svc = KubeflowTrainingService(config, experiment_dir=tmp_path / "exp", keeper_server_url="http://127.0.0.1:9")
        metrics: list[TrialJobMetric] = []
        svc.add_trial_job_metric_listener(metrics.append)
        async with svc:
            detail = await svc.submit_trial_job(form({"mode": "ok", "n": 2, "final": 0.25}))
            done = await wait_for_status(svc, detail.id, timeout=60)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message
            assert [json.loads(m.data)["type"] for m in metrics] == ["PERIODICAL", "PERIODICAL", "FINAL"]
            assert done.working_directory.startswith("sftp://")
            stderr = await svc.get_trial_file(detail.id, "stderr")
            assert isinstance(stderr, bytes)
