"""The platform registry: entry points of the group ``nni_ts.platforms``, loaded lazily.

A third-party platform registers itself in its own package metadata::

    [options.entry_points]
    nni_ts.platforms =
        myplatform = my_package.module:MyTrainingService

and then works everywhere a built-in one does (``trainingService.platform: myplatform``).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .training_service import TrainingService

__all__ = [
    "BUILTIN_PLATFORMS",
    "ENTRY_POINT_GROUP",
    "available_platforms",
    "get_platform_class",
    "register_platform",
]

ENTRY_POINT_GROUP = "nni_ts.platforms"

_registered: dict[str, type[TrainingService[Any]]] = {}
_loaded: dict[str, type[TrainingService[Any]]] = {}  # entry points already loaded (a scan costs ~10 ms)


#: The platforms nni-ts itself ships, as setup.cfg registers them: found even when the installed package
#: metadata is older than the code (an editable install made before a platform was added).
BUILTIN_PLATFORMS = {
    "local": "nni_ts.platforms.local:LocalTrainingService",
    "remote": "nni_ts.platforms.remote:RemoteTrainingService",
    "kubeflow": "nni_ts.platforms.kubernetes.kubeflow:KubeflowTrainingService",
    "frameworkcontroller": "nni_ts.platforms.kubernetes.frameworkcontroller:FrameworkControllerTrainingService",
    "kubernetes": "nni_ts.platforms.kubernetes.batchjob:KubernetesJobTrainingService",
    "trainjob": "nni_ts.platforms.kubernetes.trainjob:TrainJobTrainingService",
}


def _entry_points() -> dict[str, EntryPoint]:
    found = {
        name: EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP) for name, value in BUILTIN_PLATFORMS.items()
    }
    found.update({ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)})
    return found


def available_platforms() -> list[str]:
    """The names of every installed platform, sorted."""
    return sorted(set(_entry_points()) | set(_registered))


def register_platform(name: str, cls: type[TrainingService[Any]]) -> None:
    """Register a platform class at run time (tests, notebooks). Entry points are the usual way."""
    _registered[name] = cls


def get_platform_class(name: str) -> type[TrainingService[Any]]:
    """The TrainingService class registered under ``name``. Unknown names raise ConfigError."""
    if name in _registered:
        return _registered[name]
    if name in _loaded:
        return _loaded[name]
    ep = _entry_points().get(name)
    if ep is None:
        known = ", ".join(available_platforms()) or "none"
        raise ConfigError(
            f"no platform is registered under the name {name!r}; installed platforms: {known}.",
            path="trainingService.platform",
        )
    try:
        cls = ep.load()
    except ImportError as exc:
        raise ConfigError(
            f"the platform {name!r} is registered by {ep.value} but cannot be imported: {exc}. "
            "Install its optional dependencies.",
            path="trainingService.platform",
        ) from exc
    from .training_service import TrainingService

    if not (isinstance(cls, type) and issubclass(cls, TrainingService)):
        raise ConfigError(f"the entry point {name!r} ({ep.value}) is not a TrainingService subclass.")
    _loaded[name] = cls
    return cls
