"""The cluster server's read-only downloads (``GET /api/v1/trials/{trial_id}/files/{name}``, for platforms
without shared storage): only the bearer of a registered trial's own token gets that trial's files, names
are never paths, and the attacker's cases get a 4xx with a reason."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from cluster_support import RecordingSink

from nni_ts.server import ClusterServer


class Files:
    """A download provider: fixed names per trial, as PodStager serves them."""

    def __init__(self) -> None:
        self.files = {
            "A": {"parameter.cfg": b'{"lr": 0.1}', "code.tar.gz": b"code"},
            "B": {"parameter.cfg": b'{"lr": 0.2}'},
        }
        self.asked: list[tuple[str, str]] = []

    async def trial_download(self, trial_id: str, name: str) -> bytes | None:
        self.asked.append((trial_id, name))
        return self.files.get(trial_id, {}).get(name)


async def get(server: ClusterServer, path: str, token: str | None) -> tuple[int, bytes]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        # The path as written, not normalised by the client (a traversal must reach the server as sent).
        url = f"{server.url}{path}"
        async with session.get(url, headers=headers, allow_redirects=False) as r:
            return r.status, await r.read()


@pytest.fixture
async def served() -> Any:
    async with ClusterServer(heartbeat_timeout=30.0) as server:
        server.register("A", RecordingSink())
        server.register("B", RecordingSink())
        files = Files()
        server.serve_downloads(files)
        yield server, files


async def test_a_trial_gets_its_own_files_only(served: Any) -> None:
    server, files = served
    token_a, token_b = server.token_for("A"), server.token_for("B")
    assert await get(server, "/api/v1/trials/A/files/parameter.cfg", token_a) == (200, b'{"lr": 0.1}')
    assert await get(server, "/api/v1/trials/A/files/code.tar.gz", token_a) == (200, b"code")
    # Another trial's token, no token, a malformed header: refused before the provider is asked.
    status, body = await get(server, "/api/v1/trials/A/files/parameter.cfg", token_b)
    assert status == 403 and b"not the token of trial A" in body
    status, body = await get(server, "/api/v1/trials/A/files/parameter.cfg", None)
    assert status == 401 and b"Authorization" in body
    status, _ = await get(server, "/api/v1/trials/A/files/parameter.cfg", "")
    assert status == 401
    # B's token names B's files only: there is no way to name A's from B.
    assert await get(server, "/api/v1/trials/B/files/parameter.cfg", token_b) == (200, b'{"lr": 0.2}')
    status, body = await get(server, "/api/v1/trials/B/files/code.tar.gz", token_b)
    assert status == 404 and b"no file 'code.tar.gz'" in body
    assert files.asked == [("A", "parameter.cfg"), ("A", "code.tar.gz"), ("B", "parameter.cfg"), ("B", "code.tar.gz")]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/trials/A/files/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/v1/trials/A/files/..%2FB%2Fparameter.cfg",
        "/api/v1/trials/A/files/%2Fetc%2Fpasswd",
        "/api/v1/trials/A/files/.parameter.cfg",
        "/api/v1/trials/A/files/..",
        "/api/v1/trials/A/files/sub/parameter.cfg",
        "/api/v1/trials/A/files/" + "x" * 65,
    ],
)
async def test_traversal_and_odd_names_are_refused(served: Any, path: str) -> None:
    server, files = served
    status, body = await get(server, path, server.token_for("A"))
    assert status == 404 and b"error" in body, (status, body)
    assert files.asked == []  # never handed to the provider


async def test_unregistered_trials_and_a_server_without_downloads(served: Any) -> None:
    server, files = served
    status, body = await get(server, "/api/v1/trials/C/files/parameter.cfg", server.token_for("C"))
    assert status == 404 and b"not registered" in body
    server.unregister("A")
    status, _ = await get(server, "/api/v1/trials/A/files/parameter.cfg", server.token_for("A"))
    assert status == 404
    server.serve_downloads(None)
    status, body = await get(server, "/api/v1/trials/B/files/parameter.cfg", server.token_for("B"))
    assert status == 404 and b"serves no files" in body
    assert files.asked == []


async def test_a_file_over_the_limit_is_refused(served: Any) -> None:
    server, files = served
    server.max_download = 4
    status, body = await get(server, "/api/v1/trials/A/files/parameter.cfg", server.token_for("A"))
    assert status == 413 and b"limit of 4" in body
