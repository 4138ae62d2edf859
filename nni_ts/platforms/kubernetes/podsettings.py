"""What the configuration adds to every Kubernetes platform's trial objects and pods, and what a trial
object tells about its trial when the manager's own records are gone.

* :func:`object_metadata`: the user's labels and annotations on a trial's top object, and the trial's
  parameters (the application form's JSON) in the ``nni-ts.io/parameters`` annotation.
* :func:`apply_pod_settings`: the pod settings (:mod:`nni_ts.config.podsettings`) on a pod template: the
  platform's, then the role's, then the ``podTemplatePatch`` es.
* :func:`recovered_detail`: a trial rebuilt from its object (``nni-ts resume -c`` after the manager's data
  directory was lost).

The parameters annotation is bounded (:data:`MAX_PARAMETERS_BYTES`; an object's annotations may take
256 KiB in all, and the user's may take 64 KiB): larger parameters are left out, the object says so
(``nni-ts.io/parameters-omitted: <bytes>``), and a rebuild reads them from the trial's ``parameter.cfg``
on the shared storage instead.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ...config.podsettings import PlatformPodSettings, RolePodSettings
from ...errors import ConfigError
from ...models import HyperParameters, TrialJobApplicationForm, TrialJobDetail, TrialJobStatus
from .names import ANNOTATION_SEQUENCE, ANNOTATION_TRIAL

__all__ = [
    "ANNOTATION_PARAMETERS",
    "ANNOTATION_PARAMETERS_OMITTED",
    "MAX_PARAMETERS_BYTES",
    "annotated_trial_id",
    "apply_pod_settings",
    "object_metadata",
    "recovered_detail",
    "strategic_merge",
]

log = logging.getLogger(__name__)

JSON = dict[str, Any]

ANNOTATION_PARAMETERS = "nni-ts.io/parameters"
ANNOTATION_PARAMETERS_OMITTED = "nni-ts.io/parameters-omitted"
#: The parameters annotation's bound: 128 KiB of the object's 256 KiB (64 KiB are the user's, the rest
#: nni-ts's other annotations and those that controllers add).
MAX_PARAMETERS_BYTES = 128 * 1024

#: Lists that merge item by item on a key (as Kubernetes' strategic merge patch does for a PodSpec).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "resourceClaims": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "hostAliases": "ip",
}


def object_metadata(config: PlatformPodSettings, meta: JSON, detail: TrialJobDetail) -> JSON:
    """``meta`` (a trial object's metadata, nni-ts's labels and annotations in it) with the user's labels
    and annotations and the trial's parameters added. nni-ts's own keys are never overridden (the
    configuration refuses ``nni-ts.io/`` keys; other keys nni-ts sets win over the user's)."""
    meta = dict(meta)
    meta["labels"] = {**config.labels, **(meta.get("labels") or {})}
    annotations = {**config.annotations, **(meta.get("annotations") or {})}
    value = detail.form.hyper_parameters.value
    size = len(value.encode())
    if size <= MAX_PARAMETERS_BYTES:
        annotations[ANNOTATION_PARAMETERS] = value
    else:
        log.warning(
            "Trial %s: its parameters take %d bytes, more than the %d an annotation of its object may hold; a "
            "rebuild from the cluster reads them from the trial's parameter.cfg instead.",
            detail.id,
            size,
            MAX_PARAMETERS_BYTES,
        )
        annotations[ANNOTATION_PARAMETERS_OMITTED] = str(size)
    meta["annotations"] = annotations
    return meta


def apply_pod_settings(config: PlatformPodSettings, template: JSON, role: str | None) -> JSON:
    """``template`` (``{"metadata", "spec"}``, as a builder made it) with the pod settings applied: the
    platform section's, then those of ``role``'s section, then the patches. Raises ConfigError naming
    the key if a patch would replace what nni-ts relies on."""
    template = copy.deepcopy(template)
    meta = template.setdefault("metadata", {})
    ours = dict(meta.get("labels") or {})
    meta["labels"] = {**config.labels, **ours}
    if config.annotations:
        meta["annotations"] = {**config.annotations, **(meta.get("annotations") or {})}
    spec = template["spec"]
    own_containers = [str(c.get("name")) for c in spec.get("containers") or []]
    layers: list[tuple[str, RolePodSettings]] = [("trainingService", config)]
    found = config.role_settings(role)
    if found is not None:
        layers.append((f"trainingService.{found[0]}", found[1]))
    if config.service_account_name:
        spec["serviceAccountName"] = config.service_account_name
    for _where, s in layers:
        _apply_fields(s, spec, own_containers)
    for where, s in layers:
        if s.pod_template_patch:
            template = strategic_merge(
                template, s.pod_template_patch, own_containers=own_containers, where=f"{where}.podTemplatePatch"
            )
    # The patch may not take nni-ts's labels away (it is checked not to name them; a null deletes nothing of ours).
    template["metadata"]["labels"] = {**(template["metadata"].get("labels") or {}), **ours}
    return template


def _apply_fields(s: RolePodSettings, spec: JSON, own: list[str]) -> None:
    if s.node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **s.node_selector}
    if s.tolerations:
        spec["tolerations"] = [*(spec.get("tolerations") or []), *(t.to_k8s() for t in s.tolerations)]
    if s.affinity is not None:
        spec["affinity"] = copy.deepcopy(s.affinity)
    if s.priority_class_name:
        spec["priorityClassName"] = s.priority_class_name
    if s.volumes:
        spec["volumes"] = [*(spec.get("volumes") or []), *copy.deepcopy(s.volumes)]
    for c in spec.get("containers") or []:
        if c.get("name") not in own:
            continue
        if s.image_pull_policy:
            c["imagePullPolicy"] = s.image_pull_policy
        if s.env:
            env = [e for e in c.get("env") or [] if e.get("name") not in s.env]
            for name, value in s.env.items():
                env.append({"name": name, "value": value} if isinstance(value, str) else {"name": name, **value})
            c["env"] = env
        if s.volume_mounts:
            c["volumeMounts"] = [*(c.get("volumeMounts") or []), *(m.to_k8s() for m in s.volume_mounts)]


def strategic_merge(target: JSON, patch: JSON, *, own_containers: Sequence[str] = (), where: str = "patch") -> JSON:
    """``target`` with ``patch`` merged in (a copy): mappings recursively, ``null`` deletes, the lists of
    :data:`_MERGE_KEYS` item by item on their key, other lists replaced. A ``containers`` item without a
    name applies to each of ``own_containers``. A patch that would change an own container's command,
    args or image raises ConfigError naming ``where`` and the key."""
    out = copy.deepcopy(target)
    _merge_map(out, patch, where, list(own_containers))
    return out


def _merge_map(target: JSON, patch: JSON, path: str, own: list[str]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_map(target[key], value, f"{path}.{key}", own)
        elif isinstance(value, list) and key in _MERGE_KEYS and isinstance(target.get(key), list):
            _merge_list(target[key], value, _MERGE_KEYS[key], f"{path}.{key}", own if key == "containers" else [])
        else:
            target[key] = copy.deepcopy(value)


def _merge_list(target: list[Any], patch: list[Any], key: str, path: str, own: list[str]) -> None:
    for i, item in enumerate(patch):
        if not isinstance(item, dict):
            target.append(copy.deepcopy(item))
            continue
        name = item.get(key)
        if name is None and own:  # a container item without a name: every container nni-ts made
            matches = [t for t in target if isinstance(t, dict) and t.get(key) in own]
        else:
            matches = [t for t in target if isinstance(t, dict) and t.get(key) == name and name is not None]
        if not matches:
            target.append(copy.deepcopy(item))
            continue
        for t in matches:
            if t.get(key) in own:
                for refused in ("command", "args", "image"):
                    if refused in item and item[refused] != t.get(refused):
                        raise ConfigError(
                            f"{path}[{i}].{refused}: the container {t.get(key)!r} is nni-ts's own (it runs the trial "
                            "under the trial keeper); patch it without command, args or image, or give a sidecar "
                            "another name.",
                            path=f"{path}[{i}].{refused}",
                        )
            _merge_map(t, item, f"{path}[{i}]", [])


# ------------------------------------------------------------------ rebuilding a trial from its object


def _epoch_ms(stamp: Any) -> int | None:
    if not isinstance(stamp, str):
        return None
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def annotated_trial_id(obj: JSON) -> str | None:
    """The trial id a trial object carries (its ``nni-ts.io/trial-id`` annotation)."""
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_TRIAL)
    return str(value) if value else None


def recovered_detail(obj: JSON, *, namespace: str, plural: str, parameter_cfg: str | None) -> TrialJobDetail | None:
    """The trial a trial object of this experiment stands for, as a WAITING trial to re-attach to (its
    status, metrics and end come from re-attaching), or None if the object does not say enough (it was
    not made by nni-ts, or its parameters are neither on it nor in ``parameter_cfg``)."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    trial_id = annotations.get(ANNOTATION_TRIAL)
    sequence = annotations.get(ANNOTATION_SEQUENCE)
    value = annotations.get(ANNOTATION_PARAMETERS) or parameter_cfg
    if not trial_id or sequence is None or not str(sequence).isdigit() or not value:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("parameters"), dict):
        return None
    form = TrialJobApplicationForm(
        sequence_id=int(sequence), hyper_parameters=HyperParameters(value=value), trial_job_id=trial_id
    )
    detail = TrialJobDetail(
        id=trial_id,
        status=TrialJobStatus.WAITING,
        form=form,
        sequence_id=int(sequence),
        platform_data={"job": meta.get("name"), "namespace": namespace, "kind": plural, "attempt": 1},
    )
    created = _epoch_ms(meta.get("creationTimestamp"))
    if created is not None:
        detail.submit_time = created
    return detail
