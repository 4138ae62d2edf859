"""Turning what a user posts into an experiment config the service may run, and hiding secrets.

The service, not the user, decides where an experiment's files live (its workspace's directory),
which platform runs it (the service's), and which Kubernetes namespace it uses (one per workspace).
Paths a user names must stay inside their workspace; custom tuner classes (code that would run
inside the service) are for admins only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from ..config.experiment import ExperimentConfig
from ..config.loader import config_from_dict
from ..config.v1 import convert_v1, is_v1
from ..errors import ConfigError
from .users import NAME_PATTERN

__all__ = [
    "LegacyRequest",
    "PlatformPolicy",
    "prepare_config",
    "legacy_to_v2",
    "mask_command",
    "redact",
    "resource_need",
    "workspace_namespace",
]

_SECRET_KEY = re.compile(r"(?i)(passw(or)?d|passphrase|secret|token|credential|apikey|api_key|accesskey|privatekey)")
REDACTED = "***"
#: The Kubernetes platforms: each workspace's trials run in a namespace of its own.
_K8S = ("kubeflow", "frameworkcontroller", "kubernetes", "trainjob")


_COMMAND_KEY = re.compile(r"(?i)command$")
_TOKEN_SHAPES = [
    # --token=X, --db-password X, -api_key=X
    re.compile(
        r"(?i)(-{1,2}[\w-]*(?:passw(?:or)?d|passphrase|secret|token|credential|api[_-]?key|access[_-]?key)"
        r"[\w-]*(?:=|\s+))(?!-)[^\s'\"]+"
    ),
    # DB_PASSWORD=X, export API_TOKEN=X
    re.compile(
        r"(?i)(\b[\w]*(?:passw(?:or)?d|passphrase|secret|token|credential|api_?key|access_?key)[\w]*=)[^\s'\"]+"
    ),
    # scheme://user:password@host
    re.compile(r"(://[^/\s:@]+:)[^@\s/]+(?=@)"),
    # Authorization: Bearer X
    re.compile(r"(?i)(\bbearer\s+)[^\s'\"]+"),
    # well-known token prefixes, and long random-looking strings (32+ characters with letters and digits)
    re.compile(r"()\b(?:nts_|ghp_|gho_|ghs_|github_pat_|glpat-|xox[abprs]-|sk-|AKIA)[A-Za-z0-9_-]{8,}"),
    re.compile(r"()\b(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[A-Za-z])[A-Za-z0-9+/_-]{32,}={0,2}"),
]


def mask_command(text: str) -> str:
    """A command with token-shaped strings (``--token X``, ``PASSWORD=X``, ``nts_...``, long random
    strings, a URL's password) replaced by ``***``: for audit entries and shown configs."""
    for pattern in _TOKEN_SHAPES:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def redact(value: Any) -> Any:
    """A copy of ``value`` with every secret-looking key's value replaced by ``***`` and token-shaped
    strings masked in commands. Works on any depth (no recursion)."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        item, parent, slot = stack.pop()
        if isinstance(item, dict):
            out: Any = {}
            for k, v in item.items():
                if isinstance(k, str) and _SECRET_KEY.search(k):
                    out[k] = REDACTED
                elif isinstance(k, str) and _COMMAND_KEY.search(k) and isinstance(v, str):
                    out[k] = mask_command(v)
                else:
                    out[k] = None
                    stack.append((v, out, k))
        elif isinstance(item, list):
            out = [None] * len(item)
            stack.extend((v, out, i) for i, v in enumerate(item))
        else:
            out = item
        parent[slot] = out
    return root[0]


@dataclass
class PlatformPolicy:
    """How the service runs experiments: its platform and the settings every experiment inherits."""

    platform: str = "local"
    #: trainingService keys merged under each experiment's own (storage, nniManagerIp...).
    defaults: dict[str, Any] = field(default_factory=dict)
    #: ``{user}`` and ``{workspace}`` are replaced; the result is made a valid namespace name.
    namespace_template: str = "nni-{user}-{workspace}"


def workspace_namespace(template: str, user: str, workspace: str) -> str:
    """A DNS-1123 namespace name for a workspace (lower case, at most 63 characters)."""
    raw = template.format(user=user, workspace=workspace).lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-") or "nni"
    if len(name) > 63 or name != raw:
        digest = hashlib.sha256(f"{user}\0{workspace}".encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    return name


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


#: The bounds of a posted config's numbers (the service's own: a trial budget of 1e20 is a mistake).
MAX_TRIAL_NUMBER = 1_000_000
_INT_BOUNDS = {
    "trialConcurrency": (1, 10_000),
    "maxTrialNumber": (1, MAX_TRIAL_NUMBER),
    "maxFailedTrialNumber": (0, MAX_TRIAL_NUMBER),
    "trialGpuNumber": (0, 1024),
}


def check_no_nul(value: Any, source: str = "the request body") -> None:
    """No NUL character in any key or string (a process argument or PostgreSQL text cannot hold one)."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                sub = f"{path}.{k}" if path else str(k)
                if isinstance(k, str) and "\x00" in k:
                    raise ConfigError("a key holds a NUL character.", source=source, path=sub.replace("\x00", "\\0"))
                stack.append((v, sub))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, str) and "\x00" in item:
            raise ConfigError("the text holds a NUL character, which is not allowed.", source=source, path=path)


def _check_strict(data: dict[str, Any], source: str) -> None:
    """Counts are JSON integers within bounds: ``"2"``, ``true`` or ``1e20`` are refused, naming the key."""
    check_no_nul(data, source)
    for key, (low, high) in _INT_BOUNDS.items():
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"expected an integer, got {type(value).__name__} {str(value)[:40]!r}.", source=source, path=key
            )
        if value > high:  # too small: the config model says so, with every other problem
            raise ConfigError(f"expected an integer from {low} to {high}, got {value}.", source=source, path=key)


def prepare_config(
    raw: Any,
    *,
    user: str,
    is_admin: bool,
    workspace: str,
    workspace_dir: Path,
    policy: PlatformPolicy,
) -> ExperimentConfig:
    """Validate a posted config (v1 or v2) under the service's rules. Raises ConfigError (a 422)."""
    source = "the request body"
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a JSON object holding an NNI experiment config, got {type(raw).__name__}.")
    data = convert_v1(dict(raw), source=source) if is_v1(raw) else dict(raw)
    _check_strict(data, source)
    code_dir = workspace_dir / "code"
    if data.get("experimentWorkingDirectory") is not None:
        raise ConfigError(
            "the service decides where experiment files go; remove experimentWorkingDirectory.",
            source=source,
            path="experimentWorkingDirectory",
        )
    data["experimentWorkingDirectory"] = str(workspace_dir / "experiments")
    for key in ("trialCodeDirectory", "searchSpaceFile"):
        if data.get(key) is None:
            continue
        value = data[key]
        if not isinstance(value, str):
            continue  # the model reports the type
        path = Path(value) if Path(value).is_absolute() else code_dir / value
        if not is_admin and not _inside(path, workspace_dir):
            raise ConfigError(
                f"{value!r} is outside your workspace; paths must be inside the workspace's code directory.",
                source=source,
                path=key,
            )
        data[key] = str(path)
    data.setdefault("trialCodeDirectory", str(code_dir))
    for key in ("tuner", "assessor", "advisor"):
        algo = data.get(key)
        if isinstance(algo, dict) and not is_admin and (algo.get("className") or algo.get("codeDirectory")):
            raise ConfigError(
                "custom algorithm classes run inside the service and are allowed for admins only; "
                "use a built-in name such as TPE.",
                source=source,
                path=f"{key}.className",
            )
    ts = data.get("trainingService")
    if ts is None:
        ts = {"platform": policy.platform}
    if not isinstance(ts, dict):
        raise ConfigError("expected a mapping such as {platform: local}.", source=source, path="trainingService")
    platform = ts.get("platform", policy.platform)
    if platform != policy.platform:
        raise ConfigError(
            f"this service runs experiments on {policy.platform!r}, not {platform!r}.",
            source=source,
            path="trainingService.platform",
        )
    if not is_admin:
        _check_platform_keys(ts, policy, workspace_dir, code_dir, source)
    merged = {**policy.defaults, **ts, "platform": policy.platform}
    if policy.platform in _K8S:
        namespace = workspace_namespace(policy.namespace_template, user, workspace)
        if ts.get("namespace") not in (None, namespace) and not is_admin:
            raise ConfigError(
                f"the workspace's namespace is {namespace!r}; remove namespace or set it to that.",
                source=source,
                path="trainingService.namespace",
            )
        merged["namespace"] = ts.get("namespace") or namespace
    data["trainingService"] = merged
    code_dir.mkdir(parents=True, exist_ok=True)
    return config_from_dict(data, source=source, base_dir=code_dir)


#: Platform keys that reach the service's own credentials: only an admin may set them.
_ADMIN_KEYS = frozenset({"kubeconfig", "context", "clusterServerPort", "machineList"})
_PATH_SUFFIXES = ("File", "Path", "Directory", "Dir")


def _check_platform_keys(
    ts: dict[str, Any], policy: PlatformPolicy, workspace_dir: Path, code_dir: Path, source: str
) -> None:
    """A user may not override what the service's platform config sets, nor reach its credentials or
    files outside the workspace (a kubeconfig, SSH keys, registry secrets staged into the cluster)."""
    for key, value in ts.items():
        if key == "platform":
            continue
        if key in _ADMIN_KEYS:
            raise ConfigError(
                f"{key} is set by the service's administrator, not in an experiment.",
                source=source,
                path=f"trainingService.{key}",
            )
        if key in policy.defaults and value != policy.defaults[key]:
            raise ConfigError(
                f"{key} is set by the service for every experiment; remove it.",
                source=source,
                path=f"trainingService.{key}",
            )

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                sub_path = f"{path}.{key}"
                if isinstance(key, str) and key.endswith(_PATH_SUFFIXES) and isinstance(sub, str) and sub:
                    target = Path(sub) if Path(sub).is_absolute() else code_dir / sub
                    if not _inside(target, workspace_dir):
                        raise ConfigError(
                            f"{sub!r} is outside your workspace; paths must be inside the workspace's code directory.",
                            source=source,
                            path=sub_path,
                        )
                walk(sub, sub_path)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(ts, "trainingService")


def resource_need(config: ExperimentConfig) -> tuple[int, int]:
    """(concurrent trials, GPUs per trial) of a config, for quotas."""
    ts = config.training_service
    gpus = config.trial_gpu_number or ts.trial_gpu_number or 0
    roles: list[Any] = [getattr(ts, n, None) for n in ("worker", "ps", "master")]
    roles += list(getattr(ts, "task_roles", None) or [])
    role_gpus = 0
    for role in roles:
        if role is None:
            continue
        count = getattr(role, "replicas", None) or getattr(role, "task_number", None) or 1
        role_gpus += int(count) * int(getattr(role, "gpu_number", 0) or 0)
    return config.trial_concurrency, max(int(gpus), role_gpus)


class LegacyRequest(BaseModel):
    """The seeds' launcher body (``POST /api/v1/nni-exp``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    user: str = Field(pattern=NAME_PATTERN, description="The user name.")
    workspace: str = Field(pattern=NAME_PATTERN, description="The workspace name.")
    trail_concurrency: int | None = Field(
        None, alias="trailConcurrency", ge=1, le=1000, description="Concurrent trials (the seeds' spelling)."
    )
    trial_concurrency: int | None = Field(
        None, alias="trialConcurrency", ge=1, le=1000, description="Concurrent trials."
    )
    num: int = Field(ge=1, le=MAX_TRIAL_NUMBER, description="How many trials (maxTrialNumber).")
    target: Literal["maximize", "minimize"] = Field(description="The optimize mode.")
    command: str = Field(min_length=1, max_length=10000, description="The trial command.")
    gpu_num: int = Field(0, alias="gpuNum", ge=0, le=64, description="GPUs per trial.")
    search_space: dict[str, Any] = Field(description="The NNI search space.")
    image: str | None = Field(None, max_length=500, description="The trial image (Kubernetes platforms).")
    tuner: str = Field("TPE", max_length=100, description="A built-in tuner name.")
    cpu_num: float = Field(1, alias="cpuNum", gt=0, le=1024, description="CPUs per trial (Kubernetes platforms).")
    memory_mb: int = Field(4096, alias="memoryMB", ge=1, description="Memory per trial in MiB (Kubernetes platforms).")
    max_exec_duration: str | None = Field(None, alias="maxExecDuration", description="e.g. '1h'.")

    @property
    def concurrency(self) -> int:
        return self.trial_concurrency or self.trail_concurrency or 1


def parse_legacy(body: Any) -> LegacyRequest:
    """Validate the seeds' body (strict types: ``"2"`` or ``true`` is no integer); errors become
    ConfigError with the key path."""
    if not isinstance(body, dict):
        raise ConfigError("expected a JSON object with user, workspace, num, target, command and search_space.")
    check_no_nul(body)
    try:
        req = LegacyRequest.model_validate(body)
    except pydantic.ValidationError as exc:
        from ..config.errors import format_loc

        err = exc.errors(include_url=False)[0]
        loc = format_loc([p for p in err["loc"] if isinstance(p, str | int)])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{msg}.", source="the request body", path=loc) from None
    if req.trail_concurrency is not None and req.trial_concurrency is not None:
        raise ConfigError(
            "trailConcurrency (the seeds' spelling) and trialConcurrency are the same setting; give one of them.",
            source="the request body",
            path="trialConcurrency",
        )
    return req


def legacy_to_v2(req: LegacyRequest, policy: PlatformPolicy) -> dict[str, Any]:
    """The v2 config a seeds' body stands for, on the service's platform."""
    data: dict[str, Any] = {
        "experimentName": f"{req.user}-{req.workspace}",
        "searchSpace": req.search_space,
        "trialCommand": req.command,
        "trialConcurrency": req.concurrency,
        "maxTrialNumber": req.num,
        "trialGpuNumber": req.gpu_num,
        "tuner": {"name": req.tuner, "classArgs": {"optimize_mode": req.target}},
    }
    if req.max_exec_duration:
        data["maxExperimentDuration"] = req.max_exec_duration
    ts: dict[str, Any] = {"platform": policy.platform}
    role = {
        "command": req.command,
        "gpuNumber": req.gpu_num,
        "cpuNumber": req.cpu_num,
        "memorySize": req.memory_mb,
    }
    if req.image:
        role["dockerImage"] = req.image
    if policy.platform == "kubeflow" and "worker" not in policy.defaults and "master" not in policy.defaults:
        ts["worker"] = {"replicas": 1, **role}
    elif policy.platform == "frameworkcontroller" and "taskRoles" not in policy.defaults:
        ts["taskRoles"] = [{"name": "worker", "taskNumber": 1, **role}]
    elif policy.platform == "trainjob" and "trainer" not in policy.defaults:
        resources = {"cpuNumber": req.cpu_num, "memorySize": req.memory_mb, "gpuNumber": req.gpu_num}
        ts["trainer"] = {"numNodes": 1, "resourcesPerNode": resources}
        if req.image:
            ts["trainer"]["image"] = req.image
    elif policy.platform == "kubernetes":  # no roles: the pod's keys are the platform's own
        ts.update({k: v for k, v in role.items() if k not in policy.defaults})
    data["trainingService"] = ts
    return data
