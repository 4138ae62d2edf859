"""Lost-trial detection: SIGKILL a trial's keeper and the trial, then time UNKNOWN and the terminal status.

Trials run under the keeper (LoopbackKeeperService, reporting to a ClusterServer over loopback). After
the kill, the server notices the missing heartbeats (``--heartbeat-timeout``) and the trial turns
UNKNOWN; the contract's ``unknown_timeout`` then fails it as an infrastructure failure. Baseline,
measured in the same run: the local platform, which sees its child die at once (pidfd), from SIGKILL
to FAILED. The last line holds both.

    python bench/bench_lost_trial.py [--trials 5] [--heartbeat 5] [--heartbeat-timeout 15] [--unknown-timeout 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import percentile  # noqa: E402

from nni_ts.models import HyperParameters, TrialJobApplicationForm, TrialJobDetail, TrialJobStatus  # noqa: E402
from nni_ts.platforms.local import LocalTrainingService  # noqa: E402
from nni_ts.server import ClusterServer  # noqa: E402
from nni_ts.server.loopback import LoopbackKeeperService  # noqa: E402

TRIAL = """
import socket, sys, nni
nni.get_next_parameter()
nni.report_intermediate_result(1)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"%d\\n" % __import__("os").getpid())
s.recv(1)
"""


def form() -> TrialJobApplicationForm:
    params = {"parameter_id": 1, "parameter_source": "algorithm", "parameters": {}, "parameter_index": 0}
    return TrialJobApplicationForm(sequence_id=0, hyper_parameters=HyperParameters(value=json.dumps(params)))


async def measure(service: Any, trials: int, sock_path: str, keeper: bool) -> tuple[list[float], list[float]]:
    """Seconds from SIGKILL to UNKNOWN (keeper only) and to the terminal status, per trial."""
    pids: asyncio.Queue[int] = asyncio.Queue()
    closed: asyncio.Queue[None] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await pids.put(int(await reader.readline()))
        await reader.read()  # hold the connection until the trial dies
        writer.close()
        await closed.put(None)

    server = await asyncio.start_unix_server(on_client, path=sock_path)
    killed: dict[str, float] = {}
    unknown: dict[str, float] = {}
    final: dict[str, float] = {}
    finished = asyncio.Event()

    def on_status(detail: TrialJobDetail) -> None:
        if detail.id not in killed:
            return
        if detail.status is TrialJobStatus.UNKNOWN:
            unknown[detail.id] = time.monotonic() - killed[detail.id]
        elif detail.status.is_terminal:
            final[detail.id] = time.monotonic() - killed[detail.id]
            if not detail.infrastructure_failure and keeper:
                print(f"unexpected: {detail.status} {detail.message}", file=sys.stderr)
            if len(final) == trials:
                finished.set()

    service.events.on("trial_status", on_status)
    async with service:
        details = [await service.submit_trial_job(form()) for _ in range(trials)]
        trial_pids = [await pids.get() for _ in details]
        by_session = {os.getsid(p): p for p in trial_pids}
        for detail in details:
            if keeper:
                keeper_pid = detail.platform_data["keeper_pid"]
                trial_sid = next(sid for sid in by_session if _parent_is(by_session[sid], keeper_pid))
                killed[detail.id] = time.monotonic()
                os.kill(keeper_pid, signal.SIGKILL)
                os.killpg(trial_sid, signal.SIGKILL)
            else:
                killed[detail.id] = time.monotonic()
                os.killpg(detail.platform_data["pid"], signal.SIGKILL)
        async with asyncio.timeout(600):
            await finished.wait()
            for _ in details:
                await closed.get()
    server.close()
    await server.wait_closed()
    return list(unknown.values()), list(final.values())


def _parent_is(pid: int, parent: int) -> bool:
    """Whether ``parent`` is an ancestor of ``pid`` (the trial runs under /bin/sh under the keeper)."""
    import psutil

    try:
        return any(p.pid == parent for p in psutil.Process(pid).parents())
    except psutil.NoSuchProcess:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--heartbeat", type=float, default=5.0, help="keeper heartbeat interval, s")
    parser.add_argument("--heartbeat-timeout", type=float, default=15.0, help="server's lost-trial time-out, s")
    parser.add_argument("--unknown-timeout", type=float, default=15.0, help="UNKNOWN to FAILED, s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nnits-lost-", dir="/tmp") as tmp:
        root = Path(tmp)
        (root / "trial.py").write_text(TRIAL)
        command = f"{sys.executable} trial.py {root / 's'}"
        config = {"trialCommand": command, "trialCodeDirectory": str(root)}

        async def keeper_run() -> tuple[list[float], list[float]]:
            async with ClusterServer(heartbeat_timeout=args.heartbeat_timeout) as server:
                service = LoopbackKeeperService(
                    config, server=server, heartbeat=args.heartbeat, experiment_dir=root / "exp-keeper"
                )
                service.unknown_timeout = args.unknown_timeout
                return await measure(service, args.trials, str(root / "s"), keeper=True)

        async def local_run() -> tuple[list[float], list[float]]:
            service = LocalTrainingService(config, experiment_dir=root / "exp-local")
            return await measure(service, args.trials, str(root / "s"), keeper=False)

        to_unknown, to_final = asyncio.run(keeper_run())
        (root / "s").unlink(missing_ok=True)
        _, base = asyncio.run(local_run())
    print(
        f"settings: heartbeat {args.heartbeat:g} s, heartbeat time-out {args.heartbeat_timeout:g} s, "
        f"unknown time-out {args.unknown_timeout:g} s, {args.trials} trials"
    )
    print(f"SIGKILL -> UNKNOWN: p50 {percentile(to_unknown, 50):.2f} s max {max(to_unknown):.2f} s")
    print(f"SIGKILL -> FAILED (infrastructure): p50 {percentile(to_final, 50):.2f} s max {max(to_final):.2f} s")
    print(
        f"lost trial: SIGKILL->UNKNOWN p50 {percentile(to_unknown, 50):.2f} s (bound {args.heartbeat_timeout:g}+1), "
        f"->FAILED p50 {percentile(to_final, 50):.2f} s (bound {args.heartbeat_timeout + args.unknown_timeout:g}+1); "
        f"baseline local platform (sees the child die) SIGKILL->FAILED p50 {percentile(base, 50) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
