"""Bookkeeping overhead of the whole experiment loop (tuner, store, local platform) per trial.

2,000 no-op NNI trials (read the parameters, report one final result) at concurrency 4 through
``nni_ts.Experiment`` with the Random tuner, against a bare ``xargs -P4`` spawn of the same command in
the same run. The overhead per trial is (loop time - bare time) / trials, and its share of the bare
spawn time per trial is what the issue bounds (target: at most 10%).

    python bench/bench_overhead.py [--trials 2000] [--concurrency 4] [--tuner Random]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TRIVIAL_TRIAL, bare_xargs  # noqa: E402

from nni_ts.experiment import Experiment  # noqa: E402
from nni_ts.storage import open_store  # noqa: E402


def ours(code: Path, trials: int, concurrency: int, tuner: str) -> tuple[float, float]:
    config = {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": concurrency,
        "maxTrialNumber": trials,
        "tuner": {"name": tuner, "classArgs": {"seed": 1}},
        "trainingService": {"platform": "local"},
    }
    store = open_store(code / "bench.db")
    exp = Experiment(config, store=store)
    cpu0 = time.process_time()
    start = time.perf_counter()
    result = asyncio.run(exp.run())
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    ok = [t for t in result.trials if t.status.value == "SUCCEEDED" and t.final_value is not None]
    assert len(ok) == trials, f"only {len(ok)} of {trials} trials succeeded with a result"
    store.close()
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tuner", default="Random")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NNI_TS_HOME"] = str(Path(tmp) / "home")
        code = Path(tmp)
        (code / "trial.py").write_text(TRIVIAL_TRIAL)
        bare_xargs(code, 8, args.concurrency)  # warm the page cache
        t_bare = bare_xargs(code, args.trials, args.concurrency)
        t_ours, cpu = ours(code, args.trials, args.concurrency, args.tuner)
    per_bare = t_bare / args.trials * 1000
    per_ours = t_ours / args.trials * 1000
    overhead = per_ours - per_bare
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"manager CPU {cpu / args.trials * 1000:.2f} ms per trial, peak RSS {rss:.0f} MB")
    print(
        f"loop overhead: {args.trials} trials at concurrency {args.concurrency} ({args.tuner}): "
        f"nni-ts {per_ours:.2f} ms/trial ({t_ours:.1f} s), bare xargs -P{args.concurrency} {per_bare:.2f} ms/trial "
        f"({t_bare:.1f} s), overhead {overhead:.2f} ms/trial = {overhead / per_bare * 100:.1f}% of a bare spawn "
        f"(target <= 10%)"
    )


if __name__ == "__main__":
    main()
