"""Fault tests with real keepers on loopback: every record arrives exactly once, in order, bytes intact."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import psutil
import pytest
from cluster_support import (
    FaultyProxy,
    Gate,
    RecordingSink,
    record_text,
    start_keeper,
    trial_command,
    wait_exit,
)

from nni_ts.server import ClusterServer
from trial_keeper.journal import read_exit, read_journal, recover_records


@pytest.mark.parametrize("keeps_state", [True, False], ids=["manager-kept-state", "fresh-registration"])
async def test_server_killed_and_restarted_mid_trial(trial_dir: Path, keeps_state: bool) -> None:
    n, pause = 600, 300
    sink = RecordingSink()
    server = ClusterServer(heartbeat_timeout=30.0)
    await server.start()
    port, secret = server.port, server.secret
    server.register("R1", sink)
    async with Gate() as gate:
        proc = await start_keeper(
            trial_dir,
            "R1",
            trial_command(trial_dir, n, pause=pause, gate=gate.path),
            server_url=server.url,
            token=server.token_for("R1"),
        )
        try:
            await sink.wait_count(pause)
            await server.close()  # the manager's server goes away mid-trial
            await gate.release()  # the trial reports the rest while nobody listens
            restarted = ClusterServer(port=port, secret=secret, heartbeat_timeout=30.0)
            if keeps_state:
                restarted.register("R1", sink, next_seq=len(sink.records))
                target = sink
            else:  # a new manager that delivered nothing yet: the keeper resends from its journal
                target = RecordingSink()
                restarted.register("R1", target)
            async with restarted:
                assert await wait_exit(proc) == 0
                async with asyncio.timeout(10):
                    await target.exited.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    target.check_exactly([record_text("R1", i) for i in range(n)])


async def test_dropped_connections(server: ClusterServer, trial_dir: Path) -> None:
    n = 1500
    sink = RecordingSink()
    server.register("D1", sink)
    async with FaultyProxy(server.url, drop_before=0.2, drop_after=0.3) as proxy:
        proc = await start_keeper(
            trial_dir, "D1", trial_command(trial_dir, n), server_url=proxy.url, token=server.token_for("D1")
        )
        assert await wait_exit(proc) == 0
    async with asyncio.timeout(10):
        await sink.exited.wait()
    assert proxy.dropped > 0
    sink.check_exactly([record_text("D1", i) for i in range(n)])


async def test_replayed_duplicate_posts(server: ClusterServer, trial_dir: Path) -> None:
    n = 1500
    sink = RecordingSink()
    server.register("P1", sink)
    async with FaultyProxy(server.url, replay=True) as proxy:
        proc = await start_keeper(
            trial_dir, "P1", trial_command(trial_dir, n), server_url=proxy.url, token=server.token_for("P1")
        )
        assert await wait_exit(proc) == 0
    async with asyncio.timeout(10):
        await sink.exited.wait()
    assert proxy.replayed > 0
    sink.check_exactly([record_text("P1", i) for i in range(n)])


async def test_sigkilled_keeper_then_journal_fallback(server: ClusterServer, trial_dir: Path) -> None:
    n, pause = 400, 200
    sink = RecordingSink()
    server.register("K1", sink)
    seen = asyncio.Event()
    async with Gate() as gate:
        proc = await start_keeper(
            trial_dir,
            "K1",
            trial_command(trial_dir, n, pause=pause, gate=gate.path),
            server_url=server.url,
            token=server.token_for("K1"),
            passthrough=True,
        )

        async def watch_passthrough() -> None:
            # The keeper copies output to its own stdout after journaling the chunk's records.
            assert proc.stdout is not None
            count = 0
            async for line in proc.stdout:
                count += line.count(b"NNISDK_MEb")
                if count >= n:
                    seen.set()

        reader = asyncio.create_task(watch_passthrough())
        trial = None
        try:
            await sink.wait_count(pause)
            await server.close()  # from now on the manager cannot be reached
            trial = psutil.Process(proc.pid).children()[0]
            await gate.release()
            async with asyncio.timeout(60):
                await seen.wait()
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if trial is not None:
                try:
                    trial.kill()
                except psutil.NoSuchProcess:
                    pass
            await reader
    assert len(sink.records) < n  # the rest never reached the server
    records = recover_records(str(trial_dir), "K1", 1)
    assert records == read_journal(str(trial_dir / ".nni-ts" / "journal"), "K1", 1)
    await server.feed("K1", records)
    await server.feed("K1", records)  # reading the journal twice delivers nothing twice
    sink.check_exactly([record_text("K1", i) for i in range(n)])
    assert read_exit(str(trial_dir), "K1", 1) is None  # it died before the trial's end was reported
    assert not await server.finish("K1", 0, 0, n + 1)  # an exit is held until every record is in
    assert await server.finish("K1", 0, 0, n)
    assert sink.exit == (0, 0)


async def test_heartbeats_log_tail_and_lost_keeper(trial_dir: Path) -> None:
    sink = RecordingSink()
    async with ClusterServer(heartbeat_timeout=0.5) as server, Gate() as gate:
        server.register("L1", sink)
        proc = await start_keeper(
            trial_dir,
            "L1",
            trial_command(trial_dir, 10, pause=5, gate=gate.path),
            server_url=server.url,
            token=server.token_for("L1"),
        )
        try:
            await sink.wait_count(5)
            async with asyncio.timeout(30):
                await gate.waiting.wait()
                tail = await server.request_log_tail("L1", "stdout", 60)
                err = await server.request_log_tail("L1", "stderr", 1000)
            assert tail.endswith(b"progress 0 with a ' quote\n") and len(tail) <= 60
            assert err == b"err 0\n"
            assert not sink.lost.is_set()  # heartbeats keep it alive while the trial waits
            trial = psutil.Process(proc.pid).children()[0]
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            trial.kill()
            async with asyncio.timeout(30):
                await sink.lost.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert sink.exit is None
    assert [s for s, _ in sink.records] == list(range(5))


async def test_sigterm_stops_the_whole_group_and_reports(server: ClusterServer, trial_dir: Path) -> None:
    sink = RecordingSink()
    server.register("S1", sink)
    script = trial_dir.parent / "stubborn.py"
    script.write_text(
        "import nni, signal, subprocess, sys, time\n"
        "nni.get_next_parameter()\n"
        "signal.signal(signal.SIGTERM, lambda *a: None)\n"  # ignores SIGTERM: needs the SIGKILL
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('child', child.pid, flush=True)\n"
        "nni.report_intermediate_result(1)\n"
        "time.sleep(600)\n",
        encoding="utf-8",
    )
    proc = await start_keeper(
        trial_dir,
        "S1",
        f"python3 {script}",
        server_url=server.url,
        token=server.token_for("S1"),
        extra=["--grace", "0.5"],
    )
    await sink.wait_count(1)
    child_pid = int(re.search(rb"child (\d+)", (trial_dir / "stdout").read_bytes()).group(1))  # type: ignore[union-attr]
    proc.send_signal(signal.SIGTERM)
    code = await wait_exit(proc)
    assert code in (128 + signal.SIGTERM, 128 + signal.SIGKILL)  # /bin/sh dies of TERM, python of KILL
    async with asyncio.timeout(10):
        await sink.exited.wait()
    assert sink.exit is not None and sink.exit[0] == code
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE


async def test_store_refusing_for_a_while_loses_and_duplicates_nothing(trial_dir: Path) -> None:
    """A real keeper whose records the manager cannot store for a while (the sink refuses, as a full
    disk or a locked database would make it): the keeper keeps them and resends; afterwards every
    record is stored exactly once, in order, and the exit comes after them."""
    n = 300
    sink = RecordingSink()
    sink.refuse_after = 40
    async with ClusterServer(heartbeat_timeout=30.0) as server:
        server.register("S1", sink)
        proc = await start_keeper(
            trial_dir, "S1", trial_command(trial_dir, n), server_url=server.url, token=server.token_for("S1")
        )
        try:
            await sink.wait_count(40)
            await asyncio.sleep(0.5)  # the keeper posts (and is refused) several times meanwhile
            assert len(sink.records) == 40 and not sink.exited.is_set()
            sink.refuse_after = None
            assert await wait_exit(proc) == 0
            async with asyncio.timeout(10):
                await sink.exited.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    sink.check_exactly([record_text("S1", i) for i in range(n)])
    assert sink.events[-1] == "exited"
