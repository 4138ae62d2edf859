"""Exporting an experiment's results (ours, and exactly what ``nnictl experiment export`` writes) and
reading them back (``nni-ts experiment import``, which also reads NNI's files).

NNI's export (``nnictl experiment export ID --type json|csv [--intermediate]``):

- JSON: a list of ``{"parameter": {...}, "value": "<the final result as JSON text>", "trialJobId": ID}``
  for every trial with a final result, plus ``"intermediate": ["<JSON text>", ...]`` on request.
- CSV: one row per such trial; columns are the parameters, then ``reward`` for a number or one column
  per key of a dict result, ``trialJobId``, and ``intermediate`` (``[v1,v2,...]``) on request.
"""

from __future__ import annotations

import ast
import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..experiment.records import parse_record

__all__ = ["export_text", "parse_import"]

_FIXED = ["trialId", "sequenceId", "status", "finalValue"]


def _value_text(record_data: str) -> str:
    """The value of a stored record as NNI keeps it: the reported value's JSON text."""
    try:
        record = json.loads(record_data)
    except ValueError:
        return json.dumps(record_data)
    value = record.get("value") if isinstance(record, dict) else record
    return value if isinstance(value, str) else json.dumps(value)


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list | bool) or value is None else value


def _ordered_keys(dicts: Iterable[Mapping[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for d in dicts:
        for k in d:
            keys.setdefault(str(k), None)
    return list(keys)


def export_text(trials: list[Any], metrics: Mapping[str, list[Any]], *, fmt: str, kind: str, intermediate: bool) -> str:
    """The export of ``trials`` (TrialRecords) as ``kind`` json or csv, ``fmt`` ``nni-ts`` or ``nni``.

    ``metrics`` maps a trial id to its MetricRecords (only needed with ``intermediate``).
    """
    if fmt == "nni":
        return _export_nni(trials, metrics, kind=kind, intermediate=intermediate)
    rows = []
    for t in trials:
        final = parse_record(t.final_data).value if t.final_data else None
        row: dict[str, Any] = {
            "id": t.id,
            "sequenceId": t.sequence_id,
            "parameterId": t.parameter_id,
            "attempt": t.attempt,
            "status": t.status.value,
            "parameters": t.parameters,
            "finalValue": t.final_value,
            "final": final,
            "metricCount": t.metric_count,
            "startTime": t.start_ms,
            "endTime": t.end_ms,
            "exitCode": t.exit_code,
            "message": t.message,
            "infrastructureFailure": t.infrastructure_failure,
        }
        if intermediate:
            row["metrics"] = [
                {"seq": m.seq, "type": m.type, "value": parse_record(m.data).value} for m in metrics.get(t.id, [])
            ]
        rows.append(row)
    if kind == "json":
        return json.dumps(rows, indent=1)
    params = _ordered_keys(r["parameters"] for r in rows)
    finals = _ordered_keys(r["final"] for r in rows if isinstance(r["final"], dict))
    header = [*_FIXED, *params, *(f"final.{k}" for k in finals)] + (["intermediate"] if intermediate else [])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for r in rows:
        final = r["final"] if isinstance(r["final"], dict) else {}
        line = [r["id"], r["sequenceId"], r["status"], r["finalValue"]]
        line += [_cell(r["parameters"].get(k)) if k in r["parameters"] else "" for k in params]
        line += [_cell(final[k]) if k in final else "" for k in finals]
        if intermediate:
            line.append(json.dumps([m["value"] for m in r["metrics"] if m["type"] == "PERIODICAL"]))
        writer.writerow(line)
    return buf.getvalue()


def _export_nni(trials: list[Any], metrics: Mapping[str, list[Any]], *, kind: str, intermediate: bool) -> str:
    content: list[dict[str, Any]] = []
    for t in trials:
        if not t.final_data:
            continue  # NNI exports the trials that reported a final result
        entry: dict[str, Any] = {"parameter": t.parameters, "value": _value_text(t.final_data), "trialJobId": t.id}
        if intermediate:
            entry["intermediate"] = [_value_text(m.data) for m in metrics.get(t.id, []) if m.type == "PERIODICAL"]
        content.append(entry)
    if kind == "json":
        return json.dumps(content)
    records: list[dict[str, Any]] = []
    for entry in content:
        row: dict[str, Any] = {}
        if intermediate:
            row["intermediate"] = "[" + ",".join(entry["intermediate"]) + "]"
        value = json.loads(entry["value"])
        if isinstance(value, dict):
            row.update({**entry["parameter"], **value, "trialJobId": entry["trialJobId"]})
        else:
            row.update({**entry["parameter"], "reward": value, "trialJobId": entry["trialJobId"]})
        records.append(row)
    buf = io.StringIO()
    if records:
        writer = csv.DictWriter(buf, _ordered_keys(records))
        writer.writeheader()
        writer.writerows(records)
    return buf.getvalue()


# ---------------------------------------------------------------------- import


def _loads(text: str) -> Any:
    """A CSV cell back to its value: JSON, else a Python literal (NNI's CSV writes dicts with repr), else text."""
    if text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _entry(parameter: Any, value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise UserError(f"{where}: the value {value!r} is not a number or a JSON result.") from None
    if not isinstance(parameter, dict):
        raise UserError(f"{where}: 'parameter' must be a mapping of parameter names to values.")
    number = value.get("default") if isinstance(value, dict) else value
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise UserError(
            f"{where}: the result must be a number or a dict with a numeric 'default' key, got {json.dumps(value)}."
        )
    return {"parameter": parameter, "value": value}


def parse_import(path: Path, search_space: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Read a file of results to import: ``[{"parameter": ..., "value": ...}, ...]``.

    Accepts NNI's import format and its export (JSON or CSV), and nni-ts's own exports.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"The file to import, {path}, does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read {path}: {exc}.") from None
    if path.suffix.lower() == ".csv" or (text.lstrip()[:1] not in ("[", "{", "")):
        return _parse_csv(text, path, search_space)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path} is neither JSON nor CSV: {exc}.") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of results, got {type(data).__name__}.")
    out = []
    for i, item in enumerate(data):
        where = f"{path}, entry {i + 1}"
        if not isinstance(item, dict):
            raise UserError(f"{where}: expected a mapping with 'parameter' and 'value'.")
        if "parameter" in item:
            out.append(_entry(item["parameter"], item.get("value"), where))
        elif "parameters" in item:  # nni-ts's own JSON export
            if item.get("status") not in (None, "SUCCEEDED") or item.get("final") is None:
                continue
            out.append(_entry(item["parameters"], item["final"], where))
        else:
            raise UserError(f"{where}: expected a mapping with 'parameter' and 'value' (NNI's import format).")
    return out


def _parse_csv(text: str, path: Path, search_space: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = list(reader.fieldnames or [])
    if not columns:
        raise UserError(f"{path}: the CSV file has no header row.")
    ours = "finalValue" in columns and "trialId" in columns
    if search_space:
        params = [c for c in columns if c in search_space]
    elif ours:
        params = [c for c in columns if c not in _FIXED and not c.startswith("final.") and c != "intermediate"]
    else:
        raise UserError(
            f"{path}: a CSV file can only be imported into an experiment whose search space names its columns."
        )
    if not params:
        raise UserError(f"{path}: no column of the CSV file is a parameter of the search space.")
    out = []
    for n, row in enumerate(reader, start=2):
        where = f"{path}, line {n}"
        parameter = {k: _loads(row[k]) for k in params if row.get(k) not in (None, "")}
        if ours:
            if row.get("status") not in (None, "", "SUCCEEDED") or row.get("finalValue") in (None, ""):
                continue
            extra = {c[len("final.") :]: _loads(row[c]) for c in columns if c.startswith("final.") and row[c] != ""}
            value: Any = extra or _loads(row["finalValue"])
        elif "reward" in columns and row.get("reward") not in (None, ""):
            value = _loads(row["reward"])
        else:
            skip = {*params, "trialJobId", "intermediate", "reward"}
            value = {c: _loads(row[c]) for c in columns if c not in skip and row.get(c) not in (None, "")}
        out.append(_entry(parameter, value, where))
    return out
