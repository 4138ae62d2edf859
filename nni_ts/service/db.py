"""The service's database: SQLite (embedded, the default) or PostgreSQL (asyncpg, for replicas).

One small interface over both: SQL is written once with PostgreSQL's ``$1`` placeholders and the
SQLite backend rewrites them to ``?``. Only portable SQL is used (``INSERT ... ON CONFLICT``,
``BIGINT``, ``DOUBLE PRECISION``, text ids made in Python).

The SQLite backend runs its statements on the event loop's thread, like :mod:`nni_ts.storage`:
each is a sub-millisecond call on a WAL database. A transaction holds an asyncio lock, so two
coroutines never interleave statements inside one.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import functools
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from ..errors import StoreError, UserError
from ..tasks import TaskSupervisor

__all__ = ["Database", "open_database"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_TABLES = """
CREATE TABLE IF NOT EXISTS svc_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS svc_users (
    name TEXT PRIMARY KEY,
    is_admin INTEGER NOT NULL DEFAULT 0,
    token_hash TEXT UNIQUE,
    max_trials INTEGER,
    max_gpus INTEGER,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS svc_workspaces (
    user_name TEXT NOT NULL,
    name TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (user_name, name)
);
CREATE TABLE IF NOT EXISTS svc_experiments (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    workspace TEXT NOT NULL,
    name TEXT,
    platform TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT,
    config TEXT NOT NULL,
    trial_concurrency INTEGER NOT NULL,
    gpus_per_trial INTEGER NOT NULL,
    optimize_mode TEXT NOT NULL,
    owner TEXT NOT NULL,
    legacy INTEGER NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    ended_ms BIGINT
);
CREATE INDEX IF NOT EXISTS svc_experiments_ws ON svc_experiments (user_name, workspace);
CREATE TABLE IF NOT EXISTS svc_stop_requests (
    experiment_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS svc_archives (
    name TEXT NOT NULL,
    archived_as TEXT PRIMARY KEY,
    delete_files INTEGER NOT NULL DEFAULT 0,
    at_ms BIGINT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS svc_audit (
    id {serial},
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""

_PLACEHOLDER = re.compile(r"\$(\d+)")


class Database(abc.ABC):
    """Async access to the service's tables. ``$1, $2...`` placeholders, positional arguments in order."""

    url: str
    dialect: str
    #: Changes to users and experiments are notified (PostgreSQL, its triggers installed).
    notifies: bool = False

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; return the number of rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per row of arguments, in one transaction."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """The rows a query returns."""

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    @asynccontextmanager
    async def bound(self) -> AsyncIterator[None]:
        """Everything in this block uses one connection (PostgreSQL); SQLite has only one."""
        yield

    @asynccontextmanager
    async def unbound(self) -> AsyncIterator[None]:
        """Inside :meth:`bound`, a wait with no statement (a request body arriving, a tuner being built,
        an experiment stopping): the block's connection goes back to the pool meanwhile (PostgreSQL),
        and the next statement takes one again. Inside a transaction it is kept."""
        yield

    @abc.abstractmethod
    def transaction(self) -> Any:
        """``async with db.transaction() as tx:`` where ``tx`` has execute/fetch/fetchrow, and
        ``execute_all(*statements)``: several writes, in one round trip on PostgreSQL."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def _create_schema(self) -> None:
        serial = "BIGSERIAL PRIMARY KEY" if self.dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
        for statement in _TABLES.format(serial=serial).split(";"):
            if statement.strip():
                await self.execute(statement)
        if self.dialect == "postgresql":
            # Changes to users and experiments, by any client, are notified (see readcache).
            from .readcache import notify_schema

            try:
                async with self.transaction() as tx:
                    await tx.execute("SELECT pg_advisory_xact_lock(7140015)")  # replicas starting at once
                    await tx.execute(notify_schema())
                self.notifies = True
            except StoreError as exc:  # e.g. a role that may use the tables but not add triggers to them
                log.warning(
                    "The read cache is off: the service cannot install its change notifications (%s); "
                    "every poll reads the database.",
                    exc,
                )
        row = await self.fetchrow("SELECT value FROM svc_meta WHERE key = $1", "schema_version")
        if row is None:
            await self.execute(
                "INSERT INTO svc_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                "schema_version",
                str(SCHEMA_VERSION),
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"The service database {self.url_redacted} was written by a newer nni-ts (schema {row[0]}); "
                f"this one understands schema {SCHEMA_VERSION}. Upgrade nni-ts."
            )

    @property
    def url_redacted(self) -> str:
        """The URL without its password (safe to log and show)."""
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.url)


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open the service database {path}: {exc}.") from exc
        self._tx_lock = asyncio.Lock()
        self._in_tx = False

    @staticmethod
    def _sql(sql: str) -> str:
        return _PLACEHOLDER.sub("?", sql)

    def _run(self, sql: str, args: Sequence[Any]) -> sqlite3.Cursor:
        try:
            return self._db.execute(self._sql(sql), tuple(args))
        except sqlite3.Error as exc:
            raise StoreError(f"The service database {self.path} refused a statement: {exc}.") from exc

    async def _wait_outside_tx(self) -> None:
        # A statement from another coroutine waits until a running transaction ends.
        if self._in_tx and self._tx_lock.locked():
            async with self._tx_lock:
                pass

    async def execute(self, sql: str, *args: Any) -> int:
        await self._wait_outside_tx()
        return self._run(sql, args).rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._wait_outside_tx()
        try:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(self._sql(sql), [tuple(r) for r in rows])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"The service database {self.path} refused a statement: {exc}.") from exc

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        await self._wait_outside_tx()
        return [tuple(r) for r in self._run(sql, args).fetchall()]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTx]:
        async with self._tx_lock:
            self._in_tx = True
            self._run("BEGIN IMMEDIATE", ())
            try:
                yield _SqliteTx(self)
            except BaseException:
                self._run("ROLLBACK", ())
                raise
            else:
                self._run("COMMIT", ())
            finally:
                self._in_tx = False

    def attach(self, path: Path, alias: str) -> None:
        """Make another SQLite file readable on this connection as ``alias.<table>`` (the service
        reads its experiments' store this way: one query can join it with the service's tables)."""
        try:
            self._db.execute(f"ATTACH DATABASE ? AS {alias}", (str(path),))
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot attach {path} to the service database: {exc}.") from exc

    async def close(self) -> None:
        self._db.close()


class _SqliteTx:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def execute(self, sql: str, *args: Any) -> int:
        return self._db._run(sql, args).rowcount

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._db._run(sql, args).fetchall()]

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def execute_all(self, *statements: tuple[str, Sequence[Any]]) -> None:
        """Several data-changing statements of this transaction, one by one (in-process calls)."""
        for sql, args in statements:
            await self.execute(sql, *args)


def _shift_placeholder(offset: int, match: re.Match[str]) -> str:
    return f"${int(match.group(1)) + offset}"


@contextmanager
def _pg_errors(url: str) -> Iterator[None]:
    """The one place asyncpg's errors become the service's: a value PostgreSQL cannot store (a NUL)
    is the request's fault (UserError, a 400); anything else means the database is not available
    (StoreError, a 503), never a 500."""
    import asyncpg  # type: ignore[import-untyped]

    try:
        yield
    except asyncpg.DataError as exc:
        raise UserError(f"The database cannot store a value of this request: {exc}.") from None
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        redacted = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
        raise StoreError(f"The service database {redacted} is not available: {exc!r}.") from exc


async def _reset(conn: Any) -> None:
    """What the pool does when a connection comes back: roll back a transaction left open, nothing
    else. asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) costs a round trip
    per release, and this code uses none of those features."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class _Binding:
    """The connection of one :meth:`PostgresDatabase.bound` block: taken at its first statement."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: Any = None


#: The binding of the current request (see :meth:`PostgresDatabase.bound`): (database, binding).
_BOUND: contextvars.ContextVar[tuple[Any, _Binding] | None] = contextvars.ContextVar("nni_ts_service_db", default=None)


class PostgresDatabase(Database):
    """asyncpg pool. Inside ``async with db.bound():`` (one HTTP request) every statement and
    transaction uses one connection taken once from the pool; outside, each takes one for itself."""

    dialect = "postgresql"

    def __init__(self, url: str, pool: Any) -> None:
        self.url = url
        self._pool = pool
        #: The releases of the requests' connections (see :meth:`bound`), awaited by :meth:`close`.
        self._releases = TaskSupervisor("service-db-release")

    @classmethod
    async def connect(cls, url: str, *, password: str | None = None, pool_size: int = 20) -> PostgresDatabase:
        try:
            import asyncpg  # type: ignore[import-untyped]
        except ImportError as exc:
            raise UserError(
                "A postgresql:// database needs the asyncpg package: pip install 'nni-ts[postgres]'."
            ) from exc
        try:
            # Every connection opened at the start and kept: a burst of requests (50 creates at once)
            # otherwise waited for the pool to open connections one by one (tens of ms each).
            pool = await asyncpg.create_pool(
                url,
                password=password,
                min_size=pool_size,
                max_size=pool_size,
                max_inactive_connection_lifetime=0,
                command_timeout=60,
                reset=_reset,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            redacted = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
            raise StoreError(f"Cannot connect to the service database {redacted}: {exc}.") from exc
        return cls(url, pool)

    @staticmethod
    def _rowcount(status: str) -> int:
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    def _binding(self) -> _Binding | None:
        bound = _BOUND.get()
        return bound[1] if bound is not None and bound[0] is self else None

    async def _conn(self) -> Any:
        """The current block's connection, taken from the pool at its first statement; None outside
        :meth:`bound` (then a statement takes one for itself)."""
        binding = self._binding()
        if binding is None:
            return None
        if binding.conn is None:
            with _pg_errors(self.url):
                conn = await self._pool.acquire()
            if binding.conn is None:
                binding.conn = conn
            else:  # another statement of the block took one meanwhile: one connection per block
                self._give_back(conn)
        return binding.conn

    def _give_back(self, conn: Any) -> None:
        """A clean connection back to the pool, in the background: asyncpg's ``Pool.release`` runs in
        a shielded task of its own, so awaiting it costs the request two or three turns of a busy
        event loop before its answer is sent (p50 2-3 ms of a 9-13 ms poll in
        ``bench/bench_service.py``)."""
        self._releases.spawn(self._pool.release(conn), name="release")

    @asynccontextmanager
    async def bound(self) -> AsyncIterator[None]:
        """Use one pooled connection for everything in this block (an HTTP request), taken at its
        first statement (a request that reads nothing takes none) and given back at its end, or
        meanwhile by :meth:`unbound` around a long wait.

        A block that ends normally, outside a transaction, hands its connection back in the
        background (:meth:`_give_back`). A block that raised, or left a transaction open, waits for
        the release (which rolls back) as before."""
        if self._binding() is not None:
            yield
            return
        binding = _Binding()
        token = _BOUND.set((self, binding))
        clean = False
        try:
            yield
            clean = binding.conn is None or not binding.conn.is_in_transaction()
        finally:
            _BOUND.reset(token)
            conn, binding.conn = binding.conn, None
            if conn is not None:
                if clean and not self._releases.closed:
                    self._give_back(conn)
                else:
                    await self._pool.release(conn)

    @asynccontextmanager
    async def unbound(self) -> AsyncIterator[None]:
        binding = self._binding()
        if binding is not None and binding.conn is not None and not binding.conn.is_in_transaction():
            conn, binding.conn = binding.conn, None
            if self._releases.closed:
                await self._pool.release(conn)
            else:
                self._give_back(conn)
        yield

    async def execute(self, sql: str, *args: Any) -> int:
        with _pg_errors(self.url):
            return self._rowcount(await (await self._conn() or self._pool).execute(sql, *args))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with _pg_errors(self.url):
            conn = await self._conn()
            if conn is None:
                await self._pool.executemany(sql, [tuple(r) for r in rows])
            else:
                async with conn.transaction():
                    await conn.executemany(sql, [tuple(r) for r in rows])

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with _pg_errors(self.url):
            return [tuple(r) for r in await (await self._conn() or self._pool).fetch(sql, *args)]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgTx]:
        with _pg_errors(self.url):
            conn = await self._conn()
            if conn is not None:
                async with conn.transaction():
                    yield _PgTx(conn)
                return
            async with self._pool.acquire() as conn, conn.transaction():
                yield _PgTx(conn)

    async def close(self) -> None:
        pending = list(self._releases.tasks)
        if pending:  # the releases are quick (no statement runs): let them finish rather than cancel
            await asyncio.wait(pending, timeout=10)
        await self._releases.stop()
        await self._pool.close()


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        return PostgresDatabase._rowcount(await self._conn.execute(sql, *args))

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._conn.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def execute_all(self, *statements: tuple[str, Sequence[Any]]) -> None:
        """Several data-changing statements (INSERTs, UPDATEs) in ONE round trip: one statement of
        data-modifying CTEs, each statement's ``$n`` renumbered after the previous ones'."""
        parts: list[str] = []
        values: list[Any] = []
        for i, (sql, args) in enumerate(statements):
            renumbered = _PLACEHOLDER.sub(functools.partial(_shift_placeholder, len(values)), sql)
            parts.append(f"w{i} AS ({renumbered})")
            values.extend(args)
        await self.execute(f"WITH {', '.join(parts)} SELECT 1", *values)


def default_database_url() -> str:
    from ..paths import home

    return f"sqlite:///{home() / 'service' / 'service.db'}"


async def open_database(url: str | None = None, *, password: str | None = None, pool_size: int = 20) -> Database:
    """Open (and create the tables of) ``sqlite:///PATH`` or ``postgresql://user:pw@host:port/db``.

    ``password`` (PostgreSQL) is used when the URL has none: read from a file or the environment, it
    never shows in ``ps`` as a command-line URL would."""
    url = url or default_database_url()
    if url.startswith("sqlite:///"):
        db: Database = SqliteDatabase(Path(url[len("sqlite:///") :]).expanduser())
    elif url.startswith(("postgresql://", "postgres://")):
        db = await PostgresDatabase.connect(url, password=password, pool_size=pool_size)
    else:
        raise UserError(
            f"Unsupported database URL {url.split('://')[0]!r}://...; expected sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST:PORT/DB."
        )
    try:
        await db._create_schema()
    except BaseException:
        await db.close()
        raise
    return db
