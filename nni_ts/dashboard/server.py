"""The dashboard's HTTP side: pages, static files, the JSON API, live events, actions and sessions.

Layout under the base path (every URL the pages use is relative, so a reverse proxy may mount it
anywhere; ``--base-path`` tells the server where):

- ``./`` the app (``index.html``), ``./login`` the login page (service only), ``./logout``
- ``./dash/static/...`` HTML, CSS and JavaScript modules, vendored chart libraries
- ``./dash/api/...`` the JSON API (see docs/dashboard.md), ``./dash/api/experiments/ID/events`` the SSE stream

Reads go through a :class:`~nni_ts.dashboard.queries.DashboardReader`, awaited (the event loop never
waits on a database): the SQLite store on a thread of its own, or a PostgreSQL service's tables through
asyncpg (:mod:`nni_ts.dashboard.pgreader`). Actions go to a :class:`Backend`: the experiment loop in
this process (``nni-ts create``), nothing (``nni-ts view``, read-only) or the service.

Security: with a login (the service), a session cookie (HttpOnly, SameSite=Strict) names the user and
each session has a CSRF token that every POST must carry in ``X-CSRF-Token``; API clients may instead
send ``Authorization: Bearer <token>``. Without a login (a local experiment), POSTs need the CSRF token
too, and a server bound to loopback answers only requests addressed to a loopback name (no DNS
rebinding).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from aiohttp import web

from ..errors import ConfigError, NniTsError, StoreError, UserError
from .events import EventHub
from .queries import DashboardReader, SqliteReader, TrialQuery, parse_filter

__all__ = ["Backend", "Dashboard", "Viewer"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "nni_ts_session"
SESSION_SECONDS = 12 * 3600
_ID = "{experiment_id:[A-Za-z0-9_-]{1,64}}"
_TRIAL = "{trial_id:[A-Za-z0-9_-]{1,64}}"
_TRIAL_FILES = ("stdout", "stderr", "trial.log")
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Viewer:
    """Who looks: a user name, whether they are an admin, and their session's CSRF token."""

    name: str
    admin: bool
    csrf: str
    bearer: bool = False


class Backend:
    """What the dashboard may do beyond reading the store. The base class is read-only (``nni-ts view``)."""

    login_required = False
    readonly = True

    async def authenticate(self, token: str) -> tuple[str, bool] | None:
        """The (user name, is admin) of an API token, or None."""
        return None

    async def lookup(self, name: str) -> tuple[str, bool] | None:
        """The user of a session, still valid? (name, is admin) or None if removed."""
        return None

    async def visible(self, viewer: Viewer) -> set[str] | None:
        """The experiment ids ``viewer`` may see; None for all of them."""
        return None

    def is_live(self, experiment_id: str) -> bool:
        """Whether this server can act on the experiment (its loop runs here)."""
        return False

    def elapsed(self, experiment_id: str) -> float | None:
        """Seconds the running experiment has been active, if this server knows it."""
        return None

    def _refuse(self, experiment_id: str) -> NoReturn:
        raise UserError(f"Experiment {experiment_id} is shown read-only here; this dashboard cannot change it.")

    async def stop(self, viewer: Viewer, experiment_id: str) -> None:
        self._refuse(experiment_id)

    async def extend(
        self, viewer: Viewer, experiment_id: str, max_trial_number: int | None, max_duration: str | None
    ) -> None:
        self._refuse(experiment_id)

    async def kill(self, viewer: Viewer, experiment_id: str, trial_id: str) -> None:
        self._refuse(experiment_id)

    async def update(self, viewer: Viewer, experiment_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        self._refuse(experiment_id)

    async def rerun(self, viewer: Viewer, experiment_id: str, parameters: dict[str, Any]) -> None:
        """Run one more trial with ``parameters`` (NNI's customized trial)."""
        self._refuse(experiment_id)

    async def log(self, experiment_id: str, trial_id: str, name: str, tail: int | None) -> bytes | None:
        """A trial file through the live platform; None to read it from the experiment's directory."""
        return None


@dataclass
class _Session:
    name: str
    csrf: str
    expires: float


class Dashboard:
    """The dashboard of the experiments in one store. ``add_routes(app)``, then ``await close()``.

    ``store``: the path of a SQLite store file, or a reader (e.g. a PostgreSQL service's
    :class:`~nni_ts.dashboard.pgreader.PostgresReader`)."""

    def __init__(
        self, store: str | Path | DashboardReader, backend: Backend | None = None, *, base_path: str = "/"
    ) -> None:
        self.backend = backend or Backend()
        self.base = "/" + base_path.strip("/") + "/" if base_path.strip("/") else "/"
        self.reader: DashboardReader = store if isinstance(store, DashboardReader) else SqliteReader(store)
        self.hub = EventHub(self.reader)
        self._sessions: dict[str, _Session] = {}
        self._local_csrf = secrets.token_urlsafe(24)
        self.loopback_only = False
        self._streams: set[web.StreamResponse] = set()
        self._closing = False
        self._cache: dict[tuple[str, str], tuple[Any, bytes]] = {}

    async def close(self) -> None:
        self._closing = True
        await self.hub.close()
        await self.reader.close()

    # ------------------------------------------------------------------ routes

    def add_routes(self, app: web.Application) -> None:
        b = self.base
        r = app.router
        if b != "/":
            r.add_get(b.rstrip("/"), self._to_base)
        r.add_get(b, self._index)
        r.add_get(b + "login", self._login_page)
        r.add_post(b + "login", self._login)
        r.add_post(b + "logout", self._logout)
        r.add_get(b + "dash/static/{path:[A-Za-z0-9_./-]+}", self._static)
        api = b + "dash/api"
        r.add_get(api + "/session", self._guard(self._session))
        r.add_get(api + "/experiments", self._guard(self._experiments))
        r.add_get(api + "/events", self._guard(self._all_events))
        r.add_get(api + f"/experiments/{_ID}", self._guard(self._overview))
        r.add_get(api + f"/experiments/{_ID}/trials", self._guard(self._trials))
        r.add_get(api + f"/experiments/{_ID}/trials/{_TRIAL}", self._guard(self._trial))
        r.add_get(api + f"/experiments/{_ID}/trials/{_TRIAL}/log", self._guard(self._log))
        r.add_get(api + f"/experiments/{_ID}/charts", self._guard(self._charts))
        r.add_get(api + f"/experiments/{_ID}/intermediate", self._guard(self._intermediate))
        r.add_get(api + f"/experiments/{_ID}/export", self._guard(self._export))
        r.add_get(api + f"/experiments/{_ID}/events", self._guard(self._events))
        r.add_post(api + f"/experiments/{_ID}/stop", self._guard(self._stop, write=True))
        r.add_post(api + f"/experiments/{_ID}/extend", self._guard(self._extend, write=True))
        r.add_post(api + f"/experiments/{_ID}/update", self._guard(self._update, write=True))
        r.add_post(api + f"/experiments/{_ID}/trials/{_TRIAL}/kill", self._guard(self._kill, write=True))
        r.add_post(api + f"/experiments/{_ID}/trials", self._guard(self._rerun, write=True))
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        self._closing = True
        for resp in list(self._streams):
            task = getattr(resp, "_nni_ts_task", None)
            if task is not None:
                task.cancel()

    def app(self) -> web.Application:
        """A stand-alone application serving only the dashboard."""
        app = web.Application(client_max_size=4 * 1024 * 1024)
        self.add_routes(app)

        async def cleanup(_: web.Application) -> None:
            await self.close()

        app.on_cleanup.append(cleanup)
        return app

    # ------------------------------------------------------------------ who is asking

    def _host_allowed(self, request: web.Request) -> bool:
        if not self.loopback_only:
            return True
        host = request.host.rsplit(":", 1)[0] if not request.host.startswith("[") else request.host.split("]")[0] + "]"
        return host in _LOOPBACK_NAMES

    async def _viewer(self, request: web.Request) -> Viewer | None:
        if not self.backend.login_required:
            return Viewer("local", True, self._local_csrf)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            found = await self.backend.authenticate(token.strip())
            return Viewer(found[0], found[1], "", bearer=True) if found else None
        sid = request.cookies.get(COOKIE)
        session = self._sessions.get(sid or "")
        if session is None or session.expires < time.time():
            return None
        found = await self.backend.lookup(session.name)
        if found is None:
            self._sessions.pop(sid or "", None)
            return None
        return Viewer(found[0], found[1], session.csrf)

    def _guard(
        self, handler: Callable[[web.Request, Viewer], Awaitable[web.StreamResponse]], *, write: bool = False
    ) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                if not self._host_allowed(request):
                    raise Problem(403, "This dashboard answers only requests addressed to a loopback name.")
                viewer = await self._viewer(request)
                if viewer is None:
                    raise Problem(401, "Log in first: open the dashboard's login page and give your API token.")
                if write:
                    if self.backend.readonly:
                        raise Problem(403, "This dashboard is read-only (nni-ts view); it cannot change experiments.")
                    given = request.headers.get("X-CSRF-Token", "")
                    if not viewer.bearer and not hmac.compare_digest(given, viewer.csrf):
                        raise Problem(
                            403, "This request lacks the page's CSRF token (header X-CSRF-Token); it was refused."
                        )
                if "experiment_id" in request.match_info:
                    await self._check_visible(viewer, request.match_info["experiment_id"])
                return await handler(request, viewer)
            except Problem as exc:
                return web.json_response({"error": str(exc)}, status=exc.status)
            except ConfigError as exc:
                return web.json_response({"error": str(exc), "path": exc.path}, status=422)
            except (UserError, StoreError) as exc:
                return web.json_response({"error": str(exc)}, status=400 if isinstance(exc, UserError) else 503)
            except NniTsError as exc:
                return web.json_response({"error": str(exc)}, status=409)

        return guarded

    async def _check_visible(self, viewer: Viewer, experiment_id: str) -> None:
        allowed = await self.backend.visible(viewer)
        exists = experiment_id in set(await self.reader.experiment_ids())
        if not exists or (allowed is not None and experiment_id not in allowed):
            raise Problem(404, f"There is no experiment {experiment_id!r} you may see.")

    # ------------------------------------------------------------------ pages

    async def _to_base(self, request: web.Request) -> web.StreamResponse:
        # Relative, so that it works whatever a proxy put in front of the base path.
        raise web.HTTPFound(self.base.rstrip("/").rsplit("/", 1)[-1] + "/")

    async def _index(self, request: web.Request) -> web.StreamResponse:
        if not self._host_allowed(request):
            return web.Response(status=403, text="This dashboard answers only requests addressed to a loopback name.")
        if self.backend.login_required and await self._viewer(request) is None:
            raise web.HTTPFound("login")
        return self._page("index.html")

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        if not self.backend.login_required:
            raise web.HTTPFound("./")
        return self._page("login.html")

    def _page(self, name: str) -> web.Response:
        text = (STATIC / name).read_text()
        return web.Response(
            text=text,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": _CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "X-Frame-Options": "DENY",
            },
        )

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if not self.backend.login_required:
            raise web.HTTPFound("./")
        origin = request.headers.get("Origin")
        if origin and origin != "null" and origin.split("://", 1)[-1] != request.host:
            return web.Response(status=403, text="A login must come from the dashboard's own page.")
        form = await request.post()
        token = str(form.get("token", "")).strip()
        found = await self.backend.authenticate(token) if token else None
        if found is None:
            raise web.HTTPFound("login?failed=1")
        sid = secrets.token_urlsafe(32)
        now = time.time()
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
        self._sessions[sid] = _Session(found[0], secrets.token_urlsafe(24), now + SESSION_SECONDS)
        response = web.HTTPFound("./")
        response.set_cookie(
            COOKIE,
            sid,
            httponly=True,
            samesite="Strict",
            path=self.base,
            max_age=SESSION_SECONDS,
            secure=request.secure,
        )
        raise response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        sid = request.cookies.get(COOKIE)
        session = self._sessions.get(sid or "")
        if session is not None and hmac.compare_digest(request.headers.get("X-CSRF-Token", ""), session.csrf):
            self._sessions.pop(sid or "", None)
        response = web.HTTPFound("login")
        response.del_cookie(COOKIE, path=self.base)
        raise response

    async def _static(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        target = (STATIC / rel).resolve()
        if ".." in rel.split("/") or not target.is_relative_to(STATIC.resolve()) or not target.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(target, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    # ------------------------------------------------------------------ API: reads

    async def _session(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        return web.json_response(
            {
                "user": viewer.name,
                "admin": viewer.admin,
                "csrf": viewer.csrf,
                "readonly": self.backend.readonly,
                "login": self.backend.login_required,
            }
        )

    async def _experiments(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        allowed = await self.backend.visible(viewer)
        rows = await self.reader.summaries(allowed)
        for row in rows:
            row["live"] = self.backend.is_live(row["id"])
        return web.json_response(rows)

    async def _overview(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid = request.match_info["experiment_id"]
        live, elapsed = self.backend.is_live(eid), self.backend.elapsed(eid)

        out = await self.reader.overview(eid)
        out["live"] = live
        out["elapsed"] = elapsed if elapsed is not None else (out.get("activeMs") or 0) / 1000
        return _json_body(await self.reader.cpu(_dumps, out))

    async def _trials(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid = request.match_info["experiment_id"]
        q = request.query
        query = TrialQuery(
            filters=tuple(parse_filter(f) for f in q.getall("f", [])),
            sort=q.get("sort", "seq"),
            descending=q.get("order", "asc") == "desc",
            offset=_int(q, "offset", 0, 0, 2**31),
            limit=_int(q, "limit", 50, 1, 1000),
        )
        return _json_body(await self.reader.cpu(_dumps, await self.reader.trials(eid, query)))

    async def _trial(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid, tid = request.match_info["experiment_id"], request.match_info["trial_id"]
        out = await self.reader.trial(eid, tid)
        if out is None:
            raise Problem(404, f"Experiment {eid} has no trial {tid!r}.")
        out["live"] = self.backend.is_live(eid)
        return web.json_response(out)

    async def _log(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid, tid = request.match_info["experiment_id"], request.match_info["trial_id"]
        name = request.query.get("file", "stdout")
        if name not in _TRIAL_FILES:
            raise Problem(400, f"file must be one of {', '.join(_TRIAL_FILES)}, got {name!r}.")
        tail = _int(request.query, "tail", 64 * 1024, 0, 16 * 1024 * 1024)
        if await self.reader.trial(eid, tid) is None:
            raise Problem(404, f"Experiment {eid} has no trial {tid!r}.")
        data = None
        if self.backend.is_live(eid):
            try:
                data = await self.backend.log(eid, tid, name, tail)
            except NniTsError:
                data = None
        if data is None:
            wd = await self.reader.working_dir(eid)
            data = await asyncio.to_thread(_read_tail, Path(wd or "") / "trials" / tid / name, tail) if wd else b""
        return web.Response(body=data, content_type="text/plain", charset="utf-8")

    async def _cached(self, key: tuple[str, str], build: Callable[[], Awaitable[bytes]]) -> bytes:
        """``await build()``, reused while nothing was committed to the store."""
        version = await self.reader.data_version()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        body = await build()
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = (version, body)
        return body

    async def _charts(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid = request.match_info["experiment_id"]
        body = await self._cached((eid, "charts"), lambda: self.reader.chart_data_json(eid))
        return _json_body(body)

    async def _intermediate(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid = request.match_info["experiment_id"]
        body = await self._cached((eid, "inter"), lambda: self.reader.intermediate_json(eid))
        return _json_body(body)

    async def _export(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid = request.match_info["experiment_id"]
        fmt = request.query.get("format", "json")
        if fmt not in ("json", "csv"):
            raise Problem(400, f"format must be json or csv, got {fmt!r}.")
        text = await self.reader.export(eid, fmt)
        return web.Response(
            text=text,
            content_type="text/csv" if fmt == "csv" else "application/json",
            headers={"Content-Disposition": f'attachment; filename="{eid}-trials.{fmt}"'},
        )

    async def _events(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid = request.match_info["experiment_id"]
        last = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")
        sub, first = await self.hub.subscribe(eid, last)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        response._nni_ts_task = asyncio.current_task()  # type: ignore[attr-defined]
        self._streams.add(response)
        try:
            await response.prepare(request)
            await response.write(b"retry: 1000\n\n")
            for item in first:
                await response.write(_frame(item))
            while not self._closing:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), timeout=15)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                chunk = [_frame(item)]
                while not sub.queue.empty() and len(chunk) < 500:
                    more = sub.queue.get_nowait()
                    if more is None:
                        break
                    chunk.append(_frame(more))
                await response.write(b"".join(chunk))
        except ConnectionResetError:
            pass  # the page went away
        except asyncio.CancelledError:
            if not self._closing:
                raise
        finally:
            self.hub.unsubscribe(sub)
            self._streams.discard(response)
        return response

    async def _all_events(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        """One stream of ``experiment`` events (status, counts, best) for every visible running experiment:
        what the experiments list follows (one connection, whatever the number of experiments)."""
        allowed = await self.backend.visible(viewer)

        running = [eid for eid in await self.reader.running_ids() if allowed is None or eid in allowed][:200]
        queue: asyncio.Queue[tuple[str, str, str] | None] = asyncio.Queue(50_000)
        subs = [(await self.hub.subscribe(eid, None, queue))[0] for eid in running]
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        response._nni_ts_task = asyncio.current_task()  # type: ignore[attr-defined]
        self._streams.add(response)
        try:
            await response.prepare(request)
            await response.write(b"retry: 1000\n\nevent: hello\ndata: {}\n\n")
            while not self._closing:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=15)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                if item[1] == "experiment":
                    await response.write(f"event: experiment\ndata: {item[2]}\n\n".encode())
        except ConnectionResetError:
            pass
        except asyncio.CancelledError:
            if not self._closing:
                raise
        finally:
            for sub in subs:
                self.hub.unsubscribe(sub)
            self._streams.discard(response)
        return response

    # ------------------------------------------------------------------ API: actions

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.text() or "{}")
        except ValueError as exc:
            raise Problem(400, f"The request body is not valid JSON: {exc}.") from None
        if not isinstance(body, dict):
            raise Problem(400, "The request body must be a JSON object.")
        return body

    def _live(self, experiment_id: str) -> None:
        if not self.backend.is_live(experiment_id):
            raise Problem(409, f"Experiment {experiment_id} is not running in this server; it cannot be changed here.")

    async def _stop(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid = request.match_info["experiment_id"]
        self._live(eid)
        await self.backend.stop(viewer, eid)
        await self.hub.poke()
        return web.json_response({"stopped": eid})

    async def _extend(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid = request.match_info["experiment_id"]
        self._live(eid)
        body = await self._body(request)
        unknown = set(body) - {"maxTrialNumber", "maxExperimentDuration"}
        if unknown:
            raise Problem(422, f"Unknown keys {sorted(unknown)}; expected maxTrialNumber or maxExperimentDuration.")
        await self.backend.extend(viewer, eid, body.get("maxTrialNumber"), body.get("maxExperimentDuration"))
        await self.hub.poke()
        return web.json_response({"extended": eid})

    async def _update(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid = request.match_info["experiment_id"]
        self._live(eid)
        body = await self._body(request)
        changes = check_update(body)
        done = await self.backend.update(viewer, eid, changes)
        await self.hub.poke()
        return web.json_response({"updated": done})

    async def _rerun(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid = request.match_info["experiment_id"]
        self._live(eid)
        body = await self._body(request)
        params = body.get("parameters")
        if set(body) - {"parameters"} or not isinstance(params, dict) or not params:
            raise ConfigError('The body must be {"parameters": {...}}, a non-empty JSON object.', path="parameters")
        await self.backend.rerun(viewer, eid, params)
        await self.hub.poke()
        return web.json_response({"queued": params}, status=202)

    async def _kill(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        eid, tid = request.match_info["experiment_id"], request.match_info["trial_id"]
        self._live(eid)
        await self.backend.kill(viewer, eid, tid)
        await self.hub.poke()
        return web.json_response({"killed": tid})


UPDATE_KEYS = ("trialConcurrency", "maxTrialNumber", "maxExperimentDuration", "searchSpace")


def check_update(body: dict[str, Any]) -> dict[str, Any]:
    """The body of an update (camelCase keys), checked for shape; the loop validates the values."""
    unknown = set(body) - set(UPDATE_KEYS)
    if unknown:
        raise ConfigError(
            f"Unknown keys {sorted(unknown)}; an update takes {', '.join(UPDATE_KEYS)}.", path=sorted(unknown)[0]
        )
    changes = {k: v for k, v in body.items() if v is not None}
    if not changes:
        raise ConfigError(f"Nothing to update: give one of {', '.join(UPDATE_KEYS)}.")
    for key in ("trialConcurrency", "maxTrialNumber"):
        value = changes.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{key} must be a positive integer, got {value!r}.", path=key)
    duration = changes.get("maxExperimentDuration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, str | int | float)):
        raise ConfigError(
            f"maxExperimentDuration must be a duration such as '2h', got {duration!r}.", path="maxExperimentDuration"
        )
    if "searchSpace" in changes and not isinstance(changes["searchSpace"], dict):
        raise ConfigError("searchSpace must be a JSON object (NNI's search-space format).", path="searchSpace")
    return changes


_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)


def _int(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Problem(400, f"The query parameter {name} must be an integer, got {raw!r}.") from None
    if not low <= value <= high:
        raise Problem(400, f"The query parameter {name} must be between {low} and {high}, got {value}.")
    return value


def _dumps(data: Any) -> bytes:
    """JSON bytes (made on the reader thread: a big answer never holds up the event loop)."""
    return json.dumps(data, separators=(",", ":")).encode()


def _json_body(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def _frame(item: tuple[str, str, str]) -> bytes:
    eid, name, data = item
    return f"id: {eid}\nevent: {name}\ndata: {data}\n\n".encode()


def _read_tail(path: Path, tail: int | None) -> bytes:
    import os

    try:
        with open(path, "rb") as fh:
            if tail is not None:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - tail))
            return fh.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return b""
