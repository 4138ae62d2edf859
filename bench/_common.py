"""Helpers shared by the benchmarks: percentiles, a trivial NNI trial and the bare `xargs -P` baseline."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

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


def bare_xargs(code: Path, trials: int, concurrency: int, script: str = "trial.py") -> float:
    """Seconds for ``xargs -P<concurrency>`` to run ``python3 <script>`` ``trials`` times in ``code``.

    The baseline of the turnover benchmarks: the same trial, with NNI's environment and the light
    ``nni`` module, and nothing of ours around it.
    """
    import trial_keeper

    sys_dir = code / "bare-sys"
    (sys_dir / ".nni").mkdir(parents=True, exist_ok=True)
    (sys_dir / "parameter.cfg").write_text(json.dumps({"parameter_id": 0, "parameters": {"x": 1}}))
    env = dict(os.environ, NNI_PLATFORM="local", NNI_SYS_DIR=str(sys_dir), NNI_OUTPUT_DIR=str(sys_dir),
               NNI_TRIAL_JOB_ID="bare", NNI_EXP_ID="bare", NNI_TRIAL_SEQ_ID="0",
               PYTHONPATH=trial_keeper.LIGHT_NNI_PATH)
    start = time.perf_counter()
    subprocess.run(
        ["xargs", f"-P{concurrency}", "-I{}", "python3", script],
        input="\n".join(str(i) for i in range(trials)) + "\n", text=True, cwd=code, env=env, check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start
