"""The read cache of polled answers (nni_ts.service.readcache): PostgreSQL replicas answer repeated
polls of an unchanged live experiment from memory, and never serve an answer after a change to what
it was read from (a commit of the engine, a write through the API, a change by another client of the
database, a rotated token), nor while the change feed is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from service_support import GATED_TRIAL, Running, quick_config

from nni_ts.service import users as users_mod
from nni_ts.service.db import open_database
from nni_ts.service.readcache import APPLICATION, ReadCache


def test_an_answer_read_during_a_change_is_never_served_after_it() -> None:
    cache = ReadCache(max_entries=2, max_body=10)
    key = ("token", "/api/v1/experiments/e1")
    assert cache.get(key, "e1", "details") is None  # off until the feed listens: keeps nothing
    cache.put(key, cache.stamp("e1", "details"), b"{}", "application/json")
    assert cache.get(key, "e1", "details") is None
    cache.enable()

    stamp = cache.stamp("e1", "details")  # taken before the read...
    cache.changed("e1", "trials")  # ...a write commits meanwhile...
    cache.put(key, stamp, b"old", "application/json")  # ...the answer read is kept with the old stamp
    assert cache.get(key, "e1", "details") is None

    cache.put(key, cache.stamp("e1", "details"), b"new", "application/json")
    assert cache.get(key, "e1", "details") == (b"new", "application/json")
    cache.changed("e1", "metrics")  # the details do not depend on the metrics table...
    assert cache.get(key, "e1", "details") == (b"new", "application/json")
    metrics = ("token", "/api/v1/experiments/e1/metrics")
    cache.put(metrics, cache.stamp("e1", "metrics"), b"[]", "application/json")
    cache.changed("e1")  # ...and an experiment-wide change stales both
    assert cache.get(key, "e1", "details") is None and cache.get(metrics, "e1", "metrics") is None

    cache.put(key, cache.stamp("e1", "details"), b"x", "application/json")
    stamp = cache.stamp("e2", "details")
    cache.clear()  # a user or a token changed: everything, even answers being read now
    cache.put(("token", "/api/v1/experiments/e2"), stamp, b"y", "application/json")
    assert cache.get(key, "e1", "details") is None
    assert cache.get(("token", "/api/v1/experiments/e2"), "e2", "details") is None

    for i in range(3):  # bounded: the least recently used goes; large answers are not kept
        cache.put(("t", str(i)), cache.stamp("e1", "details"), b"z", "application/json")
    assert cache.get(("t", "0"), "e1", "details") is None and cache.get(("t", "2"), "e1", "details") is not None
    cache.put(("t", "big"), cache.stamp("e1", "details"), b"z" * 11, "application/json")
    assert cache.get(("t", "big"), "e1", "details") is None
    cache.disable()
    assert cache.get(("t", "2"), "e1", "details") is None


def _count_statements(running: Running) -> list[str]:
    """Every statement the API's database runs from now on."""
    seen: list[str] = []
    db = running.service.db
    fetch = db.fetch

    async def counted(sql: str, *args: Any) -> list[tuple[Any, ...]]:
        seen.append(sql)
        return await fetch(sql, *args)

    db.fetch = counted  # type: ignore[method-assign]
    return seen


async def _until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_polls_of_an_unchanged_live_experiment_are_answered_from_memory_until_it_changes(
    svc_pg: Running, tmp_path: Path
) -> None:
    service, api, token = svc_pg.service, svc_pg.api, svc_pg.tokens["alice"]
    feed, cache = service.change_feed, service.read_cache
    assert feed is not None and cache is not None
    await asyncio.wait_for(feed.listening.wait(), 10)
    gate = tmp_path / "gate"
    await api.ok("PUT", "/workspaces/ws/files/trial.py", token=token, data=GATED_TRIAL.encode())
    created = await api.ok(
        "POST",
        "/workspaces/ws/experiments",
        token=token,
        json=quick_config(trials=1, concurrency=1, command=f"python3 trial.py {gate}"),
    )
    experiment_id = created["id"]
    details, metrics = f"/experiments/{experiment_id}", f"/experiments/{experiment_id}/metrics"
    async with asyncio.timeout(60):  # the trial waits at its gate with two records stored
        while len(await api.ok("GET", metrics, token=token)) < 2:
            await asyncio.sleep(0.05)

    # Unchanged: the second poll of each is answered without a statement, with the same bytes.
    statements = _count_statements(svc_pg)
    cache.changed(experiment_id)  # (the loop above may have left the metrics kept already)
    first = await api.ok("GET", details, token=token)
    first_metrics = await api.ok("GET", metrics, token=token)
    read = len(statements)
    assert read == 2, statements
    assert await api.ok("GET", details, token=token) == first
    assert await api.ok("GET", metrics, token=token) == first_metrics
    assert len(statements) == read, statements[read:]
    # Another user's token, and a token that is no longer valid, are each checked by the database.
    assert (await api.call("GET", details, token=svc_pg.tokens["bob"]))[0] == 404
    assert (await api.call("GET", details, token="not-a-token"))[0] == 401

    # A record the engine commits is in the very next answer (the storage reports its COMMIT).
    manager = service.manager
    trial_id = first_metrics[0]["trialId"]

    async def add_metric() -> bool:  # on the engine loop, as the experiment's own writes
        return await manager.storage.add_metric(experiment_id, trial_id, 2, type="PERIODICAL", value=9.5, data='"9.5"')

    assert await manager._call(add_metric())
    after = await api.ok("GET", metrics, token=token)
    assert [m["seq"] for m in after] == [m["seq"] for m in first_metrics] + [2]
    assert (await api.ok("GET", details, token=token))["best"] == first["best"]  # details: not stale either

    # A change by another client of the database (another replica, a command) reaches it by NOTIFY.
    other = await asyncpg.connect(service.database_url)
    try:
        notified = feed.notifications
        await other.execute("UPDATE svc_experiments SET name = 'renamed' WHERE id = $1", experiment_id)
        await _until(lambda: feed.notifications > notified, "the notification")
        assert (await api.ok("GET", details, token=token))["name"] == "renamed"

        # The token rotated by `nni-ts users token` (another process): the old token is refused.
        db = await open_database(service.database_url)
        try:
            notified = feed.notifications
            token = await users_mod.rotate_token(db, "alice")
        finally:
            await db.close()
        await _until(lambda: feed.notifications > notified, "the notification")
        assert (await api.call("GET", details, token=svc_pg.tokens["alice"]))[0] == 401
        assert (await api.call("GET", metrics, token=svc_pg.tokens["alice"]))[0] == 401
        assert (await api.ok("GET", details, token=token))["name"] == "renamed"

        # The feed's connection lost: the cache is off (the database answers) until it listens again.
        await api.ok("GET", details, token=token)
        await other.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", APPLICATION
        )
        await _until(lambda: not cache.enabled, "the cache off")
        statements.clear()
        await api.ok("GET", details, token=token)
        await api.ok("GET", details, token=token)
        assert len(statements) == 2, statements
        await asyncio.wait_for(feed.listening.wait(), 10)
        assert cache.enabled
    finally:
        await other.close()

    # A write through the API is read back at once; an ended experiment is read from the database.
    await api.ok("POST", f"{details}/stop", token=token)
    shown = await api.ok("GET", details, token=token)
    assert shown["status"] == "STOPPED" and not shown["live"], shown
    statements.clear()
    await api.ok("GET", details, token=token)
    assert len(statements) == 1


async def test_sqlite_keeps_no_read_cache(svc: Running) -> None:
    """SQLite reads in-process: there is nothing to save, and no change feed to trust."""
    if svc.service.database_url.startswith("sqlite"):
        assert svc.service.read_cache is None and svc.service.change_feed is None
    else:
        assert svc.service.read_cache is not None
