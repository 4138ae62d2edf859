"""What the dashboard reads from the experiment store: plain SQL, read-only (the dashboard changes
experiments only through their loop).

:class:`DashboardReader` is the one interface the dashboard awaits. :class:`SqliteReader` runs the
synchronous :class:`Reader` (a read-only connection to the store file) on a thread of its own, never on
the event loop; :class:`~nni_ts.dashboard.pgreader.PostgresReader` reads a PostgreSQL service's tables
with asyncpg. The filter and sort parser and :class:`TrialQuery` are shared: a :class:`Dialect` gives
each database's SQL fragments, and the answers are assembled by the same functions.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import functools
import json
import math
import re
import sqlite3
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..config.errors import redact
from ..errors import StoreError, UserError
from ..experiment.results import best_trial_sql, optimize_mode

__all__ = ["DashboardReader", "Dialect", "Filter", "Reader", "SqliteReader", "TrialQuery", "parse_filter"]

T = TypeVar("T")

TERMINAL = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")
STATUSES = ("WAITING", "RUNNING", "UNKNOWN", *TERMINAL)

_TRIAL_COLS = (
    "id, sequence_id, parameter_id, attempt, parameters, status, submit_ms, start_ms, end_ms, exit_code, message, "
    "final_value, final_data, metric_count"
)
_OPS = {"eq": "=", "ne": "!=", "lt": "<", "gt": ">", "le": "<=", "ge": ">=", "between": "BETWEEN", "in": "IN"}
_FILTER = re.compile(r"^(?P<field>.+?):(?P<op>eq|ne|lt|gt|le|ge|between|in):(?P<value>.*)$", re.DOTALL)
_PLAIN_FIELDS = {
    "seq": "sequence_id",
    "id": "id",
    "status": "status",
    "final": "final_value",
    "start": "start_ms",
    "end": "end_ms",
    "metrics": "metric_count",
    "duration": "(end_ms - start_ms)",
}


def _decode_value(data: str | None) -> Any:
    """The value a trial reported in a record (NNI encodes it as JSON text inside the record)."""
    if not data:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return None
    value = record.get("value") if isinstance(record, dict) else None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return _finite(value)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def trial_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """A trial as the API shows it (camelCase, the final value decoded)."""
    return {
        "id": row[0],
        "seq": row[1],
        "parameterId": row[2],
        "attempt": row[3],
        "parameters": json.loads(row[4]),
        "status": row[5],
        "submit": row[6],
        "start": row[7],
        "end": row[8],
        "exitCode": row[9],
        "message": row[10],
        "finalValue": _finite(row[11]),
        "final": _decode_value(row[12]),
        "metricCount": row[13],
    }


@dataclass(frozen=True)
class Filter:
    """One condition of the trials table: ``field op value``; field is a column, ``param.X`` or ``metric.X``."""

    field: str
    op: str
    value: str


def parse_filter(text: str) -> Filter:
    """``param.lr:gt:0.01``, ``status:in:RUNNING,WAITING``, ``metric.acc:between:0.5,0.9``."""
    m = _FILTER.match(text)
    if m is None:
        raise UserError(
            f"The filter {text!r} is not of the form FIELD:OP:VALUE with OP one of {', '.join(_OPS)} "
            "(for example param.lr:gt:0.01 or status:in:RUNNING,WAITING)."
        )
    return Filter(m["field"], m["op"], m["value"])


def _json_key(name: str, where: str) -> str:
    if not name or '"' in name or "\\" in name:
        raise UserError(f"The {where} name {name!r} cannot be used in a filter or sort (empty, or has a quote).")
    return f'$."{name}"'


def _field_sql(field: str) -> tuple[str, bool]:
    """The SQL expression of a field and whether it holds JSON values (parameters, metric keys)."""
    if field in _PLAIN_FIELDS:
        return _PLAIN_FIELDS[field], False
    if field.startswith("param."):
        return f"json_extract(parameters, '{_json_key(field[6:], 'parameter')}')", True
    if field.startswith("metric."):
        key = _json_key(field[7:], "metric key")
        return f"json_extract(json_extract(final_data, '$.value'), '{key}')", True
    raise UserError(
        f"Unknown field {field!r}: use one of {', '.join(_PLAIN_FIELDS)}, param.NAME or metric.KEY (a key of the "
        "final metric)."
    )


def _literal(text: str) -> Any:
    """A filter value: a number if it reads as one, else the text."""
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


class Dialect:
    """The SQL of one database for what the trials table filters and sorts on: the parser above and
    :class:`TrialQuery` are shared, only these fragments differ. ``args`` collects the arguments in
    placeholder order; :meth:`arg` adds one and returns its placeholder."""

    name = "sqlite"
    trials = "trials"

    def arg(self, args: list[Any], value: Any) -> str:
        args.append(value)
        return "?"

    def field(self, field: str, args: list[Any]) -> tuple[str, bool]:
        """The SQL expression of a field and whether it holds JSON values (parameters, metric keys)."""
        return _field_sql(field)

    def compare(self, field: str, expr: str, is_json: bool, op: str, value: Any, args: list[Any]) -> str:
        return f"{expr} {_OPS[op]} {self.arg(args, value)}"

    def between(self, field: str, expr: str, is_json: bool, low: Any, high: Any, args: list[Any]) -> str:
        return f"{expr} BETWEEN {self.arg(args, low)} AND {self.arg(args, high)}"

    def within(self, field: str, expr: str, is_json: bool, values: list[Any], args: list[Any]) -> str:
        return f"{expr} IN ({','.join(self.arg(args, v) for v in values)})"

    def order(self, field: str, expr: str, is_json: bool, direction: str) -> str:
        return f"ORDER BY ({expr}) IS NULL, {expr} {direction}, sequence_id, attempt"


SQLITE = Dialect()


@dataclass
class TrialQuery:
    """Sort, filter and page of the trials table (all done in SQL, by a :class:`Dialect`)."""

    filters: tuple[Filter, ...] = ()
    sort: str = "seq"
    descending: bool = False
    offset: int = 0
    limit: int = 50

    def where(self, dialect: Dialect = SQLITE, args: list[Any] | None = None) -> tuple[str, list[Any]]:
        """`` AND ...`` conditions and their arguments (appended to ``args``, which may hold earlier ones)."""
        clauses: list[str] = []
        args = [] if args is None else args
        for f in self.filters:
            expr, is_json = dialect.field(f.field, args)
            if f.op in ("between", "in"):
                parts = [p for p in f.value.split(",")]
                if f.op == "between":
                    if len(parts) != 2:
                        raise UserError(f"The filter on {f.field} needs two values for between: LOW,HIGH.")
                    clauses.append(
                        dialect.between(f.field, expr, is_json, _literal(parts[0]), _literal(parts[1]), args)
                    )
                else:
                    values = [p if f.field == "status" else _literal(p) for p in parts]
                    clauses.append(dialect.within(f.field, expr, is_json, values, args))
            else:
                value = f.value if f.field in ("status", "id") else _literal(f.value)
                clauses.append(dialect.compare(f.field, expr, is_json, f.op, value, args))
        return (" AND " + " AND ".join(clauses)) if clauses else "", args

    def order(self, dialect: Dialect = SQLITE, args: list[Any] | None = None) -> str:
        expr, is_json = dialect.field(self.sort, [] if args is None else args)
        return dialect.order(self.sort, expr, is_json, "DESC" if self.descending else "ASC")


#: The columns of an experiment row the readers read (both databases name them alike).
EXP_COLS = "id, name, platform, status, config, created_ms, updated_ms, ended_ms, message, active_ms"


def summary_dict(row: tuple[Any, ...], counts: dict[str, int], best: dict[str, Any] | None) -> dict[str, Any]:
    """An experiment as the experiments list shows it, from its row (:data:`EXP_COLS`), its trial
    counts by status and its best trial (by the one ``optimize_mode`` of nni_ts.experiment.results)."""
    config = json.loads(row[4])
    return {
        "id": row[0],
        "name": row[1],
        "platform": row[2],
        "status": row[3],
        "created": row[5],
        "updated": row[6],
        "ended": row[7],
        "message": row[8],
        "activeMs": row[9],
        "optimizeMode": optimize_mode(config),
        "counts": counts,
        "trialCount": sum(counts.values()),
        "bestValue": best["finalValue"] if best else None,
        "maxTrialNumber": config.get("maxTrialNumber"),
        "maxExperimentDuration": config.get("maxExperimentDuration"),
        "trialConcurrency": config.get("trialConcurrency"),
    }


def overview_dict(
    row: tuple[Any, ...],
    summary: dict[str, Any],
    best: dict[str, Any] | None,
    submitted: int,
    series: list[list[Any]],
) -> dict[str, Any]:
    """The overview page's answer: the summary with the best trial, the masked config, the tuner."""
    config = json.loads(row[4])
    out = dict(summary)
    out["best"] = best
    out["config"] = redact(config)
    out["searchSpace"] = redact(config.get("searchSpace"))
    algo = config.get("tuner") or config.get("advisor") or {}
    out["tuner"] = algo.get("name") or algo.get("className")
    assessor = config.get("assessor") or {}
    out["assessor"] = assessor.get("name") or assessor.get("className")
    out["submitted"] = submitted
    out["series"] = series
    return out


def chart_json(rows: list[tuple[Any, ...]]) -> bytes:
    """The charts' data from ``(id, seq, status, final, start, end, metric_count, parameters JSON)`` rows
    in sequence order: what :meth:`Reader.chart_data_json` has SQLite build, built in Python."""
    first: dict[str, int] = {}
    parsed = []
    for r in rows:
        params = json.loads(r[7])
        params = params if isinstance(params, dict) else {}
        parsed.append(params)
        for key in params:
            if key not in first or r[1] < first[key]:
                first[key] = r[1]
    names = sorted(first, key=lambda k: (first[k], k))
    usable = [n for n in names if '"' not in n and "\\" not in n]
    out: dict[str, Any] = {
        "id": [r[0] for r in rows],
        "seq": [r[1] for r in rows],
        "status": [r[2] for r in rows],
        "final": [_finite(r[3]) for r in rows],
        "start": [r[4] for r in rows],
        "end": [r[5] for r in rows],
        "metricCount": [r[6] for r in rows],
        "paramNames": usable,
        "params": [[_finite(p.get(n)) for p in parsed] for n in usable],
    }
    return json.dumps(out, separators=(",", ":")).encode()


def intermediate_stride(total: int, budget: int) -> int:
    """Every S-th record of each trial is sent above ``budget`` points (see Reader.intermediate_json)."""
    return max(1, -(-int(total) // budget))


def intermediate_json_from(stride: int, rows: list[tuple[Any, ...]]) -> bytes:
    """The intermediate curves from ``(trial_id, value)`` rows in (trial id, seq) order, the values
    rounded to 6 significant digits as SQLite's ``printf('%.6g')`` does (a missing value is 0)."""
    ids: list[str] = []
    values: list[list[Any]] = []
    for trial_id, value in rows:
        if not ids or ids[-1] != trial_id:
            ids.append(trial_id)
            values.append([])
        number = 0.0 if value is None else float(f"{value:.6g}")
        values[-1].append(_finite(number))
    return json.dumps({"stride": stride, "trials": ids, "values": values}, separators=(",", ":")).encode()


class Reader:
    """The dashboard's read-only connection to the store (used from one thread at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            if not self.path.exists():
                raise StoreError(f"There is no nni-ts database at {self.path}.")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=10000")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def data_version(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    # ------------------------------------------------------------------ experiments

    _EXP_COLS = EXP_COLS

    def experiment_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM experiments ORDER BY created_ms")]

    def _exp(self, experiment_id: str) -> tuple[Any, ...]:
        row = self.db.execute(f"SELECT {self._EXP_COLS} FROM experiments WHERE id=?", (experiment_id,)).fetchone()
        if row is None:
            raise LookupError(experiment_id)
        return tuple(row)

    def counts(self, experiment_id: str) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT status, COUNT(*) FROM trials WHERE experiment_id=? GROUP BY status", (experiment_id,)
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def best(self, experiment_id: str, mode: str) -> dict[str, Any] | None:
        """The best trial by the one rule of nni_ts.experiment.results (as the API and the CLI choose it)."""
        where, direction = best_trial_sql(mode)
        row = self.db.execute(
            f"SELECT {_TRIAL_COLS} FROM trials WHERE experiment_id=? AND {where} "
            f"ORDER BY final_value {direction}, sequence_id LIMIT 1",
            (experiment_id,),
        ).fetchone()
        return trial_row(row) if row else None

    def summary(self, experiment_id: str) -> dict[str, Any]:
        """One experiment as the experiments list shows it."""
        row = self._exp(experiment_id)
        mode = optimize_mode(json.loads(row[4]))
        return summary_dict(row, self.counts(experiment_id), self.best(experiment_id, mode))

    def summaries(self, allowed: set[str] | None) -> list[dict[str, Any]]:
        """The summaries of every experiment (of those in ``allowed``, unless None), oldest first."""
        out = []
        for eid in self.experiment_ids():
            if allowed is None or eid in allowed:
                try:
                    out.append(self.summary(eid))
                except LookupError:
                    continue
        return out

    def overview(self, experiment_id: str) -> dict[str, Any]:
        out = self.summary(experiment_id)
        submitted = self.db.execute(
            "SELECT COUNT(DISTINCT parameter_id) FROM trials WHERE experiment_id=?", (experiment_id,)
        ).fetchone()[0]
        return overview_dict(
            self._exp(experiment_id),
            out,
            self.best(experiment_id, out["optimizeMode"]),
            submitted,
            self.final_series(experiment_id),
        )

    def working_dir(self, experiment_id: str) -> str | None:
        row = self.db.execute("SELECT working_dir FROM experiments WHERE id=?", (experiment_id,)).fetchone()
        return str(row[0]) if row else None

    def running_ids(self) -> list[str]:
        """The running experiments, newest first."""
        rows = self.db.execute("SELECT id FROM experiments WHERE status='RUNNING' ORDER BY created_ms DESC")
        return [str(r[0]) for r in rows]

    def final_series(self, experiment_id: str) -> list[list[Any]]:
        """``[[seq...], [final...]]`` of the trials with a final value, in sequence order."""
        rows = self.db.execute(
            "SELECT sequence_id, final_value FROM trials WHERE experiment_id=? AND final_value IS NOT NULL "
            "ORDER BY sequence_id, attempt",
            (experiment_id,),
        ).fetchall()
        return [[r[0] for r in rows], [_finite(r[1]) for r in rows]]

    # ------------------------------------------------------------------ trials

    def trials(self, experiment_id: str, query: TrialQuery) -> dict[str, Any]:
        where, args = query.where()
        order = query.order()
        try:
            total = self.db.execute(
                f"SELECT COUNT(*) FROM trials WHERE experiment_id=?{where}", (experiment_id, *args)
            ).fetchone()[0]
            rows = self.db.execute(
                f"SELECT {_TRIAL_COLS} FROM trials WHERE experiment_id=?{where} {order} LIMIT ? OFFSET ?",
                (experiment_id, *args, query.limit, query.offset),
            ).fetchall()
        except sqlite3.OperationalError as exc:
            raise UserError(f"The trials query could not be run: {exc}.") from None
        return {
            "total": total,
            "offset": query.offset,
            "limit": query.limit,
            "trials": [trial_row(r) for r in rows],
        }

    def trial(self, experiment_id: str, trial_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            f"SELECT {_TRIAL_COLS} FROM trials WHERE experiment_id=? AND id=?", (experiment_id, trial_id)
        ).fetchone()
        if row is None:
            return None
        out = trial_row(row)
        out["metrics"] = self.metrics(experiment_id, trial_id)
        return out

    def metrics(self, experiment_id: str, trial_id: str, *, last: int | None = None) -> list[dict[str, Any]]:
        if last is None:
            rows = self.db.execute(
                "SELECT seq, type, value, data, created_ms FROM metrics WHERE experiment_id=? AND trial_id=? "
                "ORDER BY seq",
                (experiment_id, trial_id),
            ).fetchall()
        else:
            rows = self.db.execute(
                "SELECT seq, type, value, data, created_ms FROM metrics WHERE experiment_id=? AND trial_id=? "
                "ORDER BY seq DESC LIMIT ?",
                (experiment_id, trial_id, last),
            ).fetchall()[::-1]
        return [
            {"seq": r[0], "type": r[1], "scalar": _finite(r[2]), "value": _decode_value(r[3]), "time": r[4]}
            for r in rows
        ]

    def chart_data_json(self, experiment_id: str) -> bytes:
        """Every trial, compact, for the charts: JSON columns of equal length, built by SQLite
        (``id seq status final start end metricCount`` and ``params``, one column per parameter)."""
        names = [
            r[0]
            for r in self.db.execute(
                "SELECT j.key, MIN(t.sequence_id) AS first FROM trials AS t, json_each(t.parameters) AS j "
                "WHERE t.experiment_id=? GROUP BY j.key ORDER BY first, j.key",
                (experiment_id,),
            )
        ]
        usable = [n for n in names if '"' not in n and "\\" not in n]
        columns = [
            "json_group_array(id)",
            "json_group_array(sequence_id)",
            "json_group_array(status)",
            "json_group_array(final_value)",
            "json_group_array(start_ms)",
            "json_group_array(end_ms)",
            "json_group_array(metric_count)",
            *(f"json_group_array(json_extract(parameters, '$.\"{n}\"'))" for n in usable),
        ]
        row = self.db.execute(
            f"SELECT {', '.join(columns)} FROM (SELECT * FROM trials WHERE experiment_id=? "
            "ORDER BY sequence_id, attempt)",
            (experiment_id,),
        ).fetchone()
        keys = ("id", "seq", "status", "final", "start", "end", "metricCount")
        head = ",".join(f'"{k}":{v}' for k, v in zip(keys, row[:7], strict=True))
        return f'{{{head},"paramNames":{json.dumps(usable)},"params":[{",".join(row[7:])}]}}'.encode()

    def intermediate_json(self, experiment_id: str, budget: int = 300_000) -> bytes:
        """The scalar of every PERIODICAL record, per trial, as JSON bytes built by SQLite:
        ``{"stride": S, "trials": [id...], "values": [[...]...]}``.

        Above ``budget`` points in all, every S-th record of each trial is sent (S is the smallest
        stride that fits the budget; the page says so), so 10,000 trials x 100 records stay drawable.
        Values are rounded to 6 significant digits (a chart needs no more).
        """
        total = self.db.execute(
            "SELECT COALESCE(SUM(metric_count), 0) FROM trials WHERE experiment_id=?", (experiment_id,)
        ).fetchone()[0]
        stride = intermediate_stride(total, budget)
        rows = self.db.execute(
            "SELECT trial_id, json_group_array(CAST(printf('%.6g', value) AS REAL)) FROM "
            "(SELECT trial_id, seq, value FROM metrics WHERE experiment_id=? AND type='PERIODICAL' "
            "AND seq % ? = 0 ORDER BY trial_id, seq) GROUP BY trial_id ORDER BY trial_id",
            (experiment_id, stride),
        ).fetchall()
        ids = json.dumps([r[0] for r in rows])
        values = ",".join(r[1] for r in rows)
        return f'{{"stride":{stride},"trials":{ids},"values":[{values}]}}'.encode()

    def export(self, experiment_id: str, fmt: str) -> str:
        """Exactly what ``nni-ts experiment export --format FMT --with-metrics`` writes (every trial,
        every key of its results, every intermediate record)."""
        from ..cli.exports import export_text
        from ..storage.store import Store

        with Store(self.path, readonly=True) as store:
            trials = store.list_trials(experiment_id)
            metrics: dict[str, list[Any]] = {}
            for m in store.iter_metrics(experiment_id):
                metrics.setdefault(m.trial_id, []).append(m)
        return export_text(trials, metrics, fmt="nni-ts", kind=fmt, intermediate=True)

    # ------------------------------------------------------------------ what changed (live updates)

    def trial_states(self, experiment_id: str) -> dict[str, tuple[Any, ...]]:
        """A light signature of every trial, to find what changed since the last look."""
        rows = self.db.execute(
            "SELECT id, status, metric_count, final_value, start_ms, end_ms, message FROM trials WHERE experiment_id=?",
            (experiment_id,),
        )
        return {r[0]: tuple(r[1:]) for r in rows}

    def trials_by_id(self, experiment_id: str, ids: list[str]) -> list[dict[str, Any]]:
        out = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows = self.db.execute(
                f"SELECT {_TRIAL_COLS} FROM trials WHERE experiment_id=? AND id IN ({','.join('?' * len(chunk))}) "
                "ORDER BY sequence_id, attempt",
                (experiment_id, *chunk),
            ).fetchall()
            out += [trial_row(r) for r in rows]
        return out

    def experiment_state(self, experiment_id: str) -> tuple[Any, ...] | None:
        row = self.db.execute(
            "SELECT status, message, config, ended_ms FROM experiments WHERE id=?", (experiment_id,)
        ).fetchone()
        return tuple(row) if row else None


class DashboardReader(abc.ABC):
    """What the dashboard reads, awaited on the event loop, which never waits on a database: the
    SQLite store is read on a thread of its own (:class:`SqliteReader`), PostgreSQL through asyncpg
    (:class:`~nni_ts.dashboard.pgreader.PostgresReader`). Both give the same answers (the same JSON);
    ``LookupError`` for an experiment that is not there."""

    @abc.abstractmethod
    async def data_version(self) -> Hashable:
        """A value that changes whenever anything was committed to the database since the last call
        (it may change without a change of the dashboard's experiments; it never stays put with one)."""

    @abc.abstractmethod
    async def experiment_ids(self) -> list[str]: ...

    @abc.abstractmethod
    async def summaries(self, allowed: set[str] | None) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def summary(self, experiment_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def overview(self, experiment_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def trials(self, experiment_id: str, query: TrialQuery) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def trial(self, experiment_id: str, trial_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def metrics(self, experiment_id: str, trial_id: str, *, last: int | None = None) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def chart_data_json(self, experiment_id: str) -> bytes: ...

    @abc.abstractmethod
    async def intermediate_json(self, experiment_id: str, budget: int = 300_000) -> bytes: ...

    @abc.abstractmethod
    async def export(self, experiment_id: str, fmt: str) -> str: ...

    @abc.abstractmethod
    async def trial_states(self, experiment_id: str) -> dict[str, tuple[Any, ...]]: ...

    @abc.abstractmethod
    async def trials_by_id(self, experiment_id: str, ids: list[str]) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def experiment_state(self, experiment_id: str) -> tuple[Any, ...] | None: ...

    @abc.abstractmethod
    async def working_dir(self, experiment_id: str) -> str | None: ...

    @abc.abstractmethod
    async def running_ids(self) -> list[str]: ...

    async def cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` off the event loop (turning a big answer into JSON)."""
        return await asyncio.to_thread(fn, *args)

    async def close(self) -> None:
        return None


class SqliteReader(DashboardReader):
    """The SQLite store, read by :class:`Reader` on one thread of its own (never on the event loop)."""

    def __init__(self, path: str | Path) -> None:
        self.reader = Reader(path)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nni-ts-dashboard")

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    async def cpu(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._run(fn, *args)

    async def data_version(self) -> Hashable:
        return await self._run(self.reader.data_version)

    async def experiment_ids(self) -> list[str]:
        return await self._run(self.reader.experiment_ids)

    async def summaries(self, allowed: set[str] | None) -> list[dict[str, Any]]:
        return await self._run(self.reader.summaries, allowed)

    async def summary(self, experiment_id: str) -> dict[str, Any]:
        return await self._run(self.reader.summary, experiment_id)

    async def overview(self, experiment_id: str) -> dict[str, Any]:
        return await self._run(self.reader.overview, experiment_id)

    async def trials(self, experiment_id: str, query: TrialQuery) -> dict[str, Any]:
        return await self._run(self.reader.trials, experiment_id, query)

    async def trial(self, experiment_id: str, trial_id: str) -> dict[str, Any] | None:
        return await self._run(self.reader.trial, experiment_id, trial_id)

    async def metrics(self, experiment_id: str, trial_id: str, *, last: int | None = None) -> list[dict[str, Any]]:
        return await self._run(self.reader.metrics, experiment_id, trial_id, last=last)

    async def chart_data_json(self, experiment_id: str) -> bytes:
        return await self._run(self.reader.chart_data_json, experiment_id)

    async def intermediate_json(self, experiment_id: str, budget: int = 300_000) -> bytes:
        return await self._run(self.reader.intermediate_json, experiment_id, budget)

    async def export(self, experiment_id: str, fmt: str) -> str:
        return await self._run(self.reader.export, experiment_id, fmt)

    async def trial_states(self, experiment_id: str) -> dict[str, tuple[Any, ...]]:
        return await self._run(self.reader.trial_states, experiment_id)

    async def trials_by_id(self, experiment_id: str, ids: list[str]) -> list[dict[str, Any]]:
        return await self._run(self.reader.trials_by_id, experiment_id, ids)

    async def experiment_state(self, experiment_id: str) -> tuple[Any, ...] | None:
        return await self._run(self.reader.experiment_state, experiment_id)

    async def working_dir(self, experiment_id: str) -> str | None:
        return await self._run(self.reader.working_dir, experiment_id)

    async def running_ids(self) -> list[str]:
        return await self._run(self.reader.running_ids)

    async def close(self) -> None:
        await self._run(self.reader.close)
        self._pool.shutdown(wait=False)
