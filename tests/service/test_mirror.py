"""The service's mirror of the experiment store (until the loop writes the service database itself)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nni_ts.models import TrialJobStatus
from nni_ts.service.db import open_database
from nni_ts.service.manager import ExperimentManager, _Live
from nni_ts.storage.store import TrialRecord


async def test_an_older_sync_never_writes_its_rows_last(tmp_path: Path) -> None:
    """Two syncs of one experiment: the first read the store before a record arrived and is slow to
    write; the second read it after. The service database must end with the record (found by the
    benchmark on PostgreSQL: experiments DONE with trials still RUNNING)."""
    db_url = f"sqlite:///{tmp_path / 'service.db'}"
    await (await open_database(db_url)).close()
    manager = ExperimentManager(db_url, tmp_path / "experiments.db", replica="r")
    await manager.open()
    try:
        store = manager.store
        store.create_experiment("e", name=None, platform="local", config={}, working_dir=str(tmp_path))
        store.insert_trial(
            TrialRecord(
                experiment_id="e", id="t", sequence_id=0, parameter_id=0, parameters={}, status=TrialJobStatus.RUNNING
            )
        )
        live = _Live("e", exp=None)  # type: ignore[arg-type]  # sync() reads only the id and the mirror

        async def race() -> None:
            entered, release = asyncio.Event(), asyncio.Event()
            real = manager.db.executemany
            calls = 0

            async def slow_first(sql: str, rows: Any) -> None:
                nonlocal calls
                calls += 1
                if calls == 1:
                    entered.set()
                    await release.wait()
                await real(sql, rows)

            manager.db.executemany = slow_first  # type: ignore[method-assign]
            first = asyncio.create_task(manager.sync(live))
            await entered.wait()  # the first sync read the trial without its record and is writing
            store.add_metric("e", "t", 0, type="FINAL", value=0.5, data='{"type": "FINAL", "value": 0.5}')
            second = asyncio.create_task(manager.sync(live))
            await asyncio.wait([second], timeout=1.0)  # done without the fix; waits for the first with it
            release.set()
            await asyncio.gather(first, second)
            manager.db.executemany = real  # type: ignore[method-assign]

        await manager._call(race())
        db = await open_database(db_url)
        try:
            row = await db.fetchrow("SELECT metric_count, final_value FROM svc_trials WHERE id = $1", "t")
            metrics = await db.fetch("SELECT seq FROM svc_metrics WHERE trial_id = $1", "t")
        finally:
            await db.close()
        assert row == (1, 0.5)
        assert metrics == [(0,)]
    finally:
        await manager.close()
