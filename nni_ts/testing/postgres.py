"""A throw-away PostgreSQL server for tests (initdb + pg_ctl on a free loopback port) and fresh
databases in it. The tests share one server per session (``tests/conftest.py``'s ``postgres_server``
fixture) and take a new database per test (:func:`new_database`, from a template when given)."""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "new_database", "pg_bin", "start_server"]


def pg_bin(name: str) -> str | None:
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


def installed() -> bool:
    return bool(pg_bin("initdb") and pg_bin("pg_ctl") and pg_bin("postgres"))


@contextlib.contextmanager
def start_server(*, password_role: str | None = None) -> Iterator[PostgresServer]:
    """A throw-away cluster (trust authentication; ``password_role`` logs in with a password),
    stopped and removed on leaving."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    assert initdb and pg_ctl, "PostgreSQL is not installed"
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
    if password_role:
        hba = data / "pg_hba.conf"
        hba.write_text(f"host all {password_role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
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
async def new_database(server: PostgresServer, *, template: str | None = None) -> AsyncIterator[str]:
    """A new database (a copy of ``template`` if given; nobody may be connected to it), dropped on leaving."""
    import asyncpg  # type: ignore[import-untyped]

    name = f"svc_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(server.url("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
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
