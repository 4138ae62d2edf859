"""The experiment service under load: 50 users at once, each creating an experiment of 20 quick
trials on the local platform and polling it until it ends.

Figures: the API's p50/p99 latency (creates and polls), the service's memory (RSS of the ``nni-ts
serve`` process), and the wall time. Baseline, in the same run: a trivial aiohttp handler (one
small JSON answer) in its own process, hit by the same 50 clients at the same pace with the same
number of requests. The last line holds both and their ratio.

    python bench/bench_service.py [--users 50] [--trials 20] [--concurrency 4] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import loop_lag_report, percentile  # noqa: E402

# `nni-ts serve` with a probe in every event loop it runs (see _common.install_loop_lag).
SERVE_WITH_PROBE = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from _common import install_loop_lag
install_loop_lag(sys.argv[1])
from nni_ts.cli import main
sys.exit(main(sys.argv[2:]))
"""

# A trial that only reports its final result (NNI's local metrics framing), so that the benchmark
# measures the service, not Python start-up.
TRIAL = (
    'r="{\\"parameter_id\\":0,\\"trial_job_id\\":\\"$NNI_TRIAL_JOB_ID\\",\\"type\\":\\"FINAL\\",'
    '\\"sequence\\":0,\\"value\\":\\"$NNI_TRIAL_SEQ_ID\\"}"; '
    'printf \'ME%06d%s\\n\' $((${#r}+1)) "$r" >> "$NNI_SYS_DIR/.nni/metrics"'
)

BASELINE_SERVER = """
import sys
from aiohttp import web

async def handle(request):
    return web.json_response({"id": request.match_info.get("id", "x"), "status": "RUNNING"})

app = web.Application()
app.router.add_get("/api/v1/experiments/{id}", handle)
app.router.add_post("/api/v1/workspaces/{ws}/experiments", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *a: print("ready", flush=True),
            access_log=None)
"""


def config(trials: int, concurrency: int) -> dict[str, Any]:
    return {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": TRIAL,
        "trialConcurrency": concurrency,
        "maxTrialNumber": trials,
        "tuner": {"name": "Random", "classArgs": {"optimize_mode": "maximize"}},
    }


class Sampler:
    """Peak RSS of one process, sampled every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> Sampler:
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def user_session(
    session: aiohttp.ClientSession,
    base: str,
    token: str | None,
    trials: int,
    concurrency: int,
    pace: float,
    polls: int | None,
    creates: list[float],
    reads: list[float],
) -> int:
    """Create an experiment, then poll it (until it ends, or ``polls`` times for the baseline)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    start = time.perf_counter()
    async with session.post(
        f"{base}/api/v1/workspaces/bench/experiments", json=config(trials, concurrency), headers=headers
    ) as resp:
        body = await resp.json()
        assert resp.status in (200, 201), body
    creates.append((time.perf_counter() - start) * 1000)
    n = 0
    while True:
        await asyncio.sleep(pace)
        start = time.perf_counter()
        async with session.get(f"{base}/api/v1/experiments/{body['id']}", headers=headers) as resp:
            shown = await resp.json()
            assert resp.status == 200, shown
        reads.append((time.perf_counter() - start) * 1000)
        n += 1
        if polls is not None:
            if n >= polls:
                return n
        elif shown["status"] != "RUNNING":
            assert shown["trialCounts"] == {"SUCCEEDED": trials}, shown
            return n


async def load(
    base: str, tokens: list[str | None], trials: int, concurrency: int, pace: float, polls: list[int] | None
) -> tuple[list[float], list[float], list[int], float]:
    creates: list[float] = []
    reads: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        counts = await asyncio.gather(
            *(
                user_session(session, base, tok, trials, concurrency, pace, polls[i] if polls else None, creates, reads)
                for i, tok in enumerate(tokens)
            )
        )
    return creates, reads, list(counts), time.perf_counter() - start


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--pace", type=float, default=0.1, help="Seconds between a user's polls.")
    parser.add_argument("--db", help="A service database URL (default: SQLite in a temporary directory).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nni-ts-bench-service-") as tmp:
        home = Path(tmp)
        env = dict(os.environ, NNI_TS_HOME=str(home))
        db = args.db or f"sqlite:///{home / 'service.db'}"
        cli = [sys.executable, "-m", "nni_ts.cli"]
        tokens: list[str | None] = []
        for i in range(args.users):
            out = subprocess.run(
                [*cli, "--json", "users", "--db", db, "add", f"user{i}"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            tokens.append(json.loads(out.stdout)["token"])
        prof = os.environ.get("BENCH_SERVICE_PROFILE")  # a cProfile output file, for investigating
        lag_file = str(home / "loop-lag.json")
        serve_cmd = (
            [sys.executable, "-m", "cProfile", "-o", prof, "-m", "nni_ts.cli"]
            if prof
            else [sys.executable, "-c", SERVE_WITH_PROBE, lag_file]
        )
        serve = subprocess.Popen(
            [*serve_cmd, "serve", "--port", "0", "--db", db, "--data-dir", str(home / "svc"), "--stop-on-exit"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert serve.stdout is not None
        line = serve.stdout.readline()
        base = line.split("listening on ", 1)[1].split()[0]
        idle = psutil.Process(serve.pid).memory_info().rss
        with Sampler(serve.pid) as mem:
            creates, reads, polls, wall = asyncio.run(
                load(base, tokens, args.trials, args.concurrency, args.pace, None)
            )
        after = psutil.Process(serve.pid).memory_info().rss
        serve.terminate()
        serve.wait(120)
        serve.stdout.close()
        stalls = loop_lag_report(lag_file) if not prof else "not measured (profiling)"

        port = free_port()
        baseline = subprocess.Popen(
            [sys.executable, "-c", BASELINE_SERVER, str(port)], stdout=subprocess.PIPE, text=True
        )
        assert baseline.stdout is not None
        baseline.stdout.readline()
        with Sampler(baseline.pid) as base_mem:
            b_creates, b_reads, _, b_wall = asyncio.run(
                load(f"http://127.0.0.1:{port}", [None] * args.users, args.trials, args.concurrency, args.pace, polls)
            )
        baseline.terminate()
        baseline.wait(30)
        baseline.stdout.close()

    total_trials = args.users * args.trials
    print(
        f"users={args.users} trials/experiment={args.trials} concurrency={args.concurrency} "
        f"poll every {args.pace * 1000:.0f} ms; database {db.split(':')[0]}"
    )
    print(
        f"service: {len(reads)} polls + {len(creates)} creates in {wall:.1f} s "
        f"({total_trials} trials, {total_trials / wall:.0f} trials/s)"
    )
    print(
        f"  create p50={percentile(creates, 50):.1f} ms p99={percentile(creates, 99):.1f} ms; "
        f"poll p50={percentile(reads, 50):.1f} ms p99={percentile(reads, 99):.1f} ms"
    )
    print(f"  RSS idle {idle / 2**20:.0f} MiB, peak {mem.peak / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB")
    print(f"  event loops of the service (a 1 ms sleeper's lateness): {stalls}")
    print(
        f"baseline (trivial aiohttp handler, same clients and pace): {len(b_reads)} polls in {b_wall:.1f} s; "
        f"create p50={percentile(b_creates, 50):.1f} ms p99={percentile(b_creates, 99):.1f} ms; "
        f"poll p50={percentile(b_reads, 50):.1f} ms p99={percentile(b_reads, 99):.1f} ms; "
        f"RSS peak {base_mem.peak / 2**20:.0f} MiB"
    )
    every = creates + reads
    b_every = b_creates + b_reads
    print(
        f"API latency p50 {percentile(every, 50):.1f} ms / p99 {percentile(every, 99):.1f} ms vs baseline "
        f"p50 {percentile(b_every, 50):.1f} ms / p99 {percentile(b_every, 99):.1f} ms: ratio "
        f"p50 {percentile(every, 50) / percentile(b_every, 50):.1f}x, p99 "
        f"{percentile(every, 99) / percentile(b_every, 99):.1f}x; service RSS peak {mem.peak / 2**20:.0f} MiB "
        f"vs baseline {base_mem.peak / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
