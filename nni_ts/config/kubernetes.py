"""Configuration shared by the Kubernetes platforms: storage and resource sizes."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import ConfigModel, TrainingServiceConfig
from .podsettings import PlatformPodSettings

__all__ = ["K8sStorageConfig", "KubernetesPlatformConfig", "PodRoleConfig", "SshUploadConfig", "parse_memory_mb"]

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?\s*$", re.IGNORECASE)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
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
        # No "got ...": the loader appends the value given (issue 13 #7: "got 'lots' (got 'lots')").
        raise ValueError("expected a memory size such as 8192, '8g' or '512mb'")
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
    known_hosts_file: str | None = Field(
        None,
        description="A known_hosts file to check the host's key against. Default: ~/.ssh/known_hosts, "
        "and a host missing from it is accepted on first use.",
    )


class K8sStorageConfig(ConfigModel):
    """Where trial code and trial directories live: shared by the manager and the pods (nfs,
    azureStorage), or nowhere shared (none: each pod fetches its files from the manager)."""

    storage_type: Literal["nfs", "azureStorage", "none"] = Field(
        description="nfs, azureStorage, or none: no shared file system; each pod fetches the code and its "
        "parameters from the manager's cluster server and the metrics fall back to the pod's log (nni-ts; "
        "the default when storage is not given)."
    )
    code_in_image: str | None = Field(
        None,
        description="none only: the trial code is already in the image at this absolute path (the command "
        "runs there); the manager then sends only the keeper and the parameters (nni-ts).",
    )
    server: str | None = Field(None, description="NFS server (nfs).")
    path: str | None = Field(None, description="The exported path on the NFS server (nfs).")
    local_mount_path: str | None = Field(
        None,
        description="Where the NFS export is already mounted on the manager's host (nni-ts; no sudo needed). "
        "When neither this nor upload is given and the server is this host (localhost, 127.0.0.1), the "
        "exported path itself is used.",
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
        if self.code_in_image is not None:
            if self.storage_type != "none":
                raise ValueError("codeInImage is for storageType none (with shared storage the code is uploaded)")
            if not self.code_in_image.startswith("/") or "\x00" in self.code_in_image:
                raise ValueError(f"codeInImage must be an absolute path in the image, not {self.code_in_image!r}")
        if self.storage_type == "none":
            given = [
                n
                for n in ("server", "path", "local_mount_path", "upload", "azure_account", "azure_share")
                if getattr(self, n) is not None
            ]
            if given:
                raise ValueError(f"storageType none shares nothing: remove {', '.join(given)} (or use nfs)")
        elif self.storage_type == "nfs":
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


class KubernetesPlatformConfig(TrainingServiceConfig, PlatformPodSettings):
    """What the Kubernetes platforms share: the cluster, the namespace, the storage the pods and the
    manager share, how the trial keeper in each pod reports, and the pod settings
    (:mod:`nni_ts.config.podsettings`)."""

    storage: K8sStorageConfig = Field(
        default_factory=lambda: K8sStorageConfig(storage_type="none"),
        description="Where the code and trial directories are shared with pods; default {storageType: none} "
        "(nothing shared: the pods fetch their files from the manager).",
    )
    namespace: str = Field("default", description="The Kubernetes namespace of the jobs.")
    reuse_mode: bool = Field(False, description="Accepted for NNI compatibility; has no effect.")
    pending_timeout: float = Field(
        600, gt=0, description="Seconds a pod may stay Pending before the trial is reported and cancelled (nni-ts)."
    )
    kubeconfig: str | None = Field(
        None,
        description="A kubeconfig file (nni-ts). Default: $KUBECONFIG, then ~/.kube/config, then the "
        "in-cluster service account.",
    )
    context: str | None = Field(
        None, description="The kubeconfig context to use; default its current context (nni-ts)."
    )
    cluster_server_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="The port the manager listens on for the trial keepers in the pods; 0 picks a free one, "
        "kept across a resume (nni-ts).",
    )
    cluster_server_cert_file: str | None = Field(
        None,
        description="A PEM certificate (chain) for the manager's cluster server: the keepers then post to "
        "https:// (with clusterServerKeyFile; nni-ts).",
    )
    cluster_server_key_file: str | None = Field(
        None, description="The private key of clusterServerCertFile, PEM (nni-ts)."
    )
    cluster_server_ca_file: str | None = Field(
        None,
        description="The CA (PEM) the keepers verify the cluster server's certificate against; default "
        "clusterServerCertFile itself, for a self-signed one (nni-ts).",
    )
    keeper_heartbeat: float = Field(5.0, gt=0, description="Seconds between the keepers' heartbeats (nni-ts).")
    report_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a keeper keeps trying to reach the manager after its trial ended; after that the "
        "metrics are read back from the trial directory on the shared storage, or from the pod's log without "
        "shared storage (nni-ts).",
    )
    cancel_grace_period: float = Field(
        10.0, ge=0, description="Seconds from SIGTERM to SIGKILL when a trial's pods are deleted (nni-ts)."
    )
    queue_name: str | None = Field(
        None,
        description="A Kueue LocalQueue in the namespace: each trial's object gets the label "
        "kueue.x-k8s.io/queue-name, and Kueue decides when it runs (kubeflow, kubernetes and trainjob; nni-ts; "
        "see docs/kubernetes.md, Kueue).",
    )
    priority_class: str | None = Field(
        None,
        description="A Kueue WorkloadPriorityClass for the trials (the label kueue.x-k8s.io/priority-class; "
        "with queueName; nni-ts).",
    )

    @field_validator("queue_name", "priority_class")
    @classmethod
    def _kueue_name(cls, v: str | None) -> str | None:
        if v is not None and not _DNS_SUBDOMAIN.match(v):
            raise ValueError(
                "expected the name of a Kueue object: at most 253 lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit"
            )
        return v

    @model_validator(mode="after")
    def _priority_needs_queue(self) -> KubernetesPlatformConfig:
        if self.priority_class is not None and self.queue_name is None:
            raise ValueError("priorityClass is a Kueue WorkloadPriorityClass: it needs queueName too")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> KubernetesPlatformConfig:
        if (self.cluster_server_cert_file is None) != (self.cluster_server_key_file is None):
            raise ValueError("clusterServerCertFile and clusterServerKeyFile go together: give both or neither")
        if self.cluster_server_ca_file is not None and self.cluster_server_cert_file is None:
            raise ValueError("clusterServerCaFile needs clusterServerCertFile and clusterServerKeyFile")
        return self

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not _DNS_LABEL.match(v):
            raise ValueError(
                f"namespace {v!r} must be a DNS label: at most 63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit"
            )
        return v


class TrialDeadlineConfig(ConfigModel):
    """``maxTrialDuration`` on a platform whose trial object has an ``activeDeadlineSeconds`` (a batch
    Job, a TrainJob). Each platform's class redeclares the field with its own description."""

    max_trial_duration: str | int | float | None = None

    @field_validator("max_trial_duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        from .experiment import _duration_validator

        return _duration_validator(v)

    @property
    def active_deadline_seconds(self) -> int | None:
        """``maxTrialDuration`` as the object's ``activeDeadlineSeconds`` (rounded up), or None."""
        if self.max_trial_duration is None:
            return None
        from .experiment import parse_duration

        return max(1, math.ceil(parse_duration(self.max_trial_duration, path="trainingService.maxTrialDuration")))


class PodRoleConfig(ConfigModel):
    """What every pod of a trial runs and needs: the command, the image and the resources. The roles of the
    kubeflow and frameworkcontroller platforms and the ``kubernetes`` platform itself have these keys."""

    command: str = Field(description="The command each pod runs, in the trial code directory.")
    gpu_number: int = Field(0, ge=0, description="GPUs per pod (nvidia.com/gpu).")
    cpu_number: float = Field(1, gt=0, description="CPUs per pod.")
    memory_size: int = Field(description="Memory per pod in MiB; accepts 8192, '8g', '8gb', '512mb'.")
    docker_image: str = Field(
        min_length=1,
        pattern=r"^\S+$",
        description="The container image (required: it needs Python 3.8+ and what the trial imports).",
    )
    private_registry_auth_path: str | None = Field(
        None, description="A docker config.json with registry credentials, turned into an imagePullSecret."
    )

    _mem = field_validator("memory_size", mode="before")(classmethod(lambda cls, v: parse_memory_mb(v)))
