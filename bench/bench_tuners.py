"""Quality of every built-in tuner: best value found on Branin, Hartmann-6 and a mixed space, against
Random and against NNI 3.0's own tuner of the same name (where it installs: NNI_TS_REAL_NNI_PYTHON).

Each tuner gets ``--budget`` trials (one at a time) for each of ``--seeds`` seeds; the table shows the
median best value (lower is better: every function is minimised) and, in brackets, NNI's median for
the same name. Run: ``python3 bench/bench_tuners.py [--budget 20 --seeds 3]``.

The script runs itself under NNI's Python with ``--nni NAME`` to measure NNI's tuners.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def branin(p: dict[str, Any]) -> float:
    x1, x2 = p["x1"], p["x2"]
    a, b, c, r, s, t = 1, 5.1 / (4 * math.pi**2), 5 / math.pi, 6, 10, 1 / (8 * math.pi)
    return float(a * (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s)


_H_A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
_H_P = [
    [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
    [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
    [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
    [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
]


def hartmann6(p: dict[str, Any]) -> float:
    x = [p[f"x{i}"] for i in range(6)]
    total = 0.0
    for alpha, a, pp in zip((1.0, 1.2, 3.0, 3.2), _H_A, _H_P, strict=True):
        total += alpha * math.exp(-sum(a[j] * (x[j] - pp[j]) ** 2 for j in range(6)))
    return -total


def mixed(p: dict[str, Any]) -> float:
    """A choice of optimiser (sgd with its own lr and momentum, or adam with its lr), a batch-size choice,
    a layer count (randint) and a dropout (quniform); minimum 0 at sgd, lr 0.1, momentum 0.9."""
    opt = p["optimizer"]
    loss = 0.3 * abs(p["layers"] - 3) + (p["dropout"] - 0.2) ** 2 + {16: 0.2, 32: 0.0, 64: 0.1, 128: 0.4}[p["batch"]]
    if opt["_name"] == "sgd":
        loss += (math.log10(opt["lr"]) + 1) ** 2 + 3 * (opt["momentum"] - 0.9) ** 2
    else:
        loss += 0.3 + (math.log10(opt["lr"]) + 3) ** 2
    return float(loss)


PROBLEMS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], float], float]] = {
    "branin": (
        {"x1": {"_type": "uniform", "_value": [-5, 10]}, "x2": {"_type": "uniform", "_value": [0, 15]}},
        branin,
        0.397887,
    ),
    "hartmann6": ({f"x{i}": {"_type": "uniform", "_value": [0, 1]} for i in range(6)}, hartmann6, -3.32237),
    "mixed": (
        {
            "optimizer": {
                "_type": "choice",
                "_value": [
                    {
                        "_name": "sgd",
                        "lr": {"_type": "loguniform", "_value": [1e-4, 1]},
                        "momentum": {"_type": "uniform", "_value": [0, 0.99]},
                    },
                    {"_name": "adam", "lr": {"_type": "loguniform", "_value": [1e-5, 1e-1]}},
                ],
            },
            "batch": {"_type": "choice", "_value": [16, 32, 64, 128]},
            "layers": {"_type": "randint", "_value": [1, 6]},
            "dropout": {"_type": "quniform", "_value": [0, 0.5, 0.05]},
        },
        mixed,
        0.0,
    ),
}

#: nni-ts name -> (classArgs, NNI's class and classArgs if NNI's tuner can run here, else None)
TUNERS: dict[str, tuple[dict[str, Any], tuple[str, dict[str, Any]] | None]] = {
    "Random": ({}, ("nni.algorithms.hpo.random_tuner.RandomTuner", {})),
    "TPE": ({}, ("nni.algorithms.hpo.tpe_tuner.TpeTuner", {})),
    "TPE_legacy": ({}, None),  # NNI's needs hyperopt, which nni 3.0 does not install
    "Anneal": ({}, None),  # likewise
    "Evolution": (
        {"population_size": 8},
        ("nni.algorithms.hpo.evolution_tuner.EvolutionTuner", {"population_size": 8}),
    ),
    "RegularizedEvolutionTuner": ({"population_size": 8, "sample_size": 3}, None),  # NNI's takes NAS spaces only
    "GridSearch": ({}, ("nni.algorithms.hpo.gridsearch_tuner.GridSearchTuner", {})),
    "GP": ({"cold_start_num": 5}, ("nni.algorithms.hpo.gp_tuner.GPTuner", {"cold_start_num": 5})),
    "SMAC": ({}, None),  # NNI's needs smac 0.x (SMAC3 1.x API), not installable with nni 3.0
    "Metis": ({"cold_start_num": 5}, ("nni.algorithms.hpo.metis_tuner.MetisTuner", {"cold_start_num": 5})),
    "DNGO": ({"num_epochs_per_training": 100}, None),  # NNI's needs PyTorch and pybnn
    "Hyperband": ({}, None),  # advisors: no budget axis in these functions
    "BOHB": ({}, None),
}


def _run(make: Callable[[], Any], problem: str, budget: int, nni: bool) -> float:
    space, fn, _ = PROBLEMS[problem]
    tuner = make()
    tuner.update_search_space(space)
    best = math.inf
    for pid in range(budget):
        try:
            params = tuner.generate_parameters(pid)
        except Exception as exc:  # GridSearch running out; NNI's NoMoreTrialError
            if type(exc).__name__ == "NoMoreTrialError":
                break
            raise
        if nni and problem == "mixed":
            params = json.loads(json.dumps(params, default=float))
        value = fn(params)
        tuner.receive_trial_result(pid, params, -value if nni else value)
        if hasattr(tuner, "trial_end"):
            tuner.trial_end(pid, True)
        best = min(best, value)
    return best


def _nni_main(name: str, budget: int, seeds: int) -> None:
    """Under NNI's Python: NNI's own tuner (maximising the negated function: NNI's default mode)."""
    import importlib
    import random

    import numpy as np

    entry = TUNERS[name][1]
    assert entry is not None
    module, _, cls_name = entry[0].rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    out: dict[str, list[float]] = {}
    for problem in PROBLEMS:
        out[problem] = []
        for seed in range(seeds):
            random.seed(seed)
            np.random.seed(seed)
            args = dict(entry[1])
            if name not in ("GridSearch",):
                args["optimize_mode"] = "maximize"
            if name in ("TPE", "Random"):
                args["seed"] = seed
            out[problem].append(_run(lambda args=args: cls(**args), problem, budget, nni=True))
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="tuner names to run (default: all)")
    ap.add_argument("--nni", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.nni:
        _nni_main(args.nni, args.budget, args.seeds)
        return
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from nni_ts.tuners import create_tuner

    real = os.environ.get("NNI_TS_REAL_NNI_PYTHON")
    names = args.only or list(TUNERS)
    rows: list[str] = []
    header = f"| tuner | {' | '.join(PROBLEMS)} | time (s) |"
    rows += [header, "|---" * (len(PROBLEMS) + 2) + "|"]
    random_medians: dict[str, float] = {}
    worse: list[str] = []
    for name in ["Random"] + [n for n in names if n != "Random"]:
        class_args, nni_entry = TUNERS[name]
        started = time.monotonic()
        cells = []
        nni_out: dict[str, list[float]] | None = None
        if real and nni_entry is not None:
            proc = subprocess.run(
                [
                    real,
                    os.path.abspath(__file__),
                    "--nni",
                    name,
                    "--budget",
                    str(args.budget),
                    "--seeds",
                    str(args.seeds),
                ],
                capture_output=True,
                text=True,
                timeout=1200,
            )
            if proc.returncode == 0:
                nni_out = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                print(f"NNI's {name} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        options = {"optimize_mode": "minimize", **class_args}
        for problem in PROBLEMS:
            bests = [
                _run(
                    lambda name=name, options=options, space=PROBLEMS[problem][0], seed=seed: create_tuner(
                        name, class_args=options, search_space=space, seed=seed
                    ),
                    problem,
                    args.budget,
                    nni=False,
                )
                for seed in range(args.seeds)
            ]
            med = statistics.median(bests)
            if name == "Random":
                random_medians[problem] = med
            cell = f"{med:.3f}"
            if nni_out is not None:
                theirs = statistics.median(nni_out[problem])
                cell += f" [{theirs:.3f}]"
                if med > theirs + 1e-9:
                    worse.append(f"{name} on {problem}: {med:.3f} vs NNI {theirs:.3f}")
            if name != "Random":
                cell += " ✓" if med < random_medians[problem] else " ✗"
            cells.append(cell)
        rows.append(f"| {name} | {' | '.join(cells)} | {time.monotonic() - started:.1f} |")
        print(rows[-1], flush=True)
    print()
    print(f"budget {args.budget} trials, {args.seeds} seeds, median best (lower is better); [NNI 3.0's own];")
    print(
        "✓ = better than Random's median in the same run. Optima: "
        + ", ".join(f"{k} {v[2]}" for k, v in PROBLEMS.items())
    )
    print("\n".join(rows))
    if worse:
        print("\nworse than NNI's own tuner:\n  " + "\n  ".join(worse))


if __name__ == "__main__":
    main()
