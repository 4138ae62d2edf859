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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TRIVIAL_TRIAL, bare_xargs, service_turnover  # noqa: E402

from nni_ts.platforms.local import LocalTrainingService  # noqa: E402


async def ours(code: Path, trials: int, concurrency: int) -> float:
    svc = LocalTrainingService(
        {"trialCommand": "python3 trial.py", "trialCodeDirectory": str(code)}, experiment_dir=code / "exp"
    )
    return await service_turnover(svc, trials, concurrency)


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
    print(
        f"local turnover: {args.trials} trials at concurrency {args.concurrency}: "
        f"nni-ts {ours_tp:.1f} trials/s ({t_ours:.2f} s), bare xargs -P{args.concurrency} {bare_tp:.1f} trials/s "
        f"({t_bare:.2f} s), ratio {ours_tp / bare_tp:.3f} (target >= 0.9)"
    )


if __name__ == "__main__":
    main()
