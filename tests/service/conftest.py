"""Fixtures of the experiment-service tests: a real PostgreSQL database, the database URL of each
backend, an in-process service with an HTTP client, and users with tokens."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from service_support import Running, running_service

from nni_ts.service import ServiceSettings
from nni_ts.service.db import open_database
from nni_ts.service.users import add_user
from nni_ts.testing.postgres import PostgresServer, new_database

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


_new_pg_database = new_database  # the name the tests of this directory import
# postgres_server: the session's one PostgreSQL server, in tests/conftest.py (shared with tests/dashboard).


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
