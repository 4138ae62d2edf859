"""Remote platform over loopback SSH (two real sshd hosts) against the local platform, in the same run.

1. Turnover: ``--trials`` trivial trials (read parameters, report one final result) at
   ``--concurrency``, on the remote platform (two sshd hosts on 127.0.0.1, keepers reporting
   through reverse tunnels) and on the local platform. Target: remote >= 0.8 of local's throughput.
2. Submit-to-RUNNING latency, p50/p99, after ``--warmup`` trials, one trial at a time
   (``--latency-trials``), with the local platform's as the baseline.

Both platforms run the same interpreter (the remote hosts get it through ``pythonPath``).
The last line prints the figures and the ratio.

    python bench/bench_remote.py [--trials 200] [--concurrency 8] [--latency-trials 50]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TRIVIAL_TRIAL, percentile, service_turnover  # noqa: E402

from nni_ts.models import TrialJobDetail, TrialJobStatus  # noqa: E402
from nni_ts.platforms.local import LocalTrainingService  # noqa: E402
from nni_ts.platforms.remote import RemoteTrainingService  # noqa: E402
from nni_ts.testing.conformance import form  # noqa: E402
from nni_ts.testing.sshd import SshdCluster  # noqa: E402

PYTHON_DIR = os.path.dirname(sys.executable)
COMMAND = "python3 trial.py"

Factory = Callable[[Path], Any]


async def turnover(make: Factory, exp_dir: Path, trials: int, concurrency: int) -> float:
    # Warm-up: code upload and first connections are not part of the turnover.
    return await service_turnover(make(exp_dir), trials, concurrency, warmup=True)


async def latency(make: Factory, exp_dir: Path, warmup: int, count: int) -> list[float]:
    svc = make(exp_dir)
    out: list[float] = []
    async with svc:
        for i in range(warmup + count):
            running = asyncio.get_running_loop().create_future()
            ended = asyncio.get_running_loop().create_future()

            def on_status(d: TrialJobDetail, running: Any = running, ended: Any = ended) -> None:
                if d.status is TrialJobStatus.RUNNING and not running.done():
                    running.set_result(time.perf_counter())
                if d.status.is_terminal and not ended.done():
                    ended.set_result(d)

            svc.events.on("trial_status", on_status)
            t0 = time.perf_counter()
            await svc.submit_trial_job(form({"x": i}, i))
            t1 = await asyncio.wait_for(running, 60)
            await asyncio.wait_for(ended, 60)
            svc.events.remove_listener("trial_status", on_status)
            if i >= warmup:
                out.append((t1 - t0) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reporting",
        choices=["tunnel", "direct"],
        default="tunnel",
        help="how keepers reach the manager (the platform's keeperReporting)",
    )
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--latency-trials", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        code = base / "code"
        code.mkdir()
        (code / "trial.py").write_text(TRIVIAL_TRIAL)
        os.environ["PATH"] = PYTHON_DIR + os.pathsep + os.environ.get("PATH", "")
        with SshdCluster(base / "sshd", count=2) as cluster:

            def remote(exp_dir: Path) -> RemoteTrainingService:
                return RemoteTrainingService(
                    {
                        "platform": "remote",
                        "trialCommand": COMMAND,
                        "trialCodeDirectory": str(code),
                        "knownHostsFile": str(cluster.known_hosts),
                        "keeperReporting": args.reporting,
                        "machineList": [
                            h.machine(workDirectory=str(h.work_dir), pythonPath=PYTHON_DIR) for h in cluster.hosts
                        ],
                    },
                    experiment_dir=exp_dir,
                )

            def local(exp_dir: Path) -> LocalTrainingService:
                return LocalTrainingService(
                    {"trialCommand": COMMAND, "trialCodeDirectory": str(code)}, experiment_dir=exp_dir
                )

            t_local = asyncio.run(turnover(local, base / "local-t", args.trials, args.concurrency))
            t_remote = asyncio.run(turnover(remote, base / "remote-t", args.trials, args.concurrency))
            lat_local = asyncio.run(latency(local, base / "local-l", args.warmup, args.latency_trials))
            lat_remote = asyncio.run(latency(remote, base / "remote-l", args.warmup, args.latency_trials))
    tp_local, tp_remote = args.trials / t_local, args.trials / t_remote
    print(
        f"submit-to-RUNNING ({args.latency_trials} trials after {args.warmup} warm-up, one at a time): "
        f"remote p50 {percentile(lat_remote, 50):.1f} ms p99 {percentile(lat_remote, 99):.1f} ms; "
        f"local p50 {percentile(lat_local, 50):.1f} ms p99 {percentile(lat_local, 99):.1f} ms"
    )
    print(
        f"remote turnover: {args.trials} trivial trials at concurrency {args.concurrency} over two loopback "
        f"SSH hosts: remote {tp_remote:.1f} trials/s ({t_remote:.2f} s), local {tp_local:.1f} trials/s "
        f"({t_local:.2f} s), ratio {tp_remote / tp_local:.3f} (target >= 0.8); submit-to-RUNNING remote "
        f"p50 {percentile(lat_remote, 50):.1f} ms p99 {percentile(lat_remote, 99):.1f} ms, "
        f"local p50 {percentile(lat_local, 50):.1f} ms p99 {percentile(lat_local, 99):.1f} ms"
    )


if __name__ == "__main__":
    main()
