"""Azure file shares as the shared storage (``storage.storageType: azureStorage``), behind the ``azure`` extra.

The storage account's key comes from Azure Key Vault (``keyVaultName``, ``keyVaultKey``) through the
``az`` command line (as NNI did), or from ``$NNI_TS_AZURE_STORAGE_KEY`` when set; it goes into a Kubernetes
Secret (``azurestorageaccountname`` / ``azurestorageaccountkey``) that the pods' ``azureFile`` volume
names. Files go up and come back through ``azure-storage-file-share`` (``pip install nni-ts[azure]``).
``$NNI_TS_AZURE_FILE_ENDPOINT`` replaces ``https://<account>.file.core.windows.net`` (a test endpoint).

Verified: the manifests (volume, Secret), the error messages, and the SDK calls against a faked Azure Files
endpoint (tests/kube_platforms/test_azure.py). Not verified against Azure itself, nor Key Vault through ``az``.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from trial_keeper.journal import EXIT_NAME, JOURNAL_NAME, STATE_DIR, read_attempt

from ...errors import ConfigError, PlatformError
from .manifest import experiment_labels
from .staging import Stager, keeper_source_files

__all__ = ["AzureStager", "storage_key"]


def storage_key(vault: str, name: str) -> str:
    """The storage account key: ``$NNI_TS_AZURE_STORAGE_KEY``, else ``az keyvault secret show``."""
    key = os.environ.get("NNI_TS_AZURE_STORAGE_KEY")
    if key:
        return key
    try:
        out = subprocess.run(
            ["az", "keyvault", "secret", "show", "--vault-name", vault, "--name", name]
            + ["--query", "value", "-o", "tsv"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ConfigError(
            "azureStorage needs the storage key from Azure Key Vault: install the Azure CLI (`az`) and run "
            "`az login`, or set NNI_TS_AZURE_STORAGE_KEY."
        ) from exc
    if out.returncode != 0 or not out.stdout.strip():
        raise ConfigError(
            f"cannot read the secret {name!r} from the key vault {vault!r}: {out.stderr.strip() or 'empty answer'}."
        )
    return out.stdout.strip()


class AzureStager(Stager):
    """The experiment's directory on an Azure file share."""

    def __init__(self, experiment_id: str, storage: Any) -> None:
        super().__init__(experiment_id)
        self.account = str(storage.azure_account)
        self.share_name = str(storage.azure_share)
        self.vault = str(storage.key_vault_name)
        self.vault_key = str(storage.key_vault_key)
        self._key: str | None = None
        self._share: Any = None

    def trial_location(self, trial_id: str) -> str:
        return f"azure://{self.account}/{self.share_name}/{posixpath.join(self.rel_root, 'trials', trial_id)}"

    def _client(self) -> Any:
        if self._share is not None:
            return self._share
        try:
            from azure.storage.fileshare import ShareClient  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                "azureStorage needs the Azure SDK: pip install 'nni-ts[azure]' (azure-storage-file-share)."
            ) from exc
        self._key = storage_key(self.vault, self.vault_key)
        endpoint = os.environ.get("NNI_TS_AZURE_FILE_ENDPOINT") or f"https://{self.account}.file.core.windows.net"
        credential = {"account_name": self.account, "account_key": self._key}
        self._share = ShareClient(account_url=endpoint, share_name=self.share_name, credential=credential)
        return self._share

    def secret(self, name: str, namespace: str, owner: dict[str, Any]) -> dict[str, Any]:
        """The Secret the pods' azureFile volume reads the account name and key from."""
        self._client()
        assert self._key is not None
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": experiment_labels(self.experiment_id),
                "ownerReferences": [owner],
            },
            "data": {
                "azurestorageaccountname": base64.b64encode(self.account.encode()).decode(),
                "azurestorageaccountkey": base64.b64encode(self._key.encode()).decode(),
            },
        }

    def _mkdirs(self, path: str) -> None:
        share = self._client()
        current = ""
        for part in path.split("/"):
            current = posixpath.join(current, part) if current else part
            try:
                share.get_directory_client(current).create_directory()
            except Exception as exc:  # ResourceExistsError; the SDK's exception types are optional imports
                if "exist" not in type(exc).__name__.lower() and "exist" not in str(exc).lower():
                    raise PlatformError(f"Cannot create {current} on the Azure share {self.share_name}: {exc}") from exc

    def _upload(self, files: list[tuple[Path, str]], dest: str) -> None:
        share = self._client()
        made: set[str] = set()
        for src, rel in files:
            target = posixpath.join(dest, rel)
            parent = posixpath.dirname(target)
            if parent not in made:
                self._mkdirs(parent)
                made.add(parent)
            with open(src, "rb") as fh:
                share.get_file_client(target).upload_file(fh)

    def _exists(self, path: str) -> bool:
        try:
            self._client().get_file_client(path).get_file_properties()
            return True
        except Exception:
            return False

    def _prepare(self, code_dir: Path) -> bool:
        marker = posixpath.join(self.rel_root, ".staged")
        changed = self._changed(code_dir)
        if self._exists(marker):
            return False
        self._upload_code(changed)
        self._upload(keeper_source_files(), posixpath.join(self.rel_root, "keeper"))
        self._mkdirs(posixpath.join(self.rel_root, "trials"))
        self._client().get_file_client(marker).upload_file(json.dumps({"code": str(code_dir)}).encode())
        return True

    def _upload_code(self, files: list[tuple[Path, str]]) -> None:
        self._upload(files, posixpath.join(self.rel_root, "code"))

    def _write_trial(self, trial_id: str, files: dict[str, bytes]) -> None:
        d = posixpath.join(self.rel_root, "trials", trial_id)
        self._mkdirs(d)
        for name, data in files.items():
            self._client().get_file_client(posixpath.join(d, name)).upload_file(data)

    def _download(self, path: str) -> bytes | None:
        try:
            data: bytes = self._client().get_file_client(path).download_file().readall()
            return data
        except Exception:
            return None

    def _read_back(self, trial_id: str, attempt: int | None) -> tuple[list[tuple[int, str]], dict[str, Any] | None]:
        d = posixpath.join(self.rel_root, "trials", trial_id)
        with tempfile.TemporaryDirectory(prefix="nni-ts-readback-") as tmp:
            os.makedirs(os.path.join(tmp, STATE_DIR), exist_ok=True)
            for rel in (JOURNAL_NAME, posixpath.join(STATE_DIR, EXIT_NAME), "stdout"):
                data = self._download(posixpath.join(d, rel))
                if data is not None:
                    Path(tmp, *rel.split("/")).write_bytes(data)
            return read_attempt(tmp, trial_id, attempt)

    def _read_file(self, trial_id: str, name: str, tail: int | None) -> bytes:
        data = self._download(posixpath.join(self.rel_root, "trials", trial_id, name)) or b""
        return data[-tail:] if tail is not None and tail < len(data) else data

    def _remove_experiment(self) -> None:
        raise PlatformError("Removing an experiment's files from an Azure share is not supported; delete the folder.")
