"""Schemathesis against the served OpenAPI description: no input makes the server answer 5xx."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from cluster_support import RecordingSink
from hypothesis import HealthCheck, settings

from nni_ts.server import ClusterServer, openapi_document

pytestmark = pytest.mark.slow  # schemathesis drives the real server for seconds: scripts/test --fast leaves it out

schema = schemathesis.openapi.from_dict(openapi_document())


class ServerThread:
    """A ClusterServer on its own event loop in a thread (schemathesis calls are synchronous)."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.server: ClusterServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="schemathesis-server")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ClusterServer(max_body=256 * 1024) as server:
            server.register("S1", RecordingSink())
            self.server = server
            self.ready.set()
            await self._stop.wait()

    def __enter__(self) -> ClusterServer:
        self._thread.start()
        assert self.ready.wait(30)
        assert self.server is not None
        return self.server

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def live_server() -> Iterator[ClusterServer]:
    with ServerThread() as server:
        yield server


@schema.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, live_server: ClusterServer) -> None:
    if "trial_id" in (case.path_parameters or {}):
        # Half the cases reach past authentication, with the registered trial's valid token.
        if hash(str(case.body)) % 2 == 0:
            case.path_parameters["trial_id"] = "S1"
        trial_id = case.path_parameters["trial_id"]
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {live_server.token_for(str(trial_id))}"}
    response = case.call(base_url=live_server.url)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert "error" in response.json()
