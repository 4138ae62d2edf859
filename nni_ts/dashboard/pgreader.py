"""The dashboard's reader of a PostgreSQL experiment service: the tables ``PostgresStorage`` writes
(``exp_experiments``, ``exp_trials``, ``exp_metrics``), read with asyncpg on the service's pool.

It gives the same answers as the SQLite :class:`~nni_ts.dashboard.queries.Reader`: the filters and
sort keys are parsed by the same code (:class:`~nni_ts.dashboard.queries.TrialQuery`), only the SQL
fragments differ (:class:`PostgresDialect`), and the answers are assembled by the same functions.
Where the databases differ, the SQL here follows SQLite's rules: a JSON value compares as SQLite
compares ``json_extract``'s result (numbers before texts, texts byte by byte), and a NaN final value
counts as no value (SQLite stores NaN as NULL).

Change detection (the live event stream): SQLite's ``PRAGMA data_version`` changes when another
connection committed. The equivalent here is the transaction snapshot, ``txid_current_snapshot()``:
every commit either removes its id from the snapshot's running list or moves its upper bound, so
equal snapshots mean nothing was committed in between (one trivial statement, no table read).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from ..storage.store import MetricRecord
from .queries import (
    _OPS,
    _PLAIN_FIELDS,
    EXP_COLS,
    DashboardReader,
    Dialect,
    TrialQuery,
    _decode_value,
    _field_sql,
    _finite,
    chart_json,
    intermediate_json_from,
    intermediate_stride,
    overview_dict,
    summary_dict,
    trial_row,
)

if TYPE_CHECKING:
    from ..service.db import Database

__all__ = ["PostgresDialect", "PostgresReader"]

_NUMBER = "'NaN'::float8"
_TRIAL_COLS = (
    "id, sequence_id, parameter_id, attempt, parameters, status, submit_ms, start_ms, end_ms, exit_code, message, "
    f"NULLIF(final_value, {_NUMBER}), final_data, metric_count"
)
_TEXT_FIELDS = ("id", "status")


def _text(data: Any) -> str | None:
    """A BYTEA column (messages, records) as the SQLite store's text."""
    return None if data is None else bytes(data).decode("utf-8", errors="surrogateescape")


def _trial(row: tuple[Any, ...]) -> dict[str, Any]:
    r = list(row)
    r[10], r[12] = _text(r[10]), _text(r[12])
    return trial_row(tuple(r))


class PostgresDialect(Dialect):
    """The trials table's filter and sort SQL for PostgreSQL (``$n`` arguments, keys passed as arguments)."""

    name = "postgresql"
    trials = "exp_trials"

    def arg(self, args: list[Any], value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    def field(self, field: str, args: list[Any]) -> tuple[str, bool]:
        _field_sql(field)  # the same checks and messages as SQLite's
        if field == "final":
            return f"NULLIF(final_value, {_NUMBER})", False
        if field in _PLAIN_FIELDS:
            return _PLAIN_FIELDS[field], False
        if field.startswith("param."):
            return f"(parameters::jsonb -> {self.arg(args, field[6:])}::text)", True
        key = self.arg(args, field[7:])
        return f"((convert_from(final_data, 'UTF8')::jsonb ->> 'value')::jsonb -> {key}::text)", True

    def compare(self, field: str, expr: str, is_json: bool, op: str, value: Any, args: list[Any]) -> str:
        sql = _OPS[op]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        # SQLite orders every number before every text: what a comparison across the two gives.
        greater = op in (("gt", "ge", "ne") if number else ("lt", "le", "ne"))
        across = "TRUE" if greater else "FALSE"
        if not is_json:
            if field in _TEXT_FIELDS:  # a TEXT column: SQLite compares the value as text
                return f'{expr} COLLATE "C" {sql} {self.arg(args, str(value))}::text'
            if number:
                return f"({expr})::float8 {sql} {self.arg(args, float(value))}::float8"
            return f"(CASE WHEN ({expr}) IS NOT NULL THEN {across} END)"
        kind = f"jsonb_typeof({expr})"
        if number:
            num = (
                f"(CASE {kind} WHEN 'number' THEN ({expr} #>> '{{}}')::float8 "
                f"WHEN 'boolean' THEN (CASE WHEN {expr} = 'true'::jsonb THEN 1 ELSE 0 END)::float8 END)"
            )
            p = self.arg(args, float(value))
            return (
                f"(CASE WHEN {kind} IN ('number', 'boolean') THEN {num} {sql} {p}::float8 "
                f"WHEN {kind} = 'string' THEN {across} END)"
            )
        p = self.arg(args, str(value))
        return (
            f"(CASE WHEN {kind} = 'string' THEN ({expr} #>> '{{}}') COLLATE \"C\" {sql} {p}::text "
            f"WHEN {kind} IN ('number', 'boolean') THEN {across} END)"
        )

    def between(self, field: str, expr: str, is_json: bool, low: Any, high: Any, args: list[Any]) -> str:
        low_sql = self.compare(field, expr, is_json, "ge", low, args)
        return f"({low_sql} AND {self.compare(field, expr, is_json, 'le', high, args)})"

    def within(self, field: str, expr: str, is_json: bool, values: list[Any], args: list[Any]) -> str:
        return "(" + " OR ".join(self.compare(field, expr, is_json, "eq", v, args) for v in values) + ")"

    def order(self, field: str, expr: str, is_json: bool, direction: str) -> str:
        if not is_json:
            collate = ' COLLATE "C"' if field in _TEXT_FIELDS else ""
            return f"ORDER BY ({expr}) IS NULL, {expr}{collate} {direction}, sequence_id, attempt"
        kind = f"jsonb_typeof({expr})"
        num = (
            f"(CASE {kind} WHEN 'number' THEN ({expr} #>> '{{}}')::float8 "
            f"WHEN 'boolean' THEN (CASE WHEN {expr} = 'true'::jsonb THEN 1 ELSE 0 END)::float8 END)"
        )
        return (
            f"ORDER BY (CASE WHEN {kind} IN ('number', 'boolean', 'string') THEN 0 ELSE 1 END), "
            f"(CASE WHEN {kind} = 'string' THEN 1 ELSE 0 END) {direction}, {num} {direction}, "
            f"(CASE WHEN {kind} = 'string' THEN {expr} #>> '{{}}' END) COLLATE \"C\" {direction}, sequence_id, attempt"
        )


POSTGRES = PostgresDialect()


class PostgresReader(DashboardReader):
    """The dashboard's reads of a PostgreSQL service (``db``: the service database, whose pool it uses;
    every statement is awaited, none blocks the event loop). The service closes ``db``. ``db`` may be
    a function that returns it (a service mounts its dashboard before it opens its database)."""

    def __init__(self, db: Database | Callable[[], Database]) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        return self._db() if callable(self._db) else self._db

    async def data_version(self) -> Hashable:
        row = await self.db.fetchrow("SELECT txid_current_snapshot()::text")
        return str(row[0]) if row else ""

    async def experiment_ids(self) -> list[str]:
        return [str(r[0]) for r in await self.db.fetch("SELECT id FROM exp_experiments ORDER BY created_ms, id")]

    async def _exp(self, experiment_id: str) -> tuple[Any, ...]:
        row = await self.db.fetchrow(f"SELECT {EXP_COLS} FROM exp_experiments WHERE id = $1", experiment_id)
        if row is None:
            raise LookupError(experiment_id)
        return row

    async def _counts(self, experiment_id: str) -> dict[str, int]:
        rows = await self.db.fetch(
            "SELECT status, COUNT(*) FROM exp_trials WHERE experiment_id = $1 GROUP BY status", experiment_id
        )
        return {str(r[0]): int(r[1]) for r in rows}

    async def _best(self, experiment_id: str, mode: str) -> dict[str, Any] | None:
        from ..experiment.results import best_trial_sql

        where, direction = best_trial_sql(mode)
        row = await self.db.fetchrow(
            f"SELECT {_TRIAL_COLS} FROM exp_trials WHERE experiment_id = $1 AND {where} "
            f"AND final_value <> {_NUMBER} ORDER BY final_value {direction}, sequence_id LIMIT 1",
            experiment_id,
        )
        return _trial(row) if row else None

    async def _summary(self, row: tuple[Any, ...]) -> dict[str, Any]:
        from ..experiment.results import optimize_mode

        mode = optimize_mode(json.loads(row[4]))
        return summary_dict(row, await self._counts(row[0]), await self._best(row[0], mode))

    async def summary(self, experiment_id: str) -> dict[str, Any]:
        return await self._summary(await self._exp(experiment_id))

    async def summaries(self, allowed: set[str] | None) -> list[dict[str, Any]]:
        """Every experiment's summary in at most four statements, however many experiments there are
        (the experiments, their trial counts, the best trial of those that minimize and of those that
        maximize), where :meth:`summary` one by one would be two round trips per experiment."""
        from ..experiment.results import best_trial_sql, optimize_mode

        if allowed is None:
            rows = await self.db.fetch(f"SELECT {EXP_COLS} FROM exp_experiments ORDER BY created_ms, id")
        elif not allowed:
            return []
        else:
            rows = await self.db.fetch(
                f"SELECT {EXP_COLS} FROM exp_experiments WHERE id = ANY($1::text[]) ORDER BY created_ms, id",
                sorted(allowed),
            )
        if not rows:
            return []
        ids = [r[0] for r in rows]
        counts: dict[str, dict[str, int]] = {i: {} for i in ids}
        for eid, status, n in await self.db.fetch(
            "SELECT experiment_id, status, COUNT(*) FROM exp_trials WHERE experiment_id = ANY($1::text[]) "
            "GROUP BY experiment_id, status",
            ids,
        ):
            counts[eid][str(status)] = int(n)
        modes = {r[0]: optimize_mode(json.loads(r[4])) for r in rows}
        best: dict[str, dict[str, Any]] = {}
        for mode in sorted(set(modes.values())):
            where, direction = best_trial_sql(mode)
            for row in await self.db.fetch(
                f"SELECT DISTINCT ON (experiment_id) experiment_id, {_TRIAL_COLS} FROM exp_trials "
                f"WHERE experiment_id = ANY($1::text[]) AND {where} AND final_value <> {_NUMBER} "
                f"ORDER BY experiment_id, final_value {direction}, sequence_id",
                [i for i in ids if modes[i] == mode],
            ):
                best[row[0]] = _trial(row[1:])
        return [summary_dict(r, counts[r[0]], best.get(r[0])) for r in rows]

    async def overview(self, experiment_id: str) -> dict[str, Any]:
        row = await self._exp(experiment_id)
        summary = await self._summary(row)
        submitted = await self.db.fetchrow(
            "SELECT COUNT(DISTINCT parameter_id) FROM exp_trials WHERE experiment_id = $1", experiment_id
        )
        series = await self.db.fetch(
            "SELECT sequence_id, final_value FROM exp_trials WHERE experiment_id = $1 AND final_value IS NOT NULL "
            f"AND final_value <> {_NUMBER} ORDER BY sequence_id, attempt",
            experiment_id,
        )
        return overview_dict(
            row,
            summary,
            await self._best(experiment_id, summary["optimizeMode"]),
            int(submitted[0]) if submitted else 0,
            [[r[0] for r in series], [_finite(r[1]) for r in series]],
        )

    async def trials(self, experiment_id: str, query: TrialQuery) -> dict[str, Any]:
        where, args = query.where(POSTGRES, [experiment_id])
        total = await self.db.fetchrow(f"SELECT COUNT(*) FROM exp_trials WHERE experiment_id = $1{where}", *args)
        where, args = query.where(POSTGRES, [experiment_id])
        order = query.order(POSTGRES, args)
        page = f"LIMIT {POSTGRES.arg(args, query.limit)} OFFSET {POSTGRES.arg(args, query.offset)}"
        rows = await self.db.fetch(
            f"SELECT {_TRIAL_COLS} FROM exp_trials WHERE experiment_id = $1{where} {order} {page}", *args
        )
        return {
            "total": int(total[0]) if total else 0,
            "offset": query.offset,
            "limit": query.limit,
            "trials": [_trial(r) for r in rows],
        }

    async def trial(self, experiment_id: str, trial_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow(
            f"SELECT {_TRIAL_COLS} FROM exp_trials WHERE experiment_id = $1 AND id = $2", experiment_id, trial_id
        )
        if row is None:
            return None
        out = _trial(row)
        out["metrics"] = await self.metrics(experiment_id, trial_id)
        return out

    async def metrics(self, experiment_id: str, trial_id: str, *, last: int | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT seq, type, value, data, created_ms FROM exp_metrics WHERE experiment_id = $1 AND trial_id = $2 "
            "ORDER BY seq"
        )
        if last is None:
            rows = await self.db.fetch(sql, experiment_id, trial_id)
        else:
            rows = (await self.db.fetch(sql + " DESC LIMIT $3", experiment_id, trial_id, last))[::-1]
        return [
            {"seq": r[0], "type": r[1], "scalar": _finite(r[2]), "value": _decode_value(_text(r[3])), "time": r[4]}
            for r in rows
        ]

    async def chart_data_json(self, experiment_id: str) -> bytes:
        rows = await self.db.fetch(
            f"SELECT id, sequence_id, status, NULLIF(final_value, {_NUMBER}), start_ms, end_ms, metric_count, "
            "parameters FROM exp_trials WHERE experiment_id = $1 ORDER BY sequence_id, attempt",
            experiment_id,
        )
        return await self.cpu(chart_json, rows)

    async def intermediate_json(self, experiment_id: str, budget: int = 300_000) -> bytes:
        total = await self.db.fetchrow(
            "SELECT COALESCE(SUM(metric_count), 0) FROM exp_trials WHERE experiment_id = $1", experiment_id
        )
        stride = intermediate_stride(int(total[0]) if total else 0, budget)
        rows = await self.db.fetch(
            f"SELECT trial_id, NULLIF(value, {_NUMBER}) FROM exp_metrics WHERE experiment_id = $1 "
            "AND type = 'PERIODICAL' AND seq % $2 = 0 ORDER BY trial_id COLLATE \"C\", seq",
            experiment_id,
            stride,
        )
        return await self.cpu(intermediate_json_from, stride, rows)

    async def export(self, experiment_id: str, fmt: str) -> str:
        from ..cli.exports import export_text
        from ..storage.base import PostgresStorage

        trial_rows = await self.db.fetch(
            "SELECT experiment_id, id, sequence_id, parameter_id, attempt, parameters, status, submit_ms, start_ms, "
            f"end_ms, exit_code, message, infra_failure, NULLIF(final_value, {_NUMBER}), final_data, metric_count, "
            "NULL FROM exp_trials WHERE experiment_id = $1 ORDER BY sequence_id, attempt",
            experiment_id,
        )
        metric_rows = await self.db.fetch(
            "SELECT trial_id, seq, type, value, data, created_ms FROM exp_metrics WHERE experiment_id = $1 "
            'ORDER BY trial_id COLLATE "C", seq',
            experiment_id,
        )

        def build() -> str:
            trials = [PostgresStorage._trial(r, with_detail=False) for r in trial_rows]
            metrics: dict[str, list[Any]] = {}
            for r in metric_rows:
                metrics.setdefault(r[0], []).append(MetricRecord(r[0], r[1], r[2], r[3], _text(r[4]) or "", r[5]))
            return export_text(trials, metrics, fmt="nni-ts", kind=fmt, intermediate=True)

        return await self.cpu(build)

    async def trial_states(self, experiment_id: str) -> dict[str, tuple[Any, ...]]:
        rows = await self.db.fetch(
            f"SELECT id, status, metric_count, NULLIF(final_value, {_NUMBER}), start_ms, end_ms, message "
            "FROM exp_trials WHERE experiment_id = $1",
            experiment_id,
        )
        return {r[0]: tuple(r[1:]) for r in rows}

    async def trials_by_id(self, experiment_id: str, ids: list[str]) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            f"SELECT {_TRIAL_COLS} FROM exp_trials WHERE experiment_id = $1 AND id = ANY($2::text[]) "
            "ORDER BY sequence_id, attempt",
            experiment_id,
            ids,
        )
        return [_trial(r) for r in rows]

    async def experiment_state(self, experiment_id: str) -> tuple[Any, ...] | None:
        return await self.db.fetchrow(
            "SELECT status, message, config, ended_ms FROM exp_experiments WHERE id = $1", experiment_id
        )

    async def working_dir(self, experiment_id: str) -> str | None:
        row = await self.db.fetchrow("SELECT working_dir FROM exp_experiments WHERE id = $1", experiment_id)
        return str(row[0]) if row else None

    async def running_ids(self) -> list[str]:
        rows = await self.db.fetch("SELECT id FROM exp_experiments WHERE status = 'RUNNING' ORDER BY created_ms DESC")
        return [str(r[0]) for r in rows]
