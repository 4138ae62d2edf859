"""NNI search spaces: validation with precise paths, and sampling with NNI's exact semantics.

A search space maps parameter names to ``{"_type": ..., "_value": ...}``:

=============  ======================  ===================================================
_type          _value                  a sample
=============  ======================  ===================================================
choice         [v1, v2, ...]           one of the values; dicts with ``_name`` are nested
                                       spaces, sampled to ``{"_name": ..., <sub-params>}``
randint        [lower, upper)          an int, upper excluded
uniform        [low, high]             a float
quniform       [low, high, q]          clip(round(uniform / q) * q, low, high)
loguniform     [low, high]             exp(uniform(log low, log high)); 0 < low
qloguniform    [low, high, q]          clip(round(loguniform / q) * q, low, high)
normal         [mu, sigma]             a float; 0 < sigma
qnormal        [mu, sigma, q]          round(normal / q) * q
lognormal      [mu, sigma]             exp(normal(mu, sigma))
qlognormal     [mu, sigma, q]          round(lognormal / q) * q
=============  ======================  ===================================================
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import SearchSpaceError

if TYPE_CHECKING:
    import optuna

__all__ = ["SPACE_TYPES", "grid", "q_round", "sample_random", "suggest", "validate_search_space"]

SPACE_TYPES = (
    "choice", "randint", "uniform", "quniform", "loguniform", "qloguniform",
    "normal", "qnormal", "lognormal", "qlognormal",
)  # fmt: skip

_ARITY = {
    "randint": 2, "uniform": 2, "quniform": 3, "loguniform": 2, "qloguniform": 3,
    "normal": 2, "qnormal": 3, "lognormal": 2, "qlognormal": 3,
}  # fmt: skip
_SHAPE = {
    "randint": "[lower, upper) with integers (not 1.0 but 1) lower < upper",
    "uniform": "[low, high] with low < high",
    "quniform": "[low, high, q] with low < high and q > 0",
    "loguniform": "[low, high] with 0 < low < high",
    "qloguniform": "[low, high, q] with 0 < low < high and q > 0",
    "normal": "[mu, sigma] with sigma > 0",
    "qnormal": "[mu, sigma, q] with sigma > 0 and q > 0",
    "lognormal": "[mu, sigma] with sigma > 0",
    "qlognormal": "[mu, sigma, q] with sigma > 0 and q > 0",
}


def _fail(path: str, message: str, source: str | None) -> SearchSpaceError:
    return SearchSpaceError(message, source=source, path=path)


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def validate_search_space(space: object, *, source: str | None = None, path: str = "searchSpace") -> dict[str, Any]:
    """Check a search space; raise SearchSpaceError naming the key path of the first problem."""
    if not isinstance(space, dict):
        raise _fail(
            path, f"expected a mapping of parameter names to {{_type, _value}}, got {type(space).__name__}.", source
        )
    if not space:
        raise _fail(path, "the search space is empty; give at least one parameter.", source)
    for name, spec in space.items():
        _validate_param(str(name), spec, f"{path}.{name}", source)
    return space


def _validate_param(name: str, spec: Any, path: str, source: str | None) -> None:
    if not isinstance(spec, dict):
        raise _fail(path, f"expected {{_type: ..., _value: ...}}, got {type(spec).__name__}.", source)
    unknown = set(spec) - {"_type", "_value"}
    if unknown:
        raise _fail(path, f"unknown keys {sorted(unknown)}; a parameter has only _type and _value.", source)
    kind = spec.get("_type")
    if kind not in SPACE_TYPES:
        raise _fail(f"{path}._type", f"expected one of {', '.join(SPACE_TYPES)}, got {kind!r}.", source)
    if "_value" not in spec:
        raise _fail(path, "_value is missing.", source)
    value = spec["_value"]
    vpath = f"{path}._value"
    if not isinstance(value, list):
        raise _fail(vpath, f"expected a list, got {type(value).__name__}.", source)
    if kind == "choice":
        if not value:
            raise _fail(vpath, "a choice needs at least one value.", source)
        nested = [isinstance(v, dict) and "_name" in v for v in value]
        for i, (item, is_nested) in enumerate(zip(value, nested, strict=True)):
            if is_nested:
                sub = {k: v for k, v in item.items() if k != "_name"}
                for sub_name, sub_spec in sub.items():
                    _validate_param(sub_name, sub_spec, f"{vpath}[{i}].{sub_name}", source)
        for i, item in enumerate(value):
            bad = _not_json(item)
            if bad is not None:
                raise _fail(
                    f"{vpath}[{i}]",
                    f"a choice holds JSON values only (numbers, strings, booleans, null, lists, mappings), "
                    f"got {bad}: a trial receives its parameters as JSON.",
                    source,
                )
        names = [v["_name"] for v, n in zip(value, nested, strict=True) if n]
        if len(names) != len(set(map(str, names))):
            raise _fail(vpath, "nested choices must have distinct _name values.", source)
        return
    arity = _ARITY[kind]
    if len(value) != arity or not all(_number(x) for x in value):
        raise _fail(vpath, f"{kind} expects {_SHAPE[kind]}, got {value!r}.", source)
    a, b = value[0], value[1]
    q = value[2] if arity == 3 else None
    if kind == "randint":
        if not all(isinstance(x, int) for x in value) or a >= b:  # NNI refuses 1.0 as well
            raise _fail(vpath, f"randint expects {_SHAPE[kind]}, got {value!r}.", source)
    elif kind in ("uniform", "quniform", "loguniform", "qloguniform"):
        if a >= b or (kind.endswith("loguniform") and a <= 0):
            raise _fail(vpath, f"{kind} expects {_SHAPE[kind]}, got {value!r}.", source)
    elif b <= 0:
        raise _fail(vpath, f"{kind} expects {_SHAPE[kind]}, got {value!r}.", source)
    if q is not None and q <= 0:
        raise _fail(vpath, f"{kind} expects {_SHAPE[kind]}, got {value!r}.", source)


def _not_json(value: Any) -> str | None:
    """None if ``value`` is a JSON value; else a description of the first part that is not."""
    if value is None or isinstance(value, bool | int | str):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else repr(value)
    if isinstance(value, list | tuple):
        return next((bad for bad in map(_not_json, value) if bad is not None), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"a mapping with the non-string key {key!r}"
            bad = _not_json(item)
            if bad is not None:
                return bad
        return None
    return f"an object of type {type(value).__name__} ({value!r:.60})"


# ---------------------------------------------------------------------- shared rounding


def q_round(x: float, q: float) -> float:
    """``round(x / q) * q`` with ties to even (numpy's ``round``, as NNI uses)."""
    return round(x / q) * q


def _finish(kind: str, raw: float, value: list[Any]) -> float | int:
    """Apply NNI's rounding and clipping to a raw draw of the base distribution."""
    if kind in ("quniform", "qloguniform"):
        low, high, q = value
        return float(min(max(q_round(raw, q), low), high))
    if kind in ("qnormal", "qlognormal"):
        return float(q_round(raw, value[2]))
    return raw


# ---------------------------------------------------------------------- random sampling


def sample_random(space: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One random sample with NNI's semantics (what NNI's Random tuner does)."""
    return {name: _sample_param(spec, rng) for name, spec in space.items()}


def _sample_param(spec: dict[str, Any], rng: random.Random) -> Any:
    kind, value = spec["_type"], spec["_value"]
    if kind == "choice":
        item = value[rng.randrange(len(value))]
        if isinstance(item, dict) and "_name" in item:
            sub = {k: v for k, v in item.items() if k != "_name"}
            return {"_name": item["_name"], **sample_random(sub, rng)} if sub else {"_name": item["_name"]}
        return item
    if kind == "randint":
        return rng.randrange(int(value[0]), int(value[1]))
    if kind in ("uniform", "quniform"):
        raw = rng.uniform(value[0], value[1])
    elif kind in ("loguniform", "qloguniform"):
        raw = math.exp(rng.uniform(math.log(value[0]), math.log(value[1])))
    elif kind in ("normal", "qnormal"):
        raw = rng.gauss(value[0], value[1])
    else:  # lognormal, qlognormal
        raw = math.exp(rng.gauss(value[0], value[1]))
    return _finish(kind, raw, value)


# ---------------------------------------------------------------------- Optuna (define-by-run)


def suggest(space: dict[str, Any], trial: optuna.trial.BaseTrial, *, prefix: str = "") -> dict[str, Any]:
    """Sample ``space`` through an Optuna trial, with the same NNI semantics.

    Parameters of nested choices get prefixed names (``optimizer/sgd/lr``) so that they never clash.
    Choices of values that are not plain scalars are suggested by index. Normal-family parameters,
    which Optuna has no distribution for, are sampled through the inverse CDF of a uniform
    suggestion, so that model-based samplers still see them.
    """
    out: dict[str, Any] = {}
    for name, spec in space.items():
        out[name] = _suggest_param(f"{prefix}{name}", spec, trial)
    return out


def _plain(values: list[Any]) -> bool:
    return all(v is None or isinstance(v, bool | int | float | str) for v in values)


def _suggest_param(name: str, spec: dict[str, Any], trial: optuna.trial.BaseTrial) -> Any:
    kind, value = spec["_type"], spec["_value"]
    if kind == "choice":
        nested = any(isinstance(v, dict) and "_name" in v for v in value)
        if _plain(value) and not nested:
            return trial.suggest_categorical(name, value)
        index = trial.suggest_categorical(f"{name}/index", list(range(len(value))))
        item = value[int(index)]
        if isinstance(item, dict) and "_name" in item:
            sub = {k: v for k, v in item.items() if k != "_name"}
            return {"_name": item["_name"], **suggest(sub, trial, prefix=f"{name}/{item['_name']}/")}
        return item
    if kind == "randint":
        return trial.suggest_int(name, int(value[0]), int(value[1]) - 1)
    if kind == "uniform":
        return trial.suggest_float(name, value[0], value[1])
    if kind == "loguniform":
        return trial.suggest_float(name, value[0], value[1], log=True)
    if kind == "quniform":
        return _finish(kind, trial.suggest_float(name, value[0], value[1]), value)
    if kind == "qloguniform":
        return _finish(kind, trial.suggest_float(name, value[0], value[1], log=True), value)
    # normal family: inverse CDF of a uniform draw in (0, 1)
    u = trial.suggest_float(f"{name}/u", 1e-9, 1 - 1e-9)
    raw = value[0] + value[1] * math.sqrt(2) * _erfinv(2 * u - 1)
    if kind in ("lognormal", "qlognormal"):
        raw = math.exp(raw)
    return _finish(kind, raw, value)


def _erfinv(y: float) -> float:
    """The inverse error function, by Newton's method from a good start (no SciPy needed)."""
    if y <= -1 or y >= 1:
        raise ValueError("erfinv is defined on (-1, 1)")
    a = 0.147
    ln = math.log(1 - y * y)
    t = 2 / (math.pi * a) + ln / 2
    x = math.copysign(math.sqrt(math.sqrt(t * t - ln / a) - t), y)
    for _ in range(3):
        err = math.erf(x) - y
        x -= err / (2 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


# ---------------------------------------------------------------------- grid


def _grid_values(name: str, spec: dict[str, Any], path: str) -> list[Any]:
    kind, value = spec["_type"], spec["_value"]
    if kind == "choice":
        out: list[Any] = []
        for item in value:
            if isinstance(item, dict) and "_name" in item:
                sub = {k: v for k, v in item.items() if k != "_name"}
                for combo in _grid(sub, f"{path}._value"):
                    out.append({"_name": item["_name"], **combo})
            else:
                out.append(item)
        return out
    if kind == "randint":
        return list(range(int(value[0]), int(value[1])))
    if kind in ("quniform", "qloguniform"):
        low, high, q = value
        values: list[Any] = []
        k = math.ceil(low / q - 1e-9)
        while k * q <= high + 1e-9 and len(values) <= 10_000:
            values.append(_finish(kind, k * q, value))
            k += 1
        for bound in (float(low), float(high)):  # clipping makes the bounds reachable
            if bound not in values:
                values.append(bound)
        return sorted(set(values))
    raise SearchSpaceError(
        f"GridSearch needs a finite set of values: use choice, randint, quniform or qloguniform, not {kind}.",
        path=f"{path}._type",
    )


def _grid(space: dict[str, Any], path: str) -> list[dict[str, Any]]:
    names = list(space)
    axes = [_grid_values(n, space[n], f"{path}.{n}") for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]


def grid(space: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every combination of a discrete search space, in a stable order (GridSearch)."""
    yield from _grid(space, "searchSpace")
