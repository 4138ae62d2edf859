"""Every record a trial reports reaches the sink exactly once, in order, bytes intact; and the exit after."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cluster_support import RecordingSink, record_text, start_keeper, trial_command, wait_exit

from nni_ts.server import ClusterServer


async def test_unmodified_nni_trial_delivers_everything(server: ClusterServer, trial_dir: Path) -> None:
    sink = RecordingSink()
    server.register("T1", sink)
    proc = await start_keeper(
        trial_dir, "T1", trial_command(trial_dir, 300, code=3), server_url=server.url, token=server.token_for("T1")
    )
    assert await wait_exit(proc) == 3
    await asyncio.wait_for(sink.exited.wait(), 10)
    sink.check_exactly([record_text("T1", i) for i in range(300)])
    assert sink.exit is not None and sink.exit[0] == 3
    assert sink.events[0] == "started" and sink.events[-1] == "exited"
    stdout = (trial_dir / "stdout").read_bytes()
    assert b"progress 200 with a ' quote" in stdout
    assert b"err 200" in (trial_dir / "stderr").read_bytes()


@pytest.mark.slow
async def test_ten_thousand_metrics_quickly(server: ClusterServer, trial_dir: Path) -> None:
    sink = RecordingSink()
    server.register("Fast1", sink)
    proc = await start_keeper(
        trial_dir, "Fast1", trial_command(trial_dir, 10_000), server_url=server.url, token=server.token_for("Fast1")
    )
    assert await wait_exit(proc) == 0
    await asyncio.wait_for(sink.exited.wait(), 10)
    sink.check_exactly([record_text("Fast1", i) for i in range(10_000)])
