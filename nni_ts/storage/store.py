"""The SQLite store: one database file under ``NNI_TS_HOME`` holding every experiment.

Durability: the database runs in WAL mode with ``synchronous=NORMAL``. A write is committed before
its caller goes on, so a manager killed at any point (even with SIGKILL) loses nothing it had been
told was written: WAL commits survive the death of the process. (An operating system crash may lose
the last transactions; ``NNI_TS_SYNC=full`` closes that window at a cost.)

Two ways in. :class:`Store`'s methods are synchronous (the CLI, scripts, tests). :class:`AsyncStore`
is what an event loop uses: every call is queued to the store's one writer thread and awaited, so the
loop never waits on the disk or on a lock held by another process. The writer takes the calls in
the order they were queued (so a trial's metrics and statuses are stored in the order the loop
produced them) and runs the writes that queued up meanwhile in one transaction, each in its own
savepoint: a burst of metrics costs one commit, not one each. An awaited write resolves only after
its COMMIT; a write that fails (disk full, database locked past the busy timeout) raises
:class:`~nni_ts.errors.StoreError` to whoever awaits it, and to every write of the same transaction.

Metrics are keyed by ``(experiment, trial, seq)`` where ``seq`` is the record's position in the
trial's stream, so writing the same record twice (a resumed manager, a re-delivering keeper) keeps
one copy. The experiment loop writes a record here *before* anyone sees it (tuner, display).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..clock import outside_work
from ..clock import to_thread as clock_to_thread
from ..errors import StoreError
from ..models import TrialJobDetail, TrialJobStatus, now_ms
from ..paths import home

__all__ = ["AsyncStore", "ExperimentRecord", "MetricRecord", "Store", "TrialRecord", "open_store"]

SCHEMA_VERSION = 1

#: The most writes the writer thread puts in one transaction.
MAX_BATCH = 512

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY,
    name TEXT,
    platform TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    manager_pid INTEGER,
    manager_started REAL,
    message TEXT,
    working_dir TEXT NOT NULL,
    active_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS trials (
    experiment_id TEXT NOT NULL,
    id TEXT NOT NULL,
    sequence_id INTEGER NOT NULL,
    parameter_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    parameters TEXT NOT NULL,
    status TEXT NOT NULL,
    submit_ms INTEGER,
    start_ms INTEGER,
    end_ms INTEGER,
    exit_code INTEGER,
    message TEXT,
    infra_failure INTEGER NOT NULL DEFAULT 0,
    final_value REAL,
    final_data TEXT,
    metric_count INTEGER NOT NULL DEFAULT 0,
    detail TEXT,
    PRIMARY KEY (experiment_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS trials_by_seq ON trials (experiment_id, sequence_id);
CREATE TABLE IF NOT EXISTS metrics (
    experiment_id TEXT NOT NULL,
    trial_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    value REAL,
    data TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (experiment_id, trial_id, seq)
) WITHOUT ROWID;
"""


@dataclass
class ExperimentRecord:
    """One experiment as stored."""

    id: str
    name: str | None
    platform: str
    status: str
    config: dict[str, Any]
    created_ms: int
    updated_ms: int
    ended_ms: int | None
    manager_pid: int | None
    manager_started: float | None
    message: str | None
    working_dir: str
    active_ms: int = 0


@dataclass
class TrialRecord:
    """One trial as stored. ``final_value`` is the scalar of its FINAL record, if any."""

    experiment_id: str
    id: str
    sequence_id: int
    parameter_id: int
    parameters: dict[str, Any]
    status: TrialJobStatus = TrialJobStatus.WAITING
    attempt: int = 1
    submit_ms: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    exit_code: int | None = None
    message: str | None = None
    infrastructure_failure: bool = False
    final_value: float | None = None
    final_data: str | None = None
    metric_count: int = 0
    detail: TrialJobDetail | None = field(default=None, repr=False)


@dataclass
class MetricRecord:
    """One metric record: ``data`` is the record JSON byte for byte, ``value`` its scalar if numeric."""

    trial_id: str
    seq: int
    type: str
    value: float | None
    data: str
    created_ms: int


_TRIAL_COLUMNS = (
    "experiment_id, id, sequence_id, parameter_id, attempt, parameters, status, submit_ms, start_ms, end_ms, "
    "exit_code, message, infra_failure, final_value, final_data, metric_count, detail"
)
_EXPERIMENT_COLUMNS = (
    "id, name, platform, status, config, created_ms, updated_ms, ended_ms, manager_pid, manager_started, "
    "message, working_dir, active_ms"
)


def _trial_from_row(row: sqlite3.Row | tuple[Any, ...], *, with_detail: bool = True) -> TrialRecord:
    detail = None
    if with_detail and row[16]:
        detail = TrialJobDetail.model_validate_json(row[16])
    return TrialRecord(
        experiment_id=row[0],
        id=row[1],
        sequence_id=row[2],
        parameter_id=row[3],
        attempt=row[4],
        parameters=json.loads(row[5]),
        status=TrialJobStatus(row[6]),
        submit_ms=row[7],
        start_ms=row[8],
        end_ms=row[9],
        exit_code=row[10],
        message=row[11],
        infrastructure_failure=bool(row[12]),
        final_value=row[13],
        final_data=row[14],
        metric_count=row[15],
        detail=detail,
    )


def _experiment_from_row(row: tuple[Any, ...]) -> ExperimentRecord:
    return ExperimentRecord(
        id=row[0],
        name=row[1],
        platform=row[2],
        status=row[3],
        config=json.loads(row[4]),
        created_ms=row[5],
        updated_ms=row[6],
        ended_ms=row[7],
        manager_pid=row[8],
        manager_started=row[9],
        message=row[10],
        working_dir=row[11],
        active_ms=row[12],
    )


class _Job:
    """One call queued to the writer thread."""

    __slots__ = ("fn", "future", "write")

    def __init__(self, fn: Callable[[], Any], write: bool) -> None:
        self.fn = fn
        self.write = write
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


class _Batch(Exception):
    """A write failed in a way that undid the whole transaction (disk full, I/O error, locked)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _undoes_transaction(exc: BaseException) -> bool:
    """Whether a write's failure is the database's (every write of the transaction fails with it),
    not the one call's (a constraint, a missing row: only that call fails)."""
    cause = exc.__cause__ if isinstance(exc, StoreError) else exc
    return isinstance(cause, sqlite3.Error) and not isinstance(cause, sqlite3.IntegrityError | sqlite3.ProgrammingError)


class _Writer:
    """The store's one writer thread: takes queued calls in order, batches consecutive writes."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=f"nni-ts-store-{store.path.name}", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T], *, write: bool) -> concurrent.futures.Future[T]:
        job = _Job(fn, write)
        self._queue.put(job)
        return job.future

    def stop(self) -> None:
        """Finish every queued call, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _main(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        writes: list[_Job] = []
        for job in batch:
            if not job.future.set_running_or_notify_cancel():
                continue  # its caller gave up before it ran
            if job.write:
                writes.append(job)
                continue
            self._commit(writes)
            writes = []
            try:
                job.future.set_result(job.fn())
            except BaseException as exc:
                job.future.set_exception(exc)
        self._commit(writes)

    def _commit(self, jobs: list[_Job]) -> None:
        """Run ``jobs`` in one transaction, each in a savepoint; resolve them after the COMMIT."""
        if not jobs:
            return
        store = self._store
        db = store._db
        done: list[tuple[_Job, Any]] = []
        try:
            with store._lock:
                store._local.batch = True
                try:
                    _execute(store, db, "BEGIN IMMEDIATE", "Writing to")
                    for job in jobs:
                        db.execute("SAVEPOINT job")
                        try:
                            result = job.fn()
                        except BaseException as exc:
                            if _undoes_transaction(exc) or not db.in_transaction:
                                raise _Batch(exc) from exc
                            db.execute("ROLLBACK TO job")
                            db.execute("RELEASE job")
                            job.future.set_exception(exc)
                            continue
                        db.execute("RELEASE job")
                        done.append((job, result))
                    _execute(store, db, "COMMIT", "Committing to")
                except BaseException:
                    if db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):  # the failure is reported below
                            db.execute("ROLLBACK")
                    raise
                finally:
                    store._local.batch = False
        except _Batch as exc:
            error: BaseException = exc.error
        except sqlite3.Error as exc:
            error = StoreError(f"Writing to {store.path} failed: {exc}.")
            error.__cause__ = exc
        except BaseException as exc:
            error = exc
        else:
            for job, result in done:
                job.future.set_result(result)
            return
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)


def _execute(store: Store, db: sqlite3.Connection, sql: str, failure: str) -> None:
    try:
        db.execute(sql)
    except sqlite3.Error as exc:
        raise StoreError(f"{failure} {store.path} failed: {exc}.") from exc


class Store:
    """Access to the database, synchronous: for the CLI and scripts. An event loop uses
    :class:`AsyncStore` (``store.asynchronous()``), which does the same through the writer thread.

    ``readonly=True`` opens the file without write access (``nni-ts view``), so a viewer can never
    change an experiment, even by mistake. ``busy_timeout`` is how long a write waits for another
    process's lock before it fails.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.readonly = readonly
        # Held while the connection is used; re-entrant because the writer thread holds it across a
        # batch while each call in it takes it again.
        self._lock = threading.RLock()
        self._writer: _Writer | None = None
        self._writer_lock = threading.Lock()
        self._closed = False
        self._local = threading.local()  # .batch: this thread runs a writer's transaction
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreError(f"There is no nni-ts database at {self.path}; no experiment was run here yet.")
                uri = f"file:{self.path}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                # Owner-only: the stored configs may hold SSH passwords and passphrases (sqlite gives
                # its -wal and -shm files the database file's mode).
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
                self._db = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                sync = "FULL" if os.environ.get("NNI_TS_SYNC", "").lower() == "full" else "NORMAL"
                self._db.execute(f"PRAGMA synchronous={sync}")
                self._db.executescript(_SCHEMA)
                self._check_version()
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        except (sqlite3.Error, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StoreError(f"Cannot open the nni-ts database at {self.path}: {reason}.") from exc

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"The database at {self.path} was written by a newer nni-ts (schema {row[0]}); "
                f"this one understands schema {SCHEMA_VERSION}. Upgrade nni-ts."
            )

    def close(self) -> None:
        """Finish every queued write, stop the writer thread and close the connection."""
        with self._writer_lock:
            writer, self._writer = self._writer, None
            self._closed = True
        if writer is not None:
            writer.stop()
        self._db.close()

    def asynchronous(self) -> AsyncStore:
        """This store for an event loop: the same calls, awaited, run by the store's writer thread."""
        return AsyncStore(self)

    def _submit(self, fn: Callable[[], T], *, write: bool) -> concurrent.futures.Future[T]:
        with self._writer_lock:
            if self._closed:
                raise StoreError(f"The store at {self.path} is closed.")
            if self._writer is None:
                self._writer = _Writer(self)
            writer = self._writer
        future = writer.submit(fn, write=write)
        outside_work(future)  # a fake clock waits for it rather than jumping ahead
        return future

    def _in_writer(self) -> bool:
        return getattr(self._local, "batch", False) is True

    def set_max_pages(self, pages: int) -> int:
        """Cap the database's size at ``pages`` pages (SQLite's ``max_page_count``; never below its
        current size): a write that needs more fails with "database or disk is full", as on a full
        disk. Returns the cap in effect. For quotas and for fault tests."""
        with self._lock:
            row = self._db.execute(f"PRAGMA max_page_count={int(pages)}").fetchone()
        return int(row[0])

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self, failure: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error). ``failure`` starts
        the error message: "<failure> <path> failed: <reason>."."""
        if self.readonly:
            raise StoreError("This store was opened read-only.")
        try:
            with self._lock:
                if self._in_writer():  # inside the writer's transaction (and savepoint) already
                    yield self._db
                    return
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"{failure} {self.path} failed: {exc}.") from exc

    def _write(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        if self.readonly:
            raise StoreError("This store was opened read-only.")
        try:
            with self._lock:
                return self._db.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise StoreError(f"Writing to {self.path} failed: {exc}.") from exc

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
    ) -> ExperimentRecord:
        now = now_ms()
        try:
            self._write(
                f"INSERT INTO experiments ({_EXPERIMENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    experiment_id,
                    name,
                    platform,
                    status,
                    json.dumps(config),
                    now,
                    now,
                    None,
                    manager_pid,
                    manager_started,
                    None,
                    str(working_dir),
                    0,
                ),
            )
        except StoreError as exc:
            if "UNIQUE" in str(exc):
                raise StoreError(f"An experiment with the id {experiment_id!r} already exists.") from exc
            raise
        return self.get_experiment(experiment_id)

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        try:
            with self._lock:
                return self._db.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"Reading {self.path} failed: {exc}.") from exc

    def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        rows = self._read(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE id=?", (experiment_id,))
        if not rows:
            known = [r[0] for r in self._read("SELECT id FROM experiments ORDER BY created_ms DESC LIMIT 5")]
            hint = f" Recent experiments: {', '.join(known)}." if known else " No experiment is recorded yet."
            raise StoreError(f"There is no experiment with the id {experiment_id!r}.{hint}")
        return _experiment_from_row(rows[0])

    def list_experiments(self) -> list[ExperimentRecord]:
        rows = self._read(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments ORDER BY created_ms")
        return [_experiment_from_row(r) for r in rows]

    def delete_experiment(self, experiment_id: str) -> bool:
        """Remove an experiment with its trials and metrics, in one transaction; False if it was not there.

        The caller makes sure nothing runs any more (the service stops an experiment before deleting it).
        """
        with self._transaction(f"Deleting experiment {experiment_id} from") as db:
            db.execute("DELETE FROM metrics WHERE experiment_id=?", (experiment_id,))
            db.execute("DELETE FROM trials WHERE experiment_id=?", (experiment_id,))
            cur = db.execute("DELETE FROM experiments WHERE id=?", (experiment_id,))
        return cur.rowcount > 0

    def update_experiment(self, experiment_id: str, **fields: Any) -> None:
        allowed = {"status", "config", "ended_ms", "manager_pid", "manager_started", "message", "name", "active_ms"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"Unknown experiment fields: {sorted(unknown)}")
        if "config" in fields:
            fields["config"] = json.dumps(fields["config"])
        fields["updated_ms"] = now_ms()
        sets = ", ".join(f"{k}=?" for k in fields)
        self._write(f"UPDATE experiments SET {sets} WHERE id=?", (*fields.values(), experiment_id))

    # ------------------------------------------------------------------ trials

    def insert_trial(self, trial: TrialRecord) -> None:
        self._write(_INSERT_TRIAL, _insert_trial_params(trial))

    def update_trial(self, experiment_id: str, detail: TrialJobDetail) -> None:
        """Record the trial's latest detail (status, times, exit code, platform data)."""
        self._write(_UPDATE_TRIAL, _update_trial_params(experiment_id, detail))

    def get_trial(self, experiment_id: str, trial_id: str) -> TrialRecord:
        rows = self._read(
            f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE experiment_id=? AND id=?", (experiment_id, trial_id)
        )
        if not rows:
            raise StoreError(f"Experiment {experiment_id} has no trial {trial_id!r}.")
        return _trial_from_row(rows[0])

    def list_trials(self, experiment_id: str, *, with_detail: bool = False) -> list[TrialRecord]:
        """Every trial of the experiment in sequence order. Metrics are not loaded (see ``metrics``)."""
        cols = _TRIAL_COLUMNS if with_detail else _TRIAL_COLUMNS.replace(", detail", ", NULL")
        rows = self._read(
            f"SELECT {cols} FROM trials WHERE experiment_id=? ORDER BY sequence_id, attempt", (experiment_id,)
        )
        return [_trial_from_row(r, with_detail=with_detail) for r in rows]

    # ------------------------------------------------------------------ metrics

    def add_metric(
        self,
        experiment_id: str,
        trial_id: str,
        seq: int,
        *,
        type: str,
        value: float | None,
        data: str,
    ) -> bool:
        """Store one record durably. Returns False if this (trial, seq) was already stored."""
        with self._transaction("Writing a metric to") as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO metrics VALUES (?,?,?,?,?,?,?)",
                (experiment_id, trial_id, seq, type, value, data, now_ms()),
            )
            inserted = cur.rowcount == 1
            if inserted:
                if type == "FINAL":
                    db.execute(
                        "UPDATE trials SET metric_count=metric_count+1, final_value=?, final_data=? "
                        "WHERE experiment_id=? AND id=?",
                        (value, data, experiment_id, trial_id),
                    )
                else:
                    db.execute(
                        "UPDATE trials SET metric_count=metric_count+1 WHERE experiment_id=? AND id=?",
                        (experiment_id, trial_id),
                    )
        return inserted

    def metrics(self, experiment_id: str, trial_id: str) -> list[MetricRecord]:
        rows = self._read(
            "SELECT trial_id, seq, type, value, data, created_ms FROM metrics "
            "WHERE experiment_id=? AND trial_id=? ORDER BY seq",
            (experiment_id, trial_id),
        )
        return [MetricRecord(*r) for r in rows]

    def iter_metrics(self, experiment_id: str) -> Iterator[MetricRecord]:
        """Every metric of the experiment, trial by trial, streamed (not loaded at once)."""
        cur = self._db.execute(
            "SELECT trial_id, seq, type, value, data, created_ms FROM metrics WHERE experiment_id=? "
            "ORDER BY trial_id, seq",
            (experiment_id,),
        )
        for row in cur:
            yield MetricRecord(*row)


class AsyncStore:
    """A :class:`Store` for an event loop: the same calls, awaited; the store's writer thread runs them.

    Each call is queued when it is *made* (it returns a future), not when it is awaited, and calls
    run in the order they were made: a read sees every write queued before it, and a caller that
    does not wait for a write still keeps its place in the order. A write's future resolves after
    its transaction committed, and raises :class:`~nni_ts.errors.StoreError` if it did not. Several
    ``AsyncStore`` of one ``Store`` share its one writer thread. Call from the loop's thread.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def path(self) -> Path:
        return self.store.path

    def _call(self, fn: Callable[[], T], *, write: bool) -> asyncio.Future[T]:
        return asyncio.wrap_future(self.store._submit(fn, write=write), loop=asyncio.get_running_loop())

    async def aclose(self) -> None:
        """Finish the queued calls and close the store (its connection and writer thread)."""
        await clock_to_thread(self.store.close)

    # writes: resolved after COMMIT

    def create_experiment(self, experiment_id: str, **fields: Any) -> asyncio.Future[ExperimentRecord]:
        return self._call(lambda: self.store.create_experiment(experiment_id, **fields), write=True)

    def update_experiment(self, experiment_id: str, **fields: Any) -> asyncio.Future[None]:
        return self._call(lambda: self.store.update_experiment(experiment_id, **fields), write=True)

    def delete_experiment(self, experiment_id: str) -> asyncio.Future[bool]:
        return self._call(lambda: self.store.delete_experiment(experiment_id), write=True)

    def insert_trial(self, trial: TrialRecord) -> asyncio.Future[None]:
        # Stored as it is now, whatever the caller does with it next: its row is encoded here (a
        # fraction of the cost of a deep copy), the writer thread only executes the statement.
        return self._write_row(_INSERT_TRIAL, lambda: _insert_trial_params(trial))

    def update_trial(self, experiment_id: str, detail: TrialJobDetail) -> asyncio.Future[None]:
        return self._write_row(_UPDATE_TRIAL, lambda: _update_trial_params(experiment_id, detail))

    def _write_row(self, sql: str, params: Callable[[], tuple[Any, ...]]) -> asyncio.Future[None]:
        try:
            row = params()
        except Exception as exc:  # an unencodable value fails the call, as it would in the writer
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        store = self.store

        def write() -> None:
            store._write(sql, row)

        return self._call(write, write=True)

    def add_metric(
        self, experiment_id: str, trial_id: str, seq: int, *, type: str, value: float | None, data: str
    ) -> asyncio.Future[bool]:
        """Store one record: True once it is committed, False if this (trial, seq) was stored before."""
        return self._call(
            lambda: self.store.add_metric(experiment_id, trial_id, seq, type=type, value=value, data=data),
            write=True,
        )

    # reads: after every call queued before them

    def get_experiment(self, experiment_id: str) -> asyncio.Future[ExperimentRecord]:
        return self._call(lambda: self.store.get_experiment(experiment_id), write=False)

    def get_trial(self, experiment_id: str, trial_id: str) -> asyncio.Future[TrialRecord]:
        return self._call(lambda: self.store.get_trial(experiment_id, trial_id), write=False)

    def list_trials(self, experiment_id: str, *, with_detail: bool = False) -> asyncio.Future[list[TrialRecord]]:
        return self._call(lambda: self.store.list_trials(experiment_id, with_detail=with_detail), write=False)

    def metrics(self, experiment_id: str, trial_id: str) -> asyncio.Future[list[MetricRecord]]:
        return self._call(lambda: self.store.metrics(experiment_id, trial_id), write=False)


_INSERT_TRIAL = f"INSERT INTO trials ({_TRIAL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_UPDATE_TRIAL = (
    "UPDATE trials SET status=?, submit_ms=?, start_ms=?, end_ms=?, exit_code=?, message=?, "
    "infra_failure=?, detail=? WHERE experiment_id=? AND id=?"
)


def _insert_trial_params(trial: TrialRecord) -> tuple[Any, ...]:
    return (
        trial.experiment_id,
        trial.id,
        trial.sequence_id,
        trial.parameter_id,
        trial.attempt,
        json.dumps(trial.parameters),
        trial.status.value,
        trial.submit_ms,
        trial.start_ms,
        trial.end_ms,
        trial.exit_code,
        trial.message,
        int(trial.infrastructure_failure),
        trial.final_value,
        trial.final_data,
        trial.metric_count,
        trial.detail.model_dump_json() if trial.detail is not None else None,
    )


def _update_trial_params(experiment_id: str, detail: TrialJobDetail) -> tuple[Any, ...]:
    return (
        detail.status.value,
        detail.submit_time,
        detail.start_time,
        detail.end_time,
        detail.exit_code,
        detail.message,
        int(detail.infrastructure_failure),
        detail.model_dump_json(),
        experiment_id,
        detail.id,
    )


def default_store_path() -> Path:
    return home() / "nni-ts.db"


def open_store(path: str | Path | None = None, *, readonly: bool = False) -> Store:
    """The store at ``path``, by default ``$NNI_TS_HOME/nni-ts.db``."""
    return Store(path or default_store_path(), readonly=readonly)
