"""Helpers shared by the benchmarks: percentiles and a trivial NNI trial."""

from __future__ import annotations

import statistics

TRIVIAL_TRIAL = "import nni\np = nni.get_next_parameter()\nnni.report_final_result(p.get('x', 0))\n"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary(values: list[float]) -> str:
    return (f"p50={percentile(values, 50):.2f} p99={percentile(values, 99):.2f} "
            f"mean={statistics.fmean(values):.2f} max={max(values):.2f}")
