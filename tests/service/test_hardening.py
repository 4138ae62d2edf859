"""Issue 14: users, names and secrets (findings 3 to 5), on both database backends."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from service_support import PASSWORD_ROLE, Running, quick_config, running_service

from nni_ts.errors import UserError
from nni_ts.service.db import open_database
from nni_ts.service.users import add_user, check_name, remove_user
from nni_ts.testing.postgres import new_database


@pytest.mark.parametrize("name", ["mallory\n", "mallory\r\n", "\nmallory", "mal lory"])
def test_names_are_matched_in_full(name: str) -> None:
    with pytest.raises(UserError, match="must be 1 to 40 letters"):
        check_name(name, "A user name")


async def test_a_name_with_a_trailing_newline_is_refused(db_url: str) -> None:
    db = await open_database(db_url)
    try:
        with pytest.raises(UserError):
            await add_user(db, "mallory\n")
        assert await db.fetch("SELECT name FROM svc_users") == []
    finally:
        await db.close()


async def test_a_removed_user_is_stopped_and_archived_and_a_new_one_starts_empty(svc: Running) -> None:
    api, bob, root = svc.api, svc.tokens["bob"], svc.tokens["root"]
    await api.ok("PUT", "/workspaces/ws/files/old.txt", token=bob, data=b"old bob")
    created = await api.ok(
        "POST", "/workspaces/ws/experiments", token=bob, json=quick_config(trials=1, concurrency=1, command="sleep 60")
    )
    experiment_id = created["id"]
    async with asyncio.timeout(30):
        while not (await api.ok("GET", f"/experiments/{experiment_id}/trials", token=bob)):
            await asyncio.sleep(0.05)
    db = await open_database(svc.service.database_url)  # as `nni-ts users remove bob` does, in another process
    try:
        archived = await remove_user(db, "bob")
        new_bob = await add_user(db, "bob")
    finally:
        await db.close()
    assert new_bob
    async with asyncio.timeout(30):  # the service stops it (its reconcile loop), bounded
        while True:
            shown = await api.ok("GET", f"/experiments/{experiment_id}", token=root)
            if shown["status"] != "RUNNING" and not shown["live"]:
                break
            await asyncio.sleep(0.05)
    assert shown["status"] == "STOPPED" and shown["user"] == archived, shown
    assert "removed" in (shown["message"] or ""), shown
    assert await api.ok("GET", "/experiments", token=new_bob) == []
    assert await api.ok("GET", "/workspaces", token=new_bob) == []
    assert await api.ok("GET", "/audit", token=new_bob) == []
    status, _ = await api.call("GET", f"/experiments/{experiment_id}", token=new_bob)
    assert status == 404
    await api.ok("PUT", "/workspaces/ws/files/new.txt", token=new_bob, data=b"new bob")
    code = svc.data_dir / "workspaces" / "bob" / "ws" / "code"
    assert sorted(p.name for p in code.iterdir()) == ["new.txt"]
    assert (svc.data_dir / "workspaces" / archived / "ws" / "code" / "old.txt").read_bytes() == b"old bob"


async def test_removing_a_user_with_delete_removes_what_it_owned(svc: Running) -> None:
    api, bob, root = svc.api, svc.tokens["bob"], svc.tokens["root"]
    created = await api.ok("POST", "/workspaces/ws/experiments", token=bob, json=quick_config(trials=1))
    await api.wait_experiment(created["id"], bob)
    db = await open_database(svc.service.database_url)
    try:
        archived = await remove_user(db, "bob", delete=True)
    finally:
        await db.close()
    await svc.service.reconcile()
    status, _ = await api.call("GET", f"/experiments/{created['id']}", token=root)
    assert status == 404
    assert not (svc.data_dir / "workspaces" / archived).exists()
    assert not (svc.data_dir / "workspaces" / "bob").exists()


async def test_secrets_are_masked_in_parameters_configs_and_the_audit(svc: Running) -> None:
    api, alice = svc.api, svc.tokens["alice"]
    token = "nts_" + "Zx9" * 12
    config = quick_config(
        trials=1,
        command=f"echo --token {token} DB_PASSWORD=hunter2 && python3 -c 'import nni; nni.get_next_parameter()'",
    )
    config["searchSpace"] = {"db_password": {"_type": "choice", "_value": ["hunter2"]}}
    created = await api.ok("POST", "/workspaces/ws/experiments", token=alice, json=config)
    await api.wait_experiment(created["id"], alice)
    trials = await api.ok("GET", f"/experiments/{created['id']}/trials", token=alice)
    assert trials[0]["parameters"] == {"db_password": "***"}
    trial = await api.ok("GET", f"/experiments/{created['id']}/trials/{trials[0]['id']}", token=alice)
    shown = json.dumps(
        [
            trials,
            trial,
            await api.ok("GET", f"/experiments/{created['id']}", token=alice),
            await api.ok("GET", "/audit", token=alice),
            await api.ok("GET", "/audit", token=svc.tokens["root"]),
        ]
    )
    assert "hunter2" not in shown
    assert token not in shown and token[:12] not in shown
    assert "--token ***" in shown


async def test_the_database_password_comes_from_a_file_or_the_environment_never_argv(
    postgres_server: Any, tmp_path: Path
) -> None:
    import asyncpg

    password = "pw-Secret-41"
    admin = await asyncpg.connect(postgres_server.url("postgres"))
    try:
        await admin.execute("DROP DATABASE IF EXISTS nts_pw_db WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")
        await admin.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{password}'")
        await admin.execute(f"CREATE DATABASE nts_pw_db OWNER {PASSWORD_ROLE}")
    finally:
        await admin.close()
    host = f"{postgres_server.host}:{postgres_server.port}"
    url = f"postgresql://{PASSWORD_ROLE}@{host}/nts_pw_db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NNI_TS_SERVICE_DB", "PG"))}

    def cli(*args: str, **more_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nni_ts.cli", "users", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, **more_env},
        )

    in_argv = cli("--db", f"postgresql://{PASSWORD_ROLE}:{password}@{host}/nts_pw_db", "list")
    assert in_argv.returncode != 0
    assert "ps" in in_argv.stderr and "--db-password-file" in in_argv.stderr, in_argv.stderr
    assert password not in in_argv.stderr + in_argv.stdout
    without = cli("--db", url, "list")
    assert without.returncode != 0 and "Traceback" not in without.stderr, without.stderr
    secret_file = tmp_path / "db-password"
    secret_file.write_text(password + "\n")
    from_file = cli("--db", url, "--db-password-file", str(secret_file), "add", "carol")
    assert from_file.returncode == 0, from_file.stderr
    from_env = cli("--db", url, "list", NNI_TS_SERVICE_DB_PASSWORD=password)
    assert from_env.returncode == 0 and "carol" in from_env.stdout, from_env.stderr


async def test_parallel_launcher_posts_start_one_experiment_per_workspace(svc: Running) -> None:
    """Finding 13: six parallel POSTs to the seeds' route; the database lets exactly one through."""
    body = {
        "user": "alice",
        "workspace": "race",
        "trialConcurrency": 1,
        "num": 1,
        "target": "maximize",
        "command": "sleep 30",
        "search_space": {"x": {"_type": "choice", "_value": [1]}},
    }
    answers = await asyncio.gather(
        *(svc.api.call("POST", "/nni-exp", token=svc.tokens["alice"], json=body) for _ in range(6))
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 409, 409, 409, 409, 409], answers
    created = next(b for s, b in answers if s == 200)
    assert all(b["experimentId"] == created["experimentId"] for s, b in answers if s == 409), answers
    listed = await svc.api.ok("GET", "/experiments", token=svc.tokens["alice"], params={"workspace": "race"})
    assert [e["status"] for e in listed] == ["RUNNING"]


async def test_a_postgresql_request_takes_one_connection_and_no_reset(postgres_server: Any, tmp_path: Path) -> None:
    """Issue 14 (performance): a request acquires one pooled connection for all its statements, the
    pool's size comes from the settings, and a released connection is not reset statement by statement."""
    import asyncpg

    from nni_ts.service import ServiceSettings
    from nni_ts.service.db import _reset

    admin = await asyncpg.connect(postgres_server.url("postgres"))
    try:
        await admin.execute("DROP DATABASE IF EXISTS svc_pool WITH (FORCE)")
        await admin.execute("CREATE DATABASE svc_pool")
    finally:
        await admin.close()
    url = postgres_server.url("svc_pool")
    db = await open_database(url)
    try:
        token = await add_user(db, "alice")
    finally:
        await db.close()
    settings = ServiceSettings(data_dir=tmp_path / "svc", database_url=url, pool_size=7)
    async with running_service(settings) as (service, api, _u):
        created = await api.ok("POST", "/workspaces/w/experiments", token=token, json=quick_config(trials=1))
        await api.wait_experiment(created["id"], str(token))
        pool = service.db._pool  # type: ignore[attr-defined]
        assert pool.get_max_size() == 7
        assert pool._reset is _reset
        taken: list[str] = []

        class CountingPool:
            """Every call that takes a connection from the pool (acquire, or a pool-level statement)."""

            def __getattr__(self, name: str) -> Any:
                if name in ("acquire", "execute", "executemany", "fetch", "fetchrow", "fetchval"):
                    taken.append(name)
                return getattr(pool, name)

        service.db._pool = CountingPool()  # type: ignore[attr-defined]
        try:
            shown = await api.ok("GET", f"/experiments/{created['id']}", token=token)  # auth + 3 reads
            assert shown["trialCount"] == 1
            assert taken == ["acquire"]
            await api.ok("GET", f"/experiments/{created['id']}/trials", token=token)
            assert taken == ["acquire", "acquire"]
        finally:
            service.db._pool = pool  # type: ignore[attr-defined]


async def test_a_postgresql_request_does_not_wait_for_its_connection_to_go_back(
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14 (performance): a request that ended cleanly leaves ``bound()`` before asyncpg's
    release (a shielded task, two or three turns of the loop) is done; the connection still comes
    back (a pool of one serves the next request) and ``close()`` waits for it. A block that raised
    waits for its release, which rolls back, as before."""
    from nni_ts.service import db as db_mod

    gate = asyncio.Event()
    resets: list[bool] = []

    async def slow_reset(conn: Any) -> None:
        await gate.wait()
        resets.append(conn.is_in_transaction())
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")

    monkeypatch.setattr(db_mod, "_reset", slow_reset)
    async with new_database(postgres_server) as url:
        db = await db_mod.PostgresDatabase.connect(url, pool_size=1)
        try:
            async with asyncio.timeout(10):
                async with db.bound():
                    assert await db.fetch("SELECT 1") == [(1,)]
            # Out of the block while the release is still held at the gate.
            assert resets == [] and len(db._releases) == 1
            gate.set()
            async with asyncio.timeout(10), db.bound():  # the one connection came back
                assert await db.fetch("SELECT 2") == [(2,)]
            async with asyncio.timeout(10):
                await asyncio.wait(db._releases.tasks)  # that block's release, through the open gate
            gate.clear()
            with pytest.raises(ValueError):
                async with db.bound():
                    async with db.transaction() as tx:
                        await tx.execute("SELECT 3")
                        asyncio.get_running_loop().call_later(0.2, gate.set)
                        raise ValueError("the handler failed")
            assert gate.is_set() and resets[-1] is False  # awaited: released, and rolled back by the transaction
        finally:
            gate.set()
            await db.close()
        assert len(db._releases) == 0


async def test_a_request_waiting_for_its_body_or_the_engine_holds_no_database_connection(
    postgres_server: Any, tmp_path: Path
) -> None:
    """Issue 14 (performance, and a denial of service): a request takes its connection at its first
    statement and gives it back while it waits for something else: a body its client sends slowly, a
    tuner being built, an experiment stopping. Before, the token check bound a connection for the whole
    request: clients holding bodies back (or 50 creates at once) took the whole pool, and every other
    request waited."""
    from nni_ts.service import ServiceSettings

    async with new_database(postgres_server) as url:
        db = await open_database(url)
        try:
            token = str(await add_user(db, "alice"))
        finally:
            await db.close()
        settings = ServiceSettings(data_dir=tmp_path / "svc", database_url=url, pool_size=2)
        async with running_service(settings) as (service, api, base):
            host, port = base.removeprefix("http://").split(":")
            held = []
            try:
                for i in range(3):  # more uploads than the pool has connections, their bodies held back
                    reader, writer = await asyncio.open_connection(host, int(port))
                    writer.write(
                        f"PUT /api/v1/workspaces/w/files/f{i}.py HTTP/1.1\r\nHost: x\r\n"
                        f"Authorization: Bearer {token}\r\nContent-Length: 10\r\n\r\n12345".encode()
                    )
                    await writer.drain()
                    held.append((reader, writer))
                await asyncio.sleep(0.3)  # each has passed its token check and waits for the rest
                async with asyncio.timeout(10):
                    assert (await api.ok("GET", "/me", token=token))["name"] == "alice"
                    created = await api.ok("POST", "/workspaces/w/experiments", token=token, json=quick_config())
                    assert (await api.ok("GET", f"/experiments/{created['id']}", token=token))["id"] == created["id"]
                for reader, writer in held:  # the held requests still complete
                    writer.write(b"67890")
                    await writer.drain()
                    async with asyncio.timeout(10):
                        assert (await reader.readline()).startswith(b"HTTP/1.1 201"), "upload failed"
            finally:
                for _, writer in held:
                    writer.close()
            await api.ok("POST", f"/experiments/{created['id']}/stop", token=token)


async def test_without_a_trial_user_the_environment_is_still_an_allow_list(
    svc: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NNI_TS_SERVICE_DB", "postgresql://svc:hunter2@127.0.0.1/svc")
    monkeypatch.setenv("SERVICE_SECRET", "hunter2")
    api, alice = svc.api, svc.tokens["alice"]
    created = await api.ok(
        "POST", "/workspaces/ws/experiments", token=alice, json=quick_config(trials=1, command="env; echo END")
    )
    await api.wait_experiment(created["id"], alice)
    trials = await api.ok("GET", f"/experiments/{created['id']}/trials", token=alice)
    log = await api.ok("GET", f"/experiments/{created['id']}/trials/{trials[0]['id']}/log", token=alice)
    assert "END" in log and "NNI_TRIAL_JOB_ID=" in log and "PATH=" in log, log
    assert "hunter2" not in log and "SERVICE_SECRET" not in log and "NNI_TS_SERVICE_DB" not in log, log
