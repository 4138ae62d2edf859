"""The experiment service: a multi-user REST API over the experiment loop (``nni-ts serve``).

Users own workspaces; workspaces hold experiments. Every request but ``/api/v1/nni-exp/hello``,
``/api/v1/healthz`` and ``/api/v1/openapi.json`` carries ``Authorization: Bearer <token>``. A user
sees and changes only their own workspaces (another user's experiment answers 404, as if it did not
exist); an admin sees all. See docs/service.md for the routes and their bodies.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from ..config.experiment import ExperimentConfig
from ..errors import ConfigError, NniTsError, StoreError, UserError
from ..experiment import Experiment
from ..experiment.results import best_trial_sql, optimize_mode
from ..models import now_ms
from ..tasks import TaskSupervisor
from ..training_service import TRIAL_FILES, TrainingService, new_trial_id
from . import users as users_mod
from .configs import PlatformPolicy, legacy_to_v2, parse_legacy, prepare_config, redact, resource_need
from .db import Database, SqliteDatabase, open_database
from .isolation import (
    SymlinkRefused,
    check_trial_user,
    read_file_nofollow,
    secure_data_dir,
    secure_workspace_root,
    trial_identity,
    write_file_nofollow,
)
from .manager import ExperimentManager
from .openapi import ID_PATTERN, openapi_document
from .readcache import ChangeFeed, Kind, ReadCache
from .repository import EXPERIMENT_COLUMNS, TRIAL_COLUMNS, ExperimentRow, ExtendRequest, TrialRow, parse_extend
from .users import User, audit, check_name

__all__ = ["ExperimentService", "ServiceSettings"]

log = logging.getLogger(__name__)

API = "/api/v1"
_ID = "{experiment_id:[A-Za-z0-9_-]{1,64}}"
_TRIAL = "{trial_id:[A-Za-z0-9_-]{1,64}}"
_WS = "{workspace:[A-Za-z0-9][A-Za-z0-9_-]{0,39}}"
_MAX_TAIL = 16 * 1024 * 1024
_FILE_PART = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_MAX_DEPTH = 64  # JSON nesting a body may have (search spaces nest a few levels)
_USER_KEY = web.RequestKey("user", User)
#: The experiment a request names, read with its token check (None: there is no such experiment).
_EXPERIMENT_KEY = web.RequestKey("experiment", object)
#: What the route answers, read in the same statement (see ExperimentService._auth_and_read).
_READ_KEY = web.RequestKey("read", object)
#: Whether a removed user of the request's user name is still being archived (read with the token).
_ARCHIVE_KEY = web.RequestKey("archive", bool)
_USER_COLS_U = "u.name, u.is_admin, u.max_trials, u.max_gpus, u.created_ms"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ServiceSettings:
    """How a service runs. ``data_dir`` holds workspaces' files (and, on SQLite, the experiments' store
    ``experiments.db``; on PostgreSQL the experiments' records are in the service database)."""

    data_dir: Path
    database_url: str | None = None
    policy: PlatformPolicy = field(default_factory=PlatformPolicy)
    replica: str = field(default_factory=socket.gethostname)
    default_max_trials: int = 64
    default_max_gpus: int = 8
    legacy_auth: Literal["token", "none"] = "token"
    max_body: int = 4 * 1024 * 1024
    #: PostgreSQL connections of the API (one per request in flight; more wait for one).
    pool_size: int = 20
    #: PostgreSQL connections the experiments write their records on (one per experiment writing at
    #: that moment; the writes of the others batch up meanwhile).
    storage_pool_size: int = 10
    #: How often the service looks for requests other processes left in the database (a removed user).
    reconcile_interval: float = 1.0
    #: The OS user trials run as (``nni-{user}``: one per service user); None: the service's own user.
    trial_user: str | None = None
    #: Environment variables trials get from the service, besides isolation.DEFAULT_TRIAL_ENV.
    trial_env: tuple[str, ...] = ()
    #: The PostgreSQL password, when the URL has none (read from a file or the environment).
    database_password: str | None = field(default=None, repr=False)
    #: PostgreSQL: answer repeated polls of a live experiment from memory while it has not changed
    #: (nni_ts.service.readcache). SQLite reads in-process and keeps nothing.
    read_cache: bool = True


class HTTPProblem(Exception):
    """An answer with a 4xx status and a reason."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


def _bearer(request: web.Request) -> str | None:
    """The request's API token (``Authorization: Bearer <token>``), or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class ExperimentService:
    """The service: ``await start()``, serve :meth:`app`, then ``await close()``."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir).expanduser().resolve()
        self.database_url = settings.database_url or f"sqlite:///{self.data_dir / 'service.db'}"
        self._db: Database | None = None
        self._manager: ExperimentManager | None = None
        self._platform_class: type[TrainingService[Any]] | None = None
        self._quota_locks: dict[str, asyncio.Lock] = {}  # per user: one quota check at a time
        self._tasks = TaskSupervisor("service-api")
        self._reconcile_lock = asyncio.Lock()
        # The tables the experiments write their trials and metrics to (set by start()).
        self._trial_table = "exp_trials"
        self._metric_table = "exp_metrics"
        #: PostgreSQL with ``settings.read_cache``: the polled answers (set by start()).
        self.read_cache: ReadCache | None = None
        self.change_feed: ChangeFeed | None = None

    @property
    def db(self) -> Database:
        assert self._db is not None, "the service is not started"
        return self._db

    @property
    def manager(self) -> ExperimentManager:
        assert self._manager is not None, "the service is not started"
        return self._manager

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> list[str]:
        """Open the database and the store; re-attach to this replica's running experiments."""
        from ..registry import get_platform_class

        check_trial_user(self.settings.trial_user)
        self._platform_class = get_platform_class(self.settings.policy.platform)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        password = self.settings.database_password
        self._db = await open_database(self.database_url, password=password, pool_size=self.settings.pool_size)
        store_path = self.data_dir / "experiments.db"
        on_sqlite = isinstance(self._db, SqliteDatabase)
        manager = ExperimentManager(
            self._db,
            f"sqlite:///{store_path}" if on_sqlite else self.database_url,
            replica=self.settings.replica,
            database_password=password,
            storage_pool_size=self.settings.storage_pool_size,
            platform_factory=self._stored_platform,
            legacy_store=None if on_sqlite else store_path,
        )
        try:
            await manager.open()
            if isinstance(self._db, SqliteDatabase):
                # The experiments' store, read directly (WAL: the writer thread never blocks a read).
                self._db.attach(store_path, "store")
                self._trial_table, self._metric_table = "store.trials", "store.metrics"
            else:  # the tables PostgresStorage writes, in this same database
                self._trial_table, self._metric_table = "exp_trials", "exp_metrics"
        except BaseException:
            await manager.close()
            await self._db.close()
            self._db = None
            raise
        self._manager = manager
        if not on_sqlite and self.settings.read_cache and self._db.notifies:
            self.read_cache = ReadCache()
            manager.on_change = self.read_cache.changed
            self.change_feed = ChangeFeed(self.database_url, self.read_cache, password=password)
            self._tasks.spawn(self.change_feed.run(), name="read-cache-feed")
        databases = [store_path]
        if self.database_url.startswith("sqlite:///"):
            databases.append(Path(self.database_url[len("sqlite:///") :]).expanduser())
        secure_data_dir(self.data_dir, databases)
        try:
            resumed = await manager.resume_owned()
            await self.reconcile()
        except BaseException:
            await self.close()
            raise
        self._tasks.spawn(self._reconcile_loop(), name="reconcile")
        return resumed

    async def close(self, *, stop_experiments: bool = True) -> None:
        """Stop every experiment (cancelling trials), or with ``stop_experiments=False`` only detach:
        then the caller must exit the process without cancelling tasks (see ExperimentManager.detach)."""
        tasks, self._tasks = self._tasks, TaskSupervisor("service-api")
        await tasks.stop(10)
        if self._manager is not None:
            if stop_experiments:
                await self._manager.close()
            else:
                await self._manager.detach()
        if self._db is not None:
            await self._db.close()
            self._db = None

    # ------------------------------------------------------------------ requests left in the database

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_interval)
            try:
                await self.reconcile()
            except (NniTsError, OSError) as exc:
                log.warning("Acting on the database's requests failed (retried): %s", exc)

    async def reconcile(self) -> None:
        """Act on what ``nni-ts users remove`` (another process) asked through the database: archive the
        removed user's files, stop its experiments running here, delete what it owned if asked."""
        async with self._reconcile_lock:
            archives = await self.db.fetch(
                "SELECT name, archived_as, delete_files FROM svc_archives WHERE done = 0 ORDER BY at_ms"
            )
            for name, archived, _ in archives:
                await asyncio.to_thread(self._archive_files, name, archived)
            for experiment_id, reason, owner, status in await self.db.fetch(
                "SELECT r.experiment_id, r.reason, e.owner, e.status FROM svc_stop_requests r "
                "LEFT JOIN svc_experiments e ON e.id = r.experiment_id"
            ):
                if self.manager.is_live(experiment_id):
                    await self.manager.stop(experiment_id, reason)
                elif status == "RUNNING" and owner != self.settings.replica:
                    continue  # the replica that runs it stops it
                elif status == "RUNNING":  # orphaned here: nothing runs it
                    await self.db.execute(
                        "UPDATE svc_experiments SET status = $1, message = $2, ended_ms = $3 WHERE id = $4",
                        "STOPPED",
                        reason,
                        now_ms(),
                        experiment_id,
                    )
                await self.db.execute("DELETE FROM svc_stop_requests WHERE experiment_id = $1", experiment_id)
            for _, archived, delete in archives:
                if delete:
                    rows = [
                        ExperimentRow(*r)
                        for r in await self.db.fetch(
                            f"SELECT {self._EXP_COLS} FROM svc_experiments WHERE user_name = $1", archived
                        )
                    ]
                    if any(r.status == "RUNNING" for r in rows):
                        continue  # still stopping on another replica
                    admin = User(archived, True, None, None, 0)
                    for row in rows:
                        await self.delete_experiment(admin, row, actor="cli")
                    await asyncio.to_thread(shutil.rmtree, self.data_dir / "workspaces" / archived, True)
                    await self.db.execute("DELETE FROM svc_workspaces WHERE user_name = $1", archived)
                await self.db.execute("UPDATE svc_archives SET done = 1 WHERE archived_as = $1", archived)

    def _archive_files(self, name: str, archived: str) -> None:
        """``workspaces/<name>`` becomes ``workspaces/<archived>`` (a new user of that name starts empty)."""
        root = self.data_dir / "workspaces"
        try:
            os.rename(root / name, root / archived)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("The files of the removed user %s cannot be archived: %s", name, exc)

    async def _before_user_files(self, user: str, request: web.Request | None = None) -> None:
        """A re-added user's first write waits until the removed user of that name is archived. With
        ``request``: as read with its token check, when it was (no statement of its own)."""
        pending = request.get(_ARCHIVE_KEY) if request is not None else None
        if pending is None:
            pending = bool(await self.db.fetchrow("SELECT name FROM svc_archives WHERE name = $1 AND done = 0", user))
        if pending:
            await self.reconcile()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body, middlewares=[self._errors, self._auth])
        r = app.router
        r.add_get(f"{API}/nni-exp/hello", self._hello)
        r.add_post(f"{API}/nni-exp", self._legacy_post)
        r.add_get(f"{API}/nni-exp", self._legacy_get)
        r.add_delete(f"{API}/nni-exp", self._legacy_delete)
        r.add_get(f"{API}/openapi.json", self._openapi)
        r.add_get(f"{API}/healthz", self._healthz)
        r.add_get(f"{API}/me", self._me)
        r.add_get(f"{API}/workspaces", self._workspaces)
        r.add_post(f"{API}/workspaces/{_WS}/experiments", self._create)
        r.add_put(f"{API}/workspaces/{_WS}/files/{{path:[^?#]{{1,1000}}}}", self._upload)
        r.add_get(f"{API}/experiments", self._list)
        r.add_get(f"{API}/experiments/{_ID}", self._show)
        r.add_delete(f"{API}/experiments/{_ID}", self._delete)
        r.add_post(f"{API}/experiments/{_ID}/stop", self._stop)
        r.add_post(f"{API}/experiments/{_ID}/extend", self._extend)
        r.add_get(f"{API}/experiments/{_ID}/trials", self._trials)
        r.add_get(f"{API}/experiments/{_ID}/trials/{_TRIAL}", self._trial)
        r.add_get(f"{API}/experiments/{_ID}/trials/{_TRIAL}/log", self._log)
        r.add_get(f"{API}/experiments/{_ID}/metrics", self._metrics)
        r.add_get(f"{API}/experiments/{_ID}/events", self._events)
        r.add_get(f"{API}/audit", self._audit)
        self._mount_dashboard(app)
        return app

    def _mount_dashboard(self, app: web.Application) -> None:
        """The web dashboard at ``/`` (its own login, session cookie and CSRF token; see nni_ts.dashboard).
        It reads where the experiments write: the store file ``experiments.db`` on SQLite, the
        service database's ``exp_*`` tables (asyncpg, the API's pool) on PostgreSQL."""
        from ..dashboard import Dashboard, ServiceBackend
        from ..dashboard.pgreader import PostgresReader
        from ..dashboard.queries import DashboardReader

        store: Path | DashboardReader = self.data_dir / "experiments.db"
        if self.database_url.startswith(("postgresql://", "postgres://")):
            store = PostgresReader(lambda: self.db)
        dashboard = Dashboard(store, ServiceBackend(self))
        dashboard.add_routes(app)

        async def close_dashboard(_: web.Application) -> None:
            await dashboard.close()

        app.on_cleanup.append(close_dashboard)

    # ------------------------------------------------------------------ middlewares

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if any("\x00" in k or "\x00" in v for k, v in request.query.items()):
                raise HTTPProblem(400, "A query parameter holds a NUL character, which is not allowed.")
            return await handler(request)
        except HTTPProblem as exc:
            return _error(exc.status, str(exc), **exc.extra)
        except ConfigError as exc:
            paths = [exc.path] if exc.path else _config_error_paths(str(exc))
            extra: dict[str, Any] = {"path": paths[0], "paths": paths} if paths else {}
            return _error(422, _mask_secret_inputs(str(exc)), **extra)
        except UserError as exc:
            return _error(400, str(exc))
        except StoreError as exc:
            log.error("Database problem: %s", exc)
            return _error(503, "The service database is not available; try again later.")
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json":
                response = _error(exc.status, exc.reason)
                if "Allow" in exc.headers:  # a 405 says which methods the resource has
                    response.headers["Allow"] = exc.headers["Allow"]
                return response
            raise
        except NniTsError as exc:
            return _error(409, str(exc))

    _PUBLIC = frozenset({f"{API}/nni-exp/hello", f"{API}/openapi.json", f"{API}/healthz"})

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in self._PUBLIC or request.match_info.http_exception is not None:
            return await handler(request)  # public, or a 404/405 that names no resource
        if not request.path.startswith(f"{API}/"):
            # The dashboard (everything outside /api/v1) checks its own session cookie or token.
            return await handler(request)
        if request.path.endswith("/events"):  # a stream: no connection held for its whole life
            return await self._authenticated(request, handler)
        if request.method in ("GET", "HEAD", "OPTIONS"):
            polled = self._polled(request) if request.method == "GET" else None
            if polled is not None and self.read_cache is not None and self.read_cache.enabled:
                return await self._cached(request, handler, self.read_cache, *polled)
            async with self.db.bound():  # one pooled connection for the request's every statement
                return await self._authenticated(request, handler)
        try:
            async with self.db.bound():
                return await self._authenticated(request, handler)
        finally:
            if self.read_cache is not None and _USER_KEY in request:  # a write: what is kept of it is stale
                experiment_id = request.match_info.get("experiment_id")
                if experiment_id is not None:
                    self.read_cache.changed(experiment_id)
                else:
                    self.read_cache.clear()

    @staticmethod
    def _polled(request: web.Request) -> tuple[str, Kind] | None:
        """(experiment id, which) of a GET the read cache answers: an experiment's details or metrics."""
        experiment_id = request.match_info.get("experiment_id")
        if experiment_id is None:
            return None
        if request.path == f"{API}/experiments/{experiment_id}":
            return experiment_id, "details"
        if request.path == f"{API}/experiments/{experiment_id}/metrics":
            return experiment_id, "metrics"
        return None

    async def _cached(
        self, request: web.Request, handler: Handler, cache: ReadCache, experiment_id: str, kind: Kind
    ) -> web.StreamResponse:
        """A polled answer from the read cache when nothing it depends on changed since it was read
        with this token; else read (token check and answer in one statement) and kept. Only the
        experiments this replica runs are kept: their trials and metrics are written here."""
        token = _bearer(request)
        if token is None or not self.manager.is_live(experiment_id):
            async with self.db.bound():
                return await self._authenticated(request, handler)
        key = (users_mod.hash_token(token), request.path_qs)
        kept = cache.get(key, experiment_id, kind)
        if kept is not None:
            return web.Response(body=kept[0], headers={"Content-Type": kept[1]})
        stamp = cache.stamp(experiment_id, kind)  # before the read: a write during it makes it stale
        async with self.db.bound():
            response = await self._authenticated(request, handler)
        if response.status == 200 and isinstance(response, web.Response) and isinstance(response.body, bytes):
            cache.put(key, stamp, response.body, response.headers.get("Content-Type", "application/json"))
        return response

    async def _authenticated(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        legacy = request.path == f"{API}/nni-exp"
        if not request.headers.get("Authorization") and legacy and self.settings.legacy_auth == "none":
            return await handler(request)
        token = _bearer(request)
        if token is None:
            raise HTTPProblem(401, "This request needs an API token: send the header 'Authorization: Bearer <token>'.")
        experiment_id = request.match_info.get("experiment_id")
        if experiment_id is not None:
            user = await self._auth_and_read(request, users_mod.hash_token(token), experiment_id)
        elif request.method in ("POST", "PUT"):  # may write the user's files: the archive check too
            user, archiving = await users_mod.user_by_token_archiving(self.db, token)
            request[_ARCHIVE_KEY] = archiving
        else:
            user = await users_mod.user_by_token(self.db, token)
        if user is None:
            raise HTTPProblem(401, "The API token is not valid (it may have been rotated or its user removed).")
        request[_USER_KEY] = user
        return await handler(request)

    async def _auth_and_read(self, request: web.Request, token_hash: str, experiment_id: str) -> User | None:
        """The token check, the experiment's row and (for the two routes clients poll) what the route
        answers, in ONE statement: one round trip per request. ``GET /experiments/{id}``: its trial
        counts and best trial; ``GET /experiments/{id}/metrics``: the records. The results are kept on
        the request for the handler; None if the token is not valid."""
        n = 0

        def p() -> str:  # placeholders in the order of the text (SQLite's are positional)
            nonlocal n
            n += 1
            return f"${n}"

        args: list[Any] = [experiment_id]
        sql = f"SELECT {_USER_COLS_U}, {self._EXP_COLS_E}"
        joins = f" FROM svc_users u LEFT JOIN svc_experiments e ON e.id = {p()}"
        kind = None
        tail = request.path.rsplit("/", 1)[-1]
        if request.method == "GET" and tail == experiment_id:
            kind = "details"
            sql += f", c.status, c.n, {', '.join('b.' + c for c in TrialRow._fields)}"
            joins += (
                f" LEFT JOIN (SELECT status, COUNT(*) AS n FROM {self._trial_table} WHERE experiment_id = {p()} "
                "GROUP BY status) c ON TRUE"
                f" LEFT JOIN (SELECT {self._TRIAL_COLS} FROM {self._trial_table} WHERE experiment_id = {p()} AND "
                f"status = 'SUCCEEDED' AND final_value IS NOT NULL ORDER BY CASE WHEN (SELECT optimize_mode FROM "
                f"svc_experiments WHERE id = {p()}) = 'minimize' THEN final_value ELSE -final_value END, "
                "sequence_id, attempt LIMIT 1) b ON TRUE"
            )
            args += [experiment_id, experiment_id, experiment_id]
        elif request.method == "GET" and tail == "metrics":
            kind = "metrics"
            limit, offset = self._page(request)
            page = f" LIMIT {limit} OFFSET {offset}" if limit is not None else ""
            trial = request.query.get("trial")
            where = f"experiment_id = {p()}"
            args.append(experiment_id)
            if trial is not None:
                where += f" AND trial_id = {p()}"
                args.append(trial)
            sql += ", m.seq, m.type, m.value, m.data, m.trial_id"
            joins += (
                f" LEFT JOIN (SELECT seq, type, value, data, trial_id FROM {self._metric_table} WHERE {where} "
                f"ORDER BY trial_id, seq{page}) m ON TRUE"
            )
        sql += joins + f" WHERE u.token_hash = {p()}"
        args.append(token_hash)
        if kind == "metrics":
            sql += " ORDER BY m.trial_id, m.seq"
        rows = await self.db.fetch(sql, *args)
        if not rows:
            return None
        first = rows[0]
        user = User(first[0], bool(first[1]), first[2], first[3], first[4])
        width = 5 + len(ExperimentRow._fields)
        request[_EXPERIMENT_KEY] = ExperimentRow(*first[5:width]) if first[5] is not None else None
        if kind == "details":
            counts = {str(r[width]): int(r[width + 1]) for r in rows if r[width] is not None}
            best = first[width + 2 :] if first[width + 2] is not None else None
            request[_READ_KEY] = (counts, best)
        elif kind == "metrics":
            request[_READ_KEY] = [r[width:] for r in rows if r[width] is not None]
        return user

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _user(request: web.Request) -> User:
        user = request.get(_USER_KEY)
        assert isinstance(user, User)
        return user

    async def _body(self, request: web.Request) -> bytes:
        """The request's bytes; a body that cannot be decoded (Content-Encoding) is a 400. No database
        connection is held while a client sends it (slowly, maybe)."""
        try:
            if request.content.is_eof():  # all here already (a small body comes with its headers)
                return await request.read()
            async with self.db.unbound():
                return await request.read()
        except RequestPayloadError as exc:
            encoding = request.headers.get("Content-Encoding", "identity")
            log.debug("Undecodable request body: %r", exc)
            raise HTTPProblem(
                400, f"The request body cannot be decoded: it is not valid Content-Encoding {encoding[:40]!r} data."
            ) from None

    async def _json(self, request: web.Request, *, optional: bool = False) -> Any:
        if not request.can_read_body:
            if optional:
                return None
            raise HTTPProblem(400, "The request needs a JSON body.")
        charset = request.charset or "utf-8"
        try:
            codecs.lookup(charset)
        except LookupError:
            raise HTTPProblem(
                415, f"The request body's charset {charset[:40]!r} is unknown; send JSON as UTF-8."
            ) from None
        data = await self._body(request)
        try:
            text = data.decode(charset)
        except (UnicodeDecodeError, ValueError):
            raise HTTPProblem(400, f"The request body is not valid {charset[:40]} text.") from None
        if not text.strip() and optional:
            return None
        try:
            value = json.loads(text)
        except RecursionError:
            raise HTTPProblem(400, f"The request body is nested deeper than {_MAX_DEPTH} levels.") from None
        except ValueError as exc:
            raise HTTPProblem(400, f"The request body is not valid JSON: {exc}.") from None
        if _depth(value) > _MAX_DEPTH:
            raise HTTPProblem(400, f"The request body is nested deeper than {_MAX_DEPTH} levels.")
        return value

    def workspace_dir(self, user: str, workspace: str) -> Path:
        return self.data_dir / "workspaces" / user / workspace

    def _identity(self, user: str) -> Any:
        """The OS identity and environment of ``user``'s trials; their workspace tree made private to it."""
        try:
            identity = trial_identity(self.settings.trial_user, user, self.settings.trial_env)
        except UserError as exc:
            raise HTTPProblem(503, str(exc)) from None
        try:
            secure_workspace_root(self.data_dir / "workspaces" / user, identity)
        except OSError as exc:
            raise HTTPProblem(409, f"The workspaces of {user} cannot be prepared: {exc.strerror or exc}.") from None
        return identity

    def _platform(self, config: Any, experiment_id: str, user: str) -> TrainingService[Any]:
        """An experiment's training service; local trials run as the user's trial identity."""
        from ..platforms.local import LocalTrainingService

        assert self._platform_class is not None and config.experiment_working_directory is not None
        kwargs: dict[str, Any] = {}
        if issubclass(self._platform_class, LocalTrainingService):
            kwargs["identity"] = self._identity(user)
        return self._platform_class(
            config.training_service,
            experiment_id=experiment_id,
            experiment_dir=Path(config.experiment_working_directory) / experiment_id,
            **kwargs,
        )

    def _stored_platform(self, experiment_id: str, stored: dict[str, Any], user: str) -> TrainingService[Any]:
        """The platform of a stored experiment being re-attached or continued (the engine thread)."""
        from ..config.loader import config_from_dict

        try:
            return self._platform(config_from_dict(stored, source=f"experiment {experiment_id}"), experiment_id, user)
        except HTTPProblem as exc:
            raise UserError(str(exc)) from None

    @staticmethod
    def _query_int(request: web.Request, name: str, *, minimum: int, maximum: int) -> int | None:
        raw = request.query.get(name)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise HTTPProblem(400, f"The query parameter {name} must be an integer, got {raw!r}.") from None
        if not minimum <= value <= maximum:
            raise HTTPProblem(400, f"The query parameter {name} must be between {minimum} and {maximum}.")
        return value

    _EXP_COLS = EXPERIMENT_COLUMNS

    @staticmethod
    def _exp_dict(row: tuple[Any, ...]) -> dict[str, Any]:
        e = row if isinstance(row, ExperimentRow) else ExperimentRow(*row)
        return {
            "id": e.id,
            "user": e.user_name,
            "workspace": e.workspace,
            "name": e.name,
            "platform": e.platform,
            "status": e.status,
            "message": e.message,
            "trialConcurrency": e.trial_concurrency,
            "gpusPerTrial": e.gpus_per_trial,
            "optimizeMode": e.optimize_mode,
            "legacy": bool(e.legacy),
            "createdAt": e.created_ms,
            "updatedAt": e.updated_ms,
            "endedAt": e.ended_ms,
        }

    _EXP_COLS_E = ", ".join(f"e.{c}" for c in ExperimentRow._fields)

    async def _experiment_row(
        self, user: User, experiment_id: str, request: web.Request | None = None
    ) -> ExperimentRow:
        """The experiment's row if ``user`` may see it, else a 404. With ``request``: the row read with
        the request's token check when it names this experiment (no statement of its own)."""
        if (
            request is not None
            and _EXPERIMENT_KEY in request
            and request.match_info.get("experiment_id") == experiment_id
        ):
            stashed = request[_EXPERIMENT_KEY]
            row: ExperimentRow | None = stashed if isinstance(stashed, ExperimentRow) else None
        else:
            found = await self.db.fetchrow(f"SELECT {self._EXP_COLS} FROM svc_experiments WHERE id = $1", experiment_id)
            row = ExperimentRow(*found) if found is not None else None
        if row is None or (row.user_name != user.name and not user.is_admin):
            raise HTTPProblem(404, f"There is no experiment {experiment_id!r} in your workspaces.")
        return row

    @staticmethod
    def _trial_dict(raw: tuple[Any, ...]) -> dict[str, Any]:
        row = raw if isinstance(raw, TrialRow) else TrialRow(*raw)
        final = None
        if row.final_data:
            try:
                record = json.loads(row.final_data)
                final = record.get("value") if isinstance(record, dict) else None
                if isinstance(final, str):
                    final = json.loads(final)
            except ValueError:
                final = None
        return {
            "id": row.id,
            "sequenceId": row.sequence_id,
            "parameterId": row.parameter_id,
            "attempt": row.attempt,
            "parameters": redact(json.loads(row.parameters)),  # a search-space key such as db_password too
            "status": row.status,
            "startTime": row.start_ms,
            "endTime": row.end_ms,
            "exitCode": row.exit_code,
            "message": _shown(row.message),
            "finalValue": row.final_value,
            "final": _json_safe(final),
            "metricCount": row.metric_count,
        }

    _TRIAL_COLS = TRIAL_COLUMNS

    async def _trial_rows(
        self, experiment_id: str, *, limit: int | None = None, offset: int = 0
    ) -> list[tuple[Any, ...]]:
        page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        return await self.db.fetch(
            f"SELECT {self._TRIAL_COLS} FROM {self._trial_table} WHERE experiment_id = $1 "
            f"ORDER BY sequence_id, attempt{page}",
            experiment_id,
        )

    async def _details(self, row: ExperimentRow, request: web.Request | None = None) -> dict[str, Any]:
        """An experiment with its trial counts and best trial (aggregated in SQL: cheap to poll). With
        ``request``: as read with the request's token check, when it was."""
        out = self._exp_dict(row)
        read = request.get(_READ_KEY) if request is not None else None
        if isinstance(read, tuple):
            counts, best_row = read
        else:
            counts = {
                str(r[0]): int(r[1])
                for r in await self.db.fetch(
                    f"SELECT status, COUNT(*) FROM {self._trial_table} WHERE experiment_id = $1 GROUP BY status",
                    row.id,
                )
            }
            where, direction = best_trial_sql(row.optimize_mode)
            best_row = await self.db.fetchrow(
                f"SELECT {self._TRIAL_COLS} FROM {self._trial_table} WHERE experiment_id = $1 AND {where} "
                f"ORDER BY final_value {direction}, sequence_id, attempt LIMIT 1",
                row.id,
            )
        best = self._trial_dict(best_row) if best_row is not None else None
        config = json.loads(row.config)
        out.update(
            config=config,
            maxTrialNumber=config.get("maxTrialNumber"),
            trialCounts=counts,
            trialCount=sum(counts.values()),
            best=best,
            live=self.manager.is_live(row.id),
        )
        return out

    async def _usage(self, tx: Any, user: str) -> tuple[int, int]:
        row = await tx.fetchrow(
            "SELECT COALESCE(SUM(trial_concurrency), 0), COALESCE(SUM(trial_concurrency * gpus_per_trial), 0) "
            "FROM svc_experiments WHERE user_name = $1 AND status = $2",
            user,
            "RUNNING",
        )
        assert row is not None
        return int(row[0]), int(row[1])

    def _quota_lock(self, user: str) -> asyncio.Lock:
        return self._quota_locks.setdefault(user, asyncio.Lock())

    def _limits(self, user: User) -> tuple[int, int]:
        trials = user.max_trials if user.max_trials is not None else self.settings.default_max_trials
        gpus = user.max_gpus if user.max_gpus is not None else self.settings.default_max_gpus
        return trials, gpus

    async def _check_quota(self, tx: Any, user: User, trials: int, gpus: int, *, exclude: str | None = None) -> None:
        if self.db.dialect == "postgresql":  # serialise quota checks of one user across replicas
            await tx.execute("SELECT name FROM svc_users WHERE name = $1 FOR UPDATE", user.name)
        used_trials, used_gpus = await self._usage(tx, user.name)
        if exclude is not None:
            row = await tx.fetchrow(
                "SELECT trial_concurrency, gpus_per_trial, status FROM svc_experiments WHERE id = $1", exclude
            )
            if row is not None and row[2] == "RUNNING":
                used_trials -= int(row[0])
                used_gpus -= int(row[0]) * int(row[1])
        max_trials, max_gpus = self._limits(user)
        if used_trials + trials > max_trials:
            raise HTTPProblem(
                403,
                f"Quota exceeded: {user.name} may run {max_trials} trials at a time; {used_trials} are running "
                f"and this experiment needs {trials} more.",
                quota="concurrentTrials",
            )
        if used_gpus + trials * gpus > max_gpus:
            raise HTTPProblem(
                403,
                f"Quota exceeded: {user.name} may use {max_gpus} GPUs at a time; {used_gpus} are in use "
                f"and this experiment needs {trials * gpus} more.",
                quota="gpus",
            )

    # ------------------------------------------------------------------ creating experiments

    def _tuner_for(self, config: ExperimentConfig) -> Any:
        """Build the tuner now, so that a bad tuner name or classArgs is a 422, not a failed experiment."""
        from ..experiment.experiment import tuner_for

        return tuner_for(config)

    async def create_experiment(
        self,
        user: User,
        workspace: str,
        raw: Any,
        *,
        legacy: bool = False,
        actor: str | None = None,
        request: web.Request | None = None,
    ) -> dict[str, Any]:
        """Validate, record and start an experiment. ``legacy``: the seeds' route, where a workspace runs
        one experiment at a time; checked inside the transaction that inserts it, after the user's row
        lock (PostgreSQL) or the write lock (SQLite), so parallel requests cannot both pass."""
        check_name(workspace, "A workspace name")
        await self._before_user_files(user.name, request)
        # Without a database connection until the transaction: 50 creates at once held all 20 of the
        # pool while they validated their configs and built their tuners, and the others waited.
        async with self.db.unbound():
            config = prepare_config(
                raw,
                user=user.name,
                is_admin=user.is_admin,
                workspace=workspace,
                workspace_dir=self.workspace_dir(user.name, workspace),
                policy=self.settings.policy,
            )
            # Off the API loop: the first tuner of a kind imports its library (optuna: 150 ms idle, more
            # on a busy machine), and a custom tuner runs the user's code; every request waited for that.
            tuner = await asyncio.to_thread(self._tuner_for, config)
        trials, gpus = resource_need(config)
        experiment_id = new_trial_id(8).lower()
        shown = redact(raw if isinstance(raw, dict) else {})
        stored = redact(config.model_dump(mode="json", by_alias=True, exclude_none=True))
        async with self._quota_lock(user.name), self.db.transaction() as tx:
            await self._check_quota(tx, user, trials, gpus)  # locks the user's row on PostgreSQL
            if legacy:
                running = await tx.fetchrow(
                    "SELECT id FROM svc_experiments WHERE user_name = $1 AND workspace = $2 AND status = $3",
                    user.name,
                    workspace,
                    "RUNNING",
                )
                if running is not None:
                    raise HTTPProblem(
                        409,
                        f"Workspace {workspace!r} already runs experiment {running[0]}; DELETE it first.",
                        experimentId=running[0],
                    )
            now = now_ms()
            await tx.execute_all(
                (
                    "INSERT INTO svc_workspaces (user_name, name, created_ms) VALUES ($1, $2, $3) "
                    "ON CONFLICT (user_name, name) DO NOTHING",
                    (user.name, workspace, now),
                ),
                (
                    f"INSERT INTO svc_experiments ({self._EXP_COLS}) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                    (
                        experiment_id,
                        user.name,
                        workspace,
                        config.experiment_name,
                        config.training_service.platform,
                        "RUNNING",
                        None,
                        json.dumps(stored),
                        trials,
                        gpus,
                        optimize_mode(config),
                        self.settings.replica,
                        int(legacy),
                        now,
                        now,
                        None,
                    ),
                ),
                (
                    users_mod.AUDIT_INSERT,
                    users_mod.audit_args(
                        actor or user.name,
                        "experiment.create",
                        f"{user.name}/{workspace}/{experiment_id}",
                        {"legacy": legacy, "config": shown},
                    ),
                ),
            )
        # The platform class is looked up once (entry points are slow to scan), not per experiment.
        service = self._platform(config, experiment_id, user.name)
        await self.manager.launch(
            lambda storage: Experiment(
                config,
                experiment_id=experiment_id,
                storage=storage,
                tuner=tuner,
                service=service,
                control_socket=False,
            )
        )
        log.info("User %s created experiment %s in workspace %s.", user.name, experiment_id, workspace)
        return {"id": experiment_id, "user": user.name, "workspace": workspace, "status": "RUNNING"}

    async def delete_experiment(self, user: User, row: ExperimentRow, *, actor: str | None = None) -> None:
        experiment_id = row.id
        if row.status == "RUNNING" and not self.manager.is_live(experiment_id) and row.owner != self.settings.replica:
            raise HTTPProblem(409, f"Experiment {experiment_id} runs on the replica {row.owner!r}; delete it there.")
        await self.manager.stop(experiment_id, f"Deleted by {actor or user.name}.")
        self.manager.forget(experiment_id)
        await self.manager.purge(experiment_id)
        exp_dir = self.workspace_dir(row.user_name, row.workspace) / "experiments" / experiment_id
        async with self.db.unbound():
            await asyncio.to_thread(shutil.rmtree, exp_dir, True)
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM svc_experiments WHERE id = $1", experiment_id)
            await audit(tx, actor or user.name, "experiment.delete", f"{row.user_name}/{row.workspace}/{experiment_id}")

    # ------------------------------------------------------------------ public routes

    async def _hello(self, request: web.Request) -> web.Response:
        return web.Response(text="Hello world")

    async def _healthz(self, request: web.Request) -> web.Response:
        await self.db.fetchrow("SELECT 1")
        return web.json_response({"ok": True, "replica": self.settings.replica, "live": len(self.manager.live_ids)})

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    # ------------------------------------------------------------------ the seeds' launcher routes

    async def _legacy_user(self, request: web.Request, name: str) -> tuple[User, str]:
        """The user a launcher request acts as, and the audit actor."""
        user = request.get(_USER_KEY)
        if user is None:  # legacy_auth == "none": the body names the user, as the seeds' launcher did
            check_name(name, "user")
            found = await users_mod.get_user(self.db, name)
            if found is None:
                with contextlib.suppress(UserError):  # another request may have created it meanwhile
                    await users_mod.add_user(self.db, name, actor=f"{name} (unauthenticated)", with_token=False)
                found = await users_mod.get_user(self.db, name)
            assert found is not None
            return found, f"{name} (unauthenticated)"
        assert isinstance(user, User)
        if name != user.name:
            if not user.is_admin:
                raise HTTPProblem(403, f"Your token belongs to {user.name!r}; it cannot act for {name!r}.")
            target = await users_mod.get_user(self.db, name)
            if target is None:
                raise HTTPProblem(404, f"There is no user {name!r}.")
            return target, user.name
        return user, user.name

    async def _legacy_target(self, request: web.Request) -> tuple[str, str]:
        body = await self._json(request, optional=True)
        if body is None:
            body = dict(request.query)
        if not isinstance(body, dict):
            raise HTTPProblem(400, "Give workspace and user as a JSON object body or as query parameters.")
        missing = [k for k in ("workspace", "user") if not isinstance(body.get(k), str)]
        if missing:
            raise HTTPProblem(400, f"The request needs {' and '.join(missing)} (strings), in the body or the query.")
        return check_name(body["user"], "user"), check_name(body["workspace"], "workspace")

    async def _legacy_post(self, request: web.Request) -> web.Response:
        req = parse_legacy(await self._json(request))
        user, actor = await self._legacy_user(request, req.user)
        created = await self.create_experiment(
            user, req.workspace, legacy_to_v2(req, self.settings.policy), legacy=True, actor=actor
        )
        return web.json_response({**created, "experimentId": created["id"]})

    async def _legacy_get(self, request: web.Request) -> web.Response:
        name, workspace = await self._legacy_target(request)
        user, _ = await self._legacy_user(request, name)
        found = await self.db.fetchrow(
            f"SELECT {self._EXP_COLS} FROM svc_experiments WHERE user_name = $1 AND workspace = $2 "
            "ORDER BY created_ms DESC LIMIT 1",
            user.name,
            workspace,
        )
        row = ExperimentRow(*found) if found is not None else None
        if row is None:
            raise HTTPProblem(404, f"Workspace {workspace!r} of {user.name!r} has no experiment.")
        details = await self._details(row)
        details["trials"] = [self._trial_dict(t) for t in await self._trial_rows(row.id)]
        details["experimentId"] = row.id
        return web.json_response(details)

    async def _legacy_delete(self, request: web.Request) -> web.Response:
        name, workspace = await self._legacy_target(request)
        user, actor = await self._legacy_user(request, name)
        rows = [
            ExperimentRow(*r)
            for r in await self.db.fetch(
                f"SELECT {self._EXP_COLS} FROM svc_experiments WHERE user_name = $1 AND workspace = $2",
                user.name,
                workspace,
            )
        ]
        if not rows:
            raise HTTPProblem(404, f"Workspace {workspace!r} of {user.name!r} has no experiment.")
        for row in rows:
            await self.delete_experiment(user, row, actor=actor)
        return web.json_response({"deleted": [r.id for r in rows], "user": user.name, "workspace": workspace})

    # ------------------------------------------------------------------ the API

    async def _me(self, request: web.Request) -> web.Response:
        user = self._user(request)
        used_trials, used_gpus = await self._usage(self.db, user.name)
        max_trials, max_gpus = self._limits(user)
        return web.json_response(
            {
                "name": user.name,
                "admin": user.is_admin,
                "quota": {"concurrentTrials": max_trials, "gpus": max_gpus},
                "usage": {"concurrentTrials": used_trials, "gpus": used_gpus},
            }
        )

    async def _workspaces(self, request: web.Request) -> web.Response:
        user = self._user(request)
        sql = (
            "SELECT w.user_name, w.name, w.created_ms, COUNT(e.id) FROM svc_workspaces w "
            "LEFT JOIN svc_experiments e ON e.user_name = w.user_name AND e.workspace = w.name "
        )
        group = " GROUP BY w.user_name, w.name, w.created_ms ORDER BY w.user_name, w.name"
        if user.is_admin:
            rows = await self.db.fetch(sql + group)
        else:
            rows = await self.db.fetch(sql + "WHERE w.user_name = $1" + group, user.name)
        return web.json_response(
            [{"user": r[0], "name": r[1], "createdAt": r[2], "experiments": int(r[3])} for r in rows]
        )

    async def _create(self, request: web.Request) -> web.Response:
        user = self._user(request)
        workspace = request.match_info["workspace"]
        created = await self.create_experiment(user, workspace, await self._json(request), request=request)
        return web.json_response(created, status=201)

    async def _upload(self, request: web.Request) -> web.Response:
        user = self._user(request)
        workspace = check_name(request.match_info["workspace"], "A workspace name")
        rel = request.match_info["path"]
        parts = [p for p in rel.split("/") if p]
        if not parts or any(p in (".", "..") or not _FILE_PART.fullmatch(p) for p in parts):
            raise HTTPProblem(
                400,
                f"The file path {rel[:200]!r} must be relative, of letters, digits, '_', '-', '.' and '/', "
                "without '.' or '..' parts.",
            )
        data = await self._body(request)
        await self._before_user_files(user.name, request)
        self._identity(user.name)
        try:
            async with self.db.unbound():
                await asyncio.to_thread(
                    write_file_nofollow, self.data_dir / "workspaces", [user.name, workspace, "code", *parts], data
                )
        except SymlinkRefused as exc:
            raise HTTPProblem(
                409, f"The file {rel!r} cannot be written: {exc.strerror} (links are never followed)."
            ) from None
        except OSError as exc:
            raise HTTPProblem(409, f"The file {rel!r} cannot be written: {exc.strerror}.") from None
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO svc_workspaces (user_name, name, created_ms) VALUES ($1, $2, $3) "
                "ON CONFLICT (user_name, name) DO NOTHING",
                user.name,
                workspace,
                now_ms(),
            )
            await audit(tx, user.name, "file.upload", f"{user.name}/{workspace}/{rel}", {"bytes": len(data)})
        return web.json_response({"path": "/".join(parts), "bytes": len(data)}, status=201)

    async def _list(self, request: web.Request) -> web.Response:
        user = self._user(request)
        where = []
        args: list[Any] = []
        if not user.is_admin:
            args.append(user.name)
            where.append(f"user_name = ${len(args)}")
        elif "user" in request.query:
            args.append(request.query["user"])
            where.append(f"user_name = ${len(args)}")
        if "workspace" in request.query:
            args.append(request.query["workspace"])
            where.append(f"workspace = ${len(args)}")
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = await self.db.fetch(
            f"SELECT {self._EXP_COLS} FROM svc_experiments{clause} ORDER BY created_ms, id", *args
        )
        return web.json_response([self._exp_dict(r) for r in rows])

    async def _show(self, request: web.Request) -> web.Response:
        row = await self._experiment_row(self._user(request), request.match_info["experiment_id"], request)
        return web.json_response(await self._details(row, request))

    async def _delete(self, request: web.Request) -> web.Response:
        user = self._user(request)
        row = await self._experiment_row(user, request.match_info["experiment_id"], request)
        await self.delete_experiment(user, row)
        return web.json_response({"deleted": row.id})

    async def _stop(self, request: web.Request) -> web.Response:
        user = self._user(request)
        row = await self._experiment_row(user, request.match_info["experiment_id"], request)
        experiment_id = row.id
        if not self.manager.is_live(experiment_id):
            raise HTTPProblem(409, f"Experiment {experiment_id} is not running here (it is {row.status}).")
        await audit(self.db, user.name, "experiment.stop", f"{row.user_name}/{row.workspace}/{experiment_id}")
        await self.manager.stop(experiment_id, f"Stopped by {user.name}.")
        row = await self._experiment_row(user, experiment_id)
        return web.json_response(self._exp_dict(row))

    async def _extend(self, request: web.Request) -> web.Response:
        user = self._user(request)
        row = await self._experiment_row(user, request.match_info["experiment_id"], request)
        req = parse_extend(await self._json(request))
        await self.extend_experiment(user, row, req)
        return web.json_response(await self._details(await self._experiment_row(user, row.id)))

    async def extend_experiment(self, user: User, row: ExperimentRow, req: ExtendRequest) -> None:
        """Raise a running experiment's budget in place, or continue an ended one (quota checked)."""
        config = json.loads(row.config)
        number, duration = req.max_trial_number, req.max_experiment_duration
        if number is not None and config.get("maxTrialNumber") and number < config["maxTrialNumber"]:
            raise HTTPProblem(
                422, f"maxTrialNumber can only grow (it is {config['maxTrialNumber']}).", path="maxTrialNumber"
            )
        detail = {"maxTrialNumber": number, "maxExperimentDuration": duration, "rerunFailed": req.rerun_failed}
        if number is not None:
            config["maxTrialNumber"] = number
        if duration is not None:
            config["maxExperimentDuration"] = duration
        if self.manager.is_live(row.id):
            if req.rerun_failed:
                raise HTTPProblem(409, f"Experiment {row.id} is running; re-run failed trials after it ends.")
            await self.manager.extend_live(row.id, max_trial_number=number, max_duration=duration)
            async with self.db.transaction() as tx:
                await tx.execute(
                    "UPDATE svc_experiments SET config = $1, updated_ms = $2 WHERE id = $3",
                    json.dumps(config),
                    now_ms(),
                    row.id,
                )
                await audit(tx, user.name, "experiment.extend", row.target, detail)
            return
        if row.status == "RUNNING" and row.owner != self.settings.replica:
            raise HTTPProblem(409, f"Experiment {row.id} runs on the replica {row.owner!r}.")
        owner = await users_mod.get_user(self.db, row.user_name) or user
        async with self._quota_lock(owner.name):
            async with self.db.transaction() as tx:
                await self._check_quota(tx, owner, row.trial_concurrency, row.gpus_per_trial, exclude=row.id)
                # RUNNING before it starts: its end (however soon) is recorded after this.
                await tx.execute(
                    "UPDATE svc_experiments SET config = $1, status = $2, message = NULL, ended_ms = NULL, "
                    "owner = $3, updated_ms = $4 WHERE id = $5",
                    json.dumps(config),
                    "RUNNING",
                    self.settings.replica,
                    now_ms(),
                    row.id,
                )
                await audit(tx, user.name, "experiment.extend", row.target, detail)
            try:
                await self.manager.resume(
                    row.id,
                    max_trial_number=number,
                    max_experiment_duration=duration,
                    rerun_failed=req.rerun_failed,
                    user=owner.name,
                )
            except NniTsError as exc:  # put the row back as it was
                await self.db.execute(
                    "UPDATE svc_experiments SET status = $1, message = $2, config = $3, ended_ms = $4 WHERE id = $5",
                    row.status,
                    row.message,
                    row.config,
                    row.ended_ms,
                    row.id,
                )
                raise HTTPProblem(409, f"Experiment {row.id} cannot be continued: {exc}") from None

    def _page(self, request: web.Request) -> tuple[int | None, int]:
        limit = self._query_int(request, "limit", minimum=1, maximum=1_000_000)
        offset = self._query_int(request, "offset", minimum=0, maximum=2**31) or 0
        return limit, offset

    async def _trials(self, request: web.Request) -> web.Response:
        row = await self._experiment_row(self._user(request), request.match_info["experiment_id"], request)
        limit, offset = self._page(request)
        rows = await self._trial_rows(row.id, limit=limit, offset=offset if limit is not None else 0)
        return web.json_response([self._trial_dict(t) for t in rows])

    async def _trial(self, request: web.Request) -> web.Response:
        row = await self._experiment_row(self._user(request), request.match_info["experiment_id"], request)
        trial_id = request.match_info["trial_id"]
        trow = await self.db.fetchrow(
            f"SELECT {self._TRIAL_COLS} FROM {self._trial_table} WHERE experiment_id = $1 AND id = $2", row.id, trial_id
        )
        if trow is None:
            raise HTTPProblem(404, f"Experiment {row.id} has no trial {trial_id!r}.")
        out = self._trial_dict(trow)
        metrics = await self.db.fetch(
            f"SELECT seq, type, value, data FROM {self._metric_table} WHERE experiment_id = $1 AND trial_id = $2 "
            "ORDER BY seq",
            row.id,
            trial_id,
        )
        out["metrics"] = [_metric_dict(trial_id, m) for m in metrics]
        return web.json_response(out)

    async def _metrics(self, request: web.Request) -> web.Response:
        row = await self._experiment_row(self._user(request), request.match_info["experiment_id"], request)
        limit, offset = self._page(request)
        page = f" LIMIT {limit} OFFSET {offset}" if limit is not None else ""
        trial = request.query.get("trial")
        read = request.get(_READ_KEY)
        if isinstance(read, list):  # read with the token check
            rows = read
        elif trial is not None:
            rows = await self.db.fetch(
                f"SELECT seq, type, value, data, trial_id FROM {self._metric_table} "
                f"WHERE experiment_id = $1 AND trial_id = $2 ORDER BY seq{page}",
                row.id,
                trial,
            )
        else:
            rows = await self.db.fetch(
                f"SELECT seq, type, value, data, trial_id FROM {self._metric_table} WHERE experiment_id = $1 "
                f"ORDER BY trial_id, seq{page}",
                row.id,
            )
        return web.json_response([_metric_dict(m[4], m) for m in rows])

    async def _log(self, request: web.Request) -> web.Response:
        row = await self._experiment_row(self._user(request), request.match_info["experiment_id"], request)
        trial_id = request.match_info["trial_id"]
        name = request.query.get("file", "stdout")
        if name not in TRIAL_FILES:
            raise HTTPProblem(400, f"file must be one of {', '.join(TRIAL_FILES)}, got {name!r}.")
        tail = self._query_int(request, "tail", minimum=0, maximum=_MAX_TAIL)
        known = await self.db.fetchrow(
            f"SELECT id FROM {self._trial_table} WHERE experiment_id = $1 AND id = $2", row.id, trial_id
        )
        if known is None:
            raise HTTPProblem(404, f"Experiment {row.id} has no trial {trial_id!r}.")
        data = await self.manager.trial_file(row.id, trial_id, name, tail)
        if data is None:
            parts = [row.user_name, row.workspace, "experiments", row.id, "trials", trial_id, name]
            data = await asyncio.to_thread(read_file_nofollow, self.data_dir / "workspaces", parts, tail)
        return web.Response(body=data, content_type="text/plain", charset="utf-8")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        row = await self._experiment_row(self._user(request), request.match_info["experiment_id"], request)
        experiment_id = row.id
        queue = self.manager.subscribe(experiment_id)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        if queue is None:
            await _sse(
                response,
                {"event": "experiment", "experimentId": experiment_id, "status": row.status, "message": row.message},
            )
            await response.write_eof()
            return response
        try:
            await _sse(response, {"event": "experiment", "experimentId": experiment_id, "status": "RUNNING"})
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=15)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                await _sse(response, item)
        except (ConnectionResetError, asyncio.CancelledError):
            self.manager.unsubscribe(experiment_id, queue)
            raise
        self.manager.unsubscribe(experiment_id, queue)
        await response.write_eof()
        return response

    async def _audit(self, request: web.Request) -> web.Response:
        user = self._user(request)
        limit = self._query_int(request, "limit", minimum=1, maximum=10000) or 1000
        if user.is_admin:
            rows = await self.db.fetch(
                "SELECT at_ms, actor, action, target, detail FROM svc_audit ORDER BY id DESC LIMIT $1", limit
            )
        else:
            rows = await self.db.fetch(
                "SELECT at_ms, actor, action, target, detail FROM svc_audit WHERE (actor = $1 OR actor = $2) "
                "AND at_ms >= $3 ORDER BY id DESC LIMIT $4",
                user.name,
                f"{user.name} (unauthenticated)",
                user.created_ms,  # a removed user's history is not a new user's of the same name
                limit,
            )
        return web.json_response(
            [{"time": r[0], "actor": r[1], "action": r[2], "target": r[3], "detail": json.loads(r[4])} for r in rows]
        )


_PROBLEM = re.compile(
    r"(?:invalid experiment config: at |^  )(\(top level\)|[A-Za-z0-9_.\[\]-]+)"
    r"(?: \(line \d+\))?(?: \(v1 key [^)]*\))?: ",
    re.MULTILINE,
)


_SECRET_INPUT = re.compile(
    r"((?:passw(?:or)?d|passphrase|secret|token|credential|api_?key|accesskey|privatekey)[^:\n]*:[^\n]*?)"
    r"\(got [^\n]*\)",
    re.IGNORECASE,
)


def _mask_secret_inputs(message: str) -> str:
    """A config error never repeats the value given for a secret key (``... password: ... (got ***)``)."""
    return _SECRET_INPUT.sub(r"\1(got ***)", message)


def _config_error_paths(message: str) -> list[str]:
    """The key paths a config error names (``config_from_dict`` lists them in its message)."""
    return _PROBLEM.findall(message)


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item)
    return deepest


def _shown(text: str | bytes | None) -> str | None:
    """Stored text as the API shows it: PostgreSQL keeps a trial's message as its exact bytes (BYTEA),
    SQLite as text that may hold undecodable bytes (surrogate escapes); both become valid UTF-8."""
    if text is None:
        return None
    if isinstance(text, str):
        text = text.encode("utf-8", errors="surrogateescape")
    return bytes(text).decode("utf-8", errors="replace")


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return value


def _metric_dict(trial_id: str, row: tuple[Any, ...]) -> dict[str, Any]:
    value: Any = None
    try:
        record = json.loads(row[3])
        value = record.get("value") if isinstance(record, dict) else None
        if isinstance(value, str):
            value = json.loads(value)
    except ValueError:
        value = None
    return {"trialId": trial_id, "seq": row[0], "type": row[1], "scalar": row[2], "value": _json_safe(value)}


async def _sse(response: web.StreamResponse, event: dict[str, Any]) -> None:
    name = event.get("event", "message")
    payload = json.dumps(event, default=str)
    await response.write(f"event: {name}\ndata: {payload}\n\n".encode())


_ = ID_PATTERN  # the route patterns above and the OpenAPI patterns agree (see openapi.py)
