"""One test suite for the experiment storage interface, run against each backend (SQLite, PostgreSQL),
as optuna tests its storages (issue 14: one storage for experiments)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nni_ts.errors import StoreError
from nni_ts.experiment import Experiment
from nni_ts.models import HyperParameters, TrialJobApplicationForm, TrialJobDetail, TrialJobStatus
from nni_ts.storage.base import ExperimentStorage, PostgresStorage, SqliteStorage, open_storage
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


# ---------------------------------------------------------------- what the experiment loop relies on


async def test_calls_are_queued_when_made_and_run_in_order(storage: ExperimentStorage, db_url: str) -> None:
    """The loop queues a status it does not wait for, then reads the trial: the read must see it. A
    write is queued when the call is made, not when (or whether) it is awaited."""
    await storage.create_experiment("e", name=None, platform="local", config={}, working_dir="/w")
    form = TrialJobApplicationForm(sequence_id=0, hyper_parameters=HyperParameters(value="{}"))
    insert = storage.insert_trial(_trial("e", "t", 0))
    statuses = [
        storage.update_trial("e", TrialJobDetail(id="t", status=s, sequence_id=0, form=form))
        for s in (TrialJobStatus.RUNNING, TrialJobStatus.SUCCEEDED)
    ]
    metric = storage.add_metric("e", "t", 0, type="FINAL", value=1.0, data='{"value": 1}')
    read = storage.get_trial("e", "t")  # awaited first, made last
    record = await read
    assert (record.status, record.metric_count, record.final_value) == (TrialJobStatus.SUCCEEDED, 1, 1.0)
    assert await metric and await insert is None and [await s for s in statuses] == [None, None]
    # Nobody awaits this one: it is stored all the same, before the read made after it.
    storage.update_experiment("e", status="DONE")
    assert (await storage.get_experiment("e")).status == "DONE"


async def test_a_write_resolves_after_its_commit_and_queued_writes_share_one(
    storage: ExperimentStorage, db_url: str
) -> None:
    """Durable before acknowledged: once a metric's awaitable resolved, another connection sees it.
    Writes queued meanwhile are committed together (PostgreSQL: one transaction id for the batch)."""
    await storage.create_experiment("e", name=None, platform="local", config={}, working_dir="/w")
    await storage.insert_trial(_trial("e", "t", 0))
    other = await open_storage(_same_database(db_url, storage))
    try:
        writes = [
            storage.add_metric("e", "t", i, type="PERIODICAL", value=float(i), data=f'{{"value": {i}}}')
            for i in range(50)
        ]
        first = await writes[0]
        assert first is True
        # The first write resolved: a separate connection reads it (nothing acknowledged is in flight).
        assert 0 in {m.seq for m in await other.metrics("e", "t")}
        assert all(await asyncio.gather(*writes))
        assert [m.seq for m in await other.metrics("e", "t")] == list(range(50))
        assert (await other.get_trial("e", "t")).metric_count == 50
    finally:
        await other.close()
    if isinstance(storage, PostgresStorage):
        import asyncpg

        conn = await asyncpg.connect(storage.url)
        try:
            batches = await conn.fetchval(
                "SELECT count(DISTINCT xmin::text) FROM exp_metrics WHERE experiment_id = 'e' AND seq > 0"
            )
        finally:
            await conn.close()
        assert batches < 10, f"49 queued metrics took {batches} transactions"


async def test_writes_batched_together_round_trip_exactly(storage: ExperimentStorage) -> None:
    """What a batch carries (PostgreSQL: one statement for the whole batch) comes back byte for byte."""
    await storage.create_experiment("e", name=None, platform="local", config={}, working_dir="/w")
    form = TrialJobApplicationForm(sequence_id=0, hyper_parameters=HyperParameters(value='{"x": 1}'))
    odd = '{"type": "FINAL", "value": "0.5", "note": "a\x00b \u00e9 \U0001f600"}'
    calls = [
        storage.insert_trial(_trial("e", "t", 0, message="queued \u00e9")),
        storage.update_trial(
            "e",
            TrialJobDetail(
                id="t", status=TrialJobStatus.RUNNING, sequence_id=0, start_time=7, message="a\x00b", form=form
            ),
        ),
        storage.add_metric("e", "t", 0, type="PERIODICAL", value=float("inf"), data='{"value": "Infinity"}'),
        storage.add_metric("e", "t", 1, type="FINAL", value=-0.25, data=odd),
        storage.add_metric("e", "t", 1, type="FINAL", value=-0.25, data=odd),  # the same record again
        storage.update_trial(
            "e", TrialJobDetail(id="t", status=TrialJobStatus.SUCCEEDED, sequence_id=0, exit_code=0, form=form)
        ),
    ]
    results = await asyncio.gather(*calls)
    assert results[2:5] == [True, True, False]
    trial = await storage.get_trial("e", "t")
    assert (trial.status, trial.exit_code, trial.metric_count) == (TrialJobStatus.SUCCEEDED, 0, 2)
    assert (trial.final_value, trial.final_data) == (-0.25, odd)
    records = await storage.metrics("e", "t")
    assert [(m.seq, m.value, m.data) for m in records] == [
        (0, float("inf"), '{"value": "Infinity"}'),
        (1, -0.25, odd),
    ]


async def test_a_failing_write_fails_alone_among_those_queued_with_it(storage: ExperimentStorage) -> None:
    await storage.create_experiment("e", name=None, platform="local", config={}, working_dir="/w")
    await storage.insert_trial(_trial("e", "t", 0))
    before = storage.add_metric("e", "t", 0, type="PERIODICAL", value=0.0, data="0")
    duplicate = storage.insert_trial(_trial("e", "t", 0))  # the same primary key again
    after = storage.add_metric("e", "t", 1, type="FINAL", value=1.0, data="1")
    assert await before is True
    with pytest.raises(StoreError):
        await duplicate
    assert await after is True
    trial = await storage.get_trial("e", "t")
    assert (trial.metric_count, trial.final_value) == (2, 1.0)


async def test_the_experiment_loop_runs_on_the_storage(storage: ExperimentStorage, tmp_path: Path) -> None:
    """A real experiment (local platform) writes through the interface: trials, metrics, its end."""
    config = {
        "searchSpace": {"x": {"_type": "choice", "_value": [1, 2, 3]}},
        "trialCommand": _REPORTING_TRIAL,
        "trialConcurrency": 2,
        "maxTrialNumber": 3,
        "tuner": {"name": "GridSearch"},
        "trainingService": {"platform": "local"},
        "experimentWorkingDirectory": str(tmp_path),
    }
    exp = Experiment(config, storage=storage, control_socket=False)
    result = await exp.run()
    assert result.status == "DONE" and result.succeeded == 3, result
    record = await storage.get_experiment(exp.id)
    assert record.status == "DONE" and record.manager_pid is None
    trials = await storage.list_trials(exp.id)
    assert sorted(t.parameters["x"] for t in trials) == [1, 2, 3]
    for t in trials:
        assert t.status is TrialJobStatus.SUCCEEDED and t.metric_count == 1
        assert [m.type for m in await storage.metrics(exp.id, t.id)] == ["FINAL"]
    # Continued from the storage (as the service re-attaches), with more budget: nothing repeats.
    more = await Experiment.resume_from(exp.id, storage, max_trial_number=3)
    again = await more.run()
    assert again.status == "DONE" and len(again.trials) == 3


# A trial that reports its parameter as its final result in NNI's local framing, without Python.
_REPORTING_TRIAL = (
    'x=$(sed -n \'s/.*"x": *\\([0-9]*\\).*/\\1/p\' "$NNI_SYS_DIR/parameter.cfg"); '
    'r="{\\"parameter_id\\":0,\\"trial_job_id\\":\\"$NNI_TRIAL_JOB_ID\\",\\"type\\":\\"FINAL\\",'
    '\\"sequence\\":0,\\"value\\":\\"$x\\"}"; '
    'printf \'ME%06d%s\\n\' $((${#r}+1)) "$r" >> "$NNI_SYS_DIR/.nni/metrics"'
)


def _same_database(db_url: str, storage: ExperimentStorage) -> str:
    """A URL opening the same records on a connection of its own."""
    if isinstance(storage, SqliteStorage):
        return f"sqlite:///{storage.store.path}"
    return db_url


async def test_a_batch_cut_short_by_close_fails_its_writes_instead_of_leaving_them_waiting(
    postgres_server: object,
) -> None:
    """PostgreSQL: ``close()`` waits ``close_timeout`` for the lanes, then cancels them. The writes of a
    batch that was running then (here held by a lock another connection keeps) fail with a StoreError,
    as a write that failed; before, their callers waited for ever."""
    import asyncpg

    from nni_ts.testing.postgres import new_database

    async with new_database(postgres_server) as url:  # type: ignore[arg-type]
        storage = await PostgresStorage.connect(url, pool_size=1)
        await storage.create_experiment("e", name=None, platform="local", config={}, working_dir="/w")
        await storage.insert_trial(_trial("e", "t", 0))
        locker = await asyncpg.connect(url)
        try:
            await locker.execute("BEGIN; LOCK TABLE exp_metrics IN ACCESS EXCLUSIVE MODE")
            writes = [
                asyncio.ensure_future(
                    storage.add_metric("e", "t", i, type="PERIODICAL", value=float(i), data=f'{{"value": {i}}}')
                )
                for i in range(3)
            ]
            await asyncio.sleep(0.3)  # the lane took the three as one batch, which waits for the lock
            assert not any(w.done() for w in writes)
            storage.close_timeout = 0.2
            async with asyncio.timeout(20):
                await storage.close()
                outcomes = await asyncio.gather(*writes, return_exceptions=True)
            assert all(isinstance(o, StoreError) and "closed during a write" in str(o) for o in outcomes), outcomes
        finally:
            await locker.close()
