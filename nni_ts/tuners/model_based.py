"""Model-based tuners: a surrogate of the objective, an acquisition function, a search over the space.

One loop (``ModelTuner``), four surrogates, as NNI's tuners of the same names use them:

- ``GPTuner`` (NNI ``GP``): a Gaussian process (scikit-learn, Matérn kernel) with EI, UCB or POI
  (Snoek et al., 2012). No PyTorch needed.
- ``SMACTuner`` (NNI ``SMAC``): a random forest (scikit-learn) whose trees' spread is the uncertainty,
  EI, a local search from the best configurations and interleaved random configurations (Hutter,
  Hoos and Leyton-Brown, "Sequential Model-Based Optimization for General Algorithm Configuration",
  2011).
- ``DNGOTuner`` (NNI ``DNGO``): a neural network's last hidden layer as basis functions of a Bayesian
  linear regression (Snoek et al., "Scalable Bayesian Optimization Using Deep Neural Networks", 2015);
  the network is scikit-learn's MLP, the regression's precisions are fitted by marginal likelihood.
- ``MetisTuner`` (NNI ``Metis``): a Gaussian process, candidates from exploitation (lowest predicted
  mean), exploration (highest uncertainty) and a mixture model of good configurations, and the
  re-running of results the model calls outliers (Li et al., "Metis: Robustly Tuning Tail Latencies of
  Cloud Systems", 2018).

Every tuner minimises internally (a maximised metric is negated). Trials still running count as
having the best value seen so far ("constant liar"), so that parallel suggestions spread out.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy.stats import norm

from ..search_space import validate_search_space
from .base import Tuner, extract_scalar
from .codec import SpaceCodec

__all__ = ["DNGOTuner", "GPTuner", "MetisTuner", "ModelTuner", "SMACTuner"]


def one_blas_thread() -> Any:
    """Fit and predict with one BLAS thread: the models are small, and BLAS threads spinning against
    the trials (and each other) made a GP fit 3 times slower on a busy 2-core machine."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def expected_improvement(mu: np.ndarray, sigma: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """EI of minimisation below ``best``."""
    sigma = np.maximum(sigma, 1e-12)
    z = (best - mu - xi) / sigma
    return np.asarray((best - mu - xi) * norm.cdf(z) + sigma * norm.pdf(z))


class ModelTuner(Tuner):
    """The shared loop: ``cold_start`` random points, then the best acquisition value among random
    candidates and the neighbours of the best points so far."""

    def __init__(
        self,
        optimize_mode: str = "maximize",
        *,
        seed: int | None = None,
        cold_start: int = 10,
        candidates: int = 500,
        random_fraction: float = 0.0,
    ) -> None:
        self.optimize_mode = optimize_mode
        self.rng = np.random.default_rng(seed)
        self.cold_start = max(1, int(cold_start))
        self.n_candidates = max(10, int(candidates))
        self.random_fraction = random_fraction
        self.codec: SpaceCodec | None = None
        self.xs: list[np.ndarray] = []
        self.ys: list[float] = []
        self.pending: dict[int, np.ndarray] = {}
        self.seen: set[str] = set()

    # ------------------------------------------------------------------ NNI interface

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        self.codec = SpaceCodec(validate_search_space(search_space))

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        assert self.codec is not None, "update_search_space first"
        if len(self.ys) + len(self.pending) < self.cold_start or len(self.ys) < 2:
            x = self._fresh_random()
        elif self.random_fraction and self.rng.random() < self.random_fraction:
            x = self._fresh_random()
        else:
            x = self.propose()
        self.pending[parameter_id] = x
        self.seen.add(self.codec.key(x))
        return self.codec.decode(x)

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        assert self.codec is not None
        x = self.pending.pop(parameter_id, None)
        if x is None:
            x = self.codec.encode(parameters)
        scalar = extract_scalar(value)
        if scalar is None:
            return
        self.xs.append(x)
        self.ys.append(-scalar if self.optimize_mode == "maximize" else scalar)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        self.pending.pop(parameter_id, None)

    def import_data(self, data: list[dict[str, Any]]) -> None:
        assert self.codec is not None
        for item in data:
            params = item.get("parameter")
            if isinstance(params, dict):
                x = self.codec.encode(params)
                self.seen.add(self.codec.key(x))
                self.receive_trial_result(-1, params, item.get("value"))

    # ------------------------------------------------------------------ the search

    def _fresh_random(self) -> np.ndarray:
        assert self.codec is not None
        for _ in range(20):
            x = np.asarray(self.codec.sample(self.rng)[0])
            if self.codec.key(x) not in self.seen:
                return x
        return x

    def training_set(self) -> tuple[np.ndarray, np.ndarray]:
        """Observed points plus the running ones at the best value so far (constant liar)."""
        assert self.codec is not None
        xs = list(self.xs) + list(self.pending.values())
        ys = list(self.ys) + [min(self.ys)] * len(self.pending)
        return self.codec.features(np.array(xs)), np.array(ys)

    def fit(self, features: np.ndarray, ys: np.ndarray) -> None:
        """Fit the surrogate."""
        raise NotImplementedError

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The surrogate's mean and standard deviation."""
        raise NotImplementedError

    def acquisition(self, mu: np.ndarray, sigma: np.ndarray, best: float) -> np.ndarray:
        return expected_improvement(mu, sigma, best)

    def candidates(self) -> np.ndarray:
        """Random points, and neighbours of the best observed points at three scales."""
        assert self.codec is not None
        parts = [self.codec.sample(self.rng, self.n_candidates)]
        order = np.argsort(self.ys)[:5]
        per = max(10, self.n_candidates // 10)
        for i in order:
            for scale in (0.02, 0.08, 0.25):
                parts.append(self.codec.neighbours(self.xs[i], self.rng, per, scale))
        return np.vstack(parts)

    def propose(self) -> np.ndarray:
        with one_blas_thread():
            return self._propose()

    def _propose(self) -> np.ndarray:
        assert self.codec is not None
        features, ys = self.training_set()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.fit(features, ys)
            cands = self.candidates()
            best = float(min(self.ys))
            score = self.acquisition(*self.predict(self.codec.features(cands)), best)
            # refine the best few by a local search on the acquisition
            top = cands[np.argsort(-score)[:5]]
            local = np.vstack([self.codec.neighbours(t, self.rng, 40, 0.03) for t in top])
            local_score = self.acquisition(*self.predict(self.codec.features(local)), best)
        allc = np.vstack([cands, local])
        alls = np.concatenate([score, local_score])
        for i in np.argsort(-alls):
            if self.codec.key(allc[i]) not in self.seen:
                return np.asarray(allc[i])
        return self._fresh_random()


# ---------------------------------------------------------------------- GP


class GPTuner(ModelTuner):
    """NNI's GP tuner: a Gaussian process (Matérn ``nu``) with EI (``xi``), UCB (``kappa``) or POI."""

    def __init__(
        self,
        optimize_mode: str = "maximize",
        utility: str = "ei",
        kappa: float = 5,
        xi: float = 0,
        nu: float = 2.5,
        alpha: float = 1e-6,
        cold_start_num: int = 10,
        selection_num_warm_up: int = 100000,
        selection_num_starting_points: int = 250,
        seed: int | None = None,
    ) -> None:
        if utility not in ("ei", "ucb", "poi"):
            raise ValueError(f"utility must be ei, ucb or poi, got {utility!r}")
        super().__init__(
            optimize_mode, seed=seed, cold_start=cold_start_num, candidates=min(2000, int(selection_num_warm_up))
        )
        self.utility, self.kappa, self.xi, self.nu, self.alpha = utility, float(kappa), float(xi), float(nu), alpha
        self.starting_points = selection_num_starting_points
        self.model: Any = None

    def _gp(self, dims: int) -> Any:
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern

        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
            length_scale=np.full(dims, 0.5), length_scale_bounds=(1e-2, 1e2), nu=self.nu
        )
        return GaussianProcessRegressor(
            kernel=kernel,
            alpha=max(self.alpha, 1e-6),
            normalize_y=True,
            n_restarts_optimizer=0,
            random_state=int(self.rng.integers(2**31)),
        )

    def fit(self, features: np.ndarray, ys: np.ndarray) -> None:
        self.model = self._gp(features.shape[1])
        self.model.fit(features, ys)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, sigma = self.model.predict(features, return_std=True)
        return mu, sigma

    def acquisition(self, mu: np.ndarray, sigma: np.ndarray, best: float) -> np.ndarray:
        if self.utility == "ucb":
            return np.asarray(-(mu - self.kappa * sigma))
        if self.utility == "poi":
            return np.asarray(norm.cdf((best - mu - self.xi) / np.maximum(sigma, 1e-12)))
        return expected_improvement(mu, sigma, best, self.xi)


# ---------------------------------------------------------------------- SMAC


class SMACTuner(ModelTuner):
    """SMAC: a random forest surrogate, EI, local search, and one random configuration in five."""

    def __init__(self, optimize_mode: str = "maximize", config_dedup: bool = False, seed: int | None = None) -> None:
        super().__init__(optimize_mode, seed=seed, cold_start=10, candidates=1000, random_fraction=0.2)
        self.config_dedup = config_dedup
        self.model: Any = None

    def fit(self, features: np.ndarray, ys: np.ndarray) -> None:
        from sklearn.ensemble import RandomForestRegressor

        self.model = RandomForestRegressor(
            n_estimators=10,
            min_samples_split=3,
            min_samples_leaf=3,
            max_features=5 / 6,
            bootstrap=True,
            random_state=int(self.rng.integers(2**31)),
        )
        self.model.fit(features, ys)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        per_tree = np.array([t.predict(features) for t in self.model.estimators_])
        return per_tree.mean(axis=0), per_tree.std(axis=0) + 1e-9


# ---------------------------------------------------------------------- DNGO


class DNGOTuner(ModelTuner):
    """DNGO: an MLP's last hidden layer (tanh, 50-50-50) as basis functions of a Bayesian linear
    regression; the model is retrained every ``trials_per_update`` results."""

    def __init__(
        self,
        optimize_mode: str = "maximize",
        sample_size: int = 1000,
        trials_per_update: int = 20,
        num_epochs_per_training: int = 500,
        seed: int | None = None,
    ) -> None:
        super().__init__(optimize_mode, seed=seed, cold_start=10, candidates=sample_size)
        self.trials_per_update = max(1, int(trials_per_update))
        self.epochs = int(num_epochs_per_training)
        self.net: Any = None
        self._trained_at = -1
        self._blr: tuple[np.ndarray, np.ndarray, float, float, float] | None = None

    def _basis(self, features: np.ndarray) -> np.ndarray:
        h = features
        for w, b in zip(self.net.coefs_[:-1], self.net.intercepts_[:-1], strict=True):
            h = np.tanh(h @ w + b)
        return np.hstack([h, np.ones((len(h), 1))])

    def fit(self, features: np.ndarray, ys: np.ndarray) -> None:
        from scipy.optimize import minimize
        from sklearn.neural_network import MLPRegressor

        mean, std = float(ys.mean()), float(ys.std()) or 1.0
        t = (ys - mean) / std
        n = len(self.ys)
        if self.net is None or n - self._trained_at >= self.trials_per_update:  # as NNI's DNGO
            self.net = MLPRegressor(
                hidden_layer_sizes=(50, 50, 50),
                activation="tanh",
                learning_rate_init=0.01,
                max_iter=self.epochs,
                random_state=int(self.rng.integers(2**31)),
            )
            self.net.fit(features, t)
            self._trained_at = n
        phi = self._basis(features)

        def neg_log_evidence(log_ab: np.ndarray) -> float:
            a, b = np.exp(np.clip(log_ab, -10, 10))
            m, k = phi.shape[1], len(t)
            s = a * np.eye(m) + b * phi.T @ phi
            try:
                chol = np.linalg.cholesky(s)
            except np.linalg.LinAlgError:
                return 1e10
            mn = b * np.linalg.solve(s, phi.T @ t)
            fit_err = b / 2 * float(np.sum((t - phi @ mn) ** 2)) + a / 2 * float(mn @ mn)
            logdet = 2 * float(np.sum(np.log(np.diag(chol))))
            return -float(
                m / 2 * math.log(a) + k / 2 * math.log(b) - fit_err - logdet / 2 - k / 2 * math.log(2 * math.pi)
            )

        res = minimize(neg_log_evidence, np.log([1.0, 100.0]), method="Nelder-Mead", options={"maxiter": 200})
        a, b = np.exp(np.clip(res.x, -10, 10))
        s_inv = np.linalg.inv(a * np.eye(phi.shape[1]) + b * phi.T @ phi)
        mn = b * s_inv @ phi.T @ t
        self._blr = (mn, s_inv, float(b), mean, std)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self._blr is not None
        mn, s_inv, b, mean, std = self._blr
        phi = self._basis(features)
        mu = phi @ mn
        var = 1.0 / b + np.einsum("ij,jk,ik->i", phi, s_inv, phi)
        return mu * std + mean, np.sqrt(np.maximum(var, 1e-12)) * std


# ---------------------------------------------------------------------- Metis


class MetisTuner(GPTuner):
    """Metis: GP candidates by exploitation, exploration and a Gaussian mixture of good points; the
    one of highest expected improvement wins; outliers are re-run unless ``no_resampling``."""

    def __init__(
        self,
        optimize_mode: str = "maximize",
        no_resampling: bool = True,
        no_candidates: bool = False,
        selection_num_starting_points: int = 600,
        cold_start_num: int = 10,
        exploration_probability: float = 0.9,
        seed: int | None = None,
    ) -> None:
        super().__init__(optimize_mode, cold_start_num=cold_start_num, seed=seed)
        self.n_candidates = max(10, int(selection_num_starting_points))
        self.no_resampling = bool(no_resampling)
        self.no_candidates = bool(no_candidates)
        self.exploration_probability = float(exploration_probability)
        self.resampled: set[str] = set()

    def _outlier(self) -> np.ndarray | None:
        """An observed point whose value the model (fitted without it) calls unlikely: re-run it once."""
        assert self.codec is not None
        if len(self.ys) < self.cold_start + 2:
            return None
        feats = self.codec.features(np.array(self.xs))
        ys = np.array(self.ys)
        for i in range(len(ys)):
            key = self.codec.key(self.xs[i])
            if key in self.resampled:
                continue
            keep = np.arange(len(ys)) != i
            gp = self._gp(feats.shape[1])
            gp.fit(feats[keep], ys[keep])
            mu, sigma = gp.predict(feats[i : i + 1], return_std=True)
            if abs(ys[i] - mu[0]) > 3 * max(sigma[0], 1e-9) + 1e-9 * abs(mu[0]):
                self.resampled.add(key)
                return np.asarray(self.xs[i])
        return None

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        assert self.codec is not None
        if not self.no_resampling and len(self.ys) >= self.cold_start:
            with warnings.catch_warnings(), one_blas_thread():
                warnings.simplefilter("ignore")
                x = self._outlier()
            if x is not None:
                self.pending[parameter_id] = x
                return self.codec.decode(x)
        return super().generate_parameters(parameter_id, **kwargs)

    def _propose(self) -> np.ndarray:
        assert self.codec is not None
        features, ys = self.training_set()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.fit(features, ys)
            cands = self.candidates()
            mu, sigma = self.predict(self.codec.features(cands))
            best = float(min(self.ys))
            picks = [cands[int(np.argmin(mu))]]  # exploitation
            if not self.no_candidates:
                if self.rng.random() < self.exploration_probability:
                    picks.append(cands[int(np.argmax(sigma))])  # exploration
                gmm_pick = self._gmm_candidate()
                if gmm_pick is not None:
                    picks.append(gmm_pick)
            arr = np.array(picks)
            ei = expected_improvement(*self.predict(self.codec.features(arr)), best)
        for i in np.argsort(-ei):
            if self.codec.key(arr[i]) not in self.seen:
                return np.asarray(arr[i])
        return self._fresh_random()

    def _gmm_candidate(self) -> np.ndarray | None:
        """Sample from a mixture fitted to the better half of the points; keep the sample the good mixture
        likes most relative to the bad one."""
        from sklearn.mixture import GaussianMixture

        assert self.codec is not None
        if len(self.ys) < 6:
            return None
        xs, ys = np.array(self.xs), np.array(self.ys)
        order = np.argsort(ys)
        half = len(ys) // 2
        good, bad = xs[order[:half]], xs[order[half:]]
        k = max(1, min(3, half // 3))
        seed = int(self.rng.integers(2**31))
        g = GaussianMixture(k, covariance_type="diag", reg_covar=1e-3, random_state=seed).fit(good)
        b = GaussianMixture(k, covariance_type="diag", reg_covar=1e-3, random_state=seed).fit(bad)
        samples = np.clip(g.sample(200)[0], 0.0, 1.0)
        ratio = g.score_samples(samples) - b.score_samples(samples)
        return np.asarray(samples[int(np.argmax(ratio))])
