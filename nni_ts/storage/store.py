"""The SQLite store: one database file under ``NNI_TS_HOME`` holding every experiment.

Durability: the database runs in WAL mode with ``synchronous=NORMAL``. Every write is its own
transaction, committed before the caller goes on, so a manager killed at any point (even with
SIGKILL) loses nothing it had written: WAL commits survive the death of the process. (An operating
system crash may lose the last transactions; ``NNI_TS_SYNC=full`` closes that window at a cost.)

Metrics are keyed by ``(experiment, trial, seq)`` where ``seq`` is the record's position in the
trial's stream, so writing the same record twice (a resumed manager, a re-delivering keeper) keeps
one copy. The experiment loop writes a record here *before* anyone sees it (tuner, display).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..models import TrialJobDetail, TrialJobStatus, now_ms
from ..paths import home

__all__ = ["ExperimentRecord", "MetricRecord", "Store", "TrialRecord", "open_store"]

SCHEMA_VERSION = 1

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


class Store:
    """Access to the database. Cheap calls, made from the event loop's thread.

    ``readonly=True`` opens the file without write access (``nni-ts view``), so a viewer can never
    change an experiment, even by mistake.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
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
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
                self._db.execute("PRAGMA journal_mode=WAL")
                sync = "FULL" if os.environ.get("NNI_TS_SYNC", "").lower() == "full" else "NORMAL"
                self._db.execute(f"PRAGMA synchronous={sync}")
                self._db.executescript(_SCHEMA)
                self._check_version()
            self._db.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open the nni-ts database at {self.path}: {exc}.") from exc

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
        self._db.close()

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

    def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        row = self._db.execute(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE id=?", (experiment_id,)).fetchone()
        if row is None:
            known = [r[0] for r in self._db.execute("SELECT id FROM experiments ORDER BY created_ms DESC LIMIT 5")]
            hint = f" Recent experiments: {', '.join(known)}." if known else " No experiment is recorded yet."
            raise StoreError(f"There is no experiment with the id {experiment_id!r}.{hint}")
        return _experiment_from_row(row)

    def list_experiments(self) -> list[ExperimentRecord]:
        rows = self._db.execute(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments ORDER BY created_ms").fetchall()
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
        self._write(
            f"INSERT INTO trials ({_TRIAL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
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
            ),
        )

    def update_trial(self, experiment_id: str, detail: TrialJobDetail) -> None:
        """Record the trial's latest detail (status, times, exit code, platform data)."""
        self._write(
            "UPDATE trials SET status=?, submit_ms=?, start_ms=?, end_ms=?, exit_code=?, message=?, "
            "infra_failure=?, detail=? WHERE experiment_id=? AND id=?",
            (
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
            ),
        )

    def get_trial(self, experiment_id: str, trial_id: str) -> TrialRecord:
        row = self._db.execute(
            f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE experiment_id=? AND id=?", (experiment_id, trial_id)
        ).fetchone()
        if row is None:
            raise StoreError(f"Experiment {experiment_id} has no trial {trial_id!r}.")
        return _trial_from_row(row)

    def list_trials(self, experiment_id: str, *, with_detail: bool = False) -> list[TrialRecord]:
        """Every trial of the experiment in sequence order. Metrics are not loaded (see ``metrics``)."""
        cols = _TRIAL_COLUMNS if with_detail else _TRIAL_COLUMNS.replace(", detail", ", NULL")
        rows = self._db.execute(
            f"SELECT {cols} FROM trials WHERE experiment_id=? ORDER BY sequence_id, attempt", (experiment_id,)
        ).fetchall()
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
        rows = self._db.execute(
            "SELECT trial_id, seq, type, value, data, created_ms FROM metrics "
            "WHERE experiment_id=? AND trial_id=? ORDER BY seq",
            (experiment_id, trial_id),
        ).fetchall()
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


def default_store_path() -> Path:
    return home() / "nni-ts.db"


def open_store(path: str | Path | None = None, *, readonly: bool = False) -> Store:
    """The store at ``path``, by default ``$NNI_TS_HOME/nni-ts.db``."""
    return Store(path or default_store_path(), readonly=readonly)
