"""The ClusterServer: where trial keepers on remote hosts and pods report metrics, heartbeats and exits.

See docs/cluster-server.md for the protocol. In short: each trial has a bearer token, an HMAC-SHA256
of the experiment's secret and its trial id, so a trial cannot post another trial's metrics. A keeper
posts :class:`~nni_ts.server.models.Report` bodies to ``/api/v1/trials/{trial_id}/report``; the
server de-duplicates and re-orders by ``seq`` and calls the trial's registered
:class:`~nni_ts.server.sink.TrialSink` with each record exactly once, in order, then with the exit.
A trial that stops reporting for ``heartbeat_timeout`` seconds is reported lost.

A platform without shared storage also serves each trial's files (its code archive, the keeper,
``parameter.cfg``) read-only at ``GET /api/v1/trials/{trial_id}/files/{name}``, with the same per-trial
token: see :meth:`ClusterServer.serve_downloads`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, Self

import pydantic
from aiohttp import web

import trial_keeper

from ..tasks import TaskSupervisor
from .models import TRIAL_ID_PATTERN, ErrorBody, LogRequest, LogTail, Report, ReportAck
from .sink import MAX_HELD, TrialChannel, TrialSink

__all__ = ["API_PREFIX", "ClusterServer", "DownloadProvider"]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
_ROUTE_ID = "{trial_id:[A-Za-z0-9_.-]{1,128}}"
#: A downloadable file's name: one path segment, no leading dot (no ``..``, no ``/``).
_ROUTE_FILE = "{name:[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}}"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class DownloadProvider(Protocol):
    """What serves a trial's files (:meth:`ClusterServer.serve_downloads`): a platform without shared
    storage. Names come from a fixed set the provider knows (``code.tar.gz``, ``keeper.tar.gz``,
    ``parameter.cfg``...); they are never used as paths."""

    async def trial_download(self, trial_id: str, name: str) -> bytes | None:
        """The content of file ``name`` for ``trial_id``, or None if there is no such file."""


class ClusterServer:
    """An aiohttp server for trial keepers. Use ``async with ClusterServer(...) as server:``.

    ``secret`` is the experiment's secret (random when None; pass the same one after a restart so
    keepers' tokens stay valid). ``keeper_version`` is the version keepers must report, compared as
    a full string (default: this package's ``trial_keeper.__version__``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        secret: bytes | None = None,
        heartbeat_timeout: float = 15.0,
        max_body: int = 8 * 1024 * 1024,
        keeper_version: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not heartbeat_timeout > 0:
            raise ValueError(f"heartbeat_timeout must be a positive number of seconds, not {heartbeat_timeout!r}.")
        if max_body < 1024:
            raise ValueError(f"max_body must be at least 1024 bytes, not {max_body!r}.")
        self.host = host
        self.port = port
        self.secret = secret if secret is not None else secrets.token_bytes(32)
        self.heartbeat_timeout = heartbeat_timeout
        self.max_body = max_body
        self.keeper_version = keeper_version or trial_keeper.__version__
        #: Serve https:// with this context (the keepers then need ``--ca-file`` for a private CA).
        self.ssl_context = ssl_context
        self._channels: dict[str, TrialChannel] = {}
        self._log_requests: dict[str, tuple[LogRequest, asyncio.Future[bytes]]] = {}
        self._runner: web.AppRunner | None = None
        self._tasks: TaskSupervisor | None = None
        self._downloads: DownloadProvider | None = None
        #: The largest file served by ``GET .../files/{name}``, in bytes.
        self.max_download = 256 * 1024 * 1024

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind and serve. ``port=0`` picks a free port; :attr:`url` tells which."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=self.max_body, middlewares=[self._errors])
        app.router.add_post(f"{API_PREFIX}/trials/{_ROUTE_ID}/report", self._report)
        app.router.add_get(f"{API_PREFIX}/trials/{_ROUTE_ID}/files/{_ROUTE_FILE}", self._download)
        app.router.add_get(f"{API_PREFIX}/openapi.json", self._openapi)
        app.router.add_get(f"{API_PREFIX}/version", self._version)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        self._tasks = TaskSupervisor(f"cluster-server-{self.port}")
        self._tasks.spawn(self._sweep(), name="sweep")

    async def close(self) -> None:
        """Stop serving. Registrations are kept; pending log requests fail. Idempotent."""
        if self._tasks is not None:
            tasks, self._tasks = self._tasks, None
            await tasks.stop()
        for _request, future in self._log_requests.values():
            if not future.done():
                future.set_exception(ConnectionError("The cluster server was closed."))
        self._log_requests.clear()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """The base URL keepers post to, for example ``http://127.0.0.1:41235``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    # ------------------------------------------------------------------ trials

    def token_for(self, trial_id: str) -> str:
        """The trial's bearer token: hex HMAC-SHA256 of the secret and the trial id."""
        return hmac.new(self.secret, trial_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def register(
        self, trial_id: str, sink: TrialSink, *, attempt: int | None = None, next_seq: int = 0
    ) -> TrialChannel:
        """Accept reports for ``trial_id`` and deliver them to ``sink``.

        ``attempt`` pins the attempt number accepted (None: the first one that reports);
        ``next_seq`` is how many records were already delivered (after a manager restart).
        Registering again replaces the previous registration.
        """
        channel = TrialChannel(trial_id, sink, attempt=attempt, next_seq=next_seq)
        self._channels[trial_id] = channel
        return channel

    def serve_downloads(self, provider: DownloadProvider | None) -> None:
        """Serve the registered trials' files from ``provider`` (None: stop). ``GET
        /api/v1/trials/{trial_id}/files/{name}`` answers with ``provider.trial_download(trial_id, name)``
        to the bearer of that trial's token, while the trial is registered; there is no other way to name
        a file, so a trial reads its own files only."""
        self._downloads = provider

    def unregister(self, trial_id: str) -> None:
        """Stop accepting reports for ``trial_id`` (they get 404). Unknown ids are ignored."""
        self._channels.pop(trial_id, None)
        pending = self._log_requests.pop(trial_id, None)
        if pending is not None and not pending[1].done():
            pending[1].set_exception(LookupError(f"Trial {trial_id} was unregistered."))

    def channel(self, trial_id: str) -> TrialChannel:
        """The registration of ``trial_id``. Raises KeyError if it is not registered."""
        try:
            return self._channels[trial_id]
        except KeyError:
            raise KeyError(f"Trial {trial_id} is not registered with the cluster server.") from None

    async def feed(self, trial_id: str, records: Iterable[tuple[int, str]]) -> int:
        """Deliver records obtained another way (a journal read from shared storage) through the same
        de-duplication as reports. Returns how many were new and accepted."""
        return await self.channel(trial_id).feed(records)

    async def finish(self, trial_id: str, exit_code: int, end_time_ms: int, record_count: int) -> bool:
        """Deliver an exit obtained another way; see :meth:`TrialChannel.finish`."""
        return await self.channel(trial_id).finish(exit_code, end_time_ms, record_count)

    async def request_log_tail(self, trial_id: str, file: str = "stdout", tail: int = 65536) -> bytes:
        """Ask the trial's keeper for the last ``tail`` bytes of its stdout or stderr.

        The request goes out in the answer to the keeper's next report (at most one heartbeat
        interval away) and the keeper answers in the report after. Wrap it in ``asyncio.timeout``.
        """
        if file not in ("stdout", "stderr"):
            raise ValueError(f"file must be 'stdout' or 'stderr', not {file!r}.")
        self.channel(trial_id)
        existing = self._log_requests.get(trial_id)
        if existing is not None and not existing[1].done():
            return await asyncio.shield(existing[1])
        request = LogRequest(request_id=secrets.token_hex(8), file=file, tail=max(0, tail))
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._log_requests[trial_id] = (request, future)
        try:
            return await asyncio.shield(future)
        finally:
            if self._log_requests.get(trial_id, (None, None))[1] is future:
                del self._log_requests[trial_id]

    # ------------------------------------------------------------------ lost trials

    async def _sweep(self) -> None:
        period = min(1.0, max(0.02, self.heartbeat_timeout / 5))
        while True:
            await asyncio.sleep(period)
            await self.check_heartbeats()

    async def check_heartbeats(self) -> None:
        """Report lost every trial whose keeper has been silent too long (the sweeper calls it)."""
        now = time.monotonic()
        for channel in list(self._channels.values()):
            if channel.exited or channel.lost or channel.rejected or channel.last_seen is None:
                continue
            silent = now - channel.last_seen
            if silent > self.heartbeat_timeout:
                channel.lost = True
                message = f"No report from the trial's keeper for {silent:.1f} s"
                await channel.call("on_lost", f"{message} (time-out {self.heartbeat_timeout:g} s).")

    # ------------------------------------------------------------------ HTTP

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"The request body is larger than the server's limit of {self.max_body} bytes.")
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json":
                return _error(exc.status, f"{exc.reason}: {request.method} {request.path}.")
            raise

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"keeper_version": self.keeper_version, "api": "v1"})

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    def _refuse(self, request: web.Request, trial_id: str, what: str) -> web.Response | None:
        """401 / 403 unless the request carries ``trial_id``'s bearer token; None when it does."""
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(
                401, f"The request has no 'Authorization: Bearer <token>' header; {what} need the trial's token."
            )
        if not hmac.compare_digest(token.strip().encode("utf-8", "replace"), self.token_for(trial_id).encode()):
            return _error(403, f"The bearer token is not the token of trial {trial_id}.")
        return None

    async def _download(self, request: web.Request) -> web.Response:
        trial_id, name = request.match_info["trial_id"], request.match_info["name"]
        refused = self._refuse(request, trial_id, "downloads")
        if refused is not None:
            return refused
        if trial_id not in self._channels:
            return _error(404, f"Trial {trial_id} is not registered with this server; retry later.")
        if self._downloads is None:
            return _error(404, "This server serves no files: the trials' platform uses shared storage.")
        data = await self._downloads.trial_download(trial_id, name)
        if data is None:
            return _error(404, f"Trial {trial_id} has no file {name!r} to download.")
        if len(data) > self.max_download:
            return _error(413, f"{name} is {len(data)} bytes, more than the server's limit of {self.max_download}.")
        return web.Response(body=data, content_type="application/octet-stream", headers={"Cache-Control": "no-store"})

    async def _report(self, request: web.Request) -> web.Response:
        trial_id = request.match_info["trial_id"]
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            message = "The request has no 'Authorization: Bearer <token>' header; reports need the trial's token."
            return _error(401, message)
        if not hmac.compare_digest(token.strip().encode("utf-8", "replace"), self.token_for(trial_id).encode()):
            return _error(403, f"The bearer token is not the token of trial {trial_id}.")
        channel = self._channels.get(trial_id)
        if channel is None:
            return _error(404, f"Trial {trial_id} is not registered with this server; retry later.")
        body = await request.read()
        try:
            report = Report.model_validate_json(body)
        except pydantic.ValidationError as exc:
            return _error(422, "The report is not valid: " + _describe(exc))
        if report.keeper_version != self.keeper_version:
            message = (
                f"The trial keeper's version {report.keeper_version!r} differs from the server's "
                f"{self.keeper_version!r}; install the same nni-ts version beside the trial."
            )
            if not channel.rejected:
                channel.rejected = True
                await channel.call("on_rejected", message)
            return _error(409, message)
        if channel.attempt is not None and report.attempt != channel.attempt:
            message = f"Attempt {report.attempt} of trial {trial_id} is stale; the server accepts {channel.attempt}."
            return _error(409, message)
        if report.records and not channel.exited:
            furthest = max(r.seq for r in report.records)
            if furthest - channel.next_seq > MAX_HELD:
                message = (
                    f"Record {furthest} of trial {trial_id} is more than {MAX_HELD} ahead of the next expected "
                    f"record ({channel.next_seq}); send the missing records first."
                )
                return _error(422, message)
        # The report is acceptable: nothing above changed any state.
        channel.attempt = report.attempt
        channel.last_seen = time.monotonic()
        if not channel.started:
            channel.started = True
            await channel.call("on_started", report.started_ms, report.host, report.pid)
        if channel.lost:
            channel.lost = False
            await channel.call("on_heartbeat")
        # Acknowledge (next_seq) only what the sink accepted, i.e. stored durably.
        await channel.feed((r.seq, r.data) for r in report.records)
        exit_accepted = False
        if report.exited is not None:
            ex = report.exited
            exit_accepted = await channel.finish(ex.exit_code, ex.end_time_ms, ex.record_count)
        if report.log_tail is not None:
            self._answer_log(trial_id, report.log_tail)
        pending = self._log_requests.get(trial_id)
        ack = ReportAck(
            next_seq=channel.next_seq,
            exit_accepted=exit_accepted,
            log_request=pending[0] if pending is not None and not pending[1].done() and not exit_accepted else None,
        )
        return web.Response(body=ack.model_dump_json(exclude_none=True), content_type="application/json")

    def _answer_log(self, trial_id: str, answer: LogTail) -> None:
        pending = self._log_requests.get(trial_id)
        if pending is None or pending[0].request_id != answer.request_id or pending[1].done():
            return
        try:
            data = base64.b64decode(answer.data, validate=True)
        except ValueError:
            data = b""
        pending[1].set_result(data)


def _describe(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more." if more > 0 else ".")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 description of API v1, built from the pydantic models."""
    schemas: dict[str, Any] = {}
    for model in (Report, ReportAck, ErrorBody):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema

    _fix_nullable(schemas)

    def error(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }

    return {
        "openapi": "3.0.3",
        "info": {"title": "nni-ts cluster server", "version": "1", "description": "Trial keepers report here."},
        "paths": {
            f"{API_PREFIX}/trials/{{trial_id}}/report": {
                "post": {
                    "operationId": "report",
                    "summary": "Post records, a heartbeat (no records) or the exit of one trial.",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {
                            "name": "trial_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": TRIAL_ID_PATTERN},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Report"}}},
                    },
                    "responses": {
                        "200": {
                            "description": "Accepted; resend from next_seq.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReportAck"}}},
                        },
                        "401": error("No bearer token."),
                        "403": error("The token is not this trial's."),
                        "404": error("The trial is not registered."),
                        "409": error("Version mismatch or stale attempt."),
                        "413": error("The body is too large."),
                        "422": error("The body is not a valid report."),
                    },
                }
            },
            f"{API_PREFIX}/trials/{{trial_id}}/files/{{name}}": {
                "get": {
                    "operationId": "download",
                    "summary": "One of the trial's files (code.tar.gz, keeper.tar.gz, parameter.cfg), read-only; "
                    "served only by a platform without shared storage.",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {
                            "name": "trial_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": TRIAL_ID_PATTERN},
                        },
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"},
                        },
                    ],
                    "responses": {
                        "200": {"description": "The file.", "content": {"application/octet-stream": {}}},
                        "401": error("No bearer token."),
                        "403": error("The token is not this trial's."),
                        "404": error("The trial is not registered, or has no such file."),
                        "413": error("The file is larger than the server serves."),
                    },
                }
            },
            f"{API_PREFIX}/version": {
                "get": {
                    "operationId": "version",
                    "summary": "The keeper version this server expects.",
                    "responses": {"200": {"description": "The version.", "content": {"application/json": {}}}},
                }
            },
            f"{API_PREFIX}/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {"200": {"description": "OpenAPI JSON.", "content": {"application/json": {}}}},
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _fix_nullable(node: Any) -> None:
    """OpenAPI 3.0 has no ``type: null``: turn ``anyOf [X, null]`` into ``X`` + ``nullable``."""
    if isinstance(node, dict):
        any_of = node.get("anyOf")
        if isinstance(any_of, list) and {"type": "null"} in any_of:
            rest = [s for s in any_of if s != {"type": "null"}]
            del node["anyOf"]
            if len(rest) == 1 and "$ref" in rest[0]:
                node["allOf"] = rest
            elif len(rest) == 1:
                node.update(rest[0])
            else:
                node["anyOf"] = rest
            node["nullable"] = True
        for value in node.values():
            _fix_nullable(value)
    elif isinstance(node, list):
        for item in node:
            _fix_nullable(item)
