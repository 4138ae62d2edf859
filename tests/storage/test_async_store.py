"""The store's writer thread: awaited writes resolve after COMMIT, in order, batched; failures raise.

The failures are real SQLite failures: a size cap (``max_page_count``) makes writes fail with
SQLITE_FULL as a full disk does, and a second connection holding ``BEGIN EXCLUSIVE`` locks the file.
"""

from __future__ import annotations

import asyncio
import copy
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pydantic
import pytest

from nni_ts.errors import StoreError
from nni_ts.models import TrialJobDetail, TrialJobStatus
from nni_ts.storage import AsyncStore, Store, TrialRecord
from nni_ts.testing.conformance import form
from nni_ts.testing.loopguard import no_sqlite_on_loop


def _trial(tid: str, seq: int = 0) -> TrialRecord:
    return TrialRecord(experiment_id="e1", id=tid, sequence_id=seq, parameter_id=seq, parameters={"x": seq})


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    with no_sqlite_on_loop() as guard:
        store = await asyncio.to_thread(Store, tmp_path / "db.sqlite", busy_timeout=0.2)
        a = store.asynchronous()
        await a.create_experiment("e1", name="demo", platform="local", config={}, working_dir=tmp_path)
        await a.insert_trial(_trial("t1"))
        yield a
        await a.aclose()
    assert guard.statements > 0  # the guard saw the store's statements, none of them on the loop


def _metric(a: AsyncStore, seq: int, *, trial: str = "t1", size: int = 10) -> asyncio.Future[bool]:
    return a.add_metric("e1", trial, seq, type="PERIODICAL", value=float(seq), data="x" * size)


async def test_writes_resolve_in_order_and_reads_see_every_write_queued_before(astore: AsyncStore) -> None:
    writes = [asyncio.ensure_future(_metric(astore, i)) for i in range(50)]
    read = asyncio.ensure_future(astore.metrics("e1", "t1"))
    assert all(await asyncio.gather(*writes))
    assert [m.seq for m in await read] == list(range(50))
    assert (await astore.get_trial("e1", "t1")).metric_count == 50


async def test_queued_writes_share_one_transaction(astore: AsyncStore) -> None:
    commits: list[str] = []
    released = threading.Event()
    store = astore.store
    # Hold the writer on a read so that the writes queue up behind it.
    blocker = asyncio.ensure_future(astore._call(lambda: released.wait(10), write=False))
    writes = [asyncio.ensure_future(_metric(astore, i)) for i in range(200)]
    await asyncio.sleep(0)
    with store._lock:
        store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    released.set()
    await blocker
    assert all(await asyncio.gather(*writes))
    assert 1 <= len(commits) < 10, commits  # 200 writes, a handful of commits (MAX_BATCH is 512)


async def test_a_resent_metric_is_stored_once(astore: AsyncStore) -> None:
    first, again = await asyncio.gather(_metric(astore, 0), _metric(astore, 0))
    assert (first, again) == (True, False)
    assert await _metric(astore, 0) is False
    assert (await astore.get_trial("e1", "t1")).metric_count == 1


async def test_one_calls_own_mistake_fails_only_that_call(astore: AsyncStore, tmp_path: Path) -> None:
    ok1 = asyncio.ensure_future(_metric(astore, 0))
    dup = asyncio.ensure_future(
        astore.create_experiment("e1", name="again", platform="local", config={}, working_dir=tmp_path)
    )
    ok2 = asyncio.ensure_future(_metric(astore, 1))
    with pytest.raises(StoreError, match="already exists"):
        await dup
    assert (await ok1, await ok2) == (True, True)
    assert [m.seq for m in await astore.metrics("e1", "t1")] == [0, 1]


async def test_disk_full_raises_to_every_waiting_writer_then_recovers(astore: AsyncStore) -> None:
    store = astore.store
    cap = await asyncio.to_thread(store.set_max_pages, 1)  # as small as it can be: its current size
    results = await asyncio.gather(*(_metric(astore, i, size=4000) for i in range(20)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures, "nothing failed: the size cap did not take"
    for exc in failures:
        assert isinstance(exc, StoreError) and "full" in str(exc), exc
    stored = {m.seq for m in await astore.metrics("e1", "t1")}
    assert stored == {i for i, r in enumerate(results) if r is True}
    await asyncio.to_thread(store.set_max_pages, cap * 1000)
    assert all(await asyncio.gather(*(_metric(astore, i, size=4000) for i in range(20))))
    assert [m.seq for m in await astore.metrics("e1", "t1")] == list(range(20))
    assert (await astore.get_trial("e1", "t1")).metric_count == 20


async def test_a_locked_database_raises_after_the_busy_timeout_without_blocking_the_loop(
    astore: AsyncStore,
) -> None:
    other = await asyncio.to_thread(sqlite3.connect, astore.path, isolation_level=None, check_same_thread=False)
    await asyncio.to_thread(other.execute, "BEGIN EXCLUSIVE")
    try:
        write = asyncio.ensure_future(_metric(astore, 0))
        ticks = 0
        while not write.done():  # the loop keeps turning while the writer waits on the lock
            ticks += 1
            await asyncio.sleep(0.001)
        assert ticks > 20  # busy_timeout is 0.2 s
        with pytest.raises(StoreError, match="locked"):
            await write
    finally:
        await asyncio.to_thread(other.execute, "ROLLBACK")
        await asyncio.to_thread(other.close)
    assert await _metric(astore, 0) is True
    assert [m.seq for m in await astore.metrics("e1", "t1")] == [0]


async def test_close_finishes_the_queued_writes(tmp_path: Path) -> None:
    store = await asyncio.to_thread(Store, tmp_path / "db.sqlite")
    a = store.asynchronous()
    await a.create_experiment("e1", name=None, platform="local", config={}, working_dir=tmp_path)
    await a.insert_trial(_trial("t1"))
    writes = [asyncio.ensure_future(_metric(a, i)) for i in range(30)]
    await a.aclose()
    assert all(w.done() and w.result() for w in writes)
    reopened = await asyncio.to_thread(Store, tmp_path / "db.sqlite", readonly=True)
    try:
        assert len(await asyncio.to_thread(reopened.metrics, "e1", "t1")) == 30
    finally:
        reopened.close()
    with pytest.raises(StoreError, match="closed"):
        await _metric(a, 31)


async def test_a_call_is_queued_when_made_not_when_awaited(astore: AsyncStore) -> None:
    from nni_ts.models import TrialJobApplicationForm, TrialJobDetail, TrialJobStatus

    form = TrialJobApplicationForm(sequence_id=0, hyper_parameters={"value": "{}"})
    detail = TrialJobDetail(id="t1", status=TrialJobStatus.RUNNING, form=form, sequence_id=0)
    write = astore.update_trial("e1", detail)  # not awaited yet
    detail.status = TrialJobStatus.FAILED  # the caller's later change is not what was queued
    read = astore.get_trial("e1", "t1")
    assert (await read).status is TrialJobStatus.RUNNING
    assert write.done() and write.result() is None


async def test_a_trial_is_stored_as_it_was_at_the_call_without_deep_copies(
    astore: AsyncStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    real_deepcopy, real_model = copy.deepcopy, pydantic.BaseModel.__deepcopy__
    monkeypatch.setattr(copy, "deepcopy", lambda x, *a: made.append(type(x).__name__) or real_deepcopy(x, *a))
    monkeypatch.setattr(
        pydantic.BaseModel, "__deepcopy__", lambda self, *a: made.append(type(self).__name__) or real_model(self, *a)
    )
    record = _trial("t2", 1)
    inserted = asyncio.ensure_future(astore.insert_trial(record))
    first = asyncio.ensure_future(astore.get_trial("e1", "t2"))
    record.parameters["x"] = 99  # the caller goes on with its objects before the writer ran
    detail = TrialJobDetail(id="t2", status=TrialJobStatus.RUNNING, form=form({"x": 1}, 1), message="running")
    updated = asyncio.ensure_future(astore.update_trial("e1", detail))
    detail.status, detail.message = TrialJobStatus.FAILED, "later"
    second = asyncio.ensure_future(astore.get_trial("e1", "t2"))
    await asyncio.gather(inserted, updated)
    assert (await first).parameters == {"x": 1}
    stored = await second
    assert (stored.status, stored.message) == (TrialJobStatus.RUNNING, "running")
    assert made == []  # encoded at the call: a deep copy of each was several times dearer
