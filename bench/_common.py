"""Helpers shared by the benchmarks: percentiles, a trivial NNI trial and the bare `xargs -P` baseline."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

TRIVIAL_TRIAL = "import nni\np = nni.get_next_parameter()\nnni.report_final_result(p.get('x', 0))\n"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary(values: list[float]) -> str:
    return (
        f"p50={percentile(values, 50):.2f} p99={percentile(values, 99):.2f} "
        f"mean={statistics.fmean(values):.2f} max={max(values):.2f}"
    )


def bare_xargs(code: Path, trials: int, concurrency: int, script: str = "trial.py") -> float:
    """Seconds for ``xargs -P<concurrency>`` to run ``python3 <script>`` ``trials`` times in ``code``.

    The baseline of the turnover benchmarks: the same trial, with NNI's environment and the light
    ``nni`` module, and nothing of ours around it.
    """
    import trial_keeper

    sys_dir = code / "bare-sys"
    (sys_dir / ".nni").mkdir(parents=True, exist_ok=True)
    (sys_dir / "parameter.cfg").write_text(json.dumps({"parameter_id": 0, "parameters": {"x": 1}}))
    env = dict(
        os.environ,
        NNI_PLATFORM="local",
        NNI_SYS_DIR=str(sys_dir),
        NNI_OUTPUT_DIR=str(sys_dir),
        NNI_TRIAL_JOB_ID="bare",
        NNI_EXP_ID="bare",
        NNI_TRIAL_SEQ_ID="0",
        PYTHONPATH=trial_keeper.LIGHT_NNI_PATH,
    )
    start = time.perf_counter()
    subprocess.run(
        ["xargs", f"-P{concurrency}", "-I{}", "python3", script],
        input="\n".join(str(i) for i in range(trials)) + "\n",
        text=True,
        cwd=code,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


async def service_turnover(svc: Any, trials: int, concurrency: int, *, warmup: bool = False) -> float:
    """Seconds for ``svc`` (a TrainingService, not started) to run ``trials`` trivial trials, keeping
    ``concurrency`` of them in flight: each end submits the next. Checks one metric per trial and that
    every trial succeeded. ``warmup`` runs one trial first, untimed (code upload, first connections).
    """
    from nni_ts.models import TrialJobDetail, TrialJobStatus
    from nni_ts.testing.conformance import form

    done = asyncio.Event()
    finished = submitted = metrics = 0
    pending: set[asyncio.Task[None]] = set()

    def on_metric(_m: object) -> None:
        nonlocal metrics
        metrics += 1

    async def submit_next() -> None:
        nonlocal submitted
        if submitted < trials:
            submitted += 1
            await svc.submit_trial_job(form({"x": submitted}, submitted))

    def on_status(d: TrialJobDetail) -> None:
        nonlocal finished
        if d.status.is_terminal:
            finished += 1
            if finished == trials:
                done.set()
            else:
                t = asyncio.get_running_loop().create_task(submit_next())
                pending.add(t)
                t.add_done_callback(pending.discard)

    async with svc:
        if warmup:
            warm = await svc.submit_trial_job(form({"x": 0}, 0))
            while not (await svc.get_trial_job(warm.id)).status.is_terminal:
                await asyncio.sleep(0.05)
        svc.add_trial_job_metric_listener(on_metric)
        svc.events.on("trial_status", on_status)
        start = time.perf_counter()
        for _ in range(concurrency):
            await submit_next()
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - start
    assert metrics == trials, f"{metrics} metrics for {trials} trials"
    failed = [t for t in await svc.list_trial_jobs() if t.status is not TrialJobStatus.SUCCEEDED]
    assert not failed, failed[0].message
    return elapsed
