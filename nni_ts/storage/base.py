"""One storage interface for experiments, trials and metrics, with a SQLite and a PostgreSQL backend.

Optuna's storages are the model: one interface (:class:`ExperimentStorage`), backends for several
databases, and one test suite run against each (``tests/service/test_storage_backends.py``).

* :class:`SqliteStorage` is the ordinary nni-ts store (:class:`~nni_ts.storage.store.Store`, one
  file, the schema ``nni-ts view``, ``resume`` and the dashboard read). ``nni-ts create`` uses it,
  and so does the experiment service on SQLite (its experiments' store, ``<data-dir>/experiments.db``).
* :class:`PostgresStorage` keeps the same records in PostgreSQL (tables ``exp_experiments``,
  ``exp_trials``, ``exp_metrics``): the experiment service on PostgreSQL has its experiments write
  there directly, in the service's own database, so that any replica reads any experiment at once.

The experiment loop (:class:`~nni_ts.experiment.Experiment`) reads and writes only through this
interface. Its contract, the same on both backends:

* A call is *queued when it is made* (the method returns an awaitable at once), not when it is
  awaited, and the calls about one experiment run in the order they were made: a read sees every
  write queued before it, and a status the loop queued and does not wait for keeps its place.
* A write's awaitable resolves only after its transaction *committed* (durable before acknowledged:
  the loop's metric listener awaits ``add_metric`` before the platform may drop the record), and
  raises :class:`~nni_ts.errors.StoreError` if it did not.
* Writes that queue up meanwhile share one transaction (each still succeeds or fails on its own):
  under load, one commit covers a burst of records.
* Nothing blocks the event loop: SQLite runs on the store's writer thread
  (:class:`~nni_ts.storage.store.AsyncStore`); PostgreSQL is asyncpg, natively async.

Records are the store's dataclasses (:class:`ExperimentRecord`, :class:`TrialRecord`,
:class:`MetricRecord`); metric data is kept byte for byte (PostgreSQL: BYTEA, so a record with a NUL
or an undecodable byte round-trips exactly).
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import math
import re
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import StoreError, UserError
from ..models import TrialJobDetail, now_ms
from ..tasks import TaskSupervisor
from .store import (
    MAX_BATCH,
    AsyncStore,
    ExperimentRecord,
    MetricRecord,
    Store,
    TrialRecord,
    _experiment_from_row,
    _insert_trial_params,
    _trial_from_row,
)

__all__ = ["ExperimentStorage", "PostgresStorage", "SqliteStorage", "open_storage"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_EXPERIMENT_FIELDS = frozenset(
    {"status", "config", "ended_ms", "manager_pid", "manager_started", "message", "name", "active_ms"}
)


class ExperimentStorage(abc.ABC):
    """Where experiments, their trials and metrics live (see the module docstring for the contract:
    queued when called, in order per experiment, a write resolved after its COMMIT). The awaitables
    raise StoreError for a missing record or a database problem."""

    #: Where the records are (a file path or a redacted URL), for messages.
    location: str

    @abc.abstractmethod
    def create_experiment(
        self,
        experiment_id: str,
        *,
        name: str | None,
        platform: str,
        config: dict[str, Any],
        working_dir: str | Path,
        status: str = "RUNNING",
        manager_pid: int | None = None,
        manager_started: float | None = None,
    ) -> Awaitable[ExperimentRecord]: ...

    @abc.abstractmethod
    def get_experiment(self, experiment_id: str) -> Awaitable[ExperimentRecord]: ...

    @abc.abstractmethod
    def list_experiments(self) -> Awaitable[list[ExperimentRecord]]: ...

    @abc.abstractmethod
    def update_experiment(self, experiment_id: str, **fields: Any) -> Awaitable[None]: ...

    @abc.abstractmethod
    def delete_experiment(self, experiment_id: str) -> Awaitable[bool]:
        """Remove an experiment with its trials and metrics; False if it was not there."""

    @abc.abstractmethod
    def insert_trial(self, trial: TrialRecord) -> Awaitable[None]: ...

    @abc.abstractmethod
    def update_trial(self, experiment_id: str, detail: TrialJobDetail) -> Awaitable[None]:
        """Record the trial's latest detail (status, times, exit code, platform data)."""

    @abc.abstractmethod
    def get_trial(self, experiment_id: str, trial_id: str) -> Awaitable[TrialRecord]: ...

    @abc.abstractmethod
    def list_trials(self, experiment_id: str, *, with_detail: bool = False) -> Awaitable[list[TrialRecord]]:
        """Every trial in sequence order (then attempt)."""

    @abc.abstractmethod
    def add_metric(
        self, experiment_id: str, trial_id: str, seq: int, *, type: str, value: float | None, data: str
    ) -> Awaitable[bool]:
        """Store one record durably (and the trial's count and final value, in the same transaction).
        False if this (trial, seq) was stored already: a record delivered again is idempotent."""

    @abc.abstractmethod
    def metrics(self, experiment_id: str, trial_id: str) -> Awaitable[list[MetricRecord]]: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish the calls queued so far, then release the connection(s)."""


class SqliteStorage(ExperimentStorage):
    """The nni-ts store file behind the interface: every call runs on the store's writer thread
    (:class:`~nni_ts.storage.store.AsyncStore`), in the order made; a write resolves once committed.

    ``SqliteStorage(path)`` opens (and on :meth:`close` closes) the file; ``SqliteStorage(store)``
    uses an open :class:`Store` that its owner closes. Opening a file runs SQLite on the calling
    thread: an event loop opens it with ``await asyncio.to_thread(SqliteStorage, path)``."""

    def __init__(self, store: str | Path | Store) -> None:
        self._owns = not isinstance(store, Store)
        self.store = store if isinstance(store, Store) else Store(store)
        self._async = AsyncStore(self.store)
        self.location = str(self.store.path)

    def create_experiment(
        self,
        experiment_id: str,
        *,
        name: str | None,
        platform: str,
        config: dict[str, Any],
        working_dir: str | Path,
        status: str = "RUNNING",
        manager_pid: int | None = None,
        manager_started: float | None = None,
    ) -> asyncio.Future[ExperimentRecord]:
        return self._async.create_experiment(
            experiment_id,
            name=name,
            platform=platform,
            config=config,
            working_dir=working_dir,
            status=status,
            manager_pid=manager_pid,
            manager_started=manager_started,
        )

    def get_experiment(self, experiment_id: str) -> asyncio.Future[ExperimentRecord]:
        return self._async.get_experiment(experiment_id)

    def list_experiments(self) -> asyncio.Future[list[ExperimentRecord]]:
        return self._async._call(self.store.list_experiments, write=False)

    def update_experiment(self, experiment_id: str, **fields: Any) -> asyncio.Future[None]:
        return self._async.update_experiment(experiment_id, **fields)

    def delete_experiment(self, experiment_id: str) -> asyncio.Future[bool]:
        return self._async.delete_experiment(experiment_id)

    def insert_trial(self, trial: TrialRecord) -> asyncio.Future[None]:
        return self._async.insert_trial(trial)

    def update_trial(self, experiment_id: str, detail: TrialJobDetail) -> asyncio.Future[None]:
        return self._async.update_trial(experiment_id, detail)

    def get_trial(self, experiment_id: str, trial_id: str) -> asyncio.Future[TrialRecord]:
        return self._async.get_trial(experiment_id, trial_id)

    def list_trials(self, experiment_id: str, *, with_detail: bool = False) -> asyncio.Future[list[TrialRecord]]:
        return self._async.list_trials(experiment_id, with_detail=with_detail)

    def add_metric(
        self, experiment_id: str, trial_id: str, seq: int, *, type: str, value: float | None, data: str
    ) -> asyncio.Future[bool]:
        return self._async.add_metric(experiment_id, trial_id, seq, type=type, value=value, data=data)

    def metrics(self, experiment_id: str, trial_id: str) -> asyncio.Future[list[MetricRecord]]:
        return self._async.metrics(experiment_id, trial_id)

    async def close(self) -> None:
        if self._owns:
            await self._async.aclose()
        else:  # the owner closes the store; wait for what this queued
            await self._async._call(lambda: None, write=False)


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS exp_experiments (
    id TEXT PRIMARY KEY,
    name TEXT,
    platform TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    manager_pid INTEGER,
    manager_started DOUBLE PRECISION,
    message TEXT,
    working_dir TEXT NOT NULL,
    active_ms BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS exp_trials (
    experiment_id TEXT NOT NULL,
    id TEXT NOT NULL,
    sequence_id INTEGER NOT NULL,
    parameter_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    parameters TEXT NOT NULL,
    status TEXT NOT NULL,
    submit_ms BIGINT,
    start_ms BIGINT,
    end_ms BIGINT,
    exit_code INTEGER,
    message BYTEA,
    infra_failure INTEGER NOT NULL DEFAULT 0,
    final_value DOUBLE PRECISION,
    final_data BYTEA,
    metric_count INTEGER NOT NULL DEFAULT 0,
    detail TEXT,
    PRIMARY KEY (experiment_id, id)
);
CREATE INDEX IF NOT EXISTS exp_trials_by_seq ON exp_trials (experiment_id, sequence_id);
CREATE TABLE IF NOT EXISTS exp_metrics (
    experiment_id TEXT NOT NULL,
    trial_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    value DOUBLE PRECISION,
    data BYTEA NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (experiment_id, trial_id, seq)
);
-- A batch of the loop's writes in ONE statement (so one round trip and one commit): each operation
-- in order, as its own statement would do it. {"k": "m"|"u"|"i", "a": [arguments]}; bytes in hex.
-- Returns, per operation, whether it changed a row (for "m": whether the record was new).
CREATE OR REPLACE FUNCTION nni_ts_write_batch(ops jsonb) RETURNS boolean[] LANGUAGE plpgsql AS $fn$
DECLARE
    op jsonb;
    a jsonb;
    n integer;
    done boolean[] := '{}';
BEGIN
    FOR op IN SELECT e.value FROM jsonb_array_elements(ops) WITH ORDINALITY AS e(value, i) ORDER BY e.i LOOP
        a := op->'a';
        IF op->>'k' = 'm' THEN
            INSERT INTO exp_metrics (experiment_id, trial_id, seq, type, value, data, created_ms)
            VALUES (a->>0, a->>1, (a->>2)::integer, a->>3, (a->>4)::double precision,
                    decode(a->>5, 'hex'), (a->>6)::bigint)
            ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n > 0 THEN
                UPDATE exp_trials SET metric_count = metric_count + 1,
                    final_value = CASE WHEN a->>3 = 'FINAL' THEN (a->>4)::double precision ELSE final_value END,
                    final_data = CASE WHEN a->>3 = 'FINAL' THEN decode(a->>5, 'hex') ELSE final_data END
                WHERE experiment_id = a->>0 AND id = a->>1;
            END IF;
        ELSIF op->>'k' = 'u' THEN
            UPDATE exp_trials SET status = a->>0, submit_ms = (a->>1)::bigint, start_ms = (a->>2)::bigint,
                end_ms = (a->>3)::bigint, exit_code = (a->>4)::integer, message = decode(a->>5, 'hex'),
                infra_failure = (a->>6)::integer, detail = a->>7
            WHERE experiment_id = a->>8 AND id = a->>9;
            GET DIAGNOSTICS n = ROW_COUNT;
        ELSIF op->>'k' = 'i' THEN
            INSERT INTO exp_trials (experiment_id, id, sequence_id, parameter_id, attempt, parameters, status,
                submit_ms, start_ms, end_ms, exit_code, message, infra_failure, final_value, final_data,
                metric_count, detail)
            VALUES (a->>0, a->>1, (a->>2)::integer, (a->>3)::integer, (a->>4)::integer, a->>5, a->>6,
                (a->>7)::bigint, (a->>8)::bigint, (a->>9)::bigint, (a->>10)::integer, decode(a->>11, 'hex'),
                (a->>12)::integer, (a->>13)::double precision, decode(a->>14, 'hex'), (a->>15)::integer, a->>16);
            n := 1;
        ELSE
            RAISE EXCEPTION 'nni_ts_write_batch: unknown operation %', op->>'k';
        END IF;
        done := done || (n > 0);
    END LOOP;
    RETURN done;
END
$fn$
"""


def _json_arg(value: Any) -> Any:
    """One argument of a batched operation as JSON: bytes in hex, a non-finite float as PostgreSQL
    spells it (JSON has no NaN)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


_EXP_COLS = (
    "id, name, platform, status, config, created_ms, updated_ms, ended_ms, manager_pid, manager_started, "
    "message, working_dir, active_ms"
)
_TRIAL_COLS = (
    "experiment_id, id, sequence_id, parameter_id, attempt, parameters, status, submit_ms, start_ms, end_ms, "
    "exit_code, message, infra_failure, final_value, final_data, metric_count, detail"
)


def _b(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", errors="surrogateescape")


def _s(data: bytes | None) -> str | None:
    return None if data is None else bytes(data).decode("utf-8", errors="surrogateescape")


def _pg_text(text: str | None) -> str | None:
    """PostgreSQL TEXT holds no NUL (nor a lone surrogate): those become U+FFFD in names and messages."""
    if text is None:
        return None
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace").replace("\x00", "\ufffd")


_ADD_METRIC = (
    # One statement, so one round trip: the record, and (only if it is new) the trial's count and
    # final value. A record delivered again inserts nothing and changes nothing.
    "WITH ins AS (INSERT INTO exp_metrics (experiment_id, trial_id, seq, type, value, data, created_ms) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING 1), "
    "upd AS (UPDATE exp_trials SET metric_count = metric_count + 1, "
    "final_value = CASE WHEN $4 = 'FINAL' THEN $5 ELSE final_value END, "
    "final_data = CASE WHEN $4 = 'FINAL' THEN $6 ELSE final_data END "
    "WHERE experiment_id = $1 AND id = $2 AND EXISTS (SELECT 1 FROM ins) RETURNING 1) "
    "SELECT (SELECT count(*) FROM ins)"
)


class _Job:
    """One call queued on an experiment's lane: ``run(connection)`` on the lane's connection.
    ``single``: it is one statement (atomic by itself: alone, it needs no BEGIN and COMMIT).
    ``op``: the same write as an operation of ``nni_ts_write_batch`` (kind, arguments), if it has one."""

    __slots__ = ("experiment_id", "future", "op", "run", "single", "write")

    def __init__(
        self,
        run: Callable[[Any], Awaitable[Any]],
        write: bool,
        future: asyncio.Future[Any],
        single: bool,
        op: tuple[str, tuple[Any, ...]] | None,
        experiment_id: str = "",
    ) -> None:
        self.run = run
        self.write = write
        self.future = future
        self.single = single
        self.op = op
        self.experiment_id = experiment_id


class _Lane:
    """The calls about one experiment, in the order made, and the task that runs them."""

    __slots__ = ("jobs", "task")

    def __init__(self) -> None:
        self.jobs: deque[_Job] = deque()
        self.task: asyncio.Task[None] | None = None


def _pg_failure(exc: BaseException, redacted: str) -> BaseException:
    """asyncpg's errors as the storage's: StoreError naming the database (never its password)."""
    import asyncpg  # type: ignore[import-untyped]

    if isinstance(exc, StoreError | ValueError):
        return exc
    if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresError | asyncpg.InterfaceError):
        error = StoreError(f"The experiment storage {redacted} refused a write or read: {exc}.")
        error.__cause__ = exc
        return error
    return exc


class PostgresStorage(ExperimentStorage):
    """The records in PostgreSQL (an asyncpg pool). Open with :meth:`connect`, on the event loop that
    uses it.

    There are ``pool_size`` *lanes*; an experiment's calls all go to one lane (by its id), queue there
    in the order made, and one task runs them on one pooled connection (taken while the lane has
    work). Consecutive writes in a lane, of all its experiments, run in one transaction (BEGIN, one
    statement each, COMMIT: a metric is one statement) and resolve after the COMMIT returned; a write
    alone commits by itself. A COMMIT waits for PostgreSQL to flush its WAL (an fsync, milliseconds),
    so under load one flush covers every write queued meanwhile in the lane, and the lanes' commits
    share flushes too (PostgreSQL's group commit). If a transaction fails, each of its writes is run
    again in a transaction of its own, so a write fails only for its own reason.
    """

    #: How long :meth:`close` waits for the queued calls before it cancels the lanes.
    close_timeout = 30.0

    def __init__(self, pool: Any, url: str, *, lanes: int = 10) -> None:
        self._pool = pool
        self.url = url
        self._lane_count = max(1, lanes)
        self.location = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
        self._lanes: dict[str, _Lane] = {}
        self._tasks = TaskSupervisor("experiment-storage")
        self._closed = False
        #: Called as ``listener(experiment_id, what)`` after each write's COMMIT (``what``: "trials",
        #: "metrics" or "experiment"), on the storage's loop; see :meth:`add_commit_listener`.
        self._commit_listeners: list[Callable[[str, str], None]] = []

    def add_commit_listener(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(experiment_id, what)`` right after each write has committed, ``what`` being
        "trials", "metrics" or "experiment".
        The service's read cache learns this way that an experiment's answers changed."""
        self._commit_listeners.append(listener)

    def _committed(self, job: _Job) -> None:
        """Tell the commit listeners about a write that has just committed: right after the COMMIT
        returned, before its caller is resumed (a turn of the loop later)."""
        if not job.write or not self._commit_listeners:
            return
        what = "experiment" if job.op is None else "metrics" if job.op[0] == "m" else "trials"
        for listener in self._commit_listeners:
            try:
                listener(job.experiment_id, what)
            except Exception:
                log.exception("A commit listener of the experiment storage failed.")

    @classmethod
    async def connect(cls, url: str, *, password: str | None = None, pool_size: int = 10) -> PostgresStorage:
        try:
            import asyncpg
        except ImportError as exc:
            raise UserError(
                "A postgresql:// storage needs the asyncpg package: pip install 'nni-ts[postgres]'."
            ) from exc

        async def no_reset(conn: Any) -> None:
            # asyncpg's default reset costs a round trip per release; a transaction left open is the
            # only state this code can leave behind.
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")

        redacted = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
        try:
            pool = await asyncpg.create_pool(
                url,
                password=password,
                min_size=min(2, pool_size),
                max_size=pool_size,
                command_timeout=60,
                reset=no_reset,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"Cannot open the experiment storage {redacted}: {exc}.") from exc
        try:
            async with pool.acquire() as conn:
                # One schema for every replica: concurrent first starts must not race on CREATE.
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(7140014)")
                    await conn.execute(_PG_SCHEMA)
        except (OSError, asyncpg.PostgresError) as exc:
            await pool.close()
            raise StoreError(f"Cannot open the experiment storage {redacted}: {exc}.") from exc
        return cls(pool, url, lanes=pool_size)

    # ------------------------------------------------------------------ the lanes

    def _queue(
        self,
        experiment_id: str,
        run: Callable[[Any], Awaitable[T]],
        *,
        write: bool,
        single: bool = True,
        op: tuple[str, tuple[Any, ...]] | None = None,
    ) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._closed:
            future.set_exception(StoreError(f"The experiment storage {self.location} is closed."))
            return future
        key = f"lane-{zlib.crc32(experiment_id.encode()) % self._lane_count}"
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.jobs.append(_Job(run, write, future, single, op, experiment_id))
        if lane.task is None:
            lane.task = self._tasks.spawn(self._drain(key, lane), name=key)
        return future

    async def _drain(self, key: str, lane: _Lane) -> None:
        try:
            while lane.jobs:
                try:
                    conn = await self._pool.acquire()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    error = _pg_failure(exc, self.location)
                    while lane.jobs:  # nothing can run without a connection: fail what is queued
                        job = lane.jobs.popleft()
                        if not job.future.done():
                            job.future.set_exception(error)
                    return
                try:
                    while lane.jobs:
                        first = lane.jobs.popleft()
                        if not first.write:
                            await self._run_one(conn, first, transaction=False)
                            continue
                        batch = [first]
                        while lane.jobs and lane.jobs[0].write and len(batch) < MAX_BATCH:
                            batch.append(lane.jobs.popleft())
                        await self._commit(conn, batch)
                finally:
                    await self._pool.release(conn)
        except asyncio.CancelledError:
            error = StoreError(f"The experiment storage {self.location} was closed before a call ran.")
            while lane.jobs:
                job = lane.jobs.popleft()
                if not job.future.done():
                    job.future.set_exception(error)
            raise
        finally:
            lane.task = None
            if not lane.jobs and self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _run_one(self, conn: Any, job: _Job, *, transaction: bool) -> None:
        if job.future.cancelled():
            return  # its caller gave up before it ran
        try:
            if transaction:
                async with conn.transaction():
                    result = await job.run(conn)
            else:
                result = await job.run(conn)
        except asyncio.CancelledError as exc:
            if not job.future.done():
                job.future.set_exception(StoreError(f"The experiment storage {self.location} was closed."))
            raise exc
        except BaseException as exc:
            if not job.future.done():
                job.future.set_exception(_pg_failure(exc, self.location))
            return
        self._committed(job)
        if not job.future.done():
            job.future.set_result(result)

    async def _commit(self, conn: Any, jobs: list[_Job]) -> None:
        """The writes in one transaction; each resolves after the COMMIT returned. Cancelled on the
        way (``close()`` gave up waiting), every write of the batch not yet resolved fails with a
        StoreError, so that no caller waits for ever: it may or may not have been stored, and the
        writes are idempotent, so the caller delivers it again later."""
        try:
            await self._commit_batch(conn, jobs)
        except asyncio.CancelledError:
            error = StoreError(
                f"The experiment storage {self.location} was closed during a write; it may not have been stored."
            )
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            raise

    async def _commit_batch(self, conn: Any, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if not j.future.cancelled()]
        if len(jobs) <= 1:
            for job in jobs:  # one statement alone commits by itself: one round trip, not three
                await self._run_one(conn, job, transaction=not job.single)
            return
        results: list[Any] = []
        try:
            if all(job.op is not None for job in jobs):
                # The loop's usual writes (metrics, trial records): the whole batch is one statement.
                ops = [{"k": job.op[0], "a": [_json_arg(v) for v in job.op[1]]} for job in jobs if job.op]
                changed = await conn.fetchval("SELECT nni_ts_write_batch($1::jsonb)", json.dumps(ops))
                results = [
                    bool(c) if job.op and job.op[0] == "m" else None for job, c in zip(jobs, changed, strict=True)
                ]
            else:
                async with conn.transaction():
                    for job in jobs:
                        results.append(await job.run(conn))
        except asyncio.CancelledError:
            raise
        except BaseException:
            # One of them failed and undid the others: each again on its own, so that only the
            # write at fault (or all of them, if the database is down) reports the failure.
            for job in jobs:
                await self._run_one(conn, job, transaction=True)
            return
        for job in jobs:
            self._committed(job)
        for job, result in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)

    async def _direct(self, method: str, sql: str, *args: Any) -> Any:
        """A statement outside every lane (reads that name no experiment)."""
        try:
            return await getattr(self._pool, method)(sql, *args)
        except BaseException as exc:
            raise _pg_failure(exc, self.location) from exc

    # ------------------------------------------------------------------ rows

    @staticmethod
    def _experiment(row: Any) -> ExperimentRecord:
        return _experiment_from_row(tuple(row))  # the same columns, in the same order, as SQLite's

    @staticmethod
    def _trial(row: Any, *, with_detail: bool = True) -> TrialRecord:
        # SQLite's columns, in SQLite's order; message and final_data are BYTEA here (kept byte for byte).
        values = list(row)
        values[11], values[14] = _s(values[11]), _s(values[14])
        return _trial_from_row(tuple(values), with_detail=with_detail)

    # ------------------------------------------------------------------ experiments

    def create_experiment(
        self,
        experiment_id: str,
        *,
        name: str | None,
        platform: str,
        config: dict[str, Any],
        working_dir: str | Path,
        status: str = "RUNNING",
        manager_pid: int | None = None,
        manager_started: float | None = None,
    ) -> asyncio.Future[ExperimentRecord]:
        now = now_ms()
        args = (
            experiment_id,
            _pg_text(name),
            platform,
            status,
            json.dumps(config),
            now,
            now,
            manager_pid,
            manager_started,
            str(working_dir),
        )

        async def run(conn: Any) -> ExperimentRecord:
            row = await conn.fetchrow(
                f"INSERT INTO exp_experiments ({_EXP_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,NULL,$8,$9,NULL,$10,0) "
                f"ON CONFLICT (id) DO NOTHING RETURNING {_EXP_COLS}",
                *args,
            )
            if row is None:
                raise StoreError(f"An experiment with the id {experiment_id!r} already exists.")
            return self._experiment(row)

        return self._queue(experiment_id, run, write=True)

    def get_experiment(self, experiment_id: str) -> asyncio.Future[ExperimentRecord]:
        async def run(conn: Any) -> ExperimentRecord:
            row = await conn.fetchrow(f"SELECT {_EXP_COLS} FROM exp_experiments WHERE id = $1", experiment_id)
            if row is None:
                raise StoreError(f"There is no experiment with the id {experiment_id!r}.")
            return self._experiment(row)

        return self._queue(experiment_id, run, write=False)

    async def list_experiments(self) -> list[ExperimentRecord]:
        rows = await self._direct("fetch", f"SELECT {_EXP_COLS} FROM exp_experiments ORDER BY created_ms, id")
        return [self._experiment(r) for r in rows]

    def update_experiment(self, experiment_id: str, **fields: Any) -> asyncio.Future[None]:
        unknown = set(fields) - _EXPERIMENT_FIELDS
        if unknown:
            raise ValueError(f"Unknown experiment fields: {sorted(unknown)}")
        if "config" in fields:
            fields["config"] = json.dumps(fields["config"])
        for key in ("message", "name"):
            if key in fields:
                fields[key] = _pg_text(fields[key])
        fields["updated_ms"] = now_ms()
        sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(fields, start=1))
        sql = f"UPDATE exp_experiments SET {sets} WHERE id = ${len(fields) + 1}"
        values = (*fields.values(), experiment_id)

        async def run(conn: Any) -> None:
            await conn.execute(sql, *values)

        return self._queue(experiment_id, run, write=True)

    def delete_experiment(self, experiment_id: str) -> asyncio.Future[bool]:
        async def run(conn: Any) -> bool:
            await conn.execute("DELETE FROM exp_metrics WHERE experiment_id = $1", experiment_id)
            await conn.execute("DELETE FROM exp_trials WHERE experiment_id = $1", experiment_id)
            status = await conn.execute("DELETE FROM exp_experiments WHERE id = $1", experiment_id)
            return not str(status).endswith(" 0")

        return self._queue(experiment_id, run, write=True, single=False)

    # ------------------------------------------------------------------ trials

    def insert_trial(self, trial: TrialRecord) -> asyncio.Future[None]:
        # SQLite's row (the same columns, in the same order), with the texts that may hold any byte
        # (message, final record) as BYTEA and the detail's JSON made safe for a TEXT column.
        row = list(_insert_trial_params(trial))
        row[11], row[14] = _b(row[11]), _b(row[14])
        row[16] = None if row[16] is None else _pg_text(row[16])
        args = tuple(row)

        async def run(conn: Any) -> None:
            await conn.execute(
                f"INSERT INTO exp_trials ({_TRIAL_COLS}) VALUES "
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
                *args,
            )

        return self._queue(trial.experiment_id, run, write=True, op=("i", args))

    def update_trial(self, experiment_id: str, detail: TrialJobDetail) -> asyncio.Future[None]:
        args = (
            detail.status.value,
            detail.submit_time,
            detail.start_time,
            detail.end_time,
            detail.exit_code,
            _b(detail.message),
            int(detail.infrastructure_failure),
            _pg_text(detail.model_dump_json()),  # serialised now: stored as it is at the call
            experiment_id,
            detail.id,
        )

        async def run(conn: Any) -> None:
            await conn.execute(
                "UPDATE exp_trials SET status = $1, submit_ms = $2, start_ms = $3, end_ms = $4, exit_code = $5, "
                "message = $6, infra_failure = $7, detail = $8 WHERE experiment_id = $9 AND id = $10",
                *args,
            )

        return self._queue(experiment_id, run, write=True, op=("u", args))

    def get_trial(self, experiment_id: str, trial_id: str) -> asyncio.Future[TrialRecord]:
        async def run(conn: Any) -> TrialRecord:
            row = await conn.fetchrow(
                f"SELECT {_TRIAL_COLS} FROM exp_trials WHERE experiment_id = $1 AND id = $2", experiment_id, trial_id
            )
            if row is None:
                raise StoreError(f"Experiment {experiment_id} has no trial {trial_id!r}.")
            return self._trial(row)

        return self._queue(experiment_id, run, write=False)

    def list_trials(self, experiment_id: str, *, with_detail: bool = False) -> asyncio.Future[list[TrialRecord]]:
        cols = _TRIAL_COLS if with_detail else _TRIAL_COLS.replace(", detail", ", NULL")

        async def run(conn: Any) -> list[TrialRecord]:
            rows = await conn.fetch(
                f"SELECT {cols} FROM exp_trials WHERE experiment_id = $1 ORDER BY sequence_id, attempt",
                experiment_id,
            )
            return [self._trial(r, with_detail=with_detail) for r in rows]

        return self._queue(experiment_id, run, write=False)

    # ------------------------------------------------------------------ metrics

    def add_metric(
        self, experiment_id: str, trial_id: str, seq: int, *, type: str, value: float | None, data: str
    ) -> asyncio.Future[bool]:
        args = (experiment_id, trial_id, seq, type, value, _b(data), now_ms())

        async def run(conn: Any) -> bool:
            return bool(await conn.fetchval(_ADD_METRIC, *args))

        return self._queue(experiment_id, run, write=True, op=("m", args))

    def metrics(self, experiment_id: str, trial_id: str) -> asyncio.Future[list[MetricRecord]]:
        async def run(conn: Any) -> list[MetricRecord]:
            rows = await conn.fetch(
                "SELECT trial_id, seq, type, value, data, created_ms FROM exp_metrics "
                "WHERE experiment_id = $1 AND trial_id = $2 ORDER BY seq",
                experiment_id,
                trial_id,
            )
            return [MetricRecord(r[0], r[1], r[2], r[3], _s(r[4]) or "", r[5]) for r in rows]

        return self._queue(experiment_id, run, write=False)

    async def import_experiment(
        self, record: ExperimentRecord, trials: list[TrialRecord], metrics: list[MetricRecord]
    ) -> bool:
        """Copy an experiment with its trials and metrics, as they are, in one transaction (moving a
        store file's experiments here). False if an experiment with that id is here already."""
        import asyncpg

        try:
            async with self._pool.acquire() as conn, conn.transaction():
                inserted = await conn.fetchval(
                    f"INSERT INTO exp_experiments ({_EXP_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) "
                    "ON CONFLICT (id) DO NOTHING RETURNING 1",
                    record.id,
                    _pg_text(record.name),
                    record.platform,
                    record.status,
                    json.dumps(record.config),
                    record.created_ms,
                    record.updated_ms,
                    record.ended_ms,
                    record.manager_pid,
                    record.manager_started,
                    _pg_text(record.message),
                    record.working_dir,
                    record.active_ms,
                )
                if inserted is None:
                    return False
                await conn.executemany(
                    f"INSERT INTO exp_trials ({_TRIAL_COLS}) VALUES "
                    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
                    [
                        (
                            t.experiment_id,
                            t.id,
                            t.sequence_id,
                            t.parameter_id,
                            t.attempt,
                            json.dumps(t.parameters),
                            t.status.value,
                            t.submit_ms,
                            t.start_ms,
                            t.end_ms,
                            t.exit_code,
                            _b(t.message),
                            int(t.infrastructure_failure),
                            t.final_value,
                            _b(t.final_data),
                            t.metric_count,
                            _pg_text(t.detail.model_dump_json()) if t.detail is not None else None,
                        )
                        for t in trials
                    ],
                )
                await conn.executemany(
                    "INSERT INTO exp_metrics (experiment_id, trial_id, seq, type, value, data, created_ms) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    [(record.id, m.trial_id, m.seq, m.type, m.value, _b(m.data), m.created_ms) for m in metrics],
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"Importing experiment {record.id} into {self.location} failed: {exc}.") from exc
        return True

    async def close(self) -> None:
        """Finish every queued call, stop the lanes and close the pool."""
        self._closed = True
        pending = [lane.task for lane in list(self._lanes.values()) if lane.task is not None]
        if pending:
            await asyncio.wait(pending, timeout=self.close_timeout)
        await self._tasks.stop(10)
        await self._pool.close()


async def open_storage(url: str, *, password: str | None = None, pool_size: int = 10) -> ExperimentStorage:
    """``sqlite:///PATH`` (the nni-ts store file) or ``postgresql://USER@HOST:PORT/DB``."""
    if url.startswith("sqlite:///"):
        return await asyncio.to_thread(SqliteStorage, Path(url[len("sqlite:///") :]).expanduser())
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresStorage.connect(url, password=password, pool_size=pool_size)
    raise UserError(
        f"Unsupported storage URL {url.split('://')[0]!r}://...; expected sqlite:///PATH or postgresql://..."
    )
