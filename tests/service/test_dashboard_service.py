"""The web dashboard of `nni-ts serve`, on SQLite and on PostgreSQL: it reads where the experiments
write (the store file, or the service database's exp_* tables) and shows each user only their own
experiments. On PostgreSQL it used to list nothing (it read an experiments.db no one wrote any more)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from service_support import GATED_TRIAL, Running, quick_config


async def _get(svc: Running, path: str, token: str, status: int = 200, **params: Any) -> Any:
    url = f"{svc.url}/dash/api{path}"
    async with svc.api.session.get(url, params=params, headers={"Authorization": f"Bearer {token}"}) as resp:
        text = await resp.text()
        assert resp.status == status, (resp.status, text)
        return json.loads(text) if resp.content_type == "application/json" else text


async def _next_event(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    current: dict[str, Any] = {}
    while True:
        line = (await resp.content.readline()).decode().rstrip("\n")
        if not line:
            if "event" in current:
                return current
            current = {}
        elif not line.startswith((":", "retry:")):
            key, _, value = line.partition(": ")
            current[key] = json.loads(value) if key == "data" else value


async def test_the_dashboard_shows_a_users_experiments_on_either_database(svc: Running, tmp_path: Path) -> None:
    api, alice, bob, root = svc.api, svc.tokens["alice"], svc.tokens["bob"], svc.tokens["root"]
    gate = tmp_path / "gate"
    trial = tmp_path / "gated.py"
    trial.write_text(GATED_TRIAL)
    cfg = quick_config(trials=1, concurrency=1, command=f"{sys.executable} {trial} {gate}")
    mine = (await api.ok("POST", "/workspaces/ws/experiments", token=alice, json=cfg))["id"]
    theirs = (await api.ok("POST", "/workspaces/ws/experiments", token=bob, json=quick_config(trials=1)))["id"]
    async with asyncio.timeout(60):  # the two results before the gate
        while len(await api.ok("GET", f"/experiments/{mine}/metrics", token=alice)) < 2:
            await asyncio.sleep(0.05)

    # Each user sees only their own experiments (an admin sees all).
    listed = await _get(svc, "/experiments", alice)
    assert [e["id"] for e in listed] == [mine] and listed[0]["live"] is True and listed[0]["trialCount"] == 1
    assert {e["id"] for e in await _get(svc, "/experiments", root)} == {mine, theirs}
    for path in (f"/experiments/{theirs}", f"/experiments/{theirs}/trials", f"/experiments/{theirs}/export"):
        assert "may see" in (await _get(svc, path, alice, 404))["error"]
    await _get(svc, f"/experiments/{mine}/charts", bob, 404)

    # The live stream notices the records the trial reports once the gate opens.
    url = f"{svc.url}/dash/api/experiments/{mine}/events"
    async with svc.api.session.get(url, headers={"Authorization": f"Bearer {alice}"}) as resp:
        assert resp.status == 200
        async with asyncio.timeout(30):
            assert (await _next_event(resp))["event"] == "hello"
            gate.touch()
            seen: list[dict[str, Any]] = []
            while not any(e["event"] == "metric" and e["data"]["type"] == "FINAL" for e in seen):
                seen.append(await _next_event(resp))
    metrics = [e["data"] for e in seen if e["event"] == "metric"]
    assert [m["seq"] for m in metrics][-2:] == [2, 3] and metrics[-2]["value"] == 3
    await api.wait_experiment(mine, alice)
    await api.wait_experiment(theirs, bob)

    # The trials table (filter and sort in SQL), one trial, the charts, the curves and the export agree
    # with what the REST API reads from the same records.
    (shown,) = await api.ok("GET", f"/experiments/{mine}/trials", token=alice)
    x = shown["parameters"]["x"]
    page = await _get(svc, f"/experiments/{mine}/trials", alice, f="status:in:SUCCEEDED", sort="final", order="desc")
    assert page["total"] == 1 and [t["id"] for t in page["trials"]] == [shown["id"]]
    assert page["trials"][0]["finalValue"] == x and page["trials"][0]["metricCount"] == 4
    assert (await _get(svc, f"/experiments/{mine}/trials", alice, f="param.x:gt:1"))["total"] == 0
    one = await _get(svc, f"/experiments/{mine}/trials/{shown['id']}", alice)
    assert [(m["seq"], m["type"], m["value"]) for m in one["metrics"]] == [
        (0, "PERIODICAL", 1),
        (1, "PERIODICAL", 2),
        (2, "PERIODICAL", 3),
        (3, "FINAL", x),
    ]
    overview = await _get(svc, f"/experiments/{mine}", alice)
    assert overview["status"] == "DONE" and overview["counts"] == {"SUCCEEDED": 1}
    assert overview["best"]["id"] == shown["id"] and overview["series"] == [[0], [x]]
    charts = await _get(svc, f"/experiments/{mine}/charts", alice)
    assert charts["id"] == [shown["id"]] and charts["paramNames"] == ["x"]
    assert charts["params"][0] == [pytest.approx(x, rel=1e-14)]  # SQLite writes 15 significant digits
    curves = await _get(svc, f"/experiments/{mine}/intermediate", alice)
    assert curves == {"stride": 1, "trials": [shown["id"]], "values": [[1, 2, 3]]}
    rows = list(csv.reader(io.StringIO(await _get(svc, f"/experiments/{mine}/export", alice, format="csv"))))
    assert len(rows) == 2 and rows[1][0] == shown["id"] and float(rows[1][3]) == x
    exported = await _get(svc, f"/experiments/{mine}/export", alice, format="json")
    assert [len(t["metrics"]) for t in exported] == [4]
