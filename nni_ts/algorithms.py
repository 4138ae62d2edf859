"""Custom tuners and assessors registered under a name (``nni-ts algo register``, as ``nnictl algo``),
and the ``nni`` module the manager needs to load classes written for NNI.

A registration reads NNI's meta file (``algoType``, ``builtinName``, ``className``, optional
``classArgsValidator``; one algorithm, or a list under ``algorithms``) and is kept in
``$NNI_TS_HOME/algorithms.json``. A config then names the algorithm like a built-in one
(``tuner: {name: demotuner}``); the experiment loads its ``className`` (from the meta file's directory
if the module is not installed).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, UserError

__all__ = ["ensure_nni_importable", "get", "list_all", "register", "resolve", "unregister"]

_TYPES = ("tuner", "assessor", "advisor")


def ensure_nni_importable() -> None:
    """Make ``import nni`` work in this process: the real NNI if installed, else nni-ts's light module.

    Custom tuners and assessors written for NNI import ``nni.tuner``, ``nni.assessor`` and ``nni.utils``.
    """
    if "nni" in sys.modules or importlib.util.find_spec("nni") is not None:
        return
    import trial_keeper

    if trial_keeper.LIGHT_NNI_PATH not in sys.path:
        sys.path.append(trial_keeper.LIGHT_NNI_PATH)


def _file() -> Path:
    from .paths import home

    return home() / "algorithms.json"


def _load() -> dict[str, dict[str, Any]]:
    path = _file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path} is damaged ({exc}); delete it and register the algorithms again.") from None
    return {str(k).lower(): v for k, v in data.items()} if isinstance(data, dict) else {}


def _save(data: dict[str, dict[str, Any]]) -> None:
    path = _file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _builtin_names() -> dict[str, str]:
    from .tuners import SUPPORTED_ASSESSORS, SUPPORTED_TUNERS

    names = {n.lower(): "tuner" for n in SUPPORTED_TUNERS}
    names.update({n.lower(): "assessor" for n in SUPPORTED_ASSESSORS})
    return names


def _importable(class_name: str, directory: str | None) -> None:
    module_name, _, attr = class_name.rpartition(".")
    if not module_name:
        raise UserError(f"className {class_name!r} must be 'module.ClassName' (for example demo_tuner.DemoTuner).")
    ensure_nni_importable()
    added = directory is not None and directory not in sys.path
    if added:
        sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"Cannot import {module_name} for {class_name}: {exc}.") from None
    finally:
        if added:
            sys.path.remove(str(directory))
    if not isinstance(getattr(module, attr, None), type):
        raise UserError(f"{module_name} has no class {attr}.")


def register(meta_path: Path) -> list[dict[str, Any]]:
    """Register every algorithm of an NNI meta file. Returns what was registered."""
    from .config.loader import read_structured_file

    try:
        content, _ = read_structured_file(meta_path, what="algorithm meta")
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    metas = content.get("algorithms") if isinstance(content, dict) and "algorithms" in content else [content]
    if not isinstance(metas, list):
        raise UserError(f"{meta_path}: 'algorithms' must be a list.")
    data = _load()
    builtins = _builtin_names()
    done = []
    for i, meta in enumerate(metas):
        where = f"{meta_path}" + (f", algorithm {i + 1}" if len(metas) > 1 else "")
        if not isinstance(meta, dict):
            raise UserError(f"{where}: expected a mapping with algoType, builtinName and className.")
        missing = [k for k in ("algoType", "builtinName", "className") if not meta.get(k)]
        if missing:
            raise UserError(f"{where}: {', '.join(missing)} missing (NNI's meta file keys).")
        if meta["algoType"] not in _TYPES:
            raise UserError(f"{where}: algoType must be one of {', '.join(_TYPES)}, got {meta['algoType']!r}.")
        name = str(meta["builtinName"])
        if name.lower() in builtins:
            raise UserError(f"{where}: {name} is a built-in {builtins[name.lower()]}; choose another builtinName.")
        directory = str(meta_path.resolve().parent)
        # The module may be installed (NNI's way: `pip install -e .`) or lie beside the meta file.
        try:
            _importable(str(meta["className"]), None)
            code_directory = None
        except UserError:
            _importable(str(meta["className"]), directory)
            code_directory = directory
        entry = {
            "builtinName": name,
            "algoType": meta["algoType"],
            "className": str(meta["className"]),
            "codeDirectory": code_directory,
            "classArgsValidator": meta.get("classArgsValidator"),
        }
        data[name.lower()] = entry
        done.append(entry)
    _save(data)
    return done


def unregister(name: str) -> None:
    data = _load()
    if name.lower() in _builtin_names():
        raise UserError(f"{name} is built into nni-ts; it cannot be unregistered.")
    if name.lower() not in data:
        raise UserError(f"No algorithm named {name!r} is registered (see `nni-ts algo list`).")
    del data[name.lower()]
    _save(data)


def get(name: str) -> dict[str, Any] | None:
    return _load().get(name.lower())


def list_all() -> list[dict[str, Any]]:
    """Built-in algorithms, then registered ones."""
    rows = [{"builtinName": n, "algoType": t, "source": "nni-ts"} for n, t in _builtin_original_names()]
    rows += [dict(m, source="user") for m in _load().values()]
    return rows


def _builtin_original_names() -> list[tuple[str, str]]:
    from .tuners import SUPPORTED_ASSESSORS, SUPPORTED_TUNERS

    return [(n, "tuner") for n in SUPPORTED_TUNERS] + [(n, "assessor") for n in SUPPORTED_ASSESSORS]


def resolve(name: str | None, kind: str) -> dict[str, Any] | None:
    """The registration behind a config's ``name`` for a ``kind`` (tuner, assessor), or None.

    A built-in name always means the built-in. An advisor registration serves as a tuner too.
    """
    if name is None or name.lower() in _builtin_names():
        return None
    meta = _load().get(name.lower())
    if meta is None:
        return None
    allowed = ("tuner", "advisor") if kind == "tuner" else (kind,)
    if meta.get("algoType") not in allowed:
        raise ConfigError(
            f"{meta['builtinName']} is registered as a {meta.get('algoType')}, not a {kind}.", path=f"{kind}.name"
        )
    return meta
