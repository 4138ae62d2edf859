"""The dashboard's JSON API over a real store: sort/filter/paging in SQL, masking, export, live events
with ids and Last-Event-ID replay, and the guards on actions (CSRF token, read-only, loopback Host).

The reading tests (those with the ``client`` fixture) run on both readers: the SQLite store file, and
the same records copied into a real PostgreSQL database read by ``PostgresReader`` (as a PostgreSQL
service's dashboard reads them); the test's later writes to ``store`` go to both databases."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from nni_ts.cli import main
from nni_ts.dashboard import Backend, Dashboard, Viewer
from nni_ts.models import TrialJobStatus
from nni_ts.storage.store import Store, TrialRecord

from .conftest import LoopThread
from .support import XSS, copy_to_postgres, fill, record

API = "/dash/api/experiments/e1"


class Recorder(Backend):
    """A backend whose experiment e1 is 'live' and which records the actions it is asked for."""

    readonly = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def is_live(self, experiment_id: str) -> bool:
        return experiment_id == "e1"

    async def stop(self, viewer: Viewer, experiment_id: str) -> None:
        self.calls.append(("stop", experiment_id))

    async def update(self, viewer: Viewer, experiment_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("update", changes))
        return changes

    async def rerun(self, viewer: Viewer, experiment_id: str, parameters: dict[str, Any]) -> None:
        self.calls.append(("rerun", parameters))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "nni-ts.db")
    fill(s, trials=30)
    yield s
    s.close()


async def _client(dashboard: Dashboard) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(dashboard.app()))
    await client.start_server()
    return client


def _mirror_writes(store: Store, url: str) -> LoopThread:
    """Make the test's writes to ``store`` go to the PostgreSQL copy too (committed before they return),
    through a PostgresStorage on a loop of its own."""
    from nni_ts.storage.base import PostgresStorage

    lt = LoopThread()
    storage = lt.run(PostgresStorage.connect(url))
    sqlite_insert, sqlite_metric = store.insert_trial, store.add_metric

    async def call(make: Any) -> Any:
        return await make()

    def insert_trial(trial: TrialRecord) -> None:
        sqlite_insert(trial)
        lt.run(call(lambda: storage.insert_trial(trial)))

    def add_metric(experiment_id: str, trial_id: str, seq: int, **kw: Any) -> bool:
        sqlite_metric(experiment_id, trial_id, seq, **kw)
        return bool(lt.run(call(lambda: storage.add_metric(experiment_id, trial_id, seq, **kw))))

    store.insert_trial = insert_trial  # type: ignore[method-assign]
    store.add_metric = add_metric  # type: ignore[method-assign]
    lt.storage = storage  # type: ignore[attr-defined]
    return lt


@pytest.fixture(params=["sqlite", "postgresql"])
async def client(request: pytest.FixtureRequest, store: Store) -> AsyncIterator[TestClient[Any, Any]]:
    if request.param == "sqlite":
        c = await _client(Dashboard(store.path, Recorder()))
        yield c
        await c.close()
        return
    from nni_ts.dashboard.pgreader import PostgresReader
    from nni_ts.service.db import open_database
    from nni_ts.testing.postgres import new_database

    async with new_database(request.getfixturevalue("postgres_server")) as url:
        await copy_to_postgres(store, url)
        db = await open_database(url)
        mirror = _mirror_writes(store, url)
        try:
            c = await _client(Dashboard(PostgresReader(db), Recorder()))
            yield c
            await c.close()
        finally:
            mirror.run(mirror.storage.close())  # type: ignore[attr-defined]
            mirror.close()
            await db.close()


async def _json(resp: ClientResponse, status: int = 200) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    return body


async def test_trials_are_sorted_filtered_and_paged_by_the_server(client: TestClient[Any, Any], store: Store) -> None:
    trials = store.list_trials("e1")
    page = await _json(await client.get(f"{API}/trials", params={"sort": "final", "order": "desc", "limit": "5"}))
    finals = sorted((t.final_value for t in trials if t.final_value is not None), reverse=True)
    assert page["total"] == 30 and [t["finalValue"] for t in page["trials"]] == finals[:5]
    second = await _json(
        await client.get(f"{API}/trials", params={"sort": "final", "order": "desc", "limit": "5", "offset": "5"})
    )
    assert [t["finalValue"] for t in second["trials"]] == finals[5:10]
    # Trials without a final value sort last, whatever the direction.
    asc = await _json(await client.get(f"{API}/trials", params={"sort": "final", "limit": "1000"}))
    assert [t["finalValue"] for t in asc["trials"]][-1] is None and asc["trials"][0]["finalValue"] == min(finals)

    async def ids(*filters: str, **more: str) -> list[str]:
        params = [("f", f) for f in filters] + [("limit", "1000"), *more.items()]
        return [t["id"] for t in (await _json(await client.get(f"{API}/trials", params=params)))["trials"]]

    assert await ids("param.lr:gt:0.01") == [t.id for t in trials if t.parameters["lr"] > 0.01]
    assert await ids("param.lr:between:0.001,0.1") == [t.id for t in trials if 0.001 <= t.parameters["lr"] <= 0.1]
    assert await ids(f"param.opt:eq:{XSS}") == [t.id for t in trials if t.parameters["opt"] == XSS]
    assert await ids("param.opt:ne:adam", "status:in:SUCCEEDED,RUNNING") == [
        t.id
        for t in trials
        if t.parameters["opt"] != "adam" and t.status in (TrialJobStatus.SUCCEEDED, TrialJobStatus.RUNNING)
    ]
    # A key of the dict final metric, not only its default.
    assert await ids("metric.acc:lt:0.25") == [
        t.id for t in trials if t.final_value is not None and t.final_value / 2 < 0.25
    ]
    assert await ids("status:in:FAILED") == [t.id for t in trials if t.status is TrialJobStatus.FAILED]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"f": "nonsense"}, ["FIELD:OP:VALUE"]),
        ({"f": "weight:gt:1"}, ["Unknown field", "param.NAME"]),
        ({"f": "param.lr:between:1"}, ["two values"]),
        ({"f": 'param.a"b:eq:1'}, ["quote"]),
        ({"sort": "nope"}, ["Unknown field"]),
        ({"limit": "0"}, ["limit", "between 1 and 1000"]),
        ({"offset": "x"}, ["offset", "integer"]),
    ],
)
async def test_a_bad_query_is_a_400_with_a_sentence(
    client: TestClient[Any, Any], params: dict[str, str], words: list[str]
) -> None:
    body = await _json(await client.get(f"{API}/trials", params=params), 400)
    for word in words:
        assert word in body["error"]


async def test_overview_masks_secrets_and_counts(client: TestClient[Any, Any], store: Store) -> None:
    o = await _json(await client.get(API))
    assert o["config"]["trainingService"]["machineList"][0]["password"] == "<hidden>"
    assert "hunter2" not in json.dumps(o)
    trials = store.list_trials("e1")
    assert o["counts"] == {s: sum(t.status.value == s for t in trials) for s in {t.status.value for t in trials}}
    best = max((t for t in trials if t.final_value is not None), key=lambda t: t.final_value or 0)
    assert o["best"]["id"] == best.id and o["best"]["final"]["acc"] == pytest.approx(best.final_value / 2)
    assert o["tuner"] == "TPE" and o["maxTrialNumber"] == 40 and o["live"] is True
    assert o["series"][0] == [t.sequence_id for t in trials if t.final_value is not None]
    missing = await _json(await client.get("/dash/api/experiments/nope"), 404)
    assert "nope" in missing["error"]


async def test_trial_has_every_key_of_a_dict_metric(client: TestClient[Any, Any]) -> None:
    t = await _json(await client.get(f"{API}/trials/t00000"))
    assert [m["type"] for m in t["metrics"]] == ["PERIODICAL"] * 5 + ["FINAL"]
    assert set(t["metrics"][0]["value"]) == {"default", XSS}
    await _json(await client.get(f"{API}/trials/nope"), 404)


async def test_export_is_what_the_cli_exports(
    client: TestClient[Any, Any], store: Store, capsys: pytest.CaptureFixture[str], nni_ts_home: Path
) -> None:
    resp = await client.get(f"{API}/export", params={"format": "csv"})
    assert resp.status == 200 and "attachment" in resp.headers["Content-Disposition"]
    text = await resp.text()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:4] == ["trialId", "sequenceId", "status", "finalValue"] and len(rows) == 31
    assert f"final.{XSS}" in rows[0]  # every key of the final result, as the CLI exports it
    exported = json.loads(await (await client.get(f"{API}/export", params={"format": "json"})).text())
    assert len(exported) == 30 and len(exported[0]["metrics"]) == 6
    # Byte for byte what `nni-ts experiment export --with-metrics` prints for the same store.
    nni_ts_home.mkdir(parents=True, exist_ok=True)
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (nni_ts_home / "nni-ts.db").write_bytes(store.path.read_bytes())
    for fmt, body in (("csv", text), ("json", json.dumps(exported, indent=1))):
        capsys.readouterr()
        assert main(["experiment", "export", "e1", "--format", fmt, "--with-metrics"]) == 0
        printed = capsys.readouterr().out
        assert printed.rstrip("\n") == body.rstrip("\n")


async def _events(resp: ClientResponse, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Read ``count`` events (id, event, data) from an SSE response."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while len(out) < count:
        line = await asyncio.wait_for(resp.content.readline(), max(0.1, deadline - time.monotonic()))
        text = line.decode().rstrip("\n")
        if not text:
            if "event" in current:
                out.append(current)
            current = {}
        elif text.startswith((":", "retry:")):
            continue
        else:
            key, _, value = text.partition(": ")
            current[key] = json.loads(value) if key == "data" else value
    return out


async def test_events_have_ids_and_a_reconnect_replays_what_it_missed(
    client: TestClient[Any, Any], store: Store
) -> None:
    resp = await client.get(f"{API}/events")
    (hello,) = await _events(resp, 1)
    assert hello["event"] == "hello"
    store.insert_trial(TrialRecord("e1", "new1", 100, 100, {"lr": 0.5, "opt": "adam"}))
    store.add_metric("e1", "new1", 0, type="PERIODICAL", value=0.25, data=record("PERIODICAL", 0.25))
    # The two writes may land in one look at the store or in two: read until the metric came.
    events: list[dict[str, Any]] = []
    while not any(e["event"] == "metric" for e in events):
        assert len(events) < 20, events
        events += await _events(resp, 1)
    events += await _events(resp, 1)  # the experiment summary follows the trial's events
    names = [e["event"] for e in events]
    assert "trial" in names and names[-1] == "experiment"
    metric = next(e for e in events if e["event"] == "metric")
    assert metric["data"]["trialId"] == "new1" and metric["data"]["value"] == 0.25
    seen = events[-1]["id"]
    numbers = [int(e["id"].rsplit("-", 1)[1]) for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    resp.close()
    # While the page is away, more happens; it comes back with Last-Event-ID and gets exactly that.
    store.insert_trial(TrialRecord("e1", "new2", 101, 101, {"lr": 0.1, "opt": "sgd"}))
    again = await client.get(f"{API}/events", headers={"Last-Event-ID": seen})
    replay = await _events(again, 2)
    assert replay[0]["event"] == "trial" and replay[0]["data"]["id"] == "new2"
    assert int(replay[0]["id"].rsplit("-", 1)[1]) == int(seen.rsplit("-", 1)[1]) + 1
    again.close()
    # An id from another server run (or too old) gets a reset: the page reloads its view.
    foreign = await client.get(f"{API}/events", headers={"Last-Event-ID": "deadbeef-3"})
    (reset,) = await _events(foreign, 1)
    assert reset["event"] == "reset"
    foreign.close()


async def test_actions_need_the_csrf_token(store: Store) -> None:
    backend = Recorder()
    client = await _client(Dashboard(store.path, backend))
    try:
        refused = await _json(await client.post(f"{API}/stop"), 403)
        assert "CSRF" in refused["error"]
        wrong = await client.post(f"{API}/stop", headers={"X-CSRF-Token": "guess"})
        assert wrong.status == 403 and backend.calls == []
        session = await _json(await client.get("/dash/api/session"))
        ok = await client.post(f"{API}/stop", headers={"X-CSRF-Token": session["csrf"]})
        assert ok.status == 200 and backend.calls == [("stop", "e1")]
        bad = await _json(
            await client.post(f"{API}/update", json={"concurrency": 2}, headers={"X-CSRF-Token": session["csrf"]}),
            422,
        )
        assert "Unknown keys" in bad["error"] and bad["path"] == "concurrency"
        bad = await _json(
            await client.post(
                f"{API}/update", json={"trialConcurrency": "lots"}, headers={"X-CSRF-Token": session["csrf"]}
            ),
            422,
        )
        assert "trialConcurrency must be a positive integer" in bad["error"]
        await _json(
            await client.post(f"{API}/update", json={"trialConcurrency": 4}, headers={"X-CSRF-Token": session["csrf"]})
        )
        assert backend.calls[-1] == ("update", {"trialConcurrency": 4})
        csrf = {"X-CSRF-Token": session["csrf"]}
        bad = await _json(await client.post(f"{API}/trials", json={"parameters": []}, headers=csrf), 422)
        assert "non-empty JSON object" in bad["error"]
        queued = await client.post(f"{API}/trials", json={"parameters": {"lr": 0.5}}, headers=csrf)
        assert queued.status == 202 and backend.calls[-1] == ("rerun", {"lr": 0.5})
    finally:
        await client.close()


async def test_a_read_only_dashboard_refuses_every_action(store: Store) -> None:
    client = await _client(Dashboard(store.path))  # the base Backend: nni-ts view
    try:
        session = await _json(await client.get("/dash/api/session"))
        assert session["readonly"] is True
        body = await _json(await client.post(f"{API}/stop", headers={"X-CSRF-Token": session["csrf"]}), 403)
        assert "read-only" in body["error"]
    finally:
        await client.close()


async def test_a_loopback_dashboard_answers_only_loopback_names(store: Store) -> None:
    dashboard = Dashboard(store.path, Recorder())
    dashboard.loopback_only = True
    client = await _client(dashboard)
    try:
        ok = await client.get("/dash/api/experiments", headers={"Host": "localhost:8080"})
        assert ok.status == 200
        rebound = await client.get("/dash/api/experiments", headers={"Host": "evil.example:8080"})
        assert rebound.status == 403
        page = await client.get("/", headers={"Host": "evil.example"})
        assert page.status == 403
    finally:
        await client.close()


async def test_base_path_serves_everything_under_the_prefix(store: Store) -> None:
    client = await _client(Dashboard(store.path, base_path="/proxy/nni/"))
    try:
        page = await client.get("/proxy/nni/")
        html = await page.text()
        assert page.status == 200 and "Content-Security-Policy" in page.headers
        # Every URL in the page is relative: it works under any prefix a proxy adds.
        assert 'src="dash/static/js/app.js"' in html and 'href="/' not in html and 'src="/' not in html
        assert (await client.get("/proxy/nni/dash/static/js/app.js")).status == 200
        assert (await client.get("/proxy/nni/dash/api/experiments")).status == 200
        assert (await client.get("/dash/api/experiments")).status == 404
        bare = await client.get("/proxy/nni", allow_redirects=False)
        assert bare.status == 302 and bare.headers["Location"] == "nni/"
        assert (await client.get("/proxy/nni/dash/static/../server.py")).status == 404
    finally:
        await client.close()


async def test_the_experiments_list_follows_every_running_experiment_on_one_stream(
    client: TestClient[Any, Any], store: Store
) -> None:
    resp = await client.get("/dash/api/events")
    (hello,) = await _events(resp, 1)
    assert hello["event"] == "hello"
    store.insert_trial(TrialRecord("e1", "new3", 102, 102, {"lr": 0.2, "opt": "sgd"}))
    (event,) = await _events(resp, 1)  # only experiment summaries travel on this stream
    assert event["event"] == "experiment" and event["data"]["id"] == "e1" and event["data"]["trialCount"] == 31
    resp.close()


async def test_the_sqlite_reader_never_reads_on_the_event_loop(tmp_path: Path) -> None:
    """Every read of the SQLite store runs on the reader's thread: the event loop never waits on it."""
    from nni_ts.testing.loopguard import no_sqlite_on_loop

    with Store(tmp_path / "nni-ts.db") as s:
        fill(s, trials=5, running=1)
    with no_sqlite_on_loop() as guard:
        client = await _client(Dashboard(tmp_path / "nni-ts.db"))
        try:
            for path in ("", "/trials?sort=param.lr", "/trials/t00000", "/charts", "/intermediate", "/export"):
                assert (await client.get(API + path)).status == 200, path
            assert (await client.get("/dash/api/experiments")).status == 200
            resp = await client.get(f"{API}/events")
            assert (await _events(resp, 1))[0]["event"] == "hello"
            resp.close()
            log = await client.get(f"{API}/trials/t00000/log")
            assert log.status == 200
        finally:
            await client.close()
    assert guard.statements > 10
