"""Pod settings of the Kubernetes platforms: what a cluster's admins require of every pod (a node
selector, tolerations, affinity, a priority class, a service account, an image pull policy, extra env,
volumes and mounts, labels and annotations) and a free-form pod template patch for the rest.

The fields live on every Kubernetes platform's ``trainingService`` section (:class:`PlatformPodSettings`)
and, except labels, annotations and the service account, on each role (:class:`RolePodSettings`: a
kubeflow ``worker``/``ps``/``master``, a frameworkcontroller ``taskRoles[]`` item). A role's settings add
to the platform's: maps (``nodeSelector``, ``env``) are merged with the role's keys winning, lists
(``tolerations``, ``volumes``, ``volumeMounts``) are concatenated (platform first), single values
(``affinity``, ``priorityClassName``, ``imagePullPolicy``) are replaced, and the platform's
``podTemplatePatch`` is applied before the role's.

``podTemplatePatch`` is a strategic-merge-like patch of the pod template ``{metadata, spec}``: mappings
merge recursively, ``null`` deletes a key, lists of named things (``containers``, ``initContainers``,
``volumes``, ``env``, ``imagePullSecrets``...) merge item by item on their ``name`` (``volumeMounts`` on
``mountPath``), other lists are replaced. A ``containers`` item without a ``name`` applies to every
container nni-ts made (the trial's); one with a new name and an ``image`` adds a sidecar. What nni-ts
relies on is refused with an error naming the key: its containers' ``command``, ``args`` and ``image``,
the keeper's ``NNI_TS_*`` env, the storage volume and its mount, ``restartPolicy``,
``terminationGracePeriodSeconds`` and ``nni-ts.io/`` labels and annotations.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from .base import ConfigModel

__all__ = [
    "MAX_USER_ANNOTATIONS_BYTES",
    "RESERVED_MOUNT_PATHS",
    "RESERVED_PREFIX",
    "RESERVED_VOLUMES",
    "PlatformPodSettings",
    "RolePodSettings",
    "Toleration",
    "VolumeMount",
    "check_pod_patch",
]

#: Labels and annotations under this prefix are nni-ts's own.
RESERVED_PREFIX = "nni-ts.io/"
#: Volumes nni-ts puts in every pod (the shared storage; FrameworkController's barrier).
RESERVED_VOLUMES = frozenset({"nni-ts-storage", "frameworkbarrier-volume"})
RESERVED_MOUNT_PATHS = frozenset({"/nni-ts-storage", "/mnt/frameworkbarrier"})
#: The user's annotations may use this much of an object's 256 KiB; the parameters annotation has its
#: own bound (``nni_ts.platforms.kubernetes.podsettings.MAX_PARAMETERS_BYTES``) within the rest.
MAX_USER_ANNOTATIONS_BYTES = 64 * 1024

_NAME_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_KEEPER_ENV = "NNI_TS_"
_AFFINITY_KEYS = frozenset({"nodeAffinity", "podAffinity", "podAntiAffinity"})


def qualified_name_problem(key: Any) -> str | None:
    """Why ``key`` is not a valid label or annotation key (``[prefix/]name``), or None."""
    if not isinstance(key, str) or not key:
        return "a key must be a non-empty string"
    prefix, _, name = key.rpartition("/")
    if "/" in prefix:
        return "a key has at most one '/' (prefix/name)"
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "its prefix (before '/') must be a DNS subdomain such as example.com, lowercase"
    if len(name) > 63 or not _NAME_PART.match(name):
        return (
            "its name (after any prefix/) must be at most 63 letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit"
        )
    return None


def _check_keys(mapping: dict[str, Any], what: str, *, reserved: bool = True) -> None:
    for key in mapping:
        problem = qualified_name_problem(key)
        if problem is not None:
            raise ValueError(f"the {what} key {key!r} is not valid: {problem}")
        if reserved and key.startswith(RESERVED_PREFIX):
            raise ValueError(f"the {what} key {key!r} is nni-ts's own ({RESERVED_PREFIX}...): choose another prefix")


def _string(what: str) -> Any:
    def check(value: Any) -> Any:
        if not isinstance(value, str):
            shown = json.dumps(value) if not isinstance(value, dict | list) else type(value).__name__
            raise ValueError(f'{what} values are strings: quote it in YAML ("{shown}" rather than {shown})')
        return value

    return BeforeValidator(check)


def _label_value(value: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(
            "a label value must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
            "letter or digit (or empty)"
        )
    return value


LabelValue = Annotated[str, _string("label"), Field(description="A label value.")]
AnnotationValue = Annotated[str, _string("annotation")]


def _check_labels(value: dict[str, str], what: str = "label") -> dict[str, str]:
    _check_keys(value, what)
    for key, v in value.items():
        try:
            _label_value(v)
        except ValueError as exc:
            raise ValueError(f"{what} {key}={v!r}: {exc}") from None
    return value


class Toleration(ConfigModel):
    """One toleration of the pods (as in a PodSpec)."""

    key: str | None = Field(None, description="The taint key; empty with operator Exists tolerates every taint.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Equal (the value must match) or Exists.")
    value: str | None = Field(None, description="The taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="The taint effect to tolerate; unset tolerates every effect."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="How long a NoExecute taint is tolerated before the pod is evicted."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.operator == "Equal" and not self.key:
            raise ValueError("a toleration without a key must use operator: Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds is only for effect: NoExecute")
        if self.key is not None:
            problem = qualified_name_problem(self.key)
            if problem is not None:
                raise ValueError(f"the toleration key {self.key!r} is not valid: {problem}")
        return self

    def to_k8s(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class VolumeMount(ConfigModel):
    """Where a volume of ``volumes`` is mounted in the trial's containers."""

    name: str = Field(description="The volume's name (one of volumes).")
    mount_path: str = Field(description="The absolute path in the container.")
    read_only: bool | None = Field(None, description="Mount it read-only.")
    sub_path: str | None = Field(None, description="A path inside the volume to mount instead of its root.")

    @field_validator("mount_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("mountPath must be an absolute path")
        if v.rstrip("/") in RESERVED_MOUNT_PATHS:
            raise ValueError(f"{v} is where nni-ts mounts its own volume: choose another mountPath")
        return v

    def to_k8s(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _check_env(value: dict[str, Any]) -> dict[str, Any]:
    for name, v in value.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"the env name {name!r} is not valid: letters, digits, '_', '-' and '.'")
        if name.startswith(_KEEPER_ENV):
            raise ValueError(f"the env name {name!r} is the trial keeper's ({_KEEPER_ENV}...): choose another name")
        if isinstance(v, dict):
            if set(v) != {"valueFrom"} or not isinstance(v["valueFrom"], dict):
                raise ValueError(
                    f"env {name}: expected a string, or a mapping with only valueFrom (secretKeyRef, "
                    "configMapKeyRef, fieldRef or resourceFieldRef)"
                )
        elif not isinstance(v, str):
            shown = json.dumps(v)
            raise ValueError(f'env {name}: values are strings: quote it in YAML ("{shown}" rather than {shown})')
    return value


def _check_volumes(value: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    for i, vol in enumerate(value):
        name = vol.get("name")
        if not isinstance(name, str) or not _DNS_LABEL.match(name):
            raise ValueError(f"volumes[{i}] needs a name: a DNS label (lowercase letters, digits, '-')")
        if name in RESERVED_VOLUMES:
            raise ValueError(f"volumes[{i}]: the name {name!r} is nni-ts's own volume: choose another name")
        if name in seen:
            raise ValueError(f"volumes[{i}]: the name {name!r} is used twice")
        seen.add(name)
        sources = [k for k in vol if k != "name"]
        if len(sources) != 1:
            raise ValueError(
                f"volumes[{i}] ({name}) needs exactly one source besides its name (emptyDir, configMap, secret, "
                f"persistentVolumeClaim, hostPath, nfs...); got {sources or 'none'}"
            )
    return value


def _check_affinity(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None:
        unknown = sorted(set(value) - _AFFINITY_KEYS)
        if unknown:
            raise ValueError(
                f"unknown affinity key(s) {', '.join(unknown)}: expected nodeAffinity, podAffinity or podAntiAffinity"
            )
    return value


class RolePodSettings(ConfigModel):
    """Pod settings that may differ per role (the module docstring says how they combine)."""

    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, description="Node labels the pods must run on (a PodSpec nodeSelector)."
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the pods tolerate.")
    affinity: dict[str, Any] | None = Field(
        None, description="The pods' affinity (nodeAffinity, podAffinity, podAntiAffinity), as in a PodSpec."
    )
    priority_class_name: str | None = Field(None, description="The pods' PriorityClass.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="The trial containers' imagePullPolicy; default the cluster's."
    )
    env: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra environment variables of the trial containers: NAME: value, or NAME: {valueFrom: ...} "
        "(secretKeyRef, configMapKeyRef...). NNI_TS_* names are the keeper's and refused.",
    )
    volumes: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra volumes of the pods, as in a PodSpec (name and one source)."
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list, description="Where the trial containers mount volumes (of this or the platform section)."
    )
    pod_template_patch: dict[str, Any] | None = Field(
        None,
        description="A strategic-merge-like patch of the pods' template ({metadata, spec}) for anything else; see "
        "docs/kubernetes.md, Pod settings. What nni-ts relies on (its containers' command, the keeper's env, the "
        "storage volume, restartPolicy) is refused.",
    )

    _selector = field_validator("node_selector")(classmethod(lambda cls, v: _check_labels(v, "nodeSelector")))
    _env = field_validator("env")(classmethod(lambda cls, v: _check_env(v)))
    _volumes = field_validator("volumes")(classmethod(lambda cls, v: _check_volumes(v)))
    _affinity = field_validator("affinity")(classmethod(lambda cls, v: _check_affinity(v)))

    @field_validator("priority_class_name")
    @classmethod
    def _priority(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 253 or not _DNS_SUBDOMAIN.match(v)):
            raise ValueError(f"priorityClassName {v!r} must be a lowercase DNS subdomain (letters, digits, '-', '.')")
        return v

    @field_validator("pod_template_patch", mode="before")
    @classmethod
    def _patch(cls, v: Any) -> Any:
        if v is not None:
            check_pod_patch(v)
        return v

    def has_pod_settings(self) -> bool:
        """Whether any pod setting is given here."""
        return any(getattr(self, n) for n in RolePodSettings.model_fields)


class PlatformPodSettings(RolePodSettings):
    """Pod settings of every pod of every trial, and the trial objects' labels and annotations."""

    service_account_name: str | None = Field(
        None, description="The pods' service account (frameworkcontroller had it first; every platform has it now)."
    )
    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="Labels of every trial object and its pods (nni-ts.io/ keys are nni-ts's own).",
    )
    annotations: dict[str, AnnotationValue] = Field(
        default_factory=dict,
        description="Annotations of every trial object and its pods (nni-ts.io/ keys are nni-ts's own; at most "
        "64 KiB in all).",
    )

    _labels = field_validator("labels")(classmethod(lambda cls, v: _check_labels(v)))

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str]) -> dict[str, str]:
        _check_keys(v, "annotation")
        size = sum(len(k.encode()) + len(x.encode()) for k, x in v.items())
        if size > MAX_USER_ANNOTATIONS_BYTES:
            raise ValueError(
                f"the annotations take {size} bytes; at most {MAX_USER_ANNOTATIONS_BYTES} are allowed (an object's "
                "annotations are limited to 256 KiB, and nni-ts keeps the trial's parameters there too)"
            )
        return v

    @field_validator("service_account_name")
    @classmethod
    def _account(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 253 or not _DNS_SUBDOMAIN.match(v)):
            raise ValueError(f"serviceAccountName {v!r} must be a lowercase DNS subdomain (letters, digits, '-', '.')")
        return v

    @model_validator(mode="after")
    def _mounts_name_volumes(self) -> PlatformPodSettings:
        own = {str(v["name"]) for v in self.volumes}
        for i, mount in enumerate(self.volume_mounts):
            if mount.name not in own:
                raise ValueError(f"volumeMounts[{i}] mounts {mount.name!r}, which is not one of volumes")
        for name, value in self:
            alias = type(self).model_fields[name].alias or name
            roles = [(f"{alias}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(alias, value)]
            for where, role in roles:
                if not isinstance(role, RolePodSettings) or role is self:
                    continue
                names = own | {str(v["name"]) for v in role.volumes}
                clash = own & {str(v["name"]) for v in role.volumes}
                if clash:
                    raise ValueError(
                        f"{where}.volumes: the volume {sorted(clash)[0]!r} is also a platform-level volume"
                    )
                for i, mount in enumerate(role.volume_mounts):
                    if mount.name not in names:
                        raise ValueError(
                            f"{where}.volumeMounts[{i}] mounts {mount.name!r}, which is not one of the role's or the "
                            "platform's volumes"
                        )
        return self

    def role_settings(self, role: str | None) -> tuple[str, RolePodSettings] | None:
        """The key path (``worker``, ``taskRoles[1]``) and the pod settings of ``role`` (a pod template's
        role label: a kubeflow replica type, a frameworkcontroller task role's name), if this platform's
        config has such a role section."""
        if role is None:
            return None
        for name, value in self:
            alias = type(self).model_fields[name].alias or name
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, RolePodSettings) and getattr(item, "name", None) == role:
                        return f"{alias}[{i}]", item
        field = type(self).model_fields.get(role.lower())
        value = getattr(self, role.lower()) if field is not None else None
        if isinstance(value, RolePodSettings) and not isinstance(value, PlatformPodSettings):
            return field.alias or role.lower() if field is not None else role.lower(), value
        return None


# ------------------------------------------------------------------ the patch's checks

_SPEC_REFUSED = {
    "restartPolicy": "nni-ts runs each trial once (restartPolicy: Never)",
    "terminationGracePeriodSeconds": "set trainingService.cancelGracePeriod instead",
}
_CONTAINER_REFUSED = {
    "command": "nni-ts runs the trial through the trial keeper's launcher; set the trial command instead "
    "(trialCommand, or the role's command)",
    "args": "nni-ts runs the trial through the trial keeper's launcher; set the trial command instead "
    "(trialCommand, or the role's command)",
    "image": "set the role's dockerImage instead",
}


def _fail(path: str, message: str) -> None:
    raise ValueError(f"{path}: {message}")


def _check_meta_map(value: Any, path: str, labels: bool) -> None:
    if not isinstance(value, dict):
        _fail(path, "expected a mapping")
    for key, v in value.items():
        problem = qualified_name_problem(key)
        if problem is not None:
            _fail(f"{path}.{key}", f"not a valid key: {problem}")
        if key.startswith(RESERVED_PREFIX):
            _fail(f"{path}.{key}", f"{RESERVED_PREFIX} keys are nni-ts's own: choose another prefix")
        if v is None:
            continue
        if not isinstance(v, str):
            _fail(f"{path}.{key}", "values are strings: quote it in YAML")
        if labels:
            try:
                _label_value(v)
            except ValueError as exc:
                _fail(f"{path}.{key}", str(exc))


def _check_named_list(value: Any, path: str, key: str = "name") -> list[dict[str, Any]]:
    if not isinstance(value, list):
        _fail(path, "expected a list (it merges item by item on each item's name)")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            _fail(f"{path}[{i}]", "expected a mapping")
    return list(value)


def _check_container(item: dict[str, Any], path: str) -> None:
    sidecar = "image" in item and item.get("name") is not None
    for key, v in item.items():
        if v is None:
            _fail(f"{path}.{key}", "deleting a field of a container is not allowed here")
        if key in _CONTAINER_REFUSED and not sidecar:
            _fail(f"{path}.{key}", _CONTAINER_REFUSED[key])
    if "name" in item and not isinstance(item["name"], str):
        _fail(f"{path}.name", "expected a string")
    if "env" in item:
        for j, env in enumerate(_check_named_list(item["env"], f"{path}.env")):
            name = env.get("name")
            if not isinstance(name, str):
                _fail(f"{path}.env[{j}].name", "every env item needs a name")
            elif name.startswith(_KEEPER_ENV):
                _fail(f"{path}.env[{j}].name", f"{name} is the trial keeper's ({_KEEPER_ENV}...): choose another name")
    if "volumeMounts" in item:
        for j, mount in enumerate(_check_named_list(item["volumeMounts"], f"{path}.volumeMounts")):
            if mount.get("name") in RESERVED_VOLUMES:
                _fail(f"{path}.volumeMounts[{j}].name", f"{mount['name']} is nni-ts's own volume")
            if not isinstance(mount.get("mountPath"), str):
                _fail(f"{path}.volumeMounts[{j}].mountPath", "every volumeMounts item needs a mountPath")
            elif mount["mountPath"].rstrip("/") in RESERVED_MOUNT_PATHS:
                _fail(f"{path}.volumeMounts[{j}].mountPath", f"{mount['mountPath']} is where nni-ts mounts its volume")


def check_pod_patch(patch: Any) -> None:
    """Raise ValueError naming the key if ``patch`` is not a pod template patch nni-ts can apply."""
    if not isinstance(patch, dict):
        raise ValueError("podTemplatePatch: expected a mapping with metadata and/or spec (a pod template)")
    unknown = sorted(set(patch) - {"metadata", "spec"})
    if unknown:
        _fail(unknown[0], "a pod template has only metadata and spec (put pod fields under spec)")
    meta = patch.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            _fail("metadata", "expected a mapping")
        for key, value in meta.items():
            if key not in ("labels", "annotations"):
                _fail(f"metadata.{key}", "only labels and annotations of the pods may be patched")
            _check_meta_map(value, f"metadata.{key}", labels=key == "labels")
    spec = patch.get("spec")
    if spec is None:
        if "spec" in patch:
            _fail("spec", "the pod spec cannot be deleted")
        return
    if not isinstance(spec, dict):
        _fail("spec", "expected a mapping (a PodSpec's fields)")
    for key, reason in _SPEC_REFUSED.items():
        if key in spec:
            _fail(f"spec.{key}", reason)
    for key in ("containers", "initContainers", "volumes"):
        if key in spec and spec[key] is None:
            _fail(f"spec.{key}", "cannot be deleted")
    for i, item in enumerate(_check_named_list(spec.get("containers", []), "spec.containers")):
        _check_container(item, f"spec.containers[{i}]")
    for i, item in enumerate(_check_named_list(spec.get("initContainers", []), "spec.initContainers")):
        if not isinstance(item.get("name"), str):
            _fail(f"spec.initContainers[{i}].name", "every init container needs a name")
        if item["name"] == "frameworkbarrier":
            _fail(f"spec.initContainers[{i}].name", "frameworkbarrier is nni-ts's own init container")
    for i, vol in enumerate(_check_named_list(spec.get("volumes", []), "spec.volumes")):
        if not isinstance(vol.get("name"), str):
            _fail(f"spec.volumes[{i}].name", "every volume needs a name")
        if vol["name"] in RESERVED_VOLUMES:
            _fail(f"spec.volumes[{i}].name", f"{vol['name']} is nni-ts's own volume (the shared storage)")
