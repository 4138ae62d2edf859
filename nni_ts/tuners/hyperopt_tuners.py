"""NNI's hyperopt tuners on hyperopt itself: ``Anneal`` (``hyperopt.anneal``) and ``TPE_legacy``
(``hyperopt.tpe``), driven ask/tell through a ``hyperopt.Trials`` object."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..search_space import _finish, validate_search_space
from .base import Tuner, extract_scalar

__all__ = ["HyperoptTuner"]


def _hp_space(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    from hyperopt import hp

    out: dict[str, Any] = {}
    for name, spec in space.items():
        label = f"{prefix}{name}"
        kind, v = spec["_type"], spec["_value"]
        if kind == "choice":
            options: list[Any] = []
            for item in v:
                if isinstance(item, dict) and "_name" in item:
                    sub = {k: s for k, s in item.items() if k != "_name"}
                    options.append({"_name": item["_name"], **_hp_space(sub, f"{label}/{item['_name']}/")})
                else:
                    options.append(item)
            out[name] = hp.choice(label, options)
        elif kind == "randint":
            out[name] = hp.randint(label, int(v[0]), int(v[1]))
        elif kind in ("uniform", "quniform"):
            out[name] = hp.uniform(label, v[0], v[1])
        elif kind in ("loguniform", "qloguniform"):
            out[name] = hp.loguniform(label, math.log(v[0]), math.log(v[1]))
        elif kind in ("normal", "qnormal"):
            out[name] = hp.normal(label, v[0], v[1])
        else:
            out[name] = hp.lognormal(label, v[0], v[1])
    return out


def _finish_all(space: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """NNI's rounding and clipping, plain Python numbers, nested choices resolved."""
    out: dict[str, Any] = {}
    for name, spec in space.items():
        kind, v, got = spec["_type"], spec["_value"], params.get(name)
        if kind == "choice":
            if isinstance(got, dict) and "_name" in got:
                item = next(o for o in v if isinstance(o, dict) and o.get("_name") == got["_name"])
                sub = {k: s for k, s in item.items() if k != "_name"}
                out[name] = {"_name": got["_name"], **_finish_all(sub, got)}
            else:
                out[name] = got.item() if isinstance(got, np.generic) else got
        elif kind == "randint":
            out[name] = int(got)  # type: ignore[arg-type]
        else:
            out[name] = _finish(kind, float(got), v)  # type: ignore[arg-type]
    return out


def _vals(space: dict[str, Any], params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """hyperopt's ``misc.vals`` for NNI ``params`` (for results of trials hyperopt did not suggest)."""
    vals: dict[str, Any] = {}
    for name, spec in space.items():
        label = f"{prefix}{name}"
        kind, v = spec["_type"], spec["_value"]
        got = params.get(name)
        if kind == "choice":
            index = None
            for i, item in enumerate(v):
                if isinstance(item, dict) and "_name" in item:
                    if isinstance(got, dict) and got.get("_name") == item["_name"]:
                        index = i
                        sub = {k: s for k, s in item.items() if k != "_name"}
                        vals.update(_vals(sub, got, f"{label}/{item['_name']}/"))
                        break
                elif item == got:
                    index = i
                    break
            if index is not None:
                vals[label] = index
        elif isinstance(got, int | float) and not isinstance(got, bool):
            vals[label] = got
    return vals


class HyperoptTuner(Tuner):
    """NNI's HyperoptTuner: ``algorithm_name`` is ``anneal`` or ``tpe`` (``random_search`` works too)."""

    def __init__(
        self,
        algorithm_name: str = "anneal",
        optimize_mode: str = "minimize",
        parallel_optimize: bool = False,
        constant_liar_type: str = "min",
        seed: int | None = None,
    ) -> None:
        from hyperopt import anneal, rand, tpe

        algos = {"anneal": anneal.suggest, "tpe": tpe.suggest, "random_search": rand.suggest}
        if algorithm_name not in algos:
            raise ValueError(f"algorithm_name must be one of {', '.join(algos)}, got {algorithm_name!r}")
        if constant_liar_type not in ("min", "max", "mean"):
            raise ValueError(f"constant_liar_type must be min, max or mean, got {constant_liar_type!r}")
        self.algorithm_name = algorithm_name
        self.algo = algos[algorithm_name]
        self.optimize_mode = optimize_mode
        self.rng = np.random.default_rng(seed)
        self.space: dict[str, Any] = {}
        self.trials: Any = None
        self.domain: Any = None
        self.hp: dict[str, Any] = {}
        self.tids: dict[int, int] = {}

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        from hyperopt import Domain, Trials

        self.space = validate_search_space(search_space)
        self.hp = _hp_space(self.space)
        self.domain = Domain(lambda _: 0.0, self.hp)
        self.trials = Trials()

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        from hyperopt import space_eval

        tid = self.trials.new_trial_ids(1)
        docs = self.algo(tid, self.domain, self.trials, int(self.rng.integers(2**31)))
        self.trials.insert_trial_docs(docs)
        self.trials.refresh()
        self.tids[parameter_id] = tid[0]
        vals = {k: v[0] for k, v in docs[0]["misc"]["vals"].items() if len(v)}
        return _finish_all(self.space, space_eval(self.hp, vals))

    def _loss(self, value: Any) -> float | None:
        scalar = extract_scalar(value)
        if scalar is None:
            return None
        return -scalar if self.optimize_mode == "maximize" else scalar

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        from hyperopt import JOB_STATE_DONE, JOB_STATE_ERROR, STATUS_FAIL, STATUS_OK

        loss = self._loss(value)
        tid = self.tids.pop(parameter_id, None)
        if tid is None:
            self.import_data([{"parameter": parameters, "value": value}])
            return
        for doc in self.trials._dynamic_trials:
            if doc["tid"] == tid:
                if loss is None:
                    doc["state"], doc["result"] = JOB_STATE_ERROR, {"status": STATUS_FAIL}
                else:
                    doc["state"], doc["result"] = JOB_STATE_DONE, {"status": STATUS_OK, "loss": loss}
        self.trials.refresh()

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        from hyperopt import JOB_STATE_ERROR, STATUS_FAIL

        tid = self.tids.pop(parameter_id, None)
        if tid is None:
            return
        for doc in self.trials._dynamic_trials:
            if doc["tid"] == tid:
                doc["state"], doc["result"] = JOB_STATE_ERROR, {"status": STATUS_FAIL}
        self.trials.refresh()

    def import_data(self, data: list[dict[str, Any]]) -> None:
        from hyperopt import JOB_STATE_DONE, STATUS_OK

        labels = list(self.domain.params)
        for item in data:
            params = item.get("parameter")
            loss = self._loss(item.get("value"))
            if not isinstance(params, dict) or loss is None:
                continue
            vals = _vals(self.space, params)
            tid = self.trials.new_trial_ids(1)[0]
            misc = {
                "tid": tid,
                "cmd": self.domain.cmd,
                "workdir": None,
                "idxs": {k: ([tid] if k in vals else []) for k in labels},
                "vals": {k: ([vals[k]] if k in vals else []) for k in labels},
            }
            docs = self.trials.new_trial_docs([tid], [None], [{"status": STATUS_OK, "loss": loss}], [misc])
            for doc in docs:
                doc["state"] = JOB_STATE_DONE
            self.trials.insert_trial_docs(docs)
        self.trials.refresh()
