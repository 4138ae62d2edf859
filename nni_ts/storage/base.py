"""One async storage interface for experiments, trials and metrics, with a SQLite and a PostgreSQL backend.

Optuna's storages are the model: one interface (:class:`ExperimentStorage`), backends for several
databases, and one test suite run against each (``tests/service/test_storage_backends.py``).

* :class:`SqliteStorage` is the ordinary nni-ts store (:class:`~nni_ts.storage.store.Store`, one file),
  as ``nni-ts create`` uses it.
* :class:`PostgresStorage` keeps the same records in PostgreSQL (tables ``exp_experiments``,
  ``exp_trials``, ``exp_metrics``), so that an experiment service running on PostgreSQL can have its
  experiments write there directly, and any replica read any experiment at once.

Status (issue 14): the interface and both backends exist and pass the same suite; the SQLite backend
runs on the store's writer thread (:class:`AsyncStore`, issue 12). The experiment loop and the service
still use :class:`AsyncStore` directly plus the service's mirror: wiring the loop to this interface (so
that a service on PostgreSQL gets its experiments' records without the mirror) is what is left.

Every method is a coroutine. Records are the store's dataclasses (:class:`ExperimentRecord`,
:class:`TrialRecord`, :class:`MetricRecord`); metric data is kept byte for byte (PostgreSQL: BYTEA,
so a record with a NUL or an undecodable byte round-trips exactly).
"""

from __future__ import annotations

import abc
import json
import re
from pathlib import Path
from typing import Any

from ..errors import StoreError, UserError
from ..models import TrialJobDetail, TrialJobStatus, now_ms
from .store import AsyncStore, ExperimentRecord, MetricRecord, Store, TrialRecord, _experiment_from_row

__all__ = ["ExperimentStorage", "PostgresStorage", "SqliteStorage", "open_storage"]

_EXPERIMENT_FIELDS = frozenset(
    {"status", "config", "ended_ms", "manager_pid", "manager_started", "message", "name", "active_ms"}
)


class ExperimentStorage(abc.ABC):
    """Where experiments, their trials and metrics live. Raises StoreError for a missing record or a
    database problem."""

    @abc.abstractmethod
    async def create_experiment(
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
    ) -> ExperimentRecord: ...

    @abc.abstractmethod
    async def get_experiment(self, experiment_id: str) -> ExperimentRecord: ...

    @abc.abstractmethod
    async def list_experiments(self) -> list[ExperimentRecord]: ...

    @abc.abstractmethod
    async def update_experiment(self, experiment_id: str, **fields: Any) -> None: ...

    @abc.abstractmethod
    async def delete_experiment(self, experiment_id: str) -> bool:
        """Remove an experiment with its trials and metrics; False if it was not there."""

    @abc.abstractmethod
    async def insert_trial(self, trial: TrialRecord) -> None: ...

    @abc.abstractmethod
    async def update_trial(self, experiment_id: str, detail: TrialJobDetail) -> None:
        """Record the trial's latest detail (status, times, exit code, platform data)."""

    @abc.abstractmethod
    async def get_trial(self, experiment_id: str, trial_id: str) -> TrialRecord: ...

    @abc.abstractmethod
    async def list_trials(self, experiment_id: str, *, with_detail: bool = False) -> list[TrialRecord]:
        """Every trial in sequence order (then attempt)."""

    @abc.abstractmethod
    async def add_metric(
        self, experiment_id: str, trial_id: str, seq: int, *, type: str, value: float | None, data: str
    ) -> bool:
        """Store one record durably (and the trial's count and final value, in the same transaction).
        False if this (trial, seq) was stored already: a record delivered again is idempotent."""

    @abc.abstractmethod
    async def metrics(self, experiment_id: str, trial_id: str) -> list[MetricRecord]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


class SqliteStorage(ExperimentStorage):
    """The nni-ts store file behind the async interface: every call runs on the store's writer thread
    (:class:`~nni_ts.storage.store.AsyncStore`), in the order made; a write returns once committed."""

    def __init__(self, path: str | Path) -> None:
        self.store = Store(path)
        self._async = AsyncStore(self.store)

    async def create_experiment(
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
        return await self._async.create_experiment(
            experiment_id,
            name=name,
            platform=platform,
            config=config,
            working_dir=working_dir,
            status=status,
            manager_pid=manager_pid,
            manager_started=manager_started,
        )

    async def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        return await self._async.get_experiment(experiment_id)

    async def list_experiments(self) -> list[ExperimentRecord]:
        return await self._async._call(self.store.list_experiments, write=False)

    async def update_experiment(self, experiment_id: str, **fields: Any) -> None:
        await self._async.update_experiment(experiment_id, **fields)

    async def delete_experiment(self, experiment_id: str) -> bool:
        return await self._async.delete_experiment(experiment_id)

    async def insert_trial(self, trial: TrialRecord) -> None:
        await self._async.insert_trial(trial)

    async def update_trial(self, experiment_id: str, detail: TrialJobDetail) -> None:
        await self._async.update_trial(experiment_id, detail)

    async def get_trial(self, experiment_id: str, trial_id: str) -> TrialRecord:
        return await self._async.get_trial(experiment_id, trial_id)

    async def list_trials(self, experiment_id: str, *, with_detail: bool = False) -> list[TrialRecord]:
        return await self._async.list_trials(experiment_id, with_detail=with_detail)

    async def add_metric(
        self, experiment_id: str, trial_id: str, seq: int, *, type: str, value: float | None, data: str
    ) -> bool:
        return await self._async.add_metric(experiment_id, trial_id, seq, type=type, value=value, data=data)

    async def metrics(self, experiment_id: str, trial_id: str) -> list[MetricRecord]:
        return await self._async.metrics(experiment_id, trial_id)

    async def close(self) -> None:
        await self._async.aclose()


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
)
"""

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


class PostgresStorage(ExperimentStorage):
    """The records in PostgreSQL (asyncpg pool). Open with :meth:`connect`."""

    def __init__(self, pool: Any, url: str) -> None:
        self._pool = pool
        self.url = url

    @classmethod
    async def connect(cls, url: str, *, password: str | None = None, pool_size: int = 10) -> PostgresStorage:
        try:
            import asyncpg  # type: ignore[import-untyped]
        except ImportError as exc:
            raise UserError(
                "A postgresql:// storage needs the asyncpg package: pip install 'nni-ts[postgres]'."
            ) from exc

        async def no_reset(conn: Any) -> None:
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")

        redacted = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
        try:
            pool = await asyncpg.create_pool(
                url, password=password, min_size=1, max_size=pool_size, command_timeout=60, reset=no_reset
            )
            async with pool.acquire() as conn:
                await conn.execute(_PG_SCHEMA)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"Cannot open the experiment storage {redacted}: {exc}.") from exc
        return cls(pool, url)

    async def _run(self, method: str, sql: str, *args: Any) -> Any:
        import asyncpg

        try:
            return await getattr(self._pool, method)(sql, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"The experiment storage refused a statement: {exc}.") from exc

    @staticmethod
    def _experiment(row: Any) -> ExperimentRecord:
        return _experiment_from_row(tuple(row))  # the same columns, in the same order, as SQLite's

    @staticmethod
    def _trial(row: Any, *, with_detail: bool = True) -> TrialRecord:
        detail = TrialJobDetail.model_validate_json(row[16]) if with_detail and row[16] else None
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
            message=_s(row[11]),
            infrastructure_failure=bool(row[12]),
            final_value=row[13],
            final_data=_s(row[14]),
            metric_count=row[15],
            detail=detail,
        )

    async def create_experiment(
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
        inserted = await self._run(
            "execute",
            f"INSERT INTO exp_experiments ({_EXP_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,NULL,$8,$9,NULL,$10,0) "
            "ON CONFLICT (id) DO NOTHING",
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
        if inserted.endswith(" 0"):
            raise StoreError(f"An experiment with the id {experiment_id!r} already exists.")
        return await self.get_experiment(experiment_id)

    async def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        row = await self._run("fetchrow", f"SELECT {_EXP_COLS} FROM exp_experiments WHERE id = $1", experiment_id)
        if row is None:
            raise StoreError(f"There is no experiment with the id {experiment_id!r}.")
        return self._experiment(row)

    async def list_experiments(self) -> list[ExperimentRecord]:
        rows = await self._run("fetch", f"SELECT {_EXP_COLS} FROM exp_experiments ORDER BY created_ms, id")
        return [self._experiment(r) for r in rows]

    async def update_experiment(self, experiment_id: str, **fields: Any) -> None:
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
        await self._run(
            "execute",
            f"UPDATE exp_experiments SET {sets} WHERE id = ${len(fields) + 1}",
            *fields.values(),
            experiment_id,
        )

    async def delete_experiment(self, experiment_id: str) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM exp_metrics WHERE experiment_id = $1", experiment_id)
            await conn.execute("DELETE FROM exp_trials WHERE experiment_id = $1", experiment_id)
            status = await conn.execute("DELETE FROM exp_experiments WHERE id = $1", experiment_id)
        return not str(status).endswith(" 0")

    async def insert_trial(self, trial: TrialRecord) -> None:
        await self._run(
            "execute",
            f"INSERT INTO exp_trials ({_TRIAL_COLS}) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
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
            _b(trial.message),
            int(trial.infrastructure_failure),
            trial.final_value,
            _b(trial.final_data),
            trial.metric_count,
            trial.detail.model_dump_json() if trial.detail is not None else None,
        )

    async def update_trial(self, experiment_id: str, detail: TrialJobDetail) -> None:
        await self._run(
            "execute",
            "UPDATE exp_trials SET status = $1, submit_ms = $2, start_ms = $3, end_ms = $4, exit_code = $5, "
            "message = $6, infra_failure = $7, detail = $8 WHERE experiment_id = $9 AND id = $10",
            detail.status.value,
            detail.submit_time,
            detail.start_time,
            detail.end_time,
            detail.exit_code,
            _b(detail.message),
            int(detail.infrastructure_failure),
            _pg_text(detail.model_dump_json()),
            experiment_id,
            detail.id,
        )

    async def get_trial(self, experiment_id: str, trial_id: str) -> TrialRecord:
        row = await self._run(
            "fetchrow",
            f"SELECT {_TRIAL_COLS} FROM exp_trials WHERE experiment_id = $1 AND id = $2",
            experiment_id,
            trial_id,
        )
        if row is None:
            raise StoreError(f"Experiment {experiment_id} has no trial {trial_id!r}.")
        return self._trial(row)

    async def list_trials(self, experiment_id: str, *, with_detail: bool = False) -> list[TrialRecord]:
        cols = _TRIAL_COLS if with_detail else _TRIAL_COLS.replace(", detail", ", NULL")
        rows = await self._run(
            "fetch",
            f"SELECT {cols} FROM exp_trials WHERE experiment_id = $1 ORDER BY sequence_id, attempt",
            experiment_id,
        )
        return [self._trial(r, with_detail=with_detail) for r in rows]

    async def add_metric(
        self, experiment_id: str, trial_id: str, seq: int, *, type: str, value: float | None, data: str
    ) -> bool:
        import asyncpg

        try:
            async with self._pool.acquire() as conn, conn.transaction():
                status = await conn.execute(
                    "INSERT INTO exp_metrics (experiment_id, trial_id, seq, type, value, data, created_ms) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    experiment_id,
                    trial_id,
                    seq,
                    type,
                    value,
                    _b(data),
                    now_ms(),
                )
                if str(status).endswith(" 0"):
                    return False
                if type == "FINAL":
                    await conn.execute(
                        "UPDATE exp_trials SET metric_count = metric_count + 1, final_value = $1, final_data = $2 "
                        "WHERE experiment_id = $3 AND id = $4",
                        value,
                        _b(data),
                        experiment_id,
                        trial_id,
                    )
                else:
                    await conn.execute(
                        "UPDATE exp_trials SET metric_count = metric_count + 1 WHERE experiment_id = $1 AND id = $2",
                        experiment_id,
                        trial_id,
                    )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"Writing a metric to the experiment storage failed: {exc}.") from exc
        return True

    async def metrics(self, experiment_id: str, trial_id: str) -> list[MetricRecord]:
        rows = await self._run(
            "fetch",
            "SELECT trial_id, seq, type, value, data, created_ms FROM exp_metrics "
            "WHERE experiment_id = $1 AND trial_id = $2 ORDER BY seq",
            experiment_id,
            trial_id,
        )
        return [MetricRecord(r[0], r[1], r[2], r[3], _s(r[4]) or "", r[5]) for r in rows]

    async def close(self) -> None:
        await self._pool.close()


async def open_storage(url: str, *, password: str | None = None) -> ExperimentStorage:
    """``sqlite:///PATH`` (the nni-ts store file) or ``postgresql://USER@HOST:PORT/DB``."""
    if url.startswith("sqlite:///"):
        return SqliteStorage(Path(url[len("sqlite:///") :]).expanduser())
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresStorage.connect(url, password=password)
    raise UserError(
        f"Unsupported storage URL {url.split('://')[0]!r}://...; expected sqlite:///PATH or postgresql://..."
    )
