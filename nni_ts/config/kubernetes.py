"""Configuration shared by the Kubernetes platforms: storage and resource sizes."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from .base import ConfigModel

__all__ = ["K8sStorageConfig", "SshUploadConfig", "parse_memory_mb"]

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?\s*$", re.IGNORECASE)
_UNIT_MB = {"": 1.0, "k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0 * 1024}


def parse_memory_mb(value: Any) -> int:
    """``8192``, ``"8192"``, ``"8g"``, ``"8gb"``, ``"8Gi"``, ``"512m"`` -> MiB. A bare number means MiB."""
    if isinstance(value, bool):
        raise ValueError("expected a memory size such as 8192, '8g' or '512mb'")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError("a memory size must be positive")
        return int(value)
    match = _MEMORY.match(str(value))
    if not match:
        raise ValueError(f"expected a memory size such as 8192, '8g' or '512mb', got {value!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    mb = int(number * _UNIT_MB[unit])
    if mb <= 0:
        raise ValueError(f"the memory size {value!r} is less than 1 MiB")
    return mb


class SshUploadConfig(ConfigModel):
    """Upload trial code to the NFS server's host over SFTP (no ``sudo mount`` on the manager)."""

    host: str | None = Field(None, description="SSH host; defaults to the NFS server.")
    port: int = Field(22, ge=1, le=65535, description="SSH port.")
    user: str = Field(description="SSH user name.")
    ssh_key_file: str | None = Field(None, description="Private key file.")
    password: str | None = Field(None, description="SSH password; prefer sshKeyFile.", repr=False)


class K8sStorageConfig(ConfigModel):
    """Where trial code and trial directories live, shared by the manager and the pods."""

    storage_type: Literal["nfs", "azureStorage"] = Field(description="nfs or azureStorage.")
    server: str | None = Field(None, description="NFS server (nfs).")
    path: str | None = Field(None, description="The exported path on the NFS server (nfs).")
    local_mount_path: str | None = Field(
        None, description="Where the NFS export is already mounted on the manager's host (nni-ts; no sudo needed)."
    )
    upload: SshUploadConfig | None = Field(
        None, description="Upload code over SFTP to the NFS server's host instead of a local mount (nni-ts)."
    )
    azure_account: str | None = Field(None, description="Azure storage account name (azureStorage).")
    azure_share: str | None = Field(None, description="Azure file share name (azureStorage).")
    key_vault_name: str | None = Field(None, description="Azure key vault holding the storage key (azureStorage).")
    key_vault_key: str | None = Field(None, description="The key vault secret name (azureStorage).")

    @model_validator(mode="after")
    def _complete(self) -> K8sStorageConfig:
        if self.storage_type == "nfs":
            missing = [n for n in ("server", "path") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"nfs storage needs {' and '.join(missing)}")
        else:
            missing = [
                n
                for n in ("azure_account", "azure_share", "key_vault_name", "key_vault_key")
                if getattr(self, n) is None
            ]
            if missing:
                raise ValueError(f"azureStorage needs {', '.join(missing)}")
        return self
