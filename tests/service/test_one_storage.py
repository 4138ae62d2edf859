"""One storage, no mirror (issue 14): the API reads the very tables the experiment loop writes, so
a metric is readable through the API as soon as the loop acknowledged it, on this replica and on
any other replica of a PostgreSQL service."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from service_support import GATED_TRIAL, Running, quick_config, running_service, storage_url

import nni_ts.service.manager as manager_module
from nni_ts.models import TrialJobMetric
from nni_ts.service import ServiceSettings
from nni_ts.storage.base import PostgresStorage, SqliteStorage, open_storage


async def test_a_metric_is_readable_through_the_api_right_after_the_loops_ack(svc: Running, tmp_path: Path) -> None:
    api, alice = svc.api, svc.tokens["alice"]
    manager = svc.service.manager
    # The mirror is gone: nothing copies results from one database to another.
    assert not hasattr(manager, "sync") and not hasattr(manager_module, "_Mirror")
    on_pg = svc.service.database_url.startswith("postgresql")
    assert isinstance(manager._storage, PostgresStorage if on_pg else SqliteStorage)

    gate = tmp_path / "gate"
    trial = tmp_path / "gated.py"
    trial.write_text(GATED_TRIAL)
    created = await api.ok(
        "POST",
        "/workspaces/ws/experiments",
        token=alice,
        json=quick_config(trials=1, concurrency=1, command=f"{sys.executable} {trial} {gate}"),
    )
    experiment_id = created["id"]
    async with asyncio.timeout(60):  # the trial runs (so the loop's metric listener is in place)
        while not (trials := await api.ok("GET", f"/experiments/{experiment_id}/trials", token=alice)):
            await asyncio.sleep(0.05)
    trial_id = trials[0]["id"]

    # A metric listener after the loop's: it runs once the loop has acknowledged the record (stored
    # it, committed), before the platform counts it delivered. It reads the record through the API.
    api_loop = asyncio.get_running_loop()
    seen: list[tuple[int, list[int]]] = []

    async def read_through_api(metric: TrialJobMetric) -> None:
        async def read() -> list[int]:
            body = await api.ok(
                "GET", f"/experiments/{experiment_id}/metrics", token=alice, params={"trial": metric.trial_job_id}
            )
            return [int(m["seq"]) for m in body]

        seqs = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(read(), api_loop))
        seen.append((metric.sequence, seqs))

    async def listen() -> None:
        service = manager._live[experiment_id].exp.service
        assert service is not None
        service.add_trial_job_metric_listener(read_through_api)

    await manager._call(listen())
    gate.touch()
    done = await api.wait_experiment(experiment_id, alice)
    assert done["status"] == "DONE", done
    assert [s for s, _ in seen][-2:] == [2, 3]  # at least the records reported after the gate opened
    for sequence, readable in seen:
        assert sequence in readable, (sequence, readable)
    shown = await api.ok("GET", f"/experiments/{experiment_id}/trials/{trial_id}", token=alice)
    assert [m["seq"] for m in shown["metrics"]] == [0, 1, 2, 3] and shown["metricCount"] == 4

    # The records are where the loop wrote them: the storage's own tables.
    storage = await open_storage(storage_url(svc))
    try:
        assert [m.seq for m in await storage.metrics(experiment_id, trial_id)] == [0, 1, 2, 3]
    finally:
        await storage.close()


@pytest.mark.slow
async def test_another_replica_reads_a_running_experiment_at_once(
    postgres_server: Any, svc_pg: Running, tmp_path: Path
) -> None:
    """Two replicas on one PostgreSQL database: the one that does not run the experiment serves its
    trials and metrics while it runs, with nothing copied between them."""
    api, alice = svc_pg.api, svc_pg.tokens["alice"]
    gate = tmp_path / "gate"
    trial = tmp_path / "gated.py"
    trial.write_text(GATED_TRIAL)
    created = await api.ok(
        "POST",
        "/workspaces/ws/experiments",
        token=alice,
        json=quick_config(trials=1, concurrency=1, command=f"{sys.executable} {trial} {gate}"),
    )
    experiment_id = created["id"]
    settings = ServiceSettings(
        data_dir=tmp_path / "other", database_url=svc_pg.service.database_url, replica="other-replica"
    )
    async with running_service(settings) as (_, other, _url):
        async with asyncio.timeout(60):  # the two intermediate results before the gate, read on the other
            while True:
                metrics = await other.ok("GET", f"/experiments/{experiment_id}/metrics", token=alice)
                if len(metrics) == 2:
                    break
                await asyncio.sleep(0.05)
        assert [m["value"] for m in metrics] == [1, 2]
        shown = await other.ok("GET", f"/experiments/{experiment_id}", token=alice)
        assert shown["status"] == "RUNNING" and shown["trialCounts"] == {"RUNNING": 1} and not shown["live"]
        gate.touch()
        await api.wait_experiment(experiment_id, alice)
        trials = await other.ok("GET", f"/experiments/{experiment_id}/trials", token=alice)
        assert trials[0]["status"] == "SUCCEEDED" and trials[0]["metricCount"] == 4


async def test_the_engine_loop_makes_no_sqlite_call(tmp_path: Path) -> None:
    """On SQLite the experiments' records are written by the store's writer thread and the engine's
    few service-database statements run on the API loop: nothing blocks the engine loop (the mirror
    used to read the store there after every event)."""
    from nni_ts.service.db import open_database
    from nni_ts.service.users import add_user
    from nni_ts.testing.loopguard import no_sqlite_on_loop

    db_url = f"sqlite:///{tmp_path / 'service.db'}"
    db = await open_database(db_url)
    try:
        token = await add_user(db, "alice")
    finally:
        await db.close()
    assert token is not None
    settings = ServiceSettings(data_dir=tmp_path / "svc", database_url=db_url, replica="r")
    guard = None
    try:
        with no_sqlite_on_loop() as guard:
            async with running_service(settings) as (_, api, _url):
                created = await api.ok("POST", "/workspaces/ws/experiments", token=token, json=quick_config(trials=2))
                done = await api.wait_experiment(created["id"], token)
                assert done["status"] == "DONE" and done["trialCounts"] == {"SUCCEEDED": 2}, done
    except AssertionError as exc:
        if "event loop's thread" not in str(exc):
            raise
    assert guard is not None and guard.statements > 20
    on_engine = [what for thread, what in guard.violations if thread == "nni-ts-service-engine"]
    assert on_engine == []
    # The API's own statements run on its loop (sub-millisecond WAL reads), and the guard saw them.
    assert any(thread == "MainThread" for thread, _ in guard.violations)


@pytest.mark.slow
async def test_an_upgraded_postgresql_service_keeps_the_experiments_of_its_old_store(
    postgres_server: Any, tmp_path: Path
) -> None:
    """A service of the mirroring versions kept each experiment's records in <data-dir>/experiments.db:
    on PostgreSQL the new service copies them into its database at start (once), so they stay readable."""
    from conftest import _new_pg_database, _users

    from nni_ts.models import HyperParameters, TrialJobApplicationForm, TrialJobDetail, TrialJobStatus
    from nni_ts.service.db import open_database
    from nni_ts.storage import Store, TrialRecord

    data = tmp_path / "svc"
    data.mkdir()
    with Store(data / "experiments.db") as old:
        old.create_experiment("oldexp01", name="before", platform="local", config={"a": 1}, working_dir="/w")
        old.insert_trial(TrialRecord("oldexp01", "t1", 0, 0, {"x": 0.5}))
        form = TrialJobApplicationForm(sequence_id=0, hyper_parameters=HyperParameters(value="{}"))
        old.update_trial("oldexp01", TrialJobDetail(id="t1", status=TrialJobStatus.SUCCEEDED, sequence_id=0, form=form))
        old.add_metric("oldexp01", "t1", 0, type="PERIODICAL", value=0.25, data='{"value": 0.25}')
        old.add_metric("oldexp01", "t1", 1, type="FINAL", value=0.5, data='{"value": 0.5}')
        old.update_experiment("oldexp01", status="DONE", ended_ms=5, manager_pid=None)
    async with _new_pg_database(postgres_server) as url:
        tokens = await _users(url)
        db = await open_database(url)
        try:  # the service's own row of it, as the old service wrote it
            await db.execute(
                "INSERT INTO svc_experiments (id, user_name, workspace, name, platform, status, message, config, "
                "trial_concurrency, gpus_per_trial, optimize_mode, owner, legacy, created_ms, updated_ms, ended_ms) "
                "VALUES ('oldexp01', 'alice', 'ws', 'before', 'local', 'DONE', NULL, '{}', 1, 0, 'maximize', 'r', "
                "0, 1, 2, 5)"
            )
        finally:
            await db.close()
        for _ in range(2):  # a second start copies nothing again
            settings = ServiceSettings(data_dir=data, database_url=url, replica="r")
            async with running_service(settings) as (_, api, _url):
                shown = await api.ok("GET", "/experiments/oldexp01", token=tokens["alice"])
                assert shown["trialCounts"] == {"SUCCEEDED": 1} and shown["best"]["finalValue"] == 0.5
                metrics = await api.ok("GET", "/experiments/oldexp01/metrics", token=tokens["alice"])
                assert [(m["seq"], m["value"]) for m in metrics] == [(0, 0.25), (1, 0.5)]
        assert (data / "experiments.db.imported").read_text().startswith("1 experiment")
