"""Helpers of the experiment-service tests (an HTTP client, an in-process service, trial configs)."""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from nni_ts.service import ExperimentService, ServiceSettings

#: The PostgreSQL role of the test server that logs in with a password (every other role is trusted).
PASSWORD_ROLE = "nts_pw"


class Api:
    """A small client of the service: ``await api.call("GET", "/experiments", token=...)``."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        data: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        url = self.base + path if path.startswith("/api") else self.base + "/api/v1" + path
        async with self.session.request(method, url, json=json, data=data, params=params, headers=hdrs) as resp:
            text = await resp.text()
            try:
                body: Any = jsonlib.loads(text)
            except ValueError:
                body = text
            return resp.status, body

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        status, body = await self.call(method, path, **kw)
        assert status < 300, (status, body)
        return body

    async def wait_experiment(self, experiment_id: str, token: str, *, timeout: float = 60) -> dict[str, Any]:
        """Until the experiment has ended (bounded); its details."""
        async with asyncio.timeout(timeout):
            while True:
                body = await self.ok("GET", f"/experiments/{experiment_id}", token=token)
                if body["status"] != "RUNNING" and not body["live"]:
                    return dict(body)
                await asyncio.sleep(0.05)

    async def events(self, experiment_id: str, token: str) -> list[dict[str, Any]]:
        """Every server-sent event of a live experiment until its stream ends."""
        out: list[dict[str, Any]] = []
        url = f"{self.base}/api/v1/experiments/{experiment_id}/events"
        async with self.session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    out.append(jsonlib.loads(line[6:]))
        return out


@dataclass
class Running:
    service: ExperimentService
    api: Api
    url: str
    tokens: dict[str, str]
    data_dir: Path


def storage_url(running: Running) -> str:
    """Where a service's experiments keep their records: the service's PostgreSQL database itself,
    or on SQLite the store file ``experiments.db`` in its data directory."""
    url = running.service.database_url
    return url if url.startswith("postgresql") else f"sqlite:///{running.data_dir / 'experiments.db'}"


@contextlib.asynccontextmanager
async def running_service(settings: ServiceSettings) -> AsyncIterator[tuple[ExperimentService, Api, str]]:
    service = ExperimentService(settings)
    await service.start()
    runner = web.AppRunner(service.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            yield service, Api(url, session), url
    finally:
        await runner.cleanup()
        await service.close()


def quick_config(*, trials: int = 3, concurrency: int = 2, command: str | None = None, **more: Any) -> dict[str, Any]:
    """A v2 config whose trials report one intermediate and one final result in well under a second."""
    cmd = command or (
        "python3 -c \"import nni; p = nni.get_next_parameter(); nni.report_intermediate_result(p['x']); "
        "nni.report_final_result(p['x'] * 2); print('trial says', p['x'])\""
    )
    return {
        "experimentName": "quick",
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": cmd,
        "trialConcurrency": concurrency,
        "maxTrialNumber": trials,
        "tuner": {"name": "Random", "classArgs": {"optimize_mode": "maximize"}},
        "trainingService": {"platform": "local"},
        **more,
    }


GATED_TRIAL = """
import os, sys, time
import nni

params = nni.get_next_parameter()
print("waiting at the gate", flush=True)
nni.report_intermediate_result(1)
nni.report_intermediate_result(2)
gate = sys.argv[1]
deadline = time.monotonic() + 120
while not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.02)
nni.report_intermediate_result(3)
nni.report_final_result(params["x"])
"""
