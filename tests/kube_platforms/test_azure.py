"""The Azure file-share stager through the real ``azure-storage-file-share`` SDK, against a faked Azure
Files endpoint (tests/kube_platforms/fake_azure.py). Not verified here: Azure itself, Key Vault, and pods
mounting the share (the fake cluster maps an azureFile volume to a fresh directory)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from nni_ts.config.kubeflow import KubeflowConfig
from nni_ts.platforms.kubernetes.azure import AzureStager

from .fake_azure import FakeAzureFiles

pytest.importorskip("azure.storage.fileshare", reason="the azure extra is not installed (pip install 'nni-ts[azure]')")


@pytest.fixture
def azure_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzureFiles]:
    root = tmp_path / "azure"
    (root / "share1").mkdir(parents=True)
    fake = FakeAzureFiles(root, "acct")
    fake.start()
    monkeypatch.setenv("NNI_TS_AZURE_FILE_ENDPOINT", fake.url)
    monkeypatch.setenv("NNI_TS_AZURE_STORAGE_KEY", "c2VjcmV0a2V5")
    try:
        yield fake
    finally:
        fake.stop()


async def test_azure_stager_uploads_and_reads_back(azure_files: FakeAzureFiles, tmp_path: Path) -> None:
    code = tmp_path / "code"
    (code / "sub").mkdir(parents=True)
    (code / "trial.py").write_text("import nni\n")
    (code / ".env").write_text("dotfile")
    (code / "sub" / "data.bin").write_bytes(bytes(range(256)) * 100)
    storage = KubeflowConfig.model_validate(
        {
            "operator": "tf-operator",
            "storage": {"storageType": "azureStorage", "azureAccount": "acct", "azureShare": "share1",
                        "keyVaultName": "vault", "keyVaultKey": "k"},
            "worker": {"command": "x", "memorySize": 1, "dockerImage": "python:3.11"},
        }
    ).storage  # fmt: skip
    stager = AzureStager("ExpZ", storage)
    assert await stager.prepare(code) is True
    root = azure_files.root / "share1" / "nni-ts" / "ExpZ"
    assert (root / "code" / ".env").read_text() == "dotfile"
    assert (root / "code" / "sub" / "data.bin").read_bytes() == bytes(range(256)) * 100
    assert (root / "keeper" / "trial_keeper" / "__main__.py").is_file()
    assert await AzureStager("ExpZ", storage).prepare(code) is False
    await stager.write_trial("t1", {"parameter.cfg": b'{"p": 1}'})
    assert (root / "trials" / "t1" / "parameter.cfg").read_bytes() == b'{"p": 1}'
    state = root / "trials" / "t1" / ".nni-ts"
    state.mkdir()
    record = {"parameter_id": 0, "trial_job_id": "t1", "type": "FINAL", "sequence": 0, "value": "2"}
    (state / "journal").write_text(
        json.dumps({"trial": "t1", "attempt": 1, "seq": 0, "data": json.dumps(record)}) + "\n"
    )
    (state / "exit").write_text(json.dumps({"trial": "t1", "attempt": 1, "exit_code": 0, "end_time_ms": 1,
                                            "record_count": 1}))  # fmt: skip
    (root / "trials" / "t1" / "stdout").write_bytes(b"line one\nline two\n")
    records, ended = await stager.read_back("t1", 1)
    assert [json.loads(d) for _, d in records] == [record]
    assert ended is not None and ended["exit_code"] == 0
    assert await stager.read_file("t1", "stdout", tail=9) == b"line two\n"
    assert await stager.read_file("t1", "missing", tail=None) == b""
    secret = stager.secret("s", "default", {"apiVersion": "v1", "kind": "ConfigMap", "name": "a", "uid": "u"})
    assert set(secret["data"]) == {"azurestorageaccountname", "azurestorageaccountkey"}
    assert azure_files.requests > 0
