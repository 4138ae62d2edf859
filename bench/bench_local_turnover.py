"""Trial turnover of LocalTrainingService against a bare ``xargs -P4`` spawn of the same command.

200 trivial trials (read parameters, report one final result) at concurrency 4, as the contract issue
asks. The baseline runs the same Python command with the same NNI environment through xargs, in the
same run. The last line prints both throughputs and their ratio (target: at least 0.9).

    python bench/bench_local_turnover.py [--trials 200] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TRIVIAL_TRIAL, bare_xargs  # noqa: E402

from nni_ts.models import TrialJobDetail  # noqa: E402
from nni_ts.platforms.local import LocalTrainingService  # noqa: E402
from nni_ts.testing.conformance import form  # noqa: E402


async def ours(code: Path, trials: int, concurrency: int) -> float:
    svc = LocalTrainingService({"trialCommand": "python3 trial.py", "trialCodeDirectory": str(code)},
                               experiment_dir=code / "exp")
    done = asyncio.Event()
    finished = 0
    submitted = 0
    metrics = 0

    def on_metric(_m: object) -> None:
        nonlocal metrics
        metrics += 1

    async def submit_next() -> None:
        nonlocal submitted
        if submitted < trials:
            submitted += 1
            await svc.submit_trial_job(form({"x": submitted}, submitted))

    pending: set[asyncio.Task[None]] = set()

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
        svc.add_trial_job_metric_listener(on_metric)
        svc.events.on("trial_status", on_status)
        start = time.perf_counter()
        for _ in range(concurrency):
            await submit_next()
        await done.wait()
        elapsed = time.perf_counter() - start
    assert metrics == trials, f"{metrics} metrics for {trials} trials"
    failed = [t for t in await svc.list_trial_jobs() if t.status.value != "SUCCEEDED"]
    assert not failed, failed[0].message
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp)
        (code / "trial.py").write_text(TRIVIAL_TRIAL)
        bare_xargs(code, 8, args.concurrency)  # warm the page cache
        t_bare = bare_xargs(code, args.trials, args.concurrency)
        t_ours = asyncio.run(ours(code, args.trials, args.concurrency))
    bare_tp, ours_tp = args.trials / t_bare, args.trials / t_ours
    print(f"local turnover: {args.trials} trials at concurrency {args.concurrency}: "
          f"nni-ts {ours_tp:.1f} trials/s ({t_ours:.2f} s), bare xargs -P{args.concurrency} {bare_tp:.1f} trials/s "
          f"({t_bare:.2f} s), ratio {ours_tp / bare_tp:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
