"""Server-side printing: ``meta.k8s.io/v1 Table`` responses for kubectl's columns."""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from .resources import ResourceType
from .util import JSON

__all__ = ["human_age", "jsonpath", "table"]


def human_age(timestamp: str | None, until: str | None = None) -> str:
    """A creationTimestamp as kubectl shows an age (``5s``, ``3m2s``, ``4h``, ``2d``); with ``until``, the
    duration between the two timestamps."""
    if not timestamp:
        return "<unknown>"
    try:
        then = _dt.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.UTC)
        end = _dt.datetime.strptime(until, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.UTC) if until else None
    except ValueError:
        return "<invalid>"
    seconds = max(0, int(((end or _dt.datetime.now(_dt.UTC)) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


_TOKEN = re.compile(r"\.([A-Za-z0-9_-]+)|\[(-?\d*):?(-?\d*)?\]|\[\*\]")


def jsonpath(obj: Any, path: str) -> Any:
    """A small subset of kubectl's JSONPath: ``.a.b``, ``[0]``, ``[-1:]``, ``[*]``."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    values: list[Any] = [obj]
    for match in re.finditer(r"\.([A-Za-z0-9_-]+)|\[([^\]]*)\]", path):
        name, index = match.group(1), match.group(2)
        nxt: list[Any] = []
        for v in values:
            if name is not None:
                if isinstance(v, dict) and name in v:
                    nxt.append(v[name])
            elif isinstance(v, list):
                if index == "*":
                    nxt.extend(v)
                elif ":" in index:
                    start, _, stop = index.partition(":")
                    nxt.extend(v[int(start) if start else None : int(stop) if stop else None])
                else:
                    try:
                        nxt.append(v[int(index)])
                    except (ValueError, IndexError):
                        pass
        values = nxt
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _pod_row(pod: JSON) -> list[Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    reason = status.get("reason") or status.get("phase") or "Pending"
    for s in statuses:
        state = s.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state and status.get("phase") not in ("Running",):
            reason = state["terminated"].get("reason") or (
                "Completed" if state["terminated"].get("exitCode") == 0 else "Error"
            )
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    return [
        pod["metadata"]["name"],
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        restarts,
        human_age(pod["metadata"].get("creationTimestamp")),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
    ]


def _job_row(job: JSON) -> list[Any]:
    spec, status = job.get("spec") or {}, job.get("status") or {}
    true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
    order = ("Complete", "Failed", "FailureTarget", "SuccessCriteriaMet", "Suspended")
    state = next((s for s in order if s in true), "")
    state = {"FailureTarget": "Failing", "SuccessCriteriaMet": "Completing"}.get(state, state) or "Running"
    start = status.get("startTime")
    return [
        job["metadata"]["name"],
        state,
        f"{status.get('succeeded', 0)}/{spec.get('completions', 1)}",
        human_age(start, status.get("completionTime")) if start else "",
        human_age(job["metadata"].get("creationTimestamp")),
    ]


def _columns(rtype: ResourceType) -> list[JSON]:
    def col(name: str, type_: str = "string", fmt: str = "", priority: int = 0, desc: str = "") -> JSON:
        return {"name": name, "type": type_, "format": fmt, "description": desc or name, "priority": priority}

    name = col("Name", fmt="name", desc="Name must be unique within a namespace.")
    age = col("Age", desc="CreationTimestamp is a timestamp representing the server time when this object was created.")
    if rtype.kind == "Pod":
        return [
            name,
            col("Ready"),
            col("Status"),
            col("Restarts", "string"),
            age,
            col("IP", priority=1),
            col("Node", priority=1),
        ]
    if rtype.printer_columns:
        cols = [name]
        for pc in rtype.printer_columns:
            cols.append(
                col(
                    pc["name"],
                    "string" if pc.get("type") == "date" else pc.get("type", "string"),
                    pc.get("format", ""),
                    int(pc.get("priority", 0)),
                    pc.get("description", ""),
                )
            )
        return cols
    if rtype.kind == "Job" and rtype.group == "batch":
        return [name, col("Status"), col("Completions"), col("Duration"), age]
    if rtype.kind == "Deployment" and rtype.group == "apps":
        return [name, col("Ready"), col("Up-to-date", "integer"), col("Available", "integer"), age]
    if rtype.kind == "Namespace":
        return [name, col("Status"), age]
    if rtype.kind == "Node":
        return [name, col("Status"), col("Roles"), age, col("Version")]
    if rtype.kind == "Event":
        return [col("Last Seen"), col("Type"), col("Reason"), col("Object"), col("Message"), name]
    return [name, age]


def _cells(rtype: ResourceType, obj: JSON) -> list[Any]:
    meta = obj["metadata"]
    if rtype.kind == "Pod":
        return _pod_row(obj)
    if rtype.printer_columns:
        cells: list[Any] = [meta["name"]]
        for pc in rtype.printer_columns:
            value = jsonpath(obj, pc["jsonPath"])
            if pc.get("type") == "date":
                value = human_age(value) if isinstance(value, str) else "<unknown>"
            elif isinstance(value, list):
                value = ",".join(str(v) for v in value)
            cells.append("" if value is None else value)
        return cells
    if rtype.kind == "Job" and rtype.group == "batch":
        return _job_row(obj)
    if rtype.kind == "Deployment" and rtype.group == "apps":
        status = obj.get("status") or {}
        return [
            meta["name"],
            f"{status.get('readyReplicas', 0)}/{(obj.get('spec') or {}).get('replicas', 1)}",
            status.get("updatedReplicas", 0),
            status.get("availableReplicas", 0),
            human_age(meta.get("creationTimestamp")),
        ]
    if rtype.kind == "Namespace":
        return [meta["name"], (obj.get("status") or {}).get("phase", ""), human_age(meta.get("creationTimestamp"))]
    if rtype.kind == "Node":
        status = obj.get("status") or {}
        ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), "")
        return [
            meta["name"],
            "Ready" if ready == "True" else "NotReady",
            "<none>",
            human_age(meta.get("creationTimestamp")),
            (status.get("nodeInfo") or {}).get("kubeletVersion", ""),
        ]
    if rtype.kind == "Event":
        inv = obj.get("involvedObject") or {}
        return [
            human_age(obj.get("lastTimestamp")),
            obj.get("type", ""),
            obj.get("reason", ""),
            f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}",
            obj.get("message", ""),
            meta["name"],
        ]
    return [meta["name"], human_age(meta.get("creationTimestamp"))]


def table(
    rtype: ResourceType,
    objs: list[JSON],
    resource_version: str,
    include_object: str = "Metadata",
    continue_token: str = "",
) -> JSON:
    """A Table for ``objs`` (``include_object``: None, Metadata or Object)."""
    rows = []
    for obj in objs:
        row: JSON = {"cells": _cells(rtype, obj)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    meta: JSON = {"resourceVersion": resource_version}
    if continue_token:
        meta["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": _columns(rtype),
        "rows": rows,
    }
