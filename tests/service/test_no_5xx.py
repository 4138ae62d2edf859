"""Issue 14, findings 6 to 9: no input and no database outage makes the service answer 5xx (but 503)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from service_support import Running, quick_config, running_service

from nni_ts.service import ServiceSettings
from nni_ts.service.db import open_database
from nni_ts.service.users import add_user

LEGACY = {
    "user": "alice",
    "workspace": "w",
    "trailConcurrency": 1,
    "num": 1,
    "target": "maximize",
    "command": "true",
    "search_space": {"x": {"_type": "choice", "_value": [1]}},
}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": [value]}
    return value


async def _raw(svc: Running, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    # A fresh connection each time: a body the server could not decode closes the connection.
    async with aiohttp.ClientSession() as session:
        url = f"{svc.url}/api/v1{path}"
        hdrs = {"Authorization": f"Bearer {svc.tokens['alice']}", "Content-Type": "application/json", **headers}
        async with session.request(method, url, data=body, headers=hdrs, compress=None) as resp:
            return resp.status, await resp.json(content_type=None)


async def test_deep_nesting_is_a_400_that_says_so(svc: Running) -> None:
    deep = "[" * 990 + "]" * 990
    for path in ("/workspaces/w/experiments", "/nni-exp"):
        status, body = await _raw(svc, "POST", path, deep.encode(), {})
        assert status == 400 and "nested deeper" in body["error"], body
    config = quick_config() | {"searchSpace": {"x": _nested(200)}}
    status, body = await svc.api.call("POST", "/workspaces/w/experiments", token=svc.tokens["alice"], json=config)
    assert status == 400 and "nested deeper" in body["error"], body


async def test_a_bogus_charset_or_a_body_that_is_not_gzip_is_a_4xx_with_a_reason(svc: Running) -> None:
    good = b'{"maxTrialNumber": 5}'
    for path in ("/workspaces/w/experiments", "/nni-exp", "/workspaces/w/files/a.txt"):
        method = "PUT" if "files" in path else "POST"
        status, body = await _raw(svc, method, path, good, {"Content-Type": "application/json; charset=bogus"})
        if method == "POST":
            assert status == 415 and "charset" in body["error"], body
        status, body = await _raw(svc, method, path, b"this is not gzip", {"Content-Encoding": "gzip"})
        assert status == 400 and "Content-Encoding" in body["error"], body
    status, body = await _raw(
        svc, "POST", "/workspaces/w/experiments", gzip.compress(b"[1"), {"Content-Encoding": "gzip"}
    )
    assert status == 400 and "not valid JSON" in body["error"], body
    status, body = await _raw(svc, "POST", "/nni-exp", b"\xff\xfe{}", {"Content-Type": "application/json"})
    assert status == 400 and "utf-8" in body["error"], body


async def test_a_nul_in_a_query_or_a_command_is_a_4xx(svc: Running) -> None:
    api, token = svc.api, svc.tokens["alice"]
    for path in ("/experiments?workspace=%00", "/nni-exp?user=alice&workspace=%00", "/audit?x=%00"):
        status, body = await api.call("GET", path, token=token)
        assert status == 400 and "NUL" in body["error"], (path, status, body)
    status, body = await api.call(
        "POST", "/workspaces/w/experiments", token=token, json=quick_config(command="echo a\x00b")
    )
    assert status == 422 and body["path"] == "trialCommand", body
    status, body = await api.call("POST", "/nni-exp", token=token, json=LEGACY | {"command": "echo a\x00b"})
    assert status == 422 and body["path"] == "command", body
    assert await api.ok("GET", "/experiments", token=token) == []


@pytest.mark.parametrize(
    ("key", "value"),
    [("trailConcurrency", "2"), ("trailConcurrency", True), ("num", 1e20), ("num", "3"), ("gpuNum", False)],
)
async def test_the_launcher_body_has_strict_types(svc: Running, key: str, value: Any) -> None:
    status, body = await svc.api.call("POST", "/nni-exp", token=svc.tokens["alice"], json=LEGACY | {key: value})
    assert status == 422 and body["path"] == key, body


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("trialConcurrency", "2"),
        ("trialConcurrency", True),
        ("maxTrialNumber", 1e20),
        ("maxTrialNumber", 10**20),
        ("trialGpuNumber", 1.5),
    ],
)
async def test_the_config_has_strict_types_and_bounds(svc: Running, key: str, value: Any) -> None:
    config = quick_config() | {key: value}
    status, body = await svc.api.call("POST", "/workspaces/w/experiments", token=svc.tokens["alice"], json=config)
    assert status == 422 and body["path"] == key, body
    assert await svc.api.ok("GET", "/experiments", token=svc.tokens["alice"]) == []


class TcpProxy:
    """A TCP forwarder to PostgreSQL that can be taken down (connections refused) and brought back."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


@contextlib.asynccontextmanager
async def _proxied_database(postgres_server: Any) -> AsyncIterator[tuple[TcpProxy, str]]:
    import asyncpg

    admin = await asyncpg.connect(postgres_server.url("postgres"))
    try:
        await admin.execute("DROP DATABASE IF EXISTS svc_outage WITH (FORCE)")
        await admin.execute("CREATE DATABASE svc_outage")
    finally:
        await admin.close()
    proxy = TcpProxy(postgres_server.port)
    await proxy.up()
    try:
        yield proxy, f"postgresql://{postgres_server.user}@127.0.0.1:{proxy.port}/svc_outage"
    finally:
        with contextlib.suppress(Exception):
            await proxy.down()


async def test_postgresql_down_is_a_503_on_every_route(postgres_server: Any, tmp_path: Any) -> None:
    async with _proxied_database(postgres_server) as (proxy, url):
        db = await open_database(url)
        try:
            token = await add_user(db, "alice")
        finally:
            await db.close()
        settings = ServiceSettings(data_dir=tmp_path / "svc", database_url=url, reconcile_interval=0.05)
        async with running_service(settings) as (_service, api, _u):
            assert (await api.call("GET", "/healthz"))[0] == 200
            await proxy.down()
            for method, path, body in [
                ("GET", "/healthz", None),
                ("GET", "/me", None),
                ("GET", "/experiments", None),
                ("GET", "/experiments/abc", None),
                ("GET", "/audit", None),
                ("POST", "/workspaces/w/experiments", quick_config()),
                ("POST", "/nni-exp", LEGACY),
                ("PUT", "/workspaces/w/files/a.txt", None),
            ]:
                status, answer = await api.call(method, path, token=token, json=body)
                assert status == 503, (method, path, status, answer)
                assert "not available" in answer["error"], answer
            await proxy.up()  # the same port again: the service recovers without a restart
            async with asyncio.timeout(30):
                while (await api.call("GET", "/healthz"))[0] != 200:
                    await asyncio.sleep(0.05)
            assert (await api.call("GET", "/me", token=token))[0] == 200


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"maxTrialNumber": "5"}, "maxTrialNumber"),
        ({"maxTrialNumber": True}, "maxTrialNumber"),
        ({"maxTrialNumber": 1e20}, "maxTrialNumber"),
        ({"rerunFailed": "yes"}, "rerunFailed"),
        ({"bogus": 1}, "bogus"),
        ({"maxExperimentDuration": "soon"}, "maxExperimentDuration"),
        ({}, "(top level)"),
        ([1], None),
    ],
)
async def test_the_extend_body_is_validated_strictly(svc: Running, body: Any, path: str | None) -> None:
    created = await svc.api.ok("POST", "/workspaces/w/experiments", token=svc.tokens["alice"], json=quick_config())
    status, answer = await svc.api.call(
        "POST", f"/experiments/{created['id']}/extend", token=svc.tokens["alice"], json=body
    )
    assert status == 422, answer
    if path is not None:
        assert answer["path"] == path, answer
