"""The tuner off the event loop: the loop's overhead per trial and its longest stall, with TPE.

1. Local platform: ``--local`` no-op NNI trials (read the parameters, report one result) at
   concurrency 4 through ``nni_ts.Experiment`` with TPE, against a bare ``xargs -P4`` spawn of the
   same command in the same run: overhead per trial as a share of a bare spawn (target <= 10%).
2. In-process trials (``nni_ts.testing.inmemory``, no process spawned): ``--inmemory`` trials with TPE
   through the whole loop (tuner thread, store, service), then the same with every tuner call made on
   the loop (the baseline: how the loop worked before the tuner thread).

In both, a probe task on the loop sleeps 5 ms over and over and records how late it wakes: the
loop's longest stall (target: none over 50 ms at any size). The store is on tmpfs when /dev/shm
exists (its fsyncs on a busy disk are the store's cost, measured by bench_store.py).

    python bench/bench_tuner_loop.py [--local 1000] [--inmemory 10000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import TRIVIAL_TRIAL, bare_xargs, percentile  # noqa: E402

from nni_ts.experiment import Experiment  # noqa: E402
from nni_ts.experiment.algo_worker import AlgoWorker  # noqa: E402
from nni_ts.storage import open_store  # noqa: E402
from nni_ts.testing.inmemory import InMemoryTrainingService  # noqa: E402


def _inline_call(self: AlgoWorker, fn: Any, *args: Any) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:
        future.set_exception(exc)
    return future


async def _with_probe(exp: Experiment) -> tuple[float, list[float]]:
    lags: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    task = asyncio.create_task(probe())
    start = time.perf_counter()
    result = await exp.run()
    elapsed = time.perf_counter() - start
    done.set()
    await task
    ok = sum(1 for t in result.trials if t.final_value is not None)
    assert ok == len(result.trials), f"only {ok} of {len(result.trials)} trials reported"
    return elapsed, lags


def _config(code: Path, trials: int, concurrency: int) -> dict[str, Any]:
    return {
        "searchSpace": {
            "x": {"_type": "uniform", "_value": [0, 1]},
            "lr": {"_type": "loguniform", "_value": [1e-4, 1]},
            "opt": {"_type": "choice", "_value": ["sgd", "adam"]},
        },
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": concurrency,
        "maxTrialNumber": trials,
        "tuner": {"name": "TPE", "classArgs": {"seed": 1}},
        "trainingService": {"platform": "local"},
    }


def _stalls(lags: list[float]) -> str:
    return (
        f"longest loop stall {max(lags) * 1000:.1f} ms (p99 {percentile(lags, 99) * 1000:.1f} ms, {len(lags)} probes)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", type=int, default=1000, help="trials on the local platform (0: skip)")
    parser.add_argument("--inmemory", type=int, default=10000, help="in-process trials (0: skip)")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir=shm) as fast:
        os.environ["NNI_TS_HOME"] = str(Path(tmp) / "home")
        code = Path(tmp)
        (code / "trial.py").write_text(TRIVIAL_TRIAL)
        if args.local:
            bare_xargs(code, 8, args.concurrency)  # warm the page cache
            t_bare = bare_xargs(code, args.local, args.concurrency)
            store = open_store(Path(fast) / "local.db")
            exp = Experiment(_config(code, args.local, args.concurrency), store=store, control_socket=False)
            t_ours, lags = asyncio.run(_with_probe(exp))
            store.close()
            per_bare, per_ours = t_bare / args.local * 1000, t_ours / args.local * 1000
            overhead = per_ours - per_bare
            print(
                f"local, TPE, {args.local} trials at concurrency {args.concurrency}: nni-ts {per_ours:.2f} ms/trial "
                f"({t_ours:.1f} s), bare xargs -P{args.concurrency} {per_bare:.2f} ms/trial ({t_bare:.1f} s), "
                f"overhead {overhead:.2f} ms/trial = {overhead / per_bare * 100:.1f}% of a bare spawn "
                f"(target <= 10%); {_stalls(lags)}",
                flush=True,
            )
        for inline in (False, True) if args.inmemory else ():
            if inline:
                # the baseline: every tuner call on the loop, as before the tuner thread
                AlgoWorker.call = _inline_call  # type: ignore[method-assign]
            store = open_store(Path(fast) / f"inmemory-{inline}.db")
            exp = Experiment(
                _config(code, args.inmemory, args.concurrency),
                store=store,
                service=InMemoryTrainingService(duration=0.0),
                control_socket=False,
            )
            elapsed, lags = asyncio.run(_with_probe(exp))
            store.close()
            how = "tuner ON the loop (baseline)" if inline else "tuner in its thread"
            print(
                f"in-process, TPE, {args.inmemory} trials at concurrency {args.concurrency}, {how}: {elapsed:.1f} s "
                f"({elapsed / args.inmemory * 1000:.2f} ms/trial); {_stalls(lags)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
