"""NNI's Curvefitting assessor: extrapolate a trial's learning curve and stop it if it will not do well.

After the trial's ``start_step``-th intermediate result (and every ``gap`` results after), a set of
parametric learning-curve families (Domhan, Springenberg and Hutter, "Speeding up Automatic
Hyperparameter Optimization of Deep Neural Networks by Extrapolation of Learning Curves", 2015:
pow3, log-power, pow4, exp4, ilog2, vapor pressure, MMF, Janoschek, Weibull, linear, log-linear)
is fitted by least squares; the fits are combined with weights from their likelihood (a Bayesian
model average, in place of the paper's MCMC), and the curve is predicted at ``epoch_num``. The trial
is early stopped when that prediction is below ``threshold`` times the best final result of the
trials that succeeded so far (for ``optimize_mode: minimize``: above the best divided by ``threshold``).
Until one trial has succeeded, or when no family fits, the trial goes on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .base import Assessor, AssessResult, extract_scalar

__all__ = ["CurvefittingAssessor", "predict_curve"]


def _pow3(x: np.ndarray, c: float, a: float, alpha: float) -> Any:
    return c - a * x ** (-alpha)


def _log_power(x: np.ndarray, a: float, b: float, c: float) -> Any:
    return a / (1 + (x / np.exp(b)) ** c)


def _pow4(x: np.ndarray, c: float, a: float, b: float, alpha: float) -> Any:
    return c - (a * x + b) ** (-alpha)


def _exp4(x: np.ndarray, c: float, a: float, b: float, alpha: float) -> Any:
    return c - np.exp(-a * x**alpha + b)


def _ilog2(x: np.ndarray, c: float, a: float) -> Any:
    return c - a / np.log(x + 1)


def _vap(x: np.ndarray, a: float, b: float, c: float) -> Any:
    return np.exp(a + b / x + c * np.log(x))


def _mmf(x: np.ndarray, alpha: float, beta: float, kappa: float, delta: float) -> Any:
    return alpha - (alpha - beta) / (1 + (kappa * x) ** delta)


def _janoschek(x: np.ndarray, a: float, beta: float, k: float, delta: float) -> Any:
    return a - (a - beta) * np.exp(-k * x**delta)


def _weibull(x: np.ndarray, alpha: float, beta: float, kappa: float, delta: float) -> Any:
    return alpha - (alpha - beta) * np.exp(-((kappa * x) ** delta))


def _linear(x: np.ndarray, a: float, b: float) -> Any:
    return a * x + b


def _logx_linear(x: np.ndarray, a: float, b: float) -> Any:
    return a * np.log(x) + b


_FAMILIES: list[tuple[Callable[..., np.ndarray], list[float]]] = [
    (_pow3, [1.0, 1.0, 0.5]),
    (_log_power, [1.0, 1.0, -1.0]),
    (_pow4, [1.0, 1.0, 1.0, 0.5]),
    (_exp4, [1.0, 0.5, 0.0, 1.0]),
    (_ilog2, [1.0, 0.5]),
    (_vap, [0.0, -1.0, 0.0]),
    (_mmf, [1.0, 0.0, 0.5, 1.0]),
    (_janoschek, [1.0, 0.0, 0.5, 1.0]),
    (_weibull, [1.0, 0.0, 0.5, 1.0]),
    (_linear, [0.0, 0.0]),
    (_logx_linear, [0.0, 0.0]),
]


def predict_curve(history: list[float], target: int) -> float | None:
    """The learning curve ``history`` (steps 1..n) extrapolated to step ``target``; None if nothing fits."""
    from scipy.optimize import curve_fit

    y = np.asarray(history, dtype=float)
    n = len(y)
    if n < 3:
        return None
    x = np.arange(1, n + 1, dtype=float)
    span = float(np.ptp(y)) or max(abs(float(y.mean())), 1e-6)
    lo, hi = float(y.min()) - 2 * span, float(y.max()) + 2 * span + span * target / n
    preds: list[float] = []
    logliks: list[float] = []
    for fn, p0 in _FAMILIES:
        if len(p0) >= n:
            continue
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            try:
                start = list(p0)
                start[0] = start[0] * float(y[-1]) if fn not in (_linear, _logx_linear, _vap) else start[0]
                params, _ = curve_fit(fn, x, y, p0=start, maxfev=2000)
                fitted = fn(x, *params)
                pred = float(fn(np.array([float(target)]), *params)[0])
            except (RuntimeError, ValueError, TypeError, OverflowError, FloatingPointError):
                continue
        if not (np.all(np.isfinite(fitted)) and math.isfinite(pred) and lo <= pred <= hi):
            continue
        mse = float(np.mean((fitted - y) ** 2)) + 1e-12 * span**2 + 1e-18
        preds.append(pred)
        logliks.append(-n / 2 * math.log(mse) - len(p0))  # Gaussian likelihood, penalised by size
    if not preds:
        return None
    w = np.exp(np.array(logliks) - max(logliks))
    return float(np.dot(w, preds) / w.sum())


class CurvefittingAssessor(Assessor):
    """NNI's Curvefitting: ``epoch_num`` (the step predicted), ``start_step``, ``threshold``, ``gap``."""

    def __init__(
        self,
        epoch_num: int = 20,
        start_step: int = 6,
        threshold: float = 0.95,
        gap: int = 1,
        optimize_mode: str = "maximize",
    ) -> None:
        if int(epoch_num) < 1 or int(gap) < 1:
            raise ValueError("epoch_num and gap must be positive")
        if not 0 < float(threshold) <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.epoch_num = int(epoch_num)
        self.start_step = max(1, int(start_step))
        self.threshold = float(threshold)
        self.gap = int(gap)
        self.optimize_mode = optimize_mode
        self.best: float | None = None
        self.last_judged: dict[str, int] = {}
        self.last_value: dict[str, float] = {}

    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
        values = [v for v in (extract_scalar(h) for h in trial_history) if v is not None]
        if values:
            self.last_value[trial_job_id] = values[-1]
        step = len(values)
        if self.best is None or step < self.start_step:
            return AssessResult.Good
        if step - self.last_judged.get(trial_job_id, -self.gap) < self.gap:
            return AssessResult.Good
        self.last_judged[trial_job_id] = step
        predicted = predict_curve(values, max(self.epoch_num, step))
        if predicted is None:
            return AssessResult.Good
        if self.optimize_mode == "minimize":
            return AssessResult.Bad if predicted > self.best / self.threshold else AssessResult.Good
        return AssessResult.Bad if predicted < self.best * self.threshold else AssessResult.Good

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        last = self.last_value.pop(trial_job_id, None)
        self.last_judged.pop(trial_job_id, None)
        if not success or last is None:
            return
        if self.best is None:
            self.best = last
        else:
            self.best = max(self.best, last) if self.optimize_mode == "maximize" else min(self.best, last)
