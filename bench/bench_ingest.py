"""Ingestion: N concurrent trial keepers, each reporting R records/s for S seconds, to one ClusterServer.

Trials start reporting together once all are up (start-up is not measured). Prints records lost or
duplicated, delivery latency (from the trial's report call to the sink) p50/p99, the server
process's CPU share, and the event loop's longest stalls (a task that sleeps 1 ms and records how
late it wakes). Baseline, measured in the same run: the same trials writing to bare pipes read by
this process (no keeper, no journal, no HTTP), and for the stalls an idle event loop in another
process over the same window. The last line holds both.

``--store`` makes the sink store every record in an experiment store (SQLite), as the experiment
loop does: ``loop`` with synchronous calls on the event loop (how the loop wrote before the store
had a writer thread), ``writer`` through ``AsyncStore`` (the sink acknowledges after the commit).
``--contend`` adds another process that takes the database's write lock for 100 ms every 500 ms
(another manager sharing ``$NNI_TS_HOME/nni-ts.db``, a large delete or checkpoint).

    python bench/bench_ingest.py [--keepers 100] [--rate 50] [--seconds 30] [--store none|loop|writer] [--contend]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import IdleLoopLag, LoopLag, percentile  # noqa: E402

import trial_keeper  # noqa: E402
from nni_ts.server import ClusterServer  # noqa: E402
from nni_ts.storage import Store, TrialRecord  # noqa: E402

PARAMS = '{"parameter_id": 1, "parameter_source": "algorithm", "parameters": {}, "parameter_index": 0}'
TRIAL = """
import sys, time
import nni
nni.get_next_parameter()
n, rate, t0 = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
time.sleep(max(0.0, t0 - time.time()))  # every trial starts together, once all are up
for i in range(n):
    delay = t0 + i / rate - time.time()
    if delay > 0:
        time.sleep(delay)
    nni.report_intermediate_result({"t": time.time(), "i": i})
"""


CONTEND = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
while True:
    db.execute("BEGIN IMMEDIATE")
    time.sleep(0.1)
    db.execute("COMMIT")
    time.sleep(0.4)
"""


class Sink:
    def __init__(self, latencies: list[float], trial_id: str, store: Store | None, mode: str) -> None:
        self.latencies = latencies
        self.trial_id = trial_id
        self.store = store
        self.astore = store.asynchronous() if store is not None and mode == "writer" else None
        self.seqs: list[int] = []
        self.done = asyncio.Event()

    async def on_started(self, start_time_ms: int, host: str, pid: int) -> None:
        pass

    async def on_records(self, records: list[tuple[int, str]]) -> None:  # accepts all
        if self.astore is not None:  # queued together, acknowledged after their commit
            await asyncio.gather(
                *(
                    self.astore.add_metric("b", self.trial_id, q, type="PERIODICAL", value=None, data=d)
                    for q, d in records
                )
            )
        elif self.store is not None:  # on the event loop, one transaction each
            for q, d in records:
                self.store.add_metric("b", self.trial_id, q, type="PERIODICAL", value=None, data=d)
        now = time.time()
        for seq, data in records:
            self.seqs.append(seq)
            value = json.loads(json.loads(data)["value"])
            self.latencies.append((now - value["t"]) * 1000)

    async def on_exited(self, exit_code: int, end_time_ms: int) -> None:
        self.done.set()

    async def on_lost(self, message: str) -> None:
        print("lost:", message, file=sys.stderr)

    async def on_heartbeat(self) -> None:
        pass

    async def on_rejected(self, message: str) -> None:
        print("rejected:", message, file=sys.stderr)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def with_keepers(
    root: Path, keepers: int, rate: float, seconds: float, store: Store | None, mode: str, contend: bool
) -> tuple[list[float], int, int, float, LoopLag, IdleLoopLag]:
    n = int(rate * seconds)
    start_at = time.time() + max(5.0, keepers * 0.1)
    latencies: list[float] = []
    sinks = []
    env = dict(os.environ, PYTHONPATH=str(Path(trial_keeper.__file__).resolve().parents[1]))
    procs = []
    async with ClusterServer(heartbeat_timeout=30) as server:
        for k in range(keepers):
            trial_id = f"t{k}"
            trial_dir = root / trial_id
            trial_dir.mkdir()
            (trial_dir / "parameter.cfg").write_text(PARAMS)
            sink = Sink(latencies, trial_id, store, mode)
            if store is not None:
                store.insert_trial(
                    TrialRecord(experiment_id="b", id=trial_id, sequence_id=k, parameter_id=k, parameters={})
                )
            sinks.append(sink)
            server.register(trial_id, sink)
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "trial_keeper", "--trial-id", trial_id, "--trial-dir", str(trial_dir),
                    "--server-url", server.url, "--token", server.token_for(trial_id), "--no-passthrough",
                    "--", f"{sys.executable} {root / 'trial.py'} {n} {rate} {start_at}",
                    env=env, stdin=asyncio.subprocess.DEVNULL,
                )
            )  # fmt: skip
        contender = None
        if contend:
            assert store is not None, "--contend needs --store"
            contender = await asyncio.create_subprocess_exec(sys.executable, "-c", CONTEND, str(store.path))
        await asyncio.sleep(max(0.0, start_at - time.time()))  # measure the reporting window only
        cpu0, t0 = cpu(), time.monotonic()
        async with IdleLoopLag() as idle, LoopLag() as lag, asyncio.timeout(seconds * 4 + 120):
            await asyncio.gather(*(p.wait() for p in procs))
            await asyncio.gather(*(s.done.wait() for s in sinks))
        cpu_s, wall = cpu() - cpu0, time.monotonic() - t0
        if contender is not None:
            contender.kill()
            await contender.wait()
    lost = sum(n - len(set(s.seqs)) for s in sinks)
    dup = sum(len(s.seqs) - len(set(s.seqs)) for s in sinks)
    order_ok = all(s.seqs == list(range(n)) for s in sinks)
    if not order_ok:
        print("records out of order!", file=sys.stderr)
    return latencies, lost, dup, cpu_s / wall, lag, idle


async def bare_pipes(root: Path, keepers: int, rate: float, seconds: float) -> tuple[list[float], float]:
    n = int(rate * seconds)
    start_at = time.time() + max(5.0, keepers * 0.1)
    latencies: list[float] = []
    env = dict(os.environ, PYTHONPATH=trial_keeper.LIGHT_NNI_PATH, NNI_PLATFORM="remote")

    async def one(k: int) -> None:
        trial_dir = root / f"b{k}"
        trial_dir.mkdir()
        (trial_dir / "parameter.cfg").write_text(PARAMS)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(root / "trial.py"), str(n), str(rate), str(start_at),
            env=dict(env, NNI_SYS_DIR=str(trial_dir), NNI_TRIAL_JOB_ID=f"b{k}"),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        async for line in proc.stdout:
            now = time.time()
            record = trial_keeper.records.parse_stdout_line(line)
            if record is not None:
                latencies.append((now - json.loads(json.loads(record)["value"])["t"]) * 1000)
        await proc.wait()

    cpu0, t0 = cpu(), time.monotonic()
    await asyncio.gather(*(one(k) for k in range(keepers)))
    return latencies, (cpu() - cpu0) / (time.monotonic() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keepers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="records per second per trial")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--store", choices=["none", "loop", "writer"], default="none", help="store every record")
    parser.add_argument("--contend", action="store_true", help="another process takes the store's write lock")
    args = parser.parse_args()
    import trial_keeper.records  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "trial.py").write_text(TRIAL)
        store = None
        if args.store != "none":
            store = Store(root / "nni-ts.db")
            store.create_experiment("b", name=None, platform="local", config={}, working_dir=root)
        try:
            lat, lost, dup, share, lag, idle = asyncio.run(
                with_keepers(root, args.keepers, args.rate, args.seconds, store, args.store, args.contend)
            )
        finally:
            if store is not None:
                store.close()
        base, base_share = asyncio.run(bare_pipes(root, args.keepers, args.rate, args.seconds))
    total = int(args.rate * args.seconds) * args.keepers
    print(
        f"keepers={args.keepers} rate={args.rate:g}/s seconds={args.seconds:g} records={total} "
        f"({total / args.seconds:.0f}/s)"
    )
    print(f"lost={lost} duplicated={dup}; store: {args.store}{' (contended)' if args.contend else ''}")
    print(f"server event loop: {lag.summary()}")
    print(f"baseline, an idle event loop in another process over the same window: {idle.summary()}")
    print(f"server CPU share {share * 100:.1f}% of one core ({share * 100 / os.cpu_count():.1f}% of {os.cpu_count()})")
    print(
        f"baseline (bare pipes, no keeper/HTTP): p50 {percentile(base, 50):.2f} ms "
        f"p99 {percentile(base, 99):.2f} ms, reader CPU {base_share * 100:.1f}% of one core"
    )
    print(
        f"ingest {total} records from {args.keepers} keepers: lost {lost}, dup {dup}, latency p50 "
        f"{percentile(lat, 50):.2f} ms p99 {percentile(lat, 99):.2f} ms (target p99 <= 50), server CPU "
        f"{share * 100:.1f}% of a core; baseline bare pipes p50 {percentile(base, 50):.2f} ms p99 "
        f"{percentile(base, 99):.2f} ms; p99 ratio {percentile(lat, 99) / max(percentile(base, 99), 1e-9):.1f}x; "
        f"store {args.store}{' contended' if args.contend else ''}: {lag.summary()}; idle loop {idle.summary()}"
    )


if __name__ == "__main__":
    main()
