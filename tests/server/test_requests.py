"""Bad requests get a 4xx with a reason and change nothing; ingestion is idempotent and ordered."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from cluster_support import RecordingSink

import trial_keeper
from nni_ts.server import ClusterServer


def report(records: list[tuple[int, str]] = (), **extra: Any) -> dict[str, Any]:  # type: ignore[assignment]
    body: dict[str, Any] = {
        "keeper_version": trial_keeper.__version__,
        "attempt": 1,
        "started_ms": 1,
        "records": [{"seq": s, "data": d} for s, d in records],
    }
    body.update(extra)
    return body


async def post(server: ClusterServer, trial_id: str, body: Any, token: str | None = "auto") -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token == "auto":
        token = server.token_for(trial_id)
    if token is not None:
        headers["Authorization"] = token if " " in token else f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/api/v1/trials/{trial_id}/report", data=data, headers=headers) as r:
            return r.status, await r.json(content_type=None)


@pytest.fixture
async def small_server() -> Any:
    async with ClusterServer(max_body=64 * 1024) as srv:
        yield srv


async def test_bad_requests_get_4xx_with_reasons(small_server: ClusterServer) -> None:
    server = small_server
    sink, other = RecordingSink(), RecordingSink()
    server.register("A1", sink)
    server.register("B2", other)
    good = report([(0, '{"v": 1}')])
    cases: list[tuple[str, Any, str | None, int, str]] = [
        ("A1", good, None, 401, "Authorization"),
        ("A1", good, "Basic abc", 401, "Authorization"),
        ("A1", good, "Bearer ", 401, "Authorization"),
        ("A1", good, server.token_for("B2"), 403, "not the token of trial A1"),  # B2 posting as A1
        ("A1", good, "0" * 64, 403, "not the token"),
        ("Z9", good, "auto", 404, "not registered"),
        ("A1", b"{not json", "auto", 422, "not valid"),
        ("A1", b"", "auto", 422, "not valid"),
        ("A1", [1, 2], "auto", 422, "not valid"),
        ("A1", report([(-1, "x")]), "auto", 422, "records.0.seq"),
        ("A1", report([(0, 5)]), "auto", 422, "records.0.data"),
        ("A1", report(surprise=1), "auto", 422, "surprise"),
        ("A1", {"attempt": 1}, "auto", 422, "keeper_version"),
        ("A1", report([(0, "x" * 70_000)]), "auto", 413, "limit of 65536 bytes"),
        ("A1", report([(10**6, "far ahead")]), "auto", 422, "ahead"),
        ("A1", report(attempt=2), "auto", 200, ""),  # the first report pins the attempt...
        ("A1", report(attempt=1), "auto", 409, "stale"),  # ...so a different one is refused
        ("A1", report(attempt=2, keeper_version=trial_keeper.__version__ + ".post1"), "auto", 409, "version"),
    ]
    for trial_id, body, token, status, reason in cases:
        got, answer = await post(server, trial_id, body, token)
        assert got == status, (trial_id, token, answer)
        if status != 200:
            assert reason in answer["error"], answer
            assert answer["error"].endswith(".")
    assert sink.records == [] and other.records == []
    assert len(sink.rejected) == 1 and "differs from the server's" in sink.rejected[0]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/api/v1/nothing") as r:
            assert r.status == 404 and "error" in await r.json()
        async with session.get(f"{server.url}/api/v1/trials/A1/report") as r:
            assert r.status == 405 and "error" in await r.json()


async def test_duplicates_and_out_of_order_batches(server: ClusterServer) -> None:
    sink = RecordingSink()
    server.register("O1", sink)
    text = [json.dumps({"n": i, "q": 'it\'s "x" ü'}, ensure_ascii=False) for i in range(25)]
    steps = [
        (range(10), 10),
        (range(5, 15), 15),
        (range(20, 25), 15),  # early: held back
        (range(5), 15),  # old: dropped
        (range(15, 20), 25),  # fills the gap: 15..24 go out in order
        (range(25), 25),
    ]
    for seqs, next_seq in steps:
        status, ack = await post(server, "O1", report([(i, text[i]) for i in reversed(seqs)]))
        assert status == 200 and ack["next_seq"] == next_seq
    status, ack = await post(server, "O1", report(exited={"exit_code": 0, "end_time_ms": 5, "record_count": 26}))
    assert ack == {"next_seq": 25, "exit_accepted": False}  # record 25 is still missing
    status, ack = await post(server, "O1", report(exited={"exit_code": 0, "end_time_ms": 5, "record_count": 25}))
    assert ack == {"next_seq": 25, "exit_accepted": True}
    status, ack = await post(server, "O1", report([(25, "late")]))
    assert status == 200 and ack["exit_accepted"] is False
    sink.check_exactly(text)
    assert sink.exit == (0, 5)
    # Journal records fed by the platform go through the same de-duplication.
    assert await server.feed("O1", list(enumerate(text))) == 0


async def test_openapi_is_served(server: ClusterServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/api/v1/openapi.json") as r:
            doc = await r.json()
        async with session.get(f"{server.url}/api/v1/version") as r:
            assert (await r.json())["keeper_version"] == trial_keeper.__version__
    assert server.url.startswith("http://127.0.0.1:")  # loopback unless another address is asked for
    assert doc["openapi"].startswith("3.")
    assert "/api/v1/trials/{trial_id}/report" in doc["paths"]
    assert set(doc["components"]["schemas"]) >= {"Report", "Record", "Exited", "ReportAck", "ErrorBody"}


def test_tokens_and_arguments() -> None:
    a = ClusterServer(secret=b"s")
    b = ClusterServer(secret=b"s")
    assert a.token_for("T") == b.token_for("T") != a.token_for("U")
    assert ClusterServer().token_for("T") != a.token_for("T")
    assert len(a.token_for("T")) == 64
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        ClusterServer(heartbeat_timeout=0)
    with pytest.raises(ValueError, match="max_body"):
        ClusterServer(max_body=10)
    with pytest.raises(KeyError, match="not registered"):
        a.channel("nope")


async def test_refused_records_are_not_acknowledged(small_server: ClusterServer) -> None:
    """Durable before acknowledged: a record the sink did not store is not covered by next_seq, so
    the keeper resends it; once the sink accepts again, every record is stored once."""
    server = small_server
    sink = RecordingSink()
    sink.refuse_after = 2
    server.register("F1", sink)
    status, ack = await post(server, "F1", report([(0, "a"), (1, "b"), (2, "c"), (3, "d")]))
    assert status == 200 and ack["next_seq"] == 2  # c and d were refused
    status, ack = await post(
        server, "F1", report([(2, "c"), (3, "d")], exited={"exit_code": 0, "end_time_ms": 1, "record_count": 4})
    )
    assert ack == {"next_seq": 2, "exit_accepted": False}  # the exit waits for the refused records
    sink.refuse_after = None
    status, ack = await post(
        server, "F1", report([(2, "c"), (3, "d")], exited={"exit_code": 0, "end_time_ms": 1, "record_count": 4})
    )
    assert ack == {"next_seq": 4, "exit_accepted": True}
    sink.check_exactly(["a", "b", "c", "d"])


async def test_a_sink_that_raises_gets_no_acknowledgement(small_server: ClusterServer) -> None:
    server = small_server

    class Broken(RecordingSink):
        async def on_records(self, records: list[tuple[int, str]]) -> int | None:
            raise OSError("database is locked")

    server.register("F2", Broken())
    status, ack = await post(server, "F2", report([(0, "a")]))
    assert status == 200 and ack["next_seq"] == 0
