"""The experiment service under load: 50 users at once, each creating an experiment of 20 quick
trials on the local platform and polling it until it ends; on SQLite and on PostgreSQL in one run.

Figures: the API's p50/p99 latency (creates and polls), the service's memory (RSS of the ``nni-ts
serve`` process), the wall time, and the time from a trial's report (the trial writes its wall
clock into the record) until the record is readable through ``GET .../metrics`` (a few watcher
clients poll that every 20 ms). Baseline, in the same run: a trivial aiohttp handler (one small
JSON answer) in its own process, hit by the same clients at the same pace with the same number of
requests. The last lines give each database against the baseline and PostgreSQL against SQLite
(target: within 1.5x; report-to-readable p99 under 200 ms on both).

    python bench/bench_service.py [--users 50] [--trials 20] [--concurrency 4] [--pg URL|auto|none]

``--pg auto`` (the default) starts a throw-away PostgreSQL cluster (initdb, pg_ctl) for the run;
``--pg-socket`` connects to it through its Unix socket instead of TCP on 127.0.0.1.
``--repeat N`` runs SQLite then PostgreSQL N times, alternating (a fresh database each time), and
ends with the median of each figure: on a shared machine one run's ratio moves by 2x.
``BENCH_SERVICE_LOG=FILE`` appends the services' logs there (else they are discarded).
``BENCH_SERVE_HOOK=FILE`` runs that Python file in the service process before it starts (for
investigating: a profiler, timers around a method).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import loop_lag_report, percentile, thread_cpu  # noqa: E402

# `nni-ts serve` with a probe in every event loop it runs (see _common.install_loop_lag).
SERVE_WITH_PROBE = f"""
import os, sys
if os.environ.get("BENCH_SERVE_HOOK"):
    exec(compile(open(os.environ["BENCH_SERVE_HOOK"]).read(), os.environ["BENCH_SERVE_HOOK"], "exec"))
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from _common import install_loop_lag
install_loop_lag(sys.argv[1])
from nni_ts.cli import main
sys.exit(main(sys.argv[2:]))
"""

# A trial that only reports its final result (NNI's local metrics framing), so that the benchmark
# measures the service, not Python start-up. The value is the wall clock (ns) when it reports.
TRIAL = (
    "t=$(date +%s%N); "
    'r="{\\"parameter_id\\":0,\\"trial_job_id\\":\\"$NNI_TRIAL_JOB_ID\\",\\"type\\":\\"FINAL\\",'
    '\\"sequence\\":0,\\"value\\":\\"$t\\"}"; '
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
    created: Callable[[str], None] | None = None,
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
    if created is not None:
        created(body["id"])
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


async def watch_metrics(
    session: aiohttp.ClientSession, base: str, token: str, experiment_id: str, delays: list[float]
) -> None:
    """Poll one experiment's metrics every 20 ms until it ends: for each record newly readable, the
    time since the trial wrote it (its value is the trial's wall clock in ns), taken when the answer
    that first holds it has arrived (an upper bound). The experiment's status (to know when to stop)
    is read every 25th turn only, so that the turn is one request and 20 ms of sleep."""
    headers = {"Authorization": f"Bearer {token}"}
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + 600
    turn = 0
    while time.monotonic() < deadline:
        turn += 1
        async with session.get(f"{base}/api/v1/experiments/{experiment_id}/metrics", headers=headers) as resp:
            records = await resp.json()
            assert resp.status == 200, records
        now = time.time_ns()
        for m in records:
            key = (m["trialId"], m["seq"])
            if key not in seen and isinstance(m["value"], int):
                seen.add(key)
                delays.append((now - m["value"]) / 1e6)
        if turn % 25:
            await asyncio.sleep(0.02)
            continue
        async with session.get(f"{base}/api/v1/experiments/{experiment_id}", headers=headers) as resp:
            shown = await resp.json()
        if shown["status"] != "RUNNING" and len(seen) >= shown["trialCount"]:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"experiment {experiment_id}: its metrics were not all readable within 600 s")


async def watcher_process(base: str) -> None:
    """``bench_service.py --watch URL``: the watchers in a process of their own, so that the 50 users'
    requests on the load's event loop do not delay what they measure. Reads ``token experiment-id``
    lines on stdin (one per watcher, as the experiments are created), watches each, and prints the
    delays as JSON once stdin is closed and every watcher is done."""
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        watchers = []
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            token, experiment_id = line.split()
            watchers.append(loop.create_task(watch_metrics(session, base, token, experiment_id, delays)))
        await asyncio.gather(*watchers)
    print(json.dumps(delays), flush=True)


async def load(
    base: str,
    tokens: list[str | None],
    trials: int,
    concurrency: int,
    pace: float,
    polls: list[int] | None,
    watchers: int = 0,
) -> tuple[list[float], list[float], list[int], float, list[float]]:
    creates: list[float] = []
    reads: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    watch = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--watch", base, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert watch.stdin is not None and watch.stdout is not None
    stdin = watch.stdin

    def created(token: str | None) -> Callable[[str], None]:
        return lambda experiment_id: stdin.write(f"{token} {experiment_id}\n".encode())

    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:

        async def user(i: int, tok: str | None) -> int:
            return await user_session(
                session,
                base,
                tok,
                trials,
                concurrency,
                pace,
                polls[i] if polls else None,
                creates,
                reads,
                created(tok) if i < watchers else None,
            )

        results = await asyncio.gather(*(user(i, tok) for i, tok in enumerate(tokens)))
    stdin.close()
    delays = json.loads(await asyncio.wait_for(watch.stdout.read(), 600) or b"[]")
    if await watch.wait() != 0:
        raise RuntimeError("the watchers' process failed")
    return creates, reads, [int(c) for c in results], time.perf_counter() - start, delays


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_postgres(*, socket: bool = False) -> Iterator[str]:
    """A PostgreSQL cluster for this run (initdb + pg_ctl on a free loopback port), removed after; its
    URL over TCP, or over its Unix socket with ``socket``."""

    def binary(name: str) -> str:
        found = shutil.which(name) or (sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [None])[-1]
        if not found:
            raise SystemExit(f"--pg auto needs PostgreSQL's {name}; give --pg URL or --pg none.")
        return found

    initdb, pg_ctl = binary("initdb"), binary("pg_ctl")
    base = Path(tempfile.mkdtemp(prefix="nni-ts-bench-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if subprocess.run(["id", "-u", "postgres"], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
        shutil.chown(base, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-l", str(base / "log"), "-o", options, "-w", "start"],
        check=True,
        capture_output=True,
        start_new_session=True,
    )
    try:
        subprocess.run(
            [
                *prefix,
                shutil.which("psql") or binary("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-c",
                "CREATE DATABASE bench",
            ],
            check=True,
            capture_output=True,
        )
        yield (
            f"postgresql://postgres@/bench?host={base}&port={port}"
            if socket
            else f"postgresql://postgres@127.0.0.1:{port}/bench"
        )
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Run:
    name: str
    creates: list[float]
    reads: list[float]
    polls: list[int]
    wall: float
    delays: list[float]
    idle: int
    peak: int
    stalls: str
    cpu: dict[str, float]

    @property
    def every(self) -> list[float]:
        return self.creates + self.reads


async def add_users(db_url: str, count: int) -> list[str]:
    """``user0``... with their tokens, as ``nni-ts users add`` makes them (in this process: faster)."""
    from nni_ts.service.db import open_database
    from nni_ts.service.users import add_user

    db = await open_database(db_url)
    try:
        return [str(await add_user(db, f"user{i}")) for i in range(count)]
    finally:
        await db.close()


def run_service(name: str, db: str, home: Path, args: argparse.Namespace) -> Run:
    env = dict(os.environ, NNI_TS_HOME=str(home))
    tokens: list[str | None] = list(asyncio.run(add_users(db, args.users)))
    prof = os.environ.get("BENCH_SERVICE_PROFILE")  # a cProfile output file, for investigating
    lag_file = str(home / "loop-lag.json")
    serve_cmd = (
        [sys.executable, "-m", "cProfile", "-o", f"{prof}.{name}", "-m", "nni_ts.cli"]
        if prof
        else [sys.executable, "-c", SERVE_WITH_PROBE, lag_file]
    )
    serve = subprocess.Popen(
        [*serve_cmd, "serve", "--port", "0", "--db", db, "--data-dir", str(home / "svc"), "--stop-on-exit"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(os.environ["BENCH_SERVICE_LOG"], "a")
        if os.environ.get("BENCH_SERVICE_LOG")
        else subprocess.DEVNULL,  # noqa: SIM115
        text=True,
    )
    assert serve.stdout is not None
    line = serve.stdout.readline()
    base = line.split("listening on ", 1)[1].split()[0]
    idle = psutil.Process(serve.pid).memory_info().rss
    with Sampler(serve.pid) as mem:
        creates, reads, polls, wall, delays = asyncio.run(
            load(base, tokens, args.trials, args.concurrency, args.pace, None, watchers=args.watchers)
        )
    serve.terminate()
    serve.wait(120)
    serve.stdout.close()
    stalls = loop_lag_report(lag_file) if not prof else "not measured (profiling)"
    cpu = thread_cpu(lag_file) if not prof else {}
    return Run(name, creates, reads, polls, wall, delays, idle, mem.peak, stalls, cpu)


async def create_database(url: str, name: str) -> str:
    """A new empty database on the server of ``url``; its URL."""
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def cpu_line(run: Run, trials: int) -> str:
    """The service's CPU by thread: the API's loop, the engine's, the SQLite writer, the rest."""
    api = run.cpu.get("MainThread", 0.0)
    engine = sum(v for k, v in run.cpu.items() if k.startswith("nni-ts-service-engine"))
    writer = sum(v for k, v in run.cpu.items() if k.startswith("nni-ts-store"))
    rest = sum(run.cpu.values()) - api - engine - writer
    return (
        f"API thread {api:.1f} s, engine thread {engine:.1f} s ({engine / trials * 1000:.1f} ms per trial), "
        f"SQLite writer {writer:.1f} s, other threads {rest:.1f} s"
    )


def main() -> None:
    if sys.argv[1:2] == ["--watch"]:
        asyncio.run(watcher_process(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--pace", type=float, default=0.1, help="Seconds between a user's polls.")
    parser.add_argument("--watchers", type=int, default=5, help="Users whose metrics are polled every 20 ms.")
    parser.add_argument("--pg", default="auto", help="PostgreSQL: a URL, auto (a throw-away cluster) or none.")
    parser.add_argument("--repeat", type=int, default=1, help="Runs of SQLite then PostgreSQL, alternating.")
    parser.add_argument(
        "--pg-socket",
        action="store_true",
        help="With --pg auto: connect through the cluster's Unix socket, not TCP (a service on the database's host).",
    )
    args = parser.parse_args()

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="nni-ts-bench-service-") as tmp, contextlib.ExitStack() as stack:
        url = None
        if args.pg != "none":
            url = stack.enter_context(throwaway_postgres(socket=args.pg_socket)) if args.pg == "auto" else args.pg
        for i in range(args.repeat):
            home = Path(tmp) / f"sqlite-{i}"
            home.mkdir()
            runs.append(run_service("sqlite", f"sqlite:///{home / 'service.db'}", home, args))
            if url is not None:
                home = Path(tmp) / f"postgresql-{i}"
                home.mkdir()
                db = url if i == 0 else asyncio.run(create_database(url, f"bench_{i}"))
                runs.append(run_service("postgresql", db, home, args))

        port = free_port()
        baseline = subprocess.Popen(
            [sys.executable, "-c", BASELINE_SERVER, str(port)], stdout=subprocess.PIPE, text=True
        )
        assert baseline.stdout is not None
        baseline.stdout.readline()
        with Sampler(baseline.pid) as base_mem:
            b_creates, b_reads, _, b_wall, _ = asyncio.run(
                load(
                    f"http://127.0.0.1:{port}",
                    [None] * args.users,
                    args.trials,
                    args.concurrency,
                    args.pace,
                    runs[0].polls,
                )
            )
        baseline.terminate()
        baseline.wait(30)
        baseline.stdout.close()

    total_trials = args.users * args.trials
    print(
        f"users={args.users} trials/experiment={args.trials} concurrency={args.concurrency} "
        f"poll every {args.pace * 1000:.0f} ms; {args.watchers} watchers poll metrics every 20 ms"
    )
    b_every = b_creates + b_reads
    for r in runs:
        print(
            f"{r.name}: {len(r.reads)} polls + {len(r.creates)} creates in {r.wall:.1f} s "
            f"({total_trials} trials, {total_trials / r.wall:.0f} trials/s); "
            f"create p50={percentile(r.creates, 50):.1f} ms p99={percentile(r.creates, 99):.1f} ms; "
            f"poll p50={percentile(r.reads, 50):.1f} ms p99={percentile(r.reads, 99):.1f} ms; "
            f"RSS idle {r.idle / 2**20:.0f} MiB, peak {r.peak / 2**20:.0f} MiB"
        )
        print(f"  event-loop stalls of the service: {r.stalls}")
        if r.cpu:
            print(f"  CPU of the service: {cpu_line(r, total_trials)}")
        if r.delays:
            print(
                f"  report -> readable through the API ({len(r.delays)} records): "
                f"p50 {percentile(r.delays, 50):.0f} ms, p99 {percentile(r.delays, 99):.0f} ms "
                f"(target p99 < 200 ms), max {max(r.delays):.0f} ms"
            )
        print(
            f"  API latency p50 {percentile(r.every, 50):.1f} ms / p99 {percentile(r.every, 99):.1f} ms vs baseline: "
            f"ratio p50 {percentile(r.every, 50) / percentile(b_every, 50):.1f}x, "
            f"p99 {percentile(r.every, 99) / percentile(b_every, 99):.1f}x"
        )
    print(
        f"baseline (trivial aiohttp handler, same clients and pace): {len(b_reads)} polls in {b_wall:.1f} s; "
        f"p50={percentile(b_every, 50):.1f} ms p99={percentile(b_every, 99):.1f} ms; "
        f"RSS peak {base_mem.peak / 2**20:.0f} MiB"
    )
    pairs = list(zip(runs[0::2], runs[1::2], strict=False)) if url is not None else []
    for sq, pg in pairs:
        print(
            f"PostgreSQL vs SQLite (target within 1.5x): p50 {percentile(pg.every, 50):.1f} / "
            f"{percentile(sq.every, 50):.1f} ms = {percentile(pg.every, 50) / percentile(sq.every, 50):.2f}x, "
            f"p99 {percentile(pg.every, 99):.1f} / {percentile(sq.every, 99):.1f} ms = "
            f"{percentile(pg.every, 99) / percentile(sq.every, 99):.2f}x; wall {pg.wall:.1f} / {sq.wall:.1f} s"
        )
    if len(pairs) > 1:

        def med(values: list[float]) -> str:
            return f"median {statistics.median(values):.2f} of [{', '.join(f'{v:.2f}' for v in values)}]"

        p50s = [percentile(pg.every, 50) / percentile(sq.every, 50) for sq, pg in pairs]
        p99s = [percentile(pg.every, 99) / percentile(sq.every, 99) for sq, pg in pairs]
        print(f"over {len(pairs)} alternating runs, PostgreSQL / SQLite p50: {med(p50s)}; p99: {med(p99s)}")
        for name, index in (("SQLite", 0), ("PostgreSQL", 1)):
            delays = [percentile(pair[index].delays, 99) for pair in pairs if pair[index].delays]
            if delays:
                print(f"  report -> readable p99 on {name} (target < 200 ms), ms: {med(delays)}")


if __name__ == "__main__":
    main()
