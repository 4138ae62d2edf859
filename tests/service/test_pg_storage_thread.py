"""PostgresStorage runs its pool and lanes on an event loop in a thread of its own (issue 14: a write
commits while the caller's loop is busy). What that thread must not break: a caller cancelled while
its write waits or runs, and close() ending the thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nni_ts.errors import StoreError
from nni_ts.storage.base import PostgresStorage
from nni_ts.storage.store import TrialRecord
from nni_ts.testing.postgres import new_database

pytestmark = pytest.mark.slow  # a PostgreSQL database per test, as the PostgreSQL backend tests


def _storage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nni-ts-pg-storage" and t.is_alive()]


@pytest.fixture
async def pg_url(postgres_server: Any) -> AsyncIterator[str]:
    async with new_database(postgres_server) as url:
        yield url


async def _wait_for_lock_waiter(url: str) -> None:
    """Until a statement of the database waits for a row lock (bounded)."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("no write of the storage waited for the row lock")
    finally:
        await conn.close()


async def test_cancelled_callers_do_not_wedge_a_lane_and_close_ends_the_thread(pg_url: str) -> None:
    import asyncpg

    before = _storage_threads()
    storage = await PostgresStorage.connect(pg_url, pool_size=2)
    try:
        assert len(_storage_threads()) == len(before) + 1
        await storage.create_experiment("e", name=None, platform="local", config={}, working_dir="/w")
        await storage.insert_trial(TrialRecord(experiment_id="e", id="t", sequence_id=0, parameter_id=0, parameters={}))

        # Another connection holds the trial's row: the lane's first metric (its UPDATE of the trial's
        # count) waits for it, and the calls made after it wait in the lane.
        locker = await asyncpg.connect(pg_url)
        try:
            lock = locker.transaction()
            await lock.start()
            await locker.execute("SELECT 1 FROM exp_trials WHERE experiment_id = 'e' AND id = 't' FOR UPDATE")
            running = storage.add_metric("e", "t", 0, type="PERIODICAL", value=0.0, data="0")
            await _wait_for_lock_waiter(pg_url)
            queued = [storage.add_metric("e", "t", i, type="PERIODICAL", value=float(i), data=str(i)) for i in (1, 2)]
            read = storage.get_trial("e", "t")
            for call in (running, *queued, read):
                call.cancel()  # their callers give up
            await asyncio.sleep(0)  # (the cancellations reach the storage's futures: done callbacks)
            await lock.rollback()
        finally:
            await locker.close()

        # The lane is not stuck: the next write on the same experiment commits.
        assert await asyncio.wait_for(storage.add_metric("e", "t", 3, type="FINAL", value=3.0, data="3"), 10) is True
        # The write the lane had taken committed whole (record and count); those still queued were dropped.
        trial = await storage.get_trial("e", "t")
        assert [m.seq for m in await storage.metrics("e", "t")] == [0, 3]
        assert (trial.metric_count, trial.final_value) == (2, 3.0)
        assert all(call.cancelled() for call in (running, *queued, read))

        # A caller cancelled while its write runs (not only while it waits) leaves the lane working too.
        writes = [storage.add_metric("e", "t", i, type="PERIODICAL", value=float(i), data=str(i)) for i in range(4, 24)]
        await asyncio.sleep(0)
        for w in writes[::2]:
            w.cancel()
        stored = {m.seq for m in await storage.metrics("e", "t")}  # after every write queued before it
        assert set(range(5, 24, 2)) <= stored
        assert (await storage.get_trial("e", "t")).metric_count == len(stored)
    finally:
        await storage.close()
    assert _storage_threads() == before, "close() left the storage's thread running"
    with pytest.raises(StoreError, match="closed"):
        await storage.get_trial("e", "t")
    with pytest.raises(StoreError, match="closed"):
        await storage.list_experiments()
    await storage.close()  # again: nothing to do


async def test_a_failed_connect_leaves_no_thread(pg_url: str) -> None:
    before = _storage_threads()
    with pytest.raises(StoreError, match="Cannot open"):
        await PostgresStorage.connect(pg_url.rsplit("/", 1)[0] + "/no_such_database")
    assert _storage_threads() == before
