"""Fixtures of the experiment-service tests: a real PostgreSQL server, the database URL of each
backend, an in-process service with an HTTP client, and users with tokens."""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from service_support import PASSWORD_ROLE, Running, running_service

from nni_ts.service import ServiceSettings
from nni_ts.service.db import open_database
from nni_ts.service.users import add_user

# PostgreSQL runs its own server per test: seconds each, so `slow` (scripts/test --fast keeps SQLite).
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]


@pytest.fixture(autouse=True)
def no_leaked_engine_threads() -> Iterator[None]:
    """Fail a test that leaves a service's engine thread running."""
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.name == "nni-ts-service-engine"]
    for t in left:
        t.join(10)
    assert not [t for t in left if t.is_alive()], "the test left a service's engine thread running"


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL cluster on a free loopback port (initdb + pg_ctl), stopped at the end."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl or not _pg_bin("postgres"):
        pytest.skip("PostgreSQL is not installed (initdb, pg_ctl, postgres); scripts/test installs it")
    base = Path(tempfile.mkdtemp(prefix="nni-ts-pg-"))
    data, sockets = base / "data", base / "sock"
    sockets.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if subprocess.run(["id", "-u", "postgres"], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    # One role logs in with a password (tests of --db-password-file); every other role is trusted.
    hba = data / "pg_hba.conf"
    hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    port = _free_port()
    options = (
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c autovacuum=off -c fsync=off "
        "-c max_parallel_workers_per_gather=0 -c max_connections=200"
    )
    # pg_ctl exits once the server is up: the postmaster is no child of the tests.
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-l", str(base / "log"), "-o", options, "-w", "-t", "60", "start"],
        check=True,
        capture_output=True,
        start_new_session=True,
    )
    try:
        yield PostgresServer("127.0.0.1", port, "postgres")
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


_counter = itertools.count()


@contextlib.asynccontextmanager
async def _new_pg_database(server: PostgresServer) -> AsyncIterator[str]:
    import asyncpg

    name = f"svc_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(server.url("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield server.url(name)
    finally:
        admin = await asyncpg.connect(server.url("postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty service database: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'service.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    async with _new_pg_database(server) as url:
        yield url


async def _users(db_url: str) -> dict[str, str]:
    db = await open_database(db_url)
    try:
        tokens = {
            "alice": await add_user(db, "alice"),
            "bob": await add_user(db, "bob", max_trials=2, max_gpus=0),
            "root": await add_user(db, "root", admin=True),
        }
    finally:
        await db.close()
    return {k: v for k, v in tokens.items() if v}


@pytest.fixture
async def svc_pg(postgres_server: PostgresServer, tmp_path: Path) -> AsyncIterator[Running]:
    """As ``svc``, on PostgreSQL only."""
    async with _new_pg_database(postgres_server) as url:
        tokens = await _users(url)
        settings = ServiceSettings(data_dir=tmp_path / "svc", database_url=url, replica="test-replica")
        async with running_service(settings) as (service, api, base):
            yield Running(service, api, base, tokens, tmp_path / "svc")


@pytest.fixture
async def svc(db_url: str, tmp_path: Path) -> AsyncIterator[Running]:
    """A service on the local platform with users alice, bob (quota: 2 trials, 0 GPUs) and admin root."""
    tokens = await _users(db_url)
    settings = ServiceSettings(data_dir=tmp_path / "svc", database_url=db_url, replica="test-replica")
    async with running_service(settings) as (service, api, url):
        yield Running(service, api, url, tokens, tmp_path / "svc")
