"""The two dashboard readers give the same answers for the same records: the SQLite store file, and
its copy in PostgreSQL (the exp_* tables a PostgreSQL service's experiments write), read by
PostgresReader. Filters and sorts include what the databases compare differently by nature (numbers
against texts, texts byte by byte, a missing key, a NaN final value)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nni_ts.dashboard.pgreader import PostgresReader
from nni_ts.dashboard.queries import SqliteReader, TrialQuery, parse_filter
from nni_ts.models import TrialJobStatus
from nni_ts.service.db import open_database
from nni_ts.storage.store import Store, TrialRecord
from nni_ts.testing.postgres import new_database

from .support import copy_to_postgres, fill, record

FILTERS = [
    "param.lr:gt:0.01",
    "param.lr:lt:abc",
    "param.lr:gt:abc",
    "param.opt:gt:5",
    "param.opt:le:adam",
    "param.opt:ne:adam",
    "param.opt:in:adam,3,Zeta",
    "param.opt:between:a,t",
    "param.missing:eq:1",
    "seq:eq:abc",
    "seq:between:3,9",
    "id:in:t00001,t00003,odd1",
    "id:lt:t00010",
    "status:ne:RUNNING",
    "status:in:SUCCEEDED,FAILED",
    "metric.acc:ge:0.1",
    "metric.default:lt:0.5",
    "final:le:0.5",
    "duration:gt:4000",
    "metrics:eq:6",
]
SORTS = ["seq", "id", "status", "final", "start", "end", "metrics", "duration", "param.lr", "param.opt", "metric.acc"]


@pytest.fixture
async def readers(tmp_path: Path, postgres_server: Any) -> AsyncIterator[tuple[SqliteReader, PostgresReader]]:
    with Store(tmp_path / "nni-ts.db") as store:
        fill(store, trials=24, config=None)
        # Parameters of other types than the search space's, a missing key, a NaN final value.
        odd = [
            ("odd1", {"lr": "auto", "opt": 3}, 0.5),
            ("odd2", {"lr": None, "opt": "Zeta"}, float("nan")),
            ("odd3", {"opt": True}, None),
            ("odd4", {"lr": 0.02, "opt": "\u00e9t\u00e9"}, 0.75),
        ]
        for i, (tid, params, final) in enumerate(odd):
            store.insert_trial(TrialRecord("e1", tid, 100 + i, 100 + i, params, status=TrialJobStatus.SUCCEEDED))
            store.add_metric("e1", tid, 0, type="PERIODICAL", value=float(i), data=record("PERIODICAL", i))
            if final is not None:
                data = record("FINAL", {"default": None if math.isnan(final) else final, "acc": 0.3})
                store.add_metric("e1", tid, 1, type="FINAL", value=final, data=data)
        async with new_database(postgres_server) as url:
            await copy_to_postgres(store, url)
            db = await open_database(url)
            sqlite = SqliteReader(store.path)
            try:
                # SQLite stores a NaN as NULL; PostgreSQL keeps it (as a PostgreSQL service's storage does).
                await db.execute("UPDATE exp_trials SET final_value = 'NaN' WHERE id = 'odd2'")
                await db.execute("UPDATE exp_metrics SET value = 'NaN' WHERE trial_id = 'odd2' AND type = 'FINAL'")
                yield sqlite, PostgresReader(db)
            finally:
                await sqlite.close()
                await db.close()


async def test_both_readers_answer_alike(readers: tuple[SqliteReader, PostgresReader]) -> None:
    sqlite, pg = readers
    for f in FILTERS:
        query = TrialQuery(filters=(parse_filter(f),), sort="param.opt", limit=1000)
        expected = await sqlite.trials("e1", query)
        assert await pg.trials("e1", query) == expected, f
    some = set()
    for f in FILTERS:
        some.add((await sqlite.trials("e1", TrialQuery(filters=(parse_filter(f),), limit=1000)))["total"])
    assert len(some) > 5  # the filters select different sets (the comparison is not of empty pages)
    for sort in SORTS:
        for descending in (False, True):
            for offset in (0, 10):
                query = TrialQuery(sort=sort, descending=descending, offset=offset, limit=10)
                assert await pg.trials("e1", query) == await sqlite.trials("e1", query), (sort, descending, offset)
    assert await pg.experiment_ids() == await sqlite.experiment_ids() == ["e1"]
    assert await pg.summaries(None) == await sqlite.summaries(None)
    assert await pg.summaries({"other"}) == []
    assert await pg.overview("e1") == await sqlite.overview("e1")
    for tid in ("t00000", "odd2", "nope"):
        assert await pg.trial("e1", tid) == await sqlite.trial("e1", tid)
    assert await pg.metrics("e1", "t00003", last=2) == await sqlite.metrics("e1", "t00003", last=2)
    assert await pg.trials_by_id("e1", ["t00001", "odd1"]) == await sqlite.trials_by_id("e1", ["t00001", "odd1"])
    assert await pg.experiment_state("e1") == await sqlite.experiment_state("e1")
    assert await pg.running_ids() == await sqlite.running_ids() == ["e1"]
    assert await pg.working_dir("e1") == await sqlite.working_dir("e1") == "/nonexistent"
    for fmt in ("csv", "json"):
        assert await pg.export("e1", fmt) == await sqlite.export("e1", fmt)
    for budget in (300_000, 50):  # with a stride when the points exceed the budget
        assert json.loads(await pg.intermediate_json("e1", budget)) == json.loads(
            await sqlite.intermediate_json("e1", budget)
        )
    charts, expected = json.loads(await pg.chart_data_json("e1")), json.loads(await sqlite.chart_data_json("e1"))
    assert charts == _approx(expected)  # SQLite writes 15 significant digits, PostgreSQL's rows are exact
    with pytest.raises(LookupError):
        await pg.summary("nope")


async def test_the_experiment_list_takes_a_fixed_number_of_statements(
    readers: tuple[SqliteReader, PostgresReader],
) -> None:
    """The PostgreSQL reader's list of experiments does not take two round trips per experiment: with
    four experiments (two that minimize, two that maximize, one without trials) it takes four
    statements, and answers what :meth:`summary` answers for each."""
    _, pg = readers
    db = pg.db
    async with db.transaction() as tx:  # one connection: the copies are temporary tables of it
        await tx.execute("CREATE TEMP TABLE _e ON COMMIT DROP AS SELECT * FROM exp_experiments WITH NO DATA")
        await tx.execute("CREATE TEMP TABLE _t ON COMMIT DROP AS SELECT * FROM exp_trials WITH NO DATA")
        for new, mode, trials in (("e2", "minimize", True), ("e3", "maximize", False), ("e4", "minimize", True)):
            await tx.execute("DELETE FROM _e")
            await tx.execute("INSERT INTO _e SELECT * FROM exp_experiments WHERE id = 'e1'")
            config = json.loads((await tx.fetch("SELECT config FROM _e"))[0][0])
            config["tuner"] = {"name": "TPE", "classArgs": {"optimize_mode": mode}}
            await tx.execute("UPDATE _e SET id = $1, config = $2", new, json.dumps(config))
            await tx.execute("INSERT INTO exp_experiments SELECT * FROM _e")
            if trials:
                await tx.execute("DELETE FROM _t")
                await tx.execute("INSERT INTO _t SELECT * FROM exp_trials WHERE experiment_id = 'e1'")
                await tx.execute("UPDATE _t SET experiment_id = $1", new)
                await tx.execute("INSERT INTO exp_trials SELECT * FROM _t")
    expected = [await pg.summary(e) for e in ("e1", "e2", "e3", "e4")]
    assert expected[1]["bestValue"] != expected[0]["bestValue"]  # minimize and maximize pick different trials
    assert expected[2]["trialCount"] == 0 and expected[2]["bestValue"] is None
    statements: list[str] = []
    fetch = db.fetch

    async def counting(sql: str, *args: Any) -> list[tuple[Any, ...]]:
        statements.append(sql)
        return await fetch(sql, *args)

    db.fetch = counting  # type: ignore[method-assign]
    try:
        assert await pg.summaries(None) == expected
        assert len(statements) == 4, statements
        assert await pg.summaries({"e2", "e3", "nope"}) == [expected[1], expected[2]]
        assert await pg.summaries(set()) == []
    finally:
        db.fetch = fetch  # type: ignore[method-assign]


async def test_the_change_detection_sees_a_commit(readers: tuple[SqliteReader, PostgresReader]) -> None:
    _, pg = readers
    before = await pg.data_version()
    assert await pg.data_version() == before  # nothing committed: the same
    await pg.db.execute("UPDATE exp_experiments SET message = 'x' WHERE id = 'e1'")
    assert await pg.data_version() != before


def _approx(value: Any) -> Any:
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-14)
    if isinstance(value, list):
        return [_approx(v) for v in value]
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    return value
