"""GridSearch as NNI 3.0 does it: discrete parameters enumerated, continuous ones refined epoch by epoch.

Epoch 1 takes every value of each ``choice`` and ``randint`` and the middle (the median, for the
normal family) of each continuous range. Each later epoch halves every interval of the continuous
ranges (epoch 2 adds the quartiles, epoch 3 the eighths, ...) and yields the combinations not yet
tried. A quantized range stops being refined once halving no longer changes its values; the search ends
(NoMoreTrialError) when no range can be refined any more, so a space of only discrete and quantized
parameters is enumerated exactly once. Parameter sets that come out equal (rounding, inactive nested
parameters) are yielded once.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..search_space import validate_search_space
from .base import NoMoreTrialError, Tuner
from .codec import SpaceCodec

__all__ = ["GridSearchTuner"]


class GridSearchTuner(Tuner):
    """NNI 3.0's GridSearch (continuous ranges included); ``optimize_mode`` is accepted and unused."""

    def __init__(self, optimize_mode: str = "maximize") -> None:
        self.optimize_mode = optimize_mode
        self.codec: SpaceCodec | None = None
        self.seen: set[str] = set()
        self._iter: Iterator[dict[str, Any]] = iter(())

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        self.codec = SpaceCodec(validate_search_space(search_space))
        self.seen = set()
        self._iter = self._points()

    def _value(self, i: int, u: float) -> Any:
        assert self.codec is not None
        return self.codec._decode_one(i, u, np.full(self.codec.d, 0.5))

    def _differs(self, i: int, a: float, b: float) -> bool:
        return bool(self._value(i, a) != self._value(i, b))

    def _points(self) -> Iterator[dict[str, Any]]:
        codec = self.codec
        assert codec is not None
        grid: list[list[float]] = []
        divisions: list[list[tuple[float, float]]] = []
        for i, dim in enumerate(codec.dims):
            if dim.size:  # choice, randint: every cell centre
                grid.append([(k + 0.5) / dim.size for k in range(dim.size)])
                divisions.append([])
            else:
                grid.append([0.5])
                divisions.append([(a, b) for a, b in ((0.0, 0.5), (0.5, 1.0)) if self._differs(i, a, b)])
        bar = [0] * codec.d
        while True:
            for vector in itertools.product(*(range(len(g)) for g in grid)):
                if codec.d and all(v < b for v, b in zip(vector, bar, strict=True)):
                    continue  # tried in an earlier epoch
                x = np.array([grid[i][v] for i, v in enumerate(vector)])
                params = codec.decode(x)
                key = json.dumps(params, sort_keys=True, default=str)
                if key not in self.seen:
                    self.seen.add(key)
                    yield params
            refined = False
            for i in range(codec.d):
                bar[i] = len(grid[i])
                new_divs: list[tuple[float, float]] = []
                for a, b in divisions[i]:
                    mid = (a + b) / 2
                    left, right = self._differs(i, a, mid), self._differs(i, mid, b)
                    if (left or a == 0.0) and (right or b == 1.0):
                        grid[i].append(mid)
                        refined = True
                    if left:
                        new_divs.append((a, mid))
                        refined = refined or a == 0.0
                    if right:
                        new_divs.append((mid, b))
                        refined = refined or b == 1.0
                divisions[i] = new_divs
            if not refined:
                return

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        try:
            return next(self._iter)
        except StopIteration:
            raise NoMoreTrialError("every grid point has been tried") from None

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        pass

    def import_data(self, data: list[dict[str, Any]]) -> None:
        for item in data:
            if isinstance(item.get("parameter"), dict):
                self.seen.add(json.dumps(item["parameter"], sort_keys=True, default=str))

    def import_submitted(self, parameters: list[dict[str, Any]]) -> None:
        """Points submitted before a resume without a result: not handed out again."""
        self.import_data([{"parameter": p} for p in parameters])
