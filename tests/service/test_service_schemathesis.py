"""Schemathesis against the service's OpenAPI description: no input makes it answer 5xx.

The fuzzed users have a quota of 0 concurrent trials, so no generated body ever starts a trial
(a launcher body is a valid request with an arbitrary shell command). One real experiment, owned
by a third user, gives the experiment and trial routes something to find.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, status_code_conformance
from service_support import Api, quick_config, running_service

from nni_ts.service import ServiceSettings, openapi_document
from nni_ts.service.db import open_database
from nni_ts.service.users import add_user

pytestmark = pytest.mark.slow  # seconds per test: scripts/test --fast leaves it out

schema = schemathesis.openapi.from_dict(openapi_document())


class ServiceThread:
    """The service on its own event loop in a thread (schemathesis calls are synchronous)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ready = threading.Event()
        self.url = ""
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="schemathesis-service")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        url = f"sqlite:///{self.data_dir / 'service.db'}"
        db = await open_database(url)
        for name, admin, quota in (("alice", False, 0), ("root", True, 0), ("owner", False, 4)):
            token = await add_user(db, name, admin=admin, max_trials=quota)
            assert token is not None
            self.tokens[name] = token
        await db.close()
        async with running_service(ServiceSettings(data_dir=self.data_dir, database_url=url)) as (service, api, u):
            created = await api.ok(
                "POST", "/workspaces/w/experiments", token=self.tokens["owner"], json=quick_config(trials=1)
            )
            done = await api.wait_experiment(created["id"], self.tokens["owner"])
            trials = await api.ok("GET", f"/experiments/{created['id']}/trials", token=self.tokens["owner"])
            self.ids = {"experiment_id": done["id"], "trial_id": trials[0]["id"]}
            self.url = u
            self.ready.set()
            await self._stop.wait()

    def __enter__(self) -> ServiceThread:
        self._thread.start()
        assert self.ready.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


@pytest.fixture(scope="module")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    with ServiceThread(tmp_path_factory.mktemp("schemathesis-service")) as service:
        yield service


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, live_service: ServiceThread) -> None:
    salt = hash(repr(case.body)) + hash(repr(case.query))
    who = ("alice", "root", None)[salt % 3]
    headers = dict(case.headers or {})
    if who is not None and "Authorization" not in headers:
        headers["Authorization"] = f"Bearer {live_service.tokens[who]}"
    case.headers = headers
    if case.path_parameters and salt % 2 == 0:  # half the cases reach a real experiment and trial
        for key in ("experiment_id", "trial_id"):
            if key in case.path_parameters:
                case.path_parameters[key] = live_service.ids[key]
    # Conformance too: every status is documented, every content type is the documented one.
    response = case.call_and_validate(
        base_url=live_service.url, checks=[not_a_server_error, status_code_conformance, content_type_conformance]
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert "error" in response.json()


def _operations() -> list[tuple[str, str]]:
    out = []
    for path, methods in openapi_document()["paths"].items():
        concrete = path.replace("{workspace}", "w").replace("{path}", "f.txt")
        concrete = concrete.replace("{experiment_id}", "EXP").replace("{trial_id}", "TRIAL")
        out += [(method.upper(), concrete) for method in methods]
    return out


def _deep(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


#: What schemathesis does not send: odd charsets, encodings that lie, bodies nested too deep.
ODD_BODIES: list[tuple[str, dict[str, str], bytes]] = [
    ("bogus charset", {"Content-Type": "application/json; charset=bogus"}, b"{}"),
    ("utf-16 body", {"Content-Type": "application/json; charset=utf-16"}, '{"num": 1}'.encode("utf-16")),
    ("latin-1 bytes as utf-8", {"Content-Type": "application/json; charset=utf-8"}, b'{"user": "\xe9"}'),
    ("not gzip", {"Content-Encoding": "gzip"}, b"plain text"),
    ("truncated gzip", {"Content-Encoding": "gzip"}, gzip.compress(b'{"num": 1}')[:-6]),
    ("gzip of deep JSON", {"Content-Encoding": "gzip"}, gzip.compress(_deep(5000))),
    ("not deflate", {"Content-Encoding": "deflate"}, b"plain text"),
    ("deflate bomb", {"Content-Encoding": "deflate"}, zlib.compress(b"[" * 5_000_000)),
    ("unknown encoding", {"Content-Encoding": "x-nothing"}, b"{}"),
    ("deep object", {}, _deep(990)),
    ("deep array", {}, b"[" * 100_000 + b"]" * 100_000),
    ("huge number", {}, b'{"num": 1' + b"0" * 5000 + b"}"),
    ("NUL in JSON", {}, rb'{"user": "a\u0000b", "command": "\u0000"}'),
    ("lone surrogate", {}, rb'{"user": "\ud800"}'),
]


@pytest.mark.parametrize(("what", "headers", "body"), ODD_BODIES, ids=[b[0] for b in ODD_BODIES])
def test_odd_bodies_are_a_4xx_on_every_route(
    what: str, headers: dict[str, str], body: bytes, live_service: ServiceThread
) -> None:
    async def check() -> list[tuple[str, str, int, str]]:
        bad = []
        for method, path in _operations():
            path = path.replace("EXP", live_service.ids["experiment_id"]).replace("TRIAL", live_service.ids["trial_id"])
            hdrs = {
                "Authorization": f"Bearer {live_service.tokens['alice']}",
                "Content-Type": "application/json",
                **headers,
            }
            async with aiohttp.ClientSession() as session:  # a fresh connection: a bad body may close it
                async with session.request(method, live_service.url + path, data=body, headers=hdrs) as resp:
                    text = await resp.text(errors="replace")
                    if resp.status >= 500 or (resp.status >= 400 and '"error"' not in text):
                        bad.append((method, path, resp.status, text[:200]))
        return bad

    assert asyncio.run(check()) == []


def test_an_unsupported_method_is_a_405_with_allow(live_service: ServiceThread) -> None:
    async def check() -> list[tuple[str, int, str | None]]:
        out = []
        async with aiohttp.ClientSession() as session:
            for _, path in sorted(set(_operations())):
                path = path.replace("EXP", live_service.ids["experiment_id"]).replace("TRIAL", "t")
                async with session.request("TRACE", live_service.url + path) as resp:
                    out.append((path, resp.status, resp.headers.get("Allow")))
        return out

    for path, status, allow in asyncio.run(check()):
        assert status == 405 and allow, (path, status, allow)


def test_fuzzing_started_no_trial(live_service: ServiceThread) -> None:
    async def check() -> list[Any]:
        async with aiohttp.ClientSession() as session:
            api = Api(live_service.url, session)
            return list(await api.ok("GET", "/experiments", token=live_service.tokens["root"]))

    experiments = asyncio.run(check())
    assert all(e["user"] == "owner" for e in experiments)
