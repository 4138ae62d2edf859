"""Configuration of the remote (SSH) platform."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import ConfigModel, TrainingServiceConfig
from .local import parse_gpu_indices

__all__ = ["RemoteConfig", "RemoteMachineConfig"]


_V1_KEYS = {
    "ip": "host",
    "username": "user",
    "passwd": "password",
    "sshKeyPath": "sshKeyFile",
    "passphrase": "sshPassphrase",
    "maxTrialNumPerGpu": "maxTrialNumberPerGpu",
}


class _Hidden:
    """Stands in for a secret of the wrong type, so that error messages do not show it."""

    def __repr__(self) -> str:
        return "<hidden>"


class RemoteMachineConfig(ConfigModel):
    """One SSH host that runs trials."""

    host: str = Field(description="Host name or IP address of the machine.")
    port: int = Field(22, ge=1, le=65535, description="SSH port.")
    user: str = Field(description="SSH user name.")
    password: str | None = Field(None, description="SSH password; prefer sshKeyFile.", repr=False)
    ssh_key_file: str | None = Field(
        None, description="Private key file (relative paths resolve against the config file); ~ expands."
    )
    ssh_passphrase: str | None = Field(
        None, description="Passphrase of the key file (v1 and PROTOCOLS call it 'passphrase').", repr=False
    )
    use_active_gpu: bool = Field(False, description="Also place trials on GPUs other processes use.")
    max_trial_number_per_gpu: int = Field(1, ge=1, description="How many trials may share one GPU.")
    gpu_indices: list[int] | None = Field(None, description="Only these GPUs may be used (all when unset).")
    python_path: str | None = Field(
        None, description="A directory prepended to PATH on the host, so that its python3 is used."
    )
    pre_command: str | None = Field(
        None,
        description="A shell command run on the host before each trial's keeper starts, in the same shell "
        "(for example 'source ~/venv/bin/activate'); NNI v1 calls it preCommand.",
    )
    work_directory: str | None = Field(
        None,
        description="The directory on the host for code, the keeper and trial directories (relative paths "
        "and ~ resolve against the user's home). Default: ~/nni-ts.",
    )

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            # NNI's own names, as its set_cluster_metadata("machine_list", ...) takes them (v1 style).
            data = dict(data)
            for old_key, new_key in _V1_KEYS.items():
                if old_key in data and new_key not in data:
                    data[new_key] = data.pop(old_key)
        if isinstance(data, dict):
            data = dict(data)
            for key in ("password", "sshPassphrase", "ssh_passphrase"):
                value = data.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    data[key] = str(value)  # a numeric password in YAML
                elif value is not None and not isinstance(value, str):
                    data[key] = _Hidden()  # fails validation without echoing the secret
        return data

    _gpus = field_validator("gpu_indices", mode="before")(classmethod(lambda cls, v: parse_gpu_indices(v)))

    @model_validator(mode="after")
    def _credentials(self) -> RemoteMachineConfig:
        if self.password is None and self.ssh_key_file is None:
            self.ssh_key_file = "~/.ssh/id_rsa"
        return self


class RemoteConfig(TrainingServiceConfig):
    """Trials run on SSH hosts (NNI's ``remote`` training service)."""

    platform: Literal["remote"] = Field("remote", description="Always 'remote'.")
    machine_list: list[RemoteMachineConfig] = Field(min_length=1, description="The hosts that run trials.")
    reuse_mode: bool = Field(True, description="Accepted for NNI compatibility; trials always reuse the connection.")
    cancel_grace_period: float = Field(
        5.0, ge=0, description="Seconds between SIGTERM and SIGKILL when a trial is cancelled."
    )
    known_hosts_file: str | None = Field(
        None,
        description="The known_hosts file host keys are checked against (~ expands). Default: "
        "~/.ssh/known_hosts, plus the system's /etc/ssh/ssh_known_hosts.",
    )
    accept_new_host_keys: bool = Field(
        False,
        description="Accept (and add to knownHostsFile) the key of a host that is not in it yet, like "
        "OpenSSH's StrictHostKeyChecking=accept-new. A key that differs from a known one is always refused.",
    )
    keeper_reporting: Literal["tunnel", "direct"] = Field(
        "tunnel",
        description="How trial keepers reach the manager: 'tunnel' through an SSH reverse tunnel on each "
        "host's 127.0.0.1 (hosts need no route to the manager), or 'direct' over HTTP to nniManagerIp.",
    )
    keeper_heartbeat: float = Field(
        5.0, gt=0, description="Seconds between a keeper's heartbeats when it has nothing to report."
    )
    heartbeat_timeout: float = Field(
        15.0, gt=0, description="Seconds without word from a keeper before its trial turns UNKNOWN."
    )
