"""One test suite for the experiment storage interface, run against each backend (SQLite, PostgreSQL),
as optuna tests its storages (issue 14: one storage for experiments)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from nni_ts.errors import StoreError
from nni_ts.models import HyperParameters, TrialJobApplicationForm, TrialJobDetail, TrialJobStatus
from nni_ts.storage.base import ExperimentStorage, open_storage
from nni_ts.storage.store import TrialRecord


@pytest.fixture
async def storage(db_url: str) -> AsyncIterator[ExperimentStorage]:
    opened = await open_storage(db_url)
    try:
        yield opened
    finally:
        await opened.close()


def _trial(experiment_id: str, trial_id: str, seq: int, **more: object) -> TrialRecord:
    return TrialRecord(
        experiment_id=experiment_id,
        id=trial_id,
        sequence_id=seq,
        parameter_id=seq,
        parameters={"x": seq, "nested": {"a": [1, 2]}},
        **more,  # type: ignore[arg-type]
    )


async def test_experiments_round_trip(storage: ExperimentStorage) -> None:
    created = await storage.create_experiment(
        "e1",
        name="first",
        platform="local",
        config={"trialConcurrency": 2},
        working_dir="/w",
        manager_pid=42,
        manager_started=1.5,
    )
    assert (created.id, created.name, created.status, created.config) == (
        "e1",
        "first",
        "RUNNING",
        {"trialConcurrency": 2},
    )
    assert (created.manager_pid, created.manager_started, created.working_dir) == (42, 1.5, "/w")
    with pytest.raises(StoreError, match="already exists"):
        await storage.create_experiment("e1", name=None, platform="local", config={}, working_dir="/w")
    await storage.update_experiment("e1", status="DONE", message="All trials done.", ended_ms=5, config={"a": 1})
    shown = await storage.get_experiment("e1")
    assert (shown.status, shown.message, shown.ended_ms, shown.config) == ("DONE", "All trials done.", 5, {"a": 1})
    await storage.create_experiment("e2", name=None, platform="local", config={}, working_dir="/w")
    assert [e.id for e in await storage.list_experiments()] == ["e1", "e2"]
    with pytest.raises(ValueError, match="Unknown"):
        await storage.update_experiment("e1", owner="x")
    with pytest.raises(StoreError, match="no experiment"):
        await storage.get_experiment("nope")


async def test_trials_and_metrics_round_trip_exactly(storage: ExperimentStorage) -> None:
    await storage.create_experiment("e", name=None, platform="local", config={}, working_dir="/w")
    await storage.insert_trial(_trial("e", "t2", 2))
    await storage.insert_trial(_trial("e", "t1", 1))
    form = TrialJobApplicationForm(sequence_id=1, hyper_parameters=HyperParameters(value='{"x": 1}'))
    detail = TrialJobDetail(
        id="t1", status=TrialJobStatus.RUNNING, sequence_id=1, start_time=10, message="hi", form=form
    )
    await storage.update_trial("e", detail)
    odd = '{"type": "FINAL", "value": "0.5", "note": "a\x00b \u00e9"}'  # a NUL, a non-ASCII character
    assert await storage.add_metric("e", "t1", 0, type="PERIODICAL", value=0.25, data='{"value": 0.25}')
    assert await storage.add_metric("e", "t1", 1, type="FINAL", value=0.5, data=odd)
    assert not await storage.add_metric("e", "t1", 1, type="FINAL", value=0.5, data=odd)  # delivered again
    trials = await storage.list_trials("e")
    assert [t.id for t in trials] == ["t1", "t2"]
    t1 = await storage.get_trial("e", "t1")
    assert (t1.status, t1.start_ms, t1.message, t1.metric_count) == (TrialJobStatus.RUNNING, 10, "hi", 2)
    assert (t1.final_value, t1.final_data, t1.parameters) == (0.5, odd, {"x": 1, "nested": {"a": [1, 2]}})
    assert t1.detail is not None and t1.detail.status is TrialJobStatus.RUNNING
    assert (await storage.list_trials("e"))[0].detail is None
    assert (await storage.list_trials("e", with_detail=True))[0].detail is not None
    records = await storage.metrics("e", "t1")
    assert [(m.seq, m.type, m.value, m.data) for m in records] == [
        (0, "PERIODICAL", 0.25, '{"value": 0.25}'),
        (1, "FINAL", 0.5, odd),
    ]
    with pytest.raises(StoreError):
        await storage.get_trial("e", "nope")


async def test_parallel_metric_writes_count_each_record_once(storage: ExperimentStorage) -> None:
    await storage.create_experiment("e", name=None, platform="local", config={}, working_dir="/w")
    await storage.insert_trial(_trial("e", "t", 0))
    data = [f'{{"value": {i}}}' for i in range(20)]
    results = await asyncio.gather(
        *(
            storage.add_metric("e", "t", i % 20, type="PERIODICAL", value=float(i % 20), data=data[i % 20])
            for i in range(40)
        )
    )
    assert sum(results) == 20
    assert (await storage.get_trial("e", "t")).metric_count == 20
    assert [m.seq for m in await storage.metrics("e", "t")] == list(range(20))


async def test_delete_removes_everything_of_one_experiment(storage: ExperimentStorage) -> None:
    for eid in ("a", "b"):
        await storage.create_experiment(eid, name=None, platform="local", config={}, working_dir="/w")
        await storage.insert_trial(_trial(eid, "t", 0))
        await storage.add_metric(eid, "t", 0, type="FINAL", value=1.0, data="1")
    assert await storage.delete_experiment("a")
    assert not await storage.delete_experiment("a")
    assert [e.id for e in await storage.list_experiments()] == ["b"]
    assert await storage.list_trials("a") == [] and await storage.metrics("a", "t") == []
    assert len(await storage.metrics("b", "t")) == 1
