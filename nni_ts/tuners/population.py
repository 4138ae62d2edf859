"""Population-based tuners: PBT (Jaderberg et al., 2017) and regularized (aging) evolution (Real et al., 2019)."""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..search_space import validate_search_space
from .base import NoMoreTrialError, Tuner, extract_scalar
from .codec import SpaceCodec

__all__ = ["PBTTuner", "RegularizedEvolutionTuner"]


@dataclass
class _Member:
    index: int
    params: dict[str, Any]
    load_dir: str
    save_dir: str
    score: float | None = None
    parameter_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PBTTuner(Tuner):
    """Population Based Training with NNI's checkpoint-directory protocol.

    A population of ``population_size`` members trains in epochs; each trial is one member's epoch and
    receives, besides its hyperparameters, ``load_checkpoint_dir`` (where to load the model from, if it
    exists) and ``save_checkpoint_dir`` (where to save it). When every member of an epoch has reported,
    the worst ``fraction`` of the members copy a top member (*exploit*: they load its checkpoint) with
    perturbed hyperparameters (*explore*: each numeric value times 1 ± ``factor``, or re-drawn with
    probability ``resample_probability``); the others continue from their own checkpoints.

    While an epoch's members are all running, ``generate_parameters`` raises NoMoreTrialError: the
    experiment waits for results and asks again (as NNI does).
    """

    def __init__(
        self,
        optimize_mode: str = "maximize",
        all_checkpoint_dir: str | None = None,
        population_size: int = 10,
        factor: float = 0.2,
        resample_probability: float = 0.25,
        fraction: float = 0.2,
        seed: int | None = None,
    ) -> None:
        if int(population_size) < 2:
            raise ValueError(f"population_size must be at least 2, got {population_size}")
        if not 0 < float(fraction) <= 0.5:
            raise ValueError(f"fraction must be in (0, 0.5], got {fraction}")
        all_checkpoint_dir = all_checkpoint_dir or os.environ.get("NNI_CHECKPOINT_DIRECTORY")
        if not all_checkpoint_dir:
            raise ValueError("all_checkpoint_dir is needed (the experiment gives its own checkpoint directory)")
        self.optimize_mode = optimize_mode
        self.root = os.path.abspath(os.path.expanduser(all_checkpoint_dir))
        self.size = int(population_size)
        self.factor = float(factor)
        self.resample_probability = float(resample_probability)
        self.fraction = float(fraction)
        self.rng = np.random.default_rng(seed)
        self.codec: SpaceCodec | None = None
        self.epoch = 0
        self.population: list[_Member] = []
        self.next_member = 0
        self.running: dict[int, _Member] = {}
        self.finished: list[_Member] = []

    def _dir(self, index: int, epoch: int) -> str:
        return os.path.join(self.root, str(index), str(epoch))

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        self.codec = SpaceCodec(validate_search_space(search_space))
        for name in ("load_checkpoint_dir", "save_checkpoint_dir"):
            if name in search_space:
                raise ValueError(f"the search space may not define {name}: PBT sets it")
        self.population = []
        for i in range(self.size):
            x = self.codec.sample(self.rng)[0]
            first = self._dir(i, 0)
            self.population.append(_Member(i, self.codec.decode(x), first, first, extra={"x": x}))
        self.next_member = 0

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        if self.next_member >= len(self.population):
            raise NoMoreTrialError(f"every member of PBT epoch {self.epoch} is running; waiting for their results")
        member = self.population[self.next_member]
        self.next_member += 1
        member.parameter_id = parameter_id
        self.running[parameter_id] = member
        os.makedirs(member.save_dir, exist_ok=True)
        return {**member.params, "load_checkpoint_dir": member.load_dir, "save_checkpoint_dir": member.save_dir}

    def _done(self, parameter_id: int, score: float | None) -> None:
        member = self.running.pop(parameter_id, None)
        if member is None:
            return
        worst = -math.inf if self.optimize_mode == "maximize" else math.inf
        member.score = worst if score is None else score
        self.finished.append(member)
        if len(self.finished) == len(self.population) and not self.running:
            self._next_epoch()

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        self._done(parameter_id, extract_scalar(value))

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        if parameter_id in self.running:  # ended without a result: the worst score
            self._done(parameter_id, None)

    def _next_epoch(self) -> None:
        assert self.codec is not None
        self.epoch += 1
        ranked = sorted(
            self.finished,
            key=lambda m: m.score if m.score is not None else 0.0,
            reverse=self.optimize_mode == "maximize",
        )
        cut = max(1, math.ceil(self.fraction * len(ranked)))
        tops, bottoms = ranked[:cut], ranked[-cut:]
        saved = {m.index: (m.save_dir, m.extra["x"]) for m in ranked}  # as the epoch left them
        for member in ranked:
            if member in bottoms:
                top = tops[int(self.rng.integers(len(tops)))]
                top_dir, top_x = saved[top.index]
                member.extra["x"] = self._explore(top_x)
                member.params = self.codec.decode(member.extra["x"])
                member.load_dir = top_dir
            else:
                member.load_dir = member.save_dir
            member.save_dir = self._dir(member.index, self.epoch)
            member.score = None
            member.parameter_id = None
        self.population = sorted(ranked, key=lambda m: m.index)
        self.finished = []
        self.next_member = 0

    def _explore(self, x: np.ndarray) -> np.ndarray:
        assert self.codec is not None
        y = x.copy()
        for i, dim in enumerate(self.codec.dims):
            if self.rng.random() < self.resample_probability:
                y[i] = self.rng.random()
            elif not dim.size:
                # perturb the value (not the cube coordinate), then map back
                y[i] = self._perturb(i, x)
        return y

    def _perturb(self, i: int, x: np.ndarray) -> float:
        assert self.codec is not None
        dim = self.codec.dims[i]
        value = self.codec._decode_one(i, float(x[i]), x)
        if not isinstance(value, int | float):
            return float(x[i])
        moved = value * (1 + self.factor if self.rng.random() < 0.5 else 1 - self.factor)
        z = x.copy()
        self.codec._encode({dim.name: i}, {dim.name: moved}, z)
        return float(z[i])

    def import_data(self, data: list[dict[str, Any]]) -> None:
        """PBT's state is its population and checkpoints; earlier results do not seed it."""


class RegularizedEvolutionTuner(Tuner):
    """Aging evolution: a random initial population; then the best of ``sample_size`` random members
    (with replacement) is copied with one parameter re-drawn; the oldest member dies when the population
    exceeds ``population_size``. NNI's version takes NAS spaces only; this one takes HPO spaces."""

    def __init__(
        self,
        optimize_mode: str = "maximize",
        population_size: int = 100,
        sample_size: int = 25,
        seed: int | None = None,
    ) -> None:
        if int(population_size) < 1 or int(sample_size) < 1:
            raise ValueError("population_size and sample_size must be positive")
        self.optimize_mode = optimize_mode
        self.population_size = int(population_size)
        self.sample_size = int(sample_size)
        self.rng = np.random.default_rng(seed)
        self.codec: SpaceCodec | None = None
        self.population: deque[tuple[np.ndarray, float]] = deque()
        self.pending: dict[int, np.ndarray] = {}
        self.initial_left = 0

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        self.codec = SpaceCodec(validate_search_space(search_space))
        self.initial_left = self.population_size

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        assert self.codec is not None
        if self.initial_left > 0 or not self.population:
            self.initial_left = max(0, self.initial_left - 1)
            x = self.codec.sample(self.rng)[0]
        else:
            picks = [self.population[int(i)] for i in self.rng.integers(len(self.population), size=self.sample_size)]
            parent = max(picks, key=lambda p: p[1])[0]
            x = parent.copy()
            active = np.flatnonzero(self.codec.active(x))
            i = int(active[int(self.rng.integers(len(active)))])
            x[i] = self.rng.random()
        self.pending[parameter_id] = x
        return self.codec.decode(x)

    def _add(self, x: np.ndarray, value: Any) -> None:
        scalar = extract_scalar(value)
        if scalar is None:
            return
        self.population.append((x, scalar if self.optimize_mode == "maximize" else -scalar))
        while len(self.population) > self.population_size:
            self.population.popleft()

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        assert self.codec is not None
        x = self.pending.pop(parameter_id, None)
        self._add(self.codec.encode(parameters) if x is None else x, value)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        self.pending.pop(parameter_id, None)  # a failed member is not added to the population

    def import_data(self, data: list[dict[str, Any]]) -> None:
        assert self.codec is not None
        for item in data:
            if isinstance(item.get("parameter"), dict):
                self._add(self.codec.encode(item["parameter"]), item.get("value"))
        self.initial_left = max(0, self.population_size - len(self.population))
