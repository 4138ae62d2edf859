"""Converting NNI v1 experiment files (``trainingServicePlatform``, ``trial:``...) to the v2 shape.

Every v1 key is either renamed, moved, or explicitly dropped (keys with no effect any more, such as
``authorName`` or ``multiPhase: false``). Anything else is an error naming the v1 key path the user
wrote, with a suggestion when it looks like a misspelling.
"""

from __future__ import annotations

import difflib
from typing import Any

from ..errors import ConfigError

__all__ = ["V1_MARKERS", "convert_v1", "is_v1"]

#: Keys that only v1 files have.
V1_MARKERS = frozenset(
    {
        "trainingServicePlatform",
        "trial",
        "maxExecDuration",
        "maxTrialNum",
        "authorName",
        "searchSpacePath",
        "localConfig",
        "kubeflowConfig",
        "frameworkcontrollerConfig",
        "paiConfig",
        "logDir",
        "multiPhase",
        "multiThread",
        "versionCheck",
        "logCollection",
    }
)

_TOP_RENAMES = {
    "experimentName": "experimentName",
    "trialConcurrency": "trialConcurrency",
    "maxExecDuration": "maxExperimentDuration",
    "maxTrialNum": "maxTrialNumber",
    "maxTrialDuration": "maxTrialDuration",
    "searchSpacePath": "searchSpaceFile",
    "nniManagerIp": "nniManagerIp",
    "useAnnotation": "useAnnotation",
    "debug": "debug",
    "logLevel": "logLevel",
}
# Keys accepted and dropped: they have no effect (logDir: nni-ts keeps logs under NNI_TS_HOME).
_TOP_DROPPED = {"authorName", "logDir", "versionCheck", "logCollection", "multiThread", "description"}


def is_v1(data: dict[str, Any]) -> bool:
    """Whether a parsed config file is in NNI's v1 format."""
    return bool(V1_MARKERS & set(data)) and "trainingService" not in data


def _unknown(key: str, path: str, known: set[str] | dict[str, Any], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(
        f"unknown key {key!r} in this NNI v1 section.{hint} Known keys: {', '.join(sorted(known))}.",
        source=source,
        path=path,
    )


def _dict(value: Any, path: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {type(value).__name__}.", source=source, path=path)
    return value


def _algorithm(value: Any, path: str, source: str, kind: str) -> dict[str, Any]:
    data = _dict(value, path, source)
    out: dict[str, Any] = {}
    known = {
        f"builtin{kind}Name",
        "className",
        "codeDir",
        "classFileName",
        "classArgs",
        "gpuIndices",
        "gpuNum",
        "includeIntermediateResults",
    }
    for key, val in data.items():
        if key == f"builtin{kind}Name":
            out["name"] = val
        elif key == "codeDir":
            out["codeDirectory"] = val
        elif key == "classArgs":
            out["classArgs"] = val if val is not None else {}
        elif key in ("className", "classFileName"):
            pass
        elif key in ("gpuIndices", "gpuNum", "includeIntermediateResults"):
            pass  # tuner GPUs and NNI's TPE option: no effect here
        else:
            raise _unknown(key, f"{path}.{key}", known, source)
    if "className" in data:
        module = str(data.get("classFileName", "")).removesuffix(".py")
        cls = str(data["className"])
        out["className"] = f"{module}.{cls}" if module and "." not in cls else cls
    return out


_ROLE_KEYS = {
    "replicas": "replicas",
    "taskNum": "taskNumber",
    "command": "command",
    "gpuNum": "gpuNumber",
    "cpuNum": "cpuNumber",
    "memoryMB": "memorySize",
    "image": "dockerImage",
    "privateRegistryAuthPath": "privateRegistryAuthPath",
    "name": "name",
    "frameworkAttemptCompletionPolicy": "frameworkAttemptCompletionPolicy",
}


def _role(value: Any, path: str, source: str) -> dict[str, Any]:
    data = _dict(value, path, source)
    out: dict[str, Any] = {}
    for key, val in data.items():
        if key not in _ROLE_KEYS:
            raise _unknown(key, f"{path}.{key}", _ROLE_KEYS, source)
        out[_ROLE_KEYS[key]] = val
    return out


def _storage(block: dict[str, Any], path: str, source: str) -> dict[str, Any]:
    kind = block.get("storage", "nfs")
    out: dict[str, Any] = {"storageType": kind}
    if kind == "nfs":
        nfs = _dict(block.get("nfs", {}), f"{path}.nfs", source)
        for key, val in nfs.items():
            if key not in ("server", "path"):
                raise _unknown(key, f"{path}.nfs.{key}", {"server", "path"}, source)
            out[key] = val
    elif kind == "azureStorage":
        vault = _dict(block.get("keyVault", {}), f"{path}.keyVault", source)
        azure = _dict(block.get("azureStorage", {}), f"{path}.azureStorage", source)
        out.update(
            {
                "keyVaultName": vault.get("vaultName"),
                "keyVaultKey": vault.get("name"),
                "azureAccount": azure.get("accountName"),
                "azureShare": azure.get("azureShare"),
            }
        )
    else:
        raise ConfigError(f"expected nfs or azureStorage, got {kind!r}.", source=source, path=f"{path}.storage")
    return out


def _machine(value: Any, path: str, source: str) -> dict[str, Any]:
    renames = {
        "ip": "host",
        "host": "host",
        "port": "port",
        "username": "user",
        "passwd": "password",
        "sshKeyPath": "sshKeyFile",
        "passphrase": "sshPassphrase",
        "gpuIndices": "gpuIndices",
        "maxTrialNumPerGpu": "maxTrialNumberPerGpu",
        "useActiveGpu": "useActiveGpu",
        "pythonPath": "pythonPath",
        "preCommand": "preCommand",
    }
    out: dict[str, Any] = {}
    for key, val in _dict(value, path, source).items():
        if key not in renames:
            raise _unknown(key, f"{path}.{key}", renames, source)
        out[renames[key]] = val
    return out


def convert_v1(data: dict[str, Any], *, source: str) -> dict[str, Any]:
    """A v1 config as a v2-shaped, camelCase dict. Errors name the v1 key path."""
    out: dict[str, Any] = {}
    platform = data.get("trainingServicePlatform")
    if platform is None:
        raise ConfigError(
            "an NNI v1 config needs trainingServicePlatform (local, remote, kubeflow or frameworkcontroller).",
            source=source,
            path="trainingServicePlatform",
        )
    ts: dict[str, Any] = {"platform": platform}
    known = (
        set(_TOP_RENAMES)
        | _TOP_DROPPED
        | {
            "trainingServicePlatform",
            "tuner",
            "assessor",
            "advisor",
            "trial",
            "localConfig",
            "machineList",
            "kubeflowConfig",
            "frameworkcontrollerConfig",
            "remoteConfig",
            "multiPhase",
        }
    )
    for key, val in data.items():
        path = key
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = val
        elif key in _TOP_DROPPED:
            continue
        elif key == "multiPhase":
            if val:
                raise ConfigError("multi-phase experiments are not supported.", source=source, path=path)
        elif key == "trainingServicePlatform":
            continue
        elif key in ("tuner", "assessor", "advisor"):
            kind = {"tuner": "Tuner", "assessor": "Assessor", "advisor": "Advisor"}[key]
            out[key] = _algorithm(val, path, source, kind)
        elif key == "trial":
            trial = _dict(val, path, source)
            for tkey, tval in trial.items():
                tpath = f"trial.{tkey}"
                if tkey == "command":
                    out["trialCommand"] = tval
                elif tkey == "codeDir":
                    out["trialCodeDirectory"] = tval
                elif tkey == "gpuNum":
                    out["trialGpuNumber"] = tval
                elif tkey in ("worker", "ps", "master"):
                    ts[tkey] = _role(tval, tpath, source)
                elif tkey == "taskRoles":
                    if not isinstance(tval, list):
                        raise ConfigError("expected a list of task roles.", source=source, path=tpath)
                    ts["taskRoles"] = [_role(r, f"{tpath}[{i}]", source) for i, r in enumerate(tval)]
                elif tkey in ("image", "nasMode", "cpuNum", "memoryMB", "virtualCluster", "shmMB"):
                    pass  # PAI/NAS keys with no meaning on our platforms
                else:
                    known_trial = {"command", "codeDir", "gpuNum", "worker", "ps", "master", "taskRoles", "image"}
                    raise _unknown(tkey, tpath, known_trial, source)
        elif key == "localConfig":
            local = _dict(val, path, source)
            renames = {
                "gpuIndices": "gpuIndices",
                "maxTrialNumPerGpu": "maxTrialNumberPerGpu",
                "useActiveGpu": "useActiveGpu",
            }
            for lkey, lval in local.items():
                if lkey not in renames:
                    raise _unknown(lkey, f"{path}.{lkey}", renames, source)
                ts[renames[lkey]] = lval
        elif key == "machineList":
            if not isinstance(val, list):
                raise ConfigError("expected a list of machines.", source=source, path=path)
            ts["machineList"] = [_machine(m, f"{path}[{i}]", source) for i, m in enumerate(val)]
        elif key == "remoteConfig":
            remote = _dict(val, path, source)
            for rkey, rval in remote.items():
                if rkey != "reuse":
                    raise _unknown(rkey, f"{path}.{rkey}", {"reuse"}, source)
                ts["reuseMode"] = rval
        elif key == "kubeflowConfig":
            block = _dict(val, path, source)
            allowed = {
                "operator",
                "apiVersion",
                "storage",
                "nfs",
                "keyVault",
                "azureStorage",
                "uploadRetryCount",
                "namespace",
                "reuse",
            }
            for kkey in block:
                if kkey not in allowed:
                    raise _unknown(kkey, f"{path}.{kkey}", allowed, source)
            ts["storage"] = _storage(block, path, source)
            for kkey in ("operator", "apiVersion", "namespace"):
                if kkey in block:
                    ts[kkey] = block[kkey]
            if "reuse" in block:
                ts["reuseMode"] = block["reuse"]
        elif key == "frameworkcontrollerConfig":
            block = _dict(val, path, source)
            allowed = {
                "storage",
                "nfs",
                "keyVault",
                "azureStorage",
                "serviceAccountName",
                "namespace",
                "reuse",
                "uploadRetryCount",
                "configPath",
            }
            for kkey in block:
                if kkey not in allowed:
                    raise _unknown(kkey, f"{path}.{kkey}", allowed, source)
            ts["storage"] = _storage(block, path, source)
            for kkey in ("serviceAccountName", "namespace"):
                if kkey in block:
                    ts[kkey] = block[kkey]
            if "reuse" in block:
                ts["reuseMode"] = block["reuse"]
        else:
            raise _unknown(key, path, known, source)
    if platform in ("kubeflow", "frameworkcontroller"):
        # The roles carry the commands; v1 kept the experiment-level trial command unset for these.
        out.pop("trialCommand", None)
    out["trainingService"] = ts
    return out
