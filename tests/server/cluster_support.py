"""Helpers shared by the cluster server's tests: a recording sink, trial scripts, and keepers as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, web

REPO = Path(__file__).resolve().parents[2]
PARAMS = '{"parameter_id": 7, "parameter_source": "algorithm", "parameters": {"lr": 0.5}, "parameter_index": 0}'


class RecordingSink:
    """A TrialSink that keeps everything, with events to await."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str]] = []
        self.started = asyncio.Event()
        self.exited = asyncio.Event()
        self.lost = asyncio.Event()
        self.exit: tuple[int, int] | None = None
        self.rejected: list[str] = []
        self.heartbeats = 0
        self.events: list[str] = []
        self._waiters: list[tuple[int, asyncio.Event]] = []
        #: When set, accept only this many records in all (the store is "full"); the rest is refused.
        self.refuse_after: int | None = None

    async def on_started(self, start_time_ms: int, host: str, pid: int) -> None:
        self.events.append("started")
        self.started.set()

    async def on_records(self, records: list[tuple[int, str]]) -> int | None:
        assert not self.exited.is_set(), "a record came after the exit"
        take = len(records)
        if self.refuse_after is not None:
            take = max(0, min(take, self.refuse_after - len(self.records)))
        self.records.extend(records[:take])
        for n, event in self._waiters:
            if len(self.records) >= n:
                event.set()
        return take

    async def on_exited(self, exit_code: int, end_time_ms: int) -> None:
        assert self.exit is None, "the exit was delivered twice"
        self.events.append("exited")
        self.exit = (exit_code, end_time_ms)
        self.exited.set()

    async def on_lost(self, message: str) -> None:
        self.events.append("lost")
        self.lost.set()

    async def on_heartbeat(self) -> None:
        self.events.append("heartbeat")
        self.heartbeats += 1

    async def on_rejected(self, message: str) -> None:
        self.rejected.append(message)

    async def wait_count(self, n: int, timeout: float = 60.0) -> None:
        event = asyncio.Event()
        if len(self.records) >= n:
            return
        self._waiters.append((n, event))
        async with asyncio.timeout(timeout):
            await event.wait()

    def check_exactly(self, expected: list[str]) -> None:
        seqs = [s for s, _ in self.records]
        assert seqs == list(range(len(expected))), "records are missing, duplicated or out of order"
        for (seq, data), want in zip(self.records, expected, strict=True):
            assert data == want, f"record {seq} changed on the way"


def value_of(i: int) -> Any:
    return {"i": i, "s": "it's a \"quote\" \\ back'slash ' end", "u": "ünï 🎉"}


def record_text(trial_id: str, i: int) -> str:
    """The exact text the trial below writes for its record ``i``."""
    if i % 7 == 3:  # written by hand, UTF-8 bytes as they are (no \\u escapes)
        return json.dumps(
            {"trial_job_id": trial_id, "type": "PERIODICAL", "raw": i, "v": value_of(i)}, ensure_ascii=False
        )
    return json.dumps(
        {
            "parameter_id": 7,
            "trial_job_id": trial_id,
            "type": "PERIODICAL",
            "sequence": i - (i + 4) // 7,
            "value": json.dumps(value_of(i)),
        }
    )


TRIAL = r"""
import json, os, sys
import nni

params = nni.get_next_parameter()
assert params == {"lr": 0.5}, params
n = int(sys.argv[1]); pause = int(sys.argv[2]); gate = sys.argv[3]; code = int(sys.argv[4])

def value_of(i):
    return {"i": i, "s": "it's a \"quote\" \\ back'slash ' end", "u": "ünï 🎉"}

for i in range(n):
    if i == pause and gate != "-":
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.connect(gate)
        s.sendall(b"waiting")
        assert s.recv(2) == b"go"
        s.close()
    if i % 7 == 3:
        rec = json.dumps({"trial_job_id": nni.get_trial_id(), "type": "PERIODICAL", "raw": i, "v": value_of(i)},
                         ensure_ascii=False)
        sys.stdout.buffer.write(b"NNISDK_MEb'" + rec.encode("utf-8") + b"'\n")
        sys.stdout.flush()
    else:
        nni.report_intermediate_result(value_of(i))
    if i % 100 == 0:
        print("progress", i, "with a ' quote")
        sys.stderr.write("err %d\n" % i)
sys.exit(code)
"""


def trial_command(trial_dir: Path, n: int, *, pause: int = -1, gate: Path | None = None, code: int = 0) -> str:
    script = trial_dir.parent / "trial.py"
    return f"{sys.executable} {script} {n} {pause} {gate if gate else '-'} {code}"


async def start_keeper(
    trial_dir: Path,
    trial_id: str,
    command: str,
    *,
    server_url: str | None = None,
    token: str | None = None,
    attempt: int = 1,
    extra: list[str] | None = None,
    passthrough: bool = False,
) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    args = [
        sys.executable,
        "-m",
        "trial_keeper",
        "--trial-id",
        trial_id,
        "--trial-dir",
        str(trial_dir),
        "--attempt",
        str(attempt),
        "--heartbeat",
        "0.2",
        "--grace",
        "2",
        "--report-timeout",
        "60",
    ]
    if server_url:
        args += ["--server-url", server_url, "--token", token or ""]
    if not passthrough:
        args.append("--no-passthrough")
    args += extra or []
    args += ["--", command]
    err = open(trial_dir.parent / f"keeper-{trial_id}-{attempt}.err", "ab")  # noqa: SIM115
    try:
        return await asyncio.create_subprocess_exec(
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if passthrough else asyncio.subprocess.DEVNULL,
            stderr=err,
            cwd=str(trial_dir.parent),
        )
    finally:
        err.close()


async def wait_exit(proc: asyncio.subprocess.Process, timeout: float = 120.0) -> int:
    async with asyncio.timeout(timeout):
        return await proc.wait()


class Gate:
    """A Unix socket the trial connects to at its pause point; it waits there until :meth:`release`."""

    def __init__(self) -> None:
        # A short path: Unix socket paths are limited to 107 bytes.
        self._dir = tempfile.mkdtemp(prefix="nnits-gate-", dir="/tmp")
        self.path = Path(self._dir) / "s"
        self.waiting = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> Gate:
        self._server = await asyncio.start_unix_server(self._on_client, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(7)
        self._writer = writer
        self.waiting.set()

    async def release(self, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            await self.waiting.wait()
        assert self._writer is not None
        self._writer.write(b"go")
        await self._writer.drain()


class FaultyProxy:
    """An HTTP proxy in front of the server that drops connections and replays requests.

    ``drop_before``: chance to drop a request without forwarding it. ``drop_after``: chance to
    forward it, then drop the connection instead of answering (the server has the records, the
    keeper gets no acknowledgement). ``replay``: post each request a second time, and an older one.
    """

    def __init__(
        self, upstream: str, *, drop_before: float = 0.0, drop_after: float = 0.0, replay: bool = False
    ) -> None:
        self.upstream = upstream
        self.drop_before = drop_before
        self.drop_after = drop_after
        self.replay = replay
        self.rng = random.Random(4)
        self.bodies: list[tuple[str, dict[str, str], bytes]] = []
        self.dropped = 0
        self.replayed = 0
        self.url = ""

    async def __aenter__(self) -> FaultyProxy:
        self._session = ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()
        await self._session.close()

    async def _post(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        async with self._session.post(self.upstream + path, data=body, headers=headers) as r:
            return r.status, await r.read()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")}
        if self.rng.random() < self.drop_before:
            self.dropped += 1
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        status, data = await self._post(request.path, headers, body)
        if self.replay:
            self.bodies.append((request.path, headers, body))
            old = self.bodies[self.rng.randrange(len(self.bodies))]
            await self._post(request.path, headers, body)
            await self._post(*old)
            self.replayed += 2
        if self.rng.random() < self.drop_after:
            self.dropped += 1
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        return web.Response(status=status, body=data, content_type="application/json")
