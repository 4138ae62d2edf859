"""Pieces of the objects both Kubernetes platforms create: labels, the experiment's anchor ConfigMap and
the ownerReference to it, registry Secrets, resources, the shared-storage volume, and the container that
runs the trial under the trial keeper.

Every object of an experiment carries the labels ``nni-ts.io/experiment`` (and ``nni-ts.io/trial`` for
a trial's objects) and an ownerReference to the anchor: deleting the anchor garbage-collects them all.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from .names import (
    ANNOTATION_SEQUENCE,
    ANNOTATION_TRIAL,
    LABEL_EXPERIMENT,
    LABEL_MANAGED_BY,
    LABEL_ROLE,
    LABEL_TRIAL,
    MANAGED_BY,
    anchor_name,
    label_value,
)
from .staging import MOUNT_PATH

__all__ = [
    "SERVER_PORT_KEY",
    "SERVER_SECRET_KEY",
    "STORAGE_VOLUME",
    "KeeperSpec",
    "anchor_configmap",
    "container",
    "experiment_labels",
    "experiment_selector",
    "owner_reference",
    "token_key",
    "token_secret",
    "registry_secret",
    "resources",
    "storage_volume",
    "trial_labels",
]

JSON = dict[str, Any]
STORAGE_VOLUME = "nni-ts-storage"
#: The cluster server's CA, staged in each trial's directory when the server serves https://.
CA_FILE = "cluster-server-ca.pem"
#: Keys of the experiment's token Secret that keep the cluster server's port and secret (a manager whose
#: data directory was lost reads them back). Trial tokens are ``trial-<id>``: no clash.
SERVER_PORT_KEY = "server-port"
SERVER_SECRET_KEY = "server-secret"


def experiment_labels(experiment_id: str) -> dict[str, str]:
    return {LABEL_EXPERIMENT: label_value(experiment_id), LABEL_MANAGED_BY: MANAGED_BY}


def experiment_selector(experiment_id: str) -> str:
    return f"{LABEL_EXPERIMENT}={label_value(experiment_id)}"


def trial_labels(experiment_id: str, trial_id: str, role: str | None = None) -> dict[str, str]:
    labels = {**experiment_labels(experiment_id), LABEL_TRIAL: label_value(trial_id)}
    if role is not None:
        labels[LABEL_ROLE] = label_value(role)
    return labels


def trial_annotations(trial_id: str, sequence_id: int) -> dict[str, str]:
    return {ANNOTATION_TRIAL: trial_id, ANNOTATION_SEQUENCE: str(sequence_id)}


def anchor_configmap(experiment_id: str, namespace: str) -> JSON:
    """The experiment's anchor: every other object of the experiment is owned by it."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": anchor_name(experiment_id),
            "namespace": namespace,
            "labels": experiment_labels(experiment_id),
            "annotations": {"nni-ts.io/experiment-id": experiment_id},
        },
        "data": {"experiment": experiment_id, "note": "Deleting this ConfigMap deletes every job of the experiment."},
    }


def owner_reference(anchor: JSON) -> JSON:
    """An ownerReference to ``anchor`` (as the API server returned it, with its uid)."""
    meta = anchor["metadata"]
    return {
        "apiVersion": anchor.get("apiVersion", "v1"),
        "kind": anchor.get("kind", "ConfigMap"),
        "name": meta["name"],
        "uid": meta["uid"],
        "blockOwnerDeletion": False,
    }


def registry_secret(name: str, namespace: str, experiment_id: str, docker_config: bytes, owner: JSON | None) -> JSON:
    """A ``kubernetes.io/dockerconfigjson`` Secret from a docker config.json (privateRegistryAuthPath)."""
    meta: JSON = {"name": name, "namespace": namespace, "labels": experiment_labels(experiment_id)}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": meta,
        "data": {".dockerconfigjson": base64.b64encode(docker_config).decode()},
    }


def token_key(trial_id: str) -> str:
    """The key of a trial's token in the experiment's token Secret."""
    return f"trial-{trial_id}"


def token_secret(name: str, namespace: str, experiment_id: str, tokens: dict[str, str], owner: JSON) -> JSON:
    """The experiment's Secret of trial tokens (key :func:`token_key`), owned by the anchor."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": experiment_labels(experiment_id),
            "ownerReferences": [owner],
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in tokens.items()},
    }


def _cpu(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def resources(cpu: float, memory_mb: int, gpus: int) -> JSON:
    """Requests equal to limits (a Guaranteed pod when the cluster allows it), GPUs as nvidia.com/gpu."""
    amounts = {"cpu": _cpu(cpu), "memory": f"{int(memory_mb)}Mi"}
    if gpus:
        amounts["nvidia.com/gpu"] = str(int(gpus))
    return {"requests": dict(amounts), "limits": dict(amounts)}


def storage_volume(storage: Any, azure_secret: str | None = None) -> JSON:
    """The volume that holds the code and the trial directories (NFS, an Azure file share, or, with no
    shared storage, the pod's own emptyDir that its bootstrap fills from the manager)."""
    if storage.storage_type == "none":
        return {"name": STORAGE_VOLUME, "emptyDir": {}}
    if storage.storage_type == "nfs":
        return {"name": STORAGE_VOLUME, "nfs": {"server": storage.server, "path": storage.path}}
    return {
        "name": STORAGE_VOLUME,
        "azureFile": {"secretName": azure_secret, "shareName": storage.azure_share, "readOnly": False},
    }


@dataclass
class KeeperSpec:
    """What a trial's containers need to run the keeper: ids, paths inside the pod, the server."""

    trial_id: str
    experiment_id: str
    sequence_id: int
    platform: str
    trial_dir: str
    code_dir: str
    keeper_dir: str
    server_url: str
    #: The Secret and key holding the trial's token (the spec only references it).
    token_secret: str
    token_key: str
    heartbeat: float
    grace: float
    report_timeout: float
    env: dict[str, str] = field(default_factory=dict)
    #: Where the pod finds the CA that signed the cluster server's certificate (https:// only).
    ca_file: str | None = None
    #: The storage mode's own variables (no shared storage: the bootstrap's; see podstorage.py).
    storage_env: dict[str, str] = field(default_factory=dict)
    #: The keeper's attempt number: ``1``, or ``auto`` where a pod may be replaced by one that runs the
    #: trial again (a batch Job): each keeper then takes the next number free in the trial directory.
    attempt: str = "1"


#: The container's shell script. ``__PRIMARY__`` is replaced by a test that is true in the one pod whose
#: keeper reports to the manager (a list such as ``[ A ] && [ B ]``: it is grouped in braces, since
#: ``! A && B`` would parse as ``(! A) && B``); the others run their command under a journal-only keeper in a
#: directory of their own (``<trial>/replicas/<pod>``) so that their output is kept too.
_LAUNCHER = """\
fail() { echo "nni-ts: $1" >&2; echo "$1" > "$NNI_TS_KEEPER_TRIAL_DIR/launcher-error" 2>/dev/null; exit 127; }
PY=$(command -v python3 || command -v python) || fail "the image has no python3 or python on its PATH; \
the trial keeper needs Python 3.8 or newer in the image."
"$PY" -c "import sys; sys.exit(sys.version_info < (3, 8))" || fail "the image's $PY is older than Python 3.8, \
which the trial keeper needs."
if [ -n "${NNI_TS_KEEPER_BOOTSTRAP:-}" ]; then
  "$PY" -c "$NNI_TS_KEEPER_BOOTSTRAP" || fail "could not fetch the trial's files from the manager's cluster \
server (the line above says why)."
fi
export PYTHONPATH="$NNI_TS_KEEPER_HOME${PYTHONPATH:+:$PYTHONPATH}"
if [ -f /mnt/frameworkbarrier/injector.sh ]; then . /mnt/frameworkbarrier/injector.sh; fi
if ! { __PRIMARY__; }; then
  D="$NNI_TS_KEEPER_TRIAL_DIR/replicas/${NNI_TS_POD_NAME:-${HOSTNAME:-replica}}"
  mkdir -p "$D" && cp "$NNI_TS_KEEPER_TRIAL_DIR/parameter.cfg" "$D/"
  export NNI_TS_KEEPER_TRIAL_DIR="$D" NNI_TS_KEEPER_OUTPUT_DIR="$D"
  unset NNI_TS_KEEPER_SERVER_URL NNI_TS_KEEPER_TOKEN NNI_TS_KEEPER_LOG_FRAMES
fi
exec "$PY" -m trial_keeper
"""


def launcher_script(primary_test: str) -> str:
    return _LAUNCHER.replace("__PRIMARY__", primary_test)


def container(
    *,
    name: str,
    image: str,
    command: str,
    keeper: KeeperSpec,
    primary_test: str,
    cpu: float,
    memory_mb: int,
    gpus: int,
    extra_mounts: list[JSON] | None = None,
) -> JSON:
    """The container of one role: ``/bin/sh -c <launcher>``, the keeper configured through env."""
    env: dict[str, str] = {
        "NNI_TS_KEEPER_HOME": keeper.keeper_dir,
        "NNI_TS_KEEPER_TRIAL_ID": keeper.trial_id,
        "NNI_TS_KEEPER_ATTEMPT": keeper.attempt,
        "NNI_TS_KEEPER_TRIAL_DIR": keeper.trial_dir,
        "NNI_TS_KEEPER_CODE_DIR": keeper.code_dir,
        "NNI_TS_KEEPER_PLATFORM": keeper.platform,
        "NNI_TS_KEEPER_EXPERIMENT_ID": keeper.experiment_id,
        "NNI_TS_KEEPER_SEQUENCE_ID": str(keeper.sequence_id),
        "NNI_TS_KEEPER_HEARTBEAT": f"{keeper.heartbeat:g}",
        "NNI_TS_KEEPER_GRACE": f"{keeper.grace:g}",
        "NNI_TS_KEEPER_REPORT_TIMEOUT": f"{keeper.report_timeout:g}",
        "NNI_TS_KEEPER_SERVER_URL": keeper.server_url,
        "NNI_TS_KEEPER_COMMAND": command,
    }
    if keeper.ca_file is not None:
        env["NNI_TS_KEEPER_CA_FILE"] = keeper.ca_file
    if not gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(keeper.storage_env)
    env.update(keeper.env)
    return {
        "name": name,
        "image": image,
        "command": ["/bin/sh", "-c", launcher_script(primary_test)],
        "env": [
            {"name": "NNI_TS_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "NNI_TS_KEEPER_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": keeper.token_secret, "key": keeper.token_key}},
            },
            *({"name": k, "value": v} for k, v in env.items()),
        ],
        "resources": resources(cpu, memory_mb, gpus),
        # On a failure the last log lines become the container's termination message (kubectl describe).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": STORAGE_VOLUME, "mountPath": MOUNT_PATH}, *(extra_mounts or [])],
    }
