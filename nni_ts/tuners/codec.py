"""A search space as points of the unit cube, for the tuners that model the objective (GP, SMAC, DNGO, Metis).

Every parameter of the space, nested ones included, is one coordinate in [0, 1]:

- ``uniform``/``quniform``: linear in ``[low, high]``; ``loguniform``/``qloguniform``: linear in the logs;
- ``normal`` family: the coordinate is the CDF value (so the prior is uniform in the cube);
- ``randint [a, b)``: ``b - a`` equal cells; ``choice`` of n values: n equal cells.

A parameter inside a nested choice is *active* only when its parent choice picks its option; inactive
coordinates are ignored when decoding and set to a constant in the model's features, so that they do
not look like information. ``features`` one-hot encodes choices for the models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..search_space import _erfinv, _finish

__all__ = ["Dim", "SpaceCodec"]

_EPS = 1e-9


@dataclass
class Dim:
    """One coordinate: a parameter, where it lives, and (for a nested one) the choice that activates it."""

    name: str
    kind: str
    value: list[Any]
    parent: tuple[int, int] | None  # (index of the choice dim, option index) that activates it
    size: int = 0  # number of cells of a choice or randint; 0 for continuous

    @property
    def categorical(self) -> bool:
        return self.kind == "choice"


class SpaceCodec:
    """Encode and decode NNI parameters to and from points of ``[0, 1]^d``."""

    def __init__(self, space: dict[str, Any]) -> None:
        self.space = space
        self.dims: list[Dim] = []
        # children[i][option] = the sub-space of choice dim i's nested option: (name -> dim index)
        self.children: dict[int, dict[int, dict[str, int]]] = {}
        self.top = self._add(space, None)

    def _add(self, space: dict[str, Any], parent: tuple[int, int] | None) -> dict[str, int]:
        names: dict[str, int] = {}
        for name, spec in space.items():
            kind, value = spec["_type"], spec["_value"]
            index = len(self.dims)
            size = len(value) if kind == "choice" else (int(value[1]) - int(value[0]) if kind == "randint" else 0)
            self.dims.append(Dim(name, kind, value, parent, size))
            names[name] = index
            if kind == "choice":
                for option, item in enumerate(value):
                    if isinstance(item, dict) and "_name" in item:
                        sub = {k: v for k, v in item.items() if k != "_name"}
                        self.children.setdefault(index, {})[option] = self._add(sub, (index, option))
        return names

    @property
    def d(self) -> int:
        return len(self.dims)

    # ------------------------------------------------------------------ points

    def sample(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """``n`` uniform random points, shape (n, d)."""
        return rng.random((n, self.d))

    def neighbours(self, x: np.ndarray, rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
        """``n`` points near ``x``: continuous coordinates moved by N(0, scale), clipped; each categorical
        or integer coordinate re-drawn with probability ``scale``."""
        pts = np.repeat(x[None, :], n, axis=0)
        for i, dim in enumerate(self.dims):
            if dim.size:
                redraw = rng.random(n) < max(scale, 1.0 / max(self.d, 1))
                pts[redraw, i] = rng.random(int(redraw.sum()))
            else:
                pts[:, i] = np.clip(pts[:, i] + rng.normal(0.0, scale, n), 0.0, 1.0)
        return pts

    def active(self, x: np.ndarray) -> np.ndarray:
        """Which coordinates of ``x`` are active (bool, shape (d,))."""
        mask = np.ones(self.d, dtype=bool)
        for i, dim in enumerate(self.dims):  # parents come before their children
            if dim.parent is not None:
                p, option = dim.parent
                mask[i] = mask[p] and self._cell(x[p], self.dims[p].size) == option
        return mask

    @staticmethod
    def _cell(u: float, size: int) -> int:
        return min(int(u * size), size - 1)

    # ------------------------------------------------------------------ decode / encode

    def decode(self, x: np.ndarray) -> dict[str, Any]:
        """The NNI parameters of point ``x`` (nested choices as ``{"_name": ..., sub-params}``)."""
        return self._decode(self.top, x)

    def _decode(self, names: dict[str, int], x: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, i in names.items():
            out[name] = self._decode_one(i, float(x[i]), x)
        return out

    def _decode_one(self, i: int, u: float, x: np.ndarray) -> Any:
        dim = self.dims[i]
        kind, value = dim.kind, dim.value
        u = min(max(u, 0.0), 1.0)
        if kind == "choice":
            option = self._cell(u, dim.size)
            item = value[option]
            if isinstance(item, dict) and "_name" in item:
                sub = self.children.get(i, {}).get(option, {})
                return {"_name": item["_name"], **self._decode(sub, x)}
            return item
        if kind == "randint":
            return int(value[0]) + self._cell(u, dim.size)
        if kind in ("uniform", "quniform"):
            raw = value[0] + u * (value[1] - value[0])
        elif kind in ("loguniform", "qloguniform"):
            lo, hi = math.log(value[0]), math.log(value[1])
            raw = math.exp(lo + u * (hi - lo))
        else:
            p = min(max(u, _EPS), 1 - _EPS)
            raw = value[0] + value[1] * math.sqrt(2) * _erfinv(2 * p - 1)
            if kind in ("lognormal", "qlognormal"):
                raw = math.exp(raw)
        return _finish(kind, raw, value)

    def encode(self, params: dict[str, Any]) -> np.ndarray:
        """The point of ``params`` (values outside the space are clipped; missing ones sit at 0.5)."""
        x = np.full(self.d, 0.5)
        self._encode(self.top, params, x)
        return x

    def _encode(self, names: dict[str, int], params: dict[str, Any], x: np.ndarray) -> None:
        for name, i in names.items():
            if name not in params:
                continue
            dim, got = self.dims[i], params[name]
            kind, value = dim.kind, dim.value
            if kind == "choice":
                option = next((k for k, v in enumerate(value) if _same(v, got)), None)
                if option is None:
                    continue
                x[i] = (option + 0.5) / dim.size
                sub = self.children.get(i, {}).get(option)
                if sub and isinstance(got, dict):
                    self._encode(sub, got, x)
                continue
            if not isinstance(got, int | float) or isinstance(got, bool):
                continue
            g = float(got)
            if kind == "randint":
                u = (g - value[0] + 0.5) / dim.size
            elif kind in ("uniform", "quniform"):
                u = (g - value[0]) / (value[1] - value[0])
            elif kind in ("loguniform", "qloguniform"):
                lo, hi = math.log(value[0]), math.log(value[1])
                u = (math.log(max(g, value[0])) - lo) / (hi - lo)
            else:
                if kind in ("lognormal", "qlognormal"):
                    if g <= 0:
                        continue
                    g = math.log(g)
                u = 0.5 * (1 + math.erf((g - value[0]) / (value[1] * math.sqrt(2))))
            x[i] = min(max(u, 0.0), 1.0)

    # ------------------------------------------------------------------ model features

    def features(self, points: np.ndarray) -> np.ndarray:
        """Model inputs: continuous and integer coordinates as they are, choices one-hot; inactive
        coordinates 0.5 (one-hot: all zero)."""
        points = np.atleast_2d(points)
        cols: list[np.ndarray] = []
        masks = np.array([self.active(p) for p in points])
        for i, dim in enumerate(self.dims):
            if dim.categorical:
                cells = np.minimum((points[:, i] * dim.size).astype(int), dim.size - 1)
                onehot = np.zeros((len(points), dim.size))
                onehot[np.arange(len(points)), cells] = 1.0
                onehot[~masks[:, i]] = 0.0
                cols.append(onehot)
            else:
                col = np.where(masks[:, i], points[:, i], 0.5)
                if dim.size:  # randint: snap to its cell's centre
                    col = np.where(
                        masks[:, i], (np.minimum((col * dim.size).astype(int), dim.size - 1) + 0.5) / dim.size, 0.5
                    )
                cols.append(col[:, None])
        return np.hstack(cols) if cols else np.zeros((len(points), 0))

    def key(self, x: np.ndarray) -> str:
        """A canonical text of the parameters of ``x`` (to avoid proposing the same point twice)."""
        import json

        return json.dumps(self.decode(x), sort_keys=True, default=str)


def _same(option: Any, got: Any) -> bool:
    if isinstance(option, dict) and "_name" in option:
        return isinstance(got, dict) and got.get("_name") == option["_name"]
    return bool(option == got)
