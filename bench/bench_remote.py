"""Remote platform over loopback SSH (two real sshd hosts) against the local platform, in the same run.

1. Turnover: ``--trials`` trivial trials (read parameters, report one final result) at
   ``--concurrency``, on the remote platform (two sshd hosts on 127.0.0.1, keepers reporting
   through reverse tunnels) and on the local platform. Target: remote >= 0.8 of local's throughput.
2. Submit-to-RUNNING latency, p50/p99, after ``--warmup`` trials, one trial at a time
   (``--latency-trials``), with the local platform's as the baseline.

Both platforms run the same interpreter (the remote hosts get it through ``pythonPath``).
The last line prints the figures and the ratio.

``--profile`` also says where the time goes: the CPU seconds per trial of the manager, the hosts'
sshd, the host agents, the keepers and the trials themselves during the remote turnover (the local
platform's manager and trials as the baseline), and the median of each stage of one trial at a time
(manager to agent, agent to keeper, keeper start, the trial, the reports back), from timestamps the
agent and keeper leave in each trial directory.

    python bench/bench_remote.py [--trials 200] [--concurrency 8] [--latency-trials 50] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

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


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


_KEEPER_CPU = re.compile(r"CPU: keeper ([0-9.]+) s, trial ([0-9.]+) s")


async def profile_turnover(svc: Any, cluster: SshdCluster, trials: int, concurrency: int) -> dict[str, float]:
    """CPU seconds per trial of each part during a turnover of ``svc`` (remote, or local with cluster None)."""
    done = asyncio.Event()
    finished = submitted = 0

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
                svc.tasks.spawn(submit_next(), name="bench-submit")

    async with svc:
        warm = await svc.submit_trial_job(form({"x": 0}, 0))
        while not (await svc.get_trial_job(warm.id)).status.is_terminal:
            await asyncio.sleep(0.05)
        sshd = [p for h in cluster.hosts for p in h.sshd_processes()] if cluster else []
        agents = [psutil.Process(h.agent.pid) for h in getattr(svc, "_hosts", []) if h.agent and h.agent.pid]
        cpu0 = (time.process_time(), _cpu(sshd), _cpu(agents), resource.getrusage(resource.RUSAGE_CHILDREN))
        svc.events.on("trial_status", on_status)
        wall = time.perf_counter()
        for _ in range(concurrency):
            await submit_next()
        await asyncio.wait_for(done.wait(), 600)
        wall = time.perf_counter() - wall
        cpu1 = (time.process_time(), _cpu(sshd), _cpu(agents), resource.getrusage(resource.RUSAGE_CHILDREN))
    out = {"wall": wall / trials, "manager": (cpu1[0] - cpu0[0]) / trials}
    if cluster is None:
        r0, r1 = cpu0[3], cpu1[3]
        out["trial"] = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / trials
        return out
    out["sshd"] = (cpu1[1] - cpu0[1]) / trials
    out["agent"] = (cpu1[2] - cpu0[2]) / trials
    keeper = trial = 0.0
    for h in cluster.hosts:
        for log_file in h.work_dir.glob(f"experiments/{svc.experiment_id}/trials/*/.nni-ts/keeper.log"):
            m = _KEEPER_CPU.search(log_file.read_text(errors="replace"))
            if m and not log_file.parent.parent.name.startswith(warm.id):
                keeper += float(m.group(1))
                trial += float(m.group(2))
    out["keeper"] = keeper / trials
    out["trial"] = trial / trials
    return out


async def profile_stages(svc: Any, count: int) -> dict[str, float]:
    """The median milliseconds of each stage of a remote trial, one trial at a time."""
    stages: dict[str, list[float]] = {}
    async with svc:
        for i in range(count + 2):
            seen: dict[str, float] = {}
            ended = asyncio.get_running_loop().create_future()

            def on_status(d: TrialJobDetail, seen: dict[str, float] = seen, ended: Any = ended) -> None:
                if d.status is TrialJobStatus.RUNNING:
                    seen.setdefault("running", time.time())
                if d.status.is_terminal and not ended.done():
                    seen["end"] = time.time()
                    ended.set_result(d)

            svc.events.on("trial_status", on_status)
            t0 = time.time()
            await svc.submit_trial_job(form({"x": i}, i))
            detail = await asyncio.wait_for(ended, 60)
            svc.events.remove_listener("trial_status", on_status)
            if i < 2:
                continue  # warm-up: code upload
            trial_dir = Path(detail.platform_data["trial_dir"])
            state = trial_dir / ".nni-ts"
            received = (trial_dir / "parameter.cfg").stat().st_mtime
            forked = (state / "launched").stat().st_mtime
            started = json.loads((state / "pid").read_text())["start_time_ms"] / 1000
            exited = json.loads((state / "exit").read_text())["end_time_ms"] / 1000
            for name, value in (
                ("manager to agent (dispatch, SSH)", received - t0),
                ("agent: files and fork", forked - received),
                ("keeper start", started - forked),
                ("trial (sh, python, import nni, report)", exited - started),
                ("submit to RUNNING (the launch's answer)", seen["running"] - t0),
                ("end report back (tunnel, server, store)", seen["end"] - exited),
                ("submit to end", seen["end"] - t0),
            ):
                stages.setdefault(name, []).append(value * 1000)
    return {k: statistics.median(v) for k, v in stages.items()}


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
    parser.add_argument("--profile", action="store_true", help="also say where the time and the CPU go")
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
            if args.profile:
                n = args.trials
                cpu_local = asyncio.run(profile_turnover(local(base / "local-p"), None, n, args.concurrency))
                cpu_remote = asyncio.run(profile_turnover(remote(base / "remote-p"), cluster, n, args.concurrency))
                stages = asyncio.run(profile_stages(remote(base / "remote-s"), args.latency_trials))
                print("CPU ms per trial during a turnover (wall ms per trial first):")
                print("  local:  " + ", ".join(f"{k} {v * 1000:.1f}" for k, v in cpu_local.items()))
                print("  remote: " + ", ".join(f"{k} {v * 1000:.1f}" for k, v in cpu_remote.items()))
                print(f"stages of one remote trial at a time (median ms of {args.latency_trials}):")
                for name, ms in stages.items():
                    print(f"  {name}: {ms:.1f}")
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
