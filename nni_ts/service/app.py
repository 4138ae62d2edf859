"""The experiment service: a multi-user REST API over the experiment loop (``nni-ts serve``).

Users own workspaces; workspaces hold experiments. Every request but ``/api/v1/nni-exp/hello``,
``/api/v1/healthz`` and ``/api/v1/openapi.json`` carries ``Authorization: Bearer <token>``. A user
sees and changes only their own workspaces (another user's experiment answers 404, as if it did not
exist); an admin sees all. See docs/service.md for the routes and their bodies.
"""

from __future__ import annotations

import asyncio
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

from ..config.experiment import ExperimentConfig
from ..errors import ConfigError, NniTsError, StoreError, UserError
from ..experiment import Experiment
from ..experiment.results import best_trial_sql, optimize_mode
from ..models import now_ms
from ..training_service import TRIAL_FILES, TrainingService, new_trial_id
from . import users as users_mod
from .configs import PlatformPolicy, legacy_to_v2, parse_legacy, prepare_config, redact, resource_need
from .db import Database, open_database
from .manager import ExperimentManager
from .openapi import ID_PATTERN, openapi_document
from .users import User, audit, check_name

__all__ = ["ExperimentService", "ServiceSettings"]

log = logging.getLogger(__name__)

API = "/api/v1"
_ID = "{experiment_id:[A-Za-z0-9_-]{1,64}}"
_TRIAL = "{trial_id:[A-Za-z0-9_-]{1,64}}"
_WS = "{workspace:[A-Za-z0-9][A-Za-z0-9_-]{0,39}}"
_MAX_TAIL = 16 * 1024 * 1024
_USER_KEY = web.RequestKey("user", User)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ServiceSettings:
    """How a service runs. ``data_dir`` holds workspaces' files and the experiment store."""

    data_dir: Path
    database_url: str | None = None
    policy: PlatformPolicy = field(default_factory=PlatformPolicy)
    replica: str = field(default_factory=socket.gethostname)
    default_max_trials: int = 64
    default_max_gpus: int = 8
    legacy_auth: Literal["token", "none"] = "token"
    max_body: int = 4 * 1024 * 1024


class HTTPProblem(Exception):
    """An answer with a 4xx status and a reason."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


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

        self._platform_class = get_platform_class(self.settings.policy.platform)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._db = await open_database(self.database_url)
        manager = ExperimentManager(self.database_url, self.data_dir / "experiments.db", replica=self.settings.replica)
        try:
            await manager.open()
        except BaseException:
            await self._db.close()
            self._db = None
            raise
        self._manager = manager
        try:
            return await manager.resume_owned()
        except BaseException:
            await self.close()
            raise

    async def close(self, *, stop_experiments: bool = True) -> None:
        """Stop every experiment (cancelling trials), or with ``stop_experiments=False`` only detach:
        then the caller must exit the process without cancelling tasks (see ExperimentManager.detach)."""
        if self._manager is not None:
            if stop_experiments:
                await self._manager.close()
            else:
                await self._manager.detach()
        if self._db is not None:
            await self._db.close()
            self._db = None

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
        return app

    # ------------------------------------------------------------------ middlewares

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
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
                return _error(exc.status, exc.reason)
            raise
        except NniTsError as exc:
            return _error(409, str(exc))

    _PUBLIC = frozenset({f"{API}/nni-exp/hello", f"{API}/openapi.json", f"{API}/healthz"})

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in self._PUBLIC:
            return await handler(request)
        legacy = request.path == f"{API}/nni-exp"
        header = request.headers.get("Authorization", "")
        if not header and legacy and self.settings.legacy_auth == "none":
            return await handler(request)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPProblem(401, "This request needs an API token: send the header 'Authorization: Bearer <token>'.")
        user = await users_mod.user_by_token(self.db, token.strip())
        if user is None:
            raise HTTPProblem(401, "The API token is not valid (it may have been rotated or its user removed).")
        request[_USER_KEY] = user
        return await handler(request)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _user(request: web.Request) -> User:
        user = request.get(_USER_KEY)
        assert isinstance(user, User)
        return user

    @staticmethod
    async def _json(request: web.Request, *, optional: bool = False) -> Any:
        if not request.can_read_body:
            if optional:
                return None
            raise HTTPProblem(400, "The request needs a JSON body.")
        try:
            text = await request.text()
        except UnicodeDecodeError:
            raise HTTPProblem(400, "The request body is not UTF-8 text.") from None
        if not text.strip() and optional:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise HTTPProblem(400, f"The request body is not valid JSON: {exc}.") from None

    def workspace_dir(self, user: str, workspace: str) -> Path:
        return self.data_dir / "workspaces" / user / workspace

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

    _EXP_COLS = (
        "id, user_name, workspace, name, platform, status, message, config, trial_concurrency, gpus_per_trial, "
        "optimize_mode, owner, legacy, created_ms, updated_ms, ended_ms"
    )

    @staticmethod
    def _exp_dict(row: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "id": row[0],
            "user": row[1],
            "workspace": row[2],
            "name": row[3],
            "platform": row[4],
            "status": row[5],
            "message": row[6],
            "trialConcurrency": row[8],
            "gpusPerTrial": row[9],
            "optimizeMode": row[10],
            "legacy": bool(row[12]),
            "createdAt": row[13],
            "updatedAt": row[14],
            "endedAt": row[15],
        }

    async def _experiment_row(self, user: User, experiment_id: str) -> tuple[Any, ...]:
        row = await self.db.fetchrow(f"SELECT {self._EXP_COLS} FROM svc_experiments WHERE id = $1", experiment_id)
        if row is None or (row[1] != user.name and not user.is_admin):
            raise HTTPProblem(404, f"There is no experiment {experiment_id!r} in your workspaces.")
        return row

    @staticmethod
    def _trial_dict(row: tuple[Any, ...]) -> dict[str, Any]:
        final = None
        if row[12]:
            try:
                record = json.loads(row[12])
                final = record.get("value") if isinstance(record, dict) else None
                if isinstance(final, str):
                    final = json.loads(final)
            except ValueError:
                final = None
        return {
            "id": row[1],
            "sequenceId": row[2],
            "parameterId": row[3],
            "attempt": row[4],
            "parameters": json.loads(row[5]),
            "status": row[6],
            "startTime": row[7],
            "endTime": row[8],
            "exitCode": row[9],
            "message": row[10],
            "finalValue": row[11],
            "final": _json_safe(final),
            "metricCount": row[13],
        }

    _TRIAL_COLS = (
        "experiment_id, id, sequence_id, parameter_id, attempt, parameters, status, start_ms, end_ms, exit_code, "
        "message, final_value, final_data, metric_count"
    )

    async def _trial_rows(
        self, experiment_id: str, *, limit: int | None = None, offset: int = 0
    ) -> list[tuple[Any, ...]]:
        page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        return await self.db.fetch(
            f"SELECT {self._TRIAL_COLS} FROM svc_trials WHERE experiment_id = $1 ORDER BY sequence_id, attempt{page}",
            experiment_id,
        )

    async def _details(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """An experiment with its trial counts and best trial (aggregated in SQL: cheap to poll)."""
        out = self._exp_dict(row)
        counts = {
            str(r[0]): int(r[1])
            for r in await self.db.fetch(
                "SELECT status, COUNT(*) FROM svc_trials WHERE experiment_id = $1 GROUP BY status", row[0]
            )
        }
        where, direction = best_trial_sql(row[10])
        best_row = await self.db.fetchrow(
            f"SELECT {self._TRIAL_COLS} FROM svc_trials WHERE experiment_id = $1 AND {where} "
            f"ORDER BY final_value {direction}, sequence_id, attempt LIMIT 1",
            row[0],
        )
        best = self._trial_dict(best_row) if best_row is not None else None
        config = json.loads(row[7])
        out.update(
            config=config,
            maxTrialNumber=config.get("maxTrialNumber"),
            trialCounts=counts,
            trialCount=sum(counts.values()),
            best=best,
            live=self.manager.is_live(row[0]),
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
        self, user: User, workspace: str, raw: Any, *, legacy: bool = False, actor: str | None = None
    ) -> dict[str, Any]:
        check_name(workspace, "A workspace name")
        config = prepare_config(
            raw,
            user=user.name,
            is_admin=user.is_admin,
            workspace=workspace,
            workspace_dir=self.workspace_dir(user.name, workspace),
            policy=self.settings.policy,
        )
        tuner = self._tuner_for(config)
        trials, gpus = resource_need(config)
        experiment_id = new_trial_id(8).lower()
        shown = redact(raw if isinstance(raw, dict) else {})
        stored = redact(config.model_dump(mode="json", by_alias=True, exclude_none=True))
        async with self._quota_lock(user.name), self.db.transaction() as tx:
            await self._check_quota(tx, user, trials, gpus)
            now = now_ms()
            await tx.execute(
                "INSERT INTO svc_workspaces (user_name, name, created_ms) VALUES ($1, $2, $3) "
                "ON CONFLICT (user_name, name) DO NOTHING",
                user.name,
                workspace,
                now,
            )
            await tx.execute(
                f"INSERT INTO svc_experiments ({self._EXP_COLS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
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
            )
            await audit(
                tx,
                actor or user.name,
                "experiment.create",
                f"{user.name}/{workspace}/{experiment_id}",
                {"legacy": legacy, "config": shown},
            )
        # The platform class is looked up once (entry points are slow to scan), not per experiment.
        assert self._platform_class is not None and config.experiment_working_directory is not None
        service = self._platform_class(
            config.training_service,
            experiment_id=experiment_id,
            experiment_dir=Path(config.experiment_working_directory) / experiment_id,
        )
        await self.manager.launch(
            lambda store: Experiment(
                config,
                experiment_id=experiment_id,
                store=store,
                tuner=tuner,
                service=service,
                control_socket=False,
            )
        )
        log.info("User %s created experiment %s in workspace %s.", user.name, experiment_id, workspace)
        return {"id": experiment_id, "user": user.name, "workspace": workspace, "status": "RUNNING"}

    async def delete_experiment(self, user: User, row: tuple[Any, ...], *, actor: str | None = None) -> None:
        experiment_id = row[0]
        if row[5] == "RUNNING" and not self.manager.is_live(experiment_id) and row[11] != self.settings.replica:
            raise HTTPProblem(409, f"Experiment {experiment_id} runs on the replica {row[11]!r}; delete it there.")
        await self.manager.stop(experiment_id, f"Deleted by {actor or user.name}.")
        self.manager.forget(experiment_id)
        await self.manager.purge(experiment_id)
        exp_dir = self.workspace_dir(row[1], row[2]) / "experiments" / experiment_id
        await asyncio.to_thread(shutil.rmtree, exp_dir, True)
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM svc_metrics WHERE experiment_id = $1", experiment_id)
            await tx.execute("DELETE FROM svc_trials WHERE experiment_id = $1", experiment_id)
            await tx.execute("DELETE FROM svc_experiments WHERE id = $1", experiment_id)
            await audit(tx, actor or user.name, "experiment.delete", f"{row[1]}/{row[2]}/{experiment_id}")

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
        running = await self.db.fetchrow(
            "SELECT id FROM svc_experiments WHERE user_name = $1 AND workspace = $2 AND status = $3",
            user.name,
            req.workspace,
            "RUNNING",
        )
        if running is not None:
            raise HTTPProblem(
                409,
                f"Workspace {req.workspace!r} already runs experiment {running[0]}; DELETE it first.",
                experimentId=running[0],
            )
        created = await self.create_experiment(
            user, req.workspace, legacy_to_v2(req, self.settings.policy), legacy=True, actor=actor
        )
        return web.json_response({**created, "experimentId": created["id"]})

    async def _legacy_get(self, request: web.Request) -> web.Response:
        name, workspace = await self._legacy_target(request)
        user, _ = await self._legacy_user(request, name)
        row = await self.db.fetchrow(
            f"SELECT {self._EXP_COLS} FROM svc_experiments WHERE user_name = $1 AND workspace = $2 "
            "ORDER BY created_ms DESC LIMIT 1",
            user.name,
            workspace,
        )
        if row is None:
            raise HTTPProblem(404, f"Workspace {workspace!r} of {user.name!r} has no experiment.")
        details = await self._details(row)
        details["trials"] = [self._trial_dict(t) for t in await self._trial_rows(row[0])]
        details["experimentId"] = row[0]
        return web.json_response(details)

    async def _legacy_delete(self, request: web.Request) -> web.Response:
        name, workspace = await self._legacy_target(request)
        user, actor = await self._legacy_user(request, name)
        rows = await self.db.fetch(
            f"SELECT {self._EXP_COLS} FROM svc_experiments WHERE user_name = $1 AND workspace = $2",
            user.name,
            workspace,
        )
        if not rows:
            raise HTTPProblem(404, f"Workspace {workspace!r} of {user.name!r} has no experiment.")
        for row in rows:
            await self.delete_experiment(user, row, actor=actor)
        return web.json_response({"deleted": [r[0] for r in rows], "user": user.name, "workspace": workspace})

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
        created = await self.create_experiment(user, workspace, await self._json(request))
        return web.json_response(created, status=201)

    async def _upload(self, request: web.Request) -> web.Response:
        user = self._user(request)
        workspace = check_name(request.match_info["workspace"], "A workspace name")
        rel = request.match_info["path"]
        parts = [p for p in rel.split("/") if p]
        if not parts or any(p in (".", "..") or "\x00" in p or "\\" in p for p in parts):
            raise HTTPProblem(400, f"The file path {rel!r} must be relative, without '.' or '..' parts.")
        code_dir = self.workspace_dir(user.name, workspace) / "code"
        target = code_dir.joinpath(*parts)
        data = await request.read()
        try:
            await asyncio.to_thread(_write_file, target, data)
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
        row = await self._experiment_row(self._user(request), request.match_info["experiment_id"])
        return web.json_response(await self._details(row))

    async def _delete(self, request: web.Request) -> web.Response:
        user = self._user(request)
        row = await self._experiment_row(user, request.match_info["experiment_id"])
        await self.delete_experiment(user, row)
        return web.json_response({"deleted": row[0]})

    async def _stop(self, request: web.Request) -> web.Response:
        user = self._user(request)
        row = await self._experiment_row(user, request.match_info["experiment_id"])
        experiment_id = row[0]
        if not self.manager.is_live(experiment_id):
            raise HTTPProblem(409, f"Experiment {experiment_id} is not running here (it is {row[5]}).")
        await audit(self.db, user.name, "experiment.stop", f"{row[1]}/{row[2]}/{experiment_id}")
        await self.manager.stop(experiment_id, f"Stopped by {user.name}.")
        row = await self._experiment_row(user, experiment_id)
        return web.json_response(self._exp_dict(row))

    async def _extend(self, request: web.Request) -> web.Response:
        user = self._user(request)
        row = await self._experiment_row(user, request.match_info["experiment_id"])
        experiment_id = row[0]
        body = await self._json(request)
        if not isinstance(body, dict):
            raise HTTPProblem(
                400, "The body must be a JSON object: {maxTrialNumber, maxExperimentDuration, rerunFailed}."
            )
        unknown = set(body) - {"maxTrialNumber", "maxExperimentDuration", "rerunFailed"}
        if unknown:
            raise HTTPProblem(
                422,
                f"Unknown keys {sorted(unknown)}; expected maxTrialNumber, maxExperimentDuration or rerunFailed.",
                path=sorted(unknown)[0],
            )
        number = body.get("maxTrialNumber")
        duration = body.get("maxExperimentDuration")
        rerun = body.get("rerunFailed", False)
        if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 1):
            raise HTTPProblem(422, "maxTrialNumber must be a positive integer.", path="maxTrialNumber")
        if duration is not None:
            from ..config.experiment import parse_duration

            if isinstance(duration, bool) or not isinstance(duration, str | int):
                raise HTTPProblem(
                    422, "maxExperimentDuration must be a duration such as '2h'.", path="maxExperimentDuration"
                )
            parse_duration(duration, path="maxExperimentDuration")
        if not isinstance(rerun, bool):
            raise HTTPProblem(422, "rerunFailed must be true or false.", path="rerunFailed")
        if number is None and duration is None and not rerun:
            raise HTTPProblem(422, "Give maxTrialNumber, maxExperimentDuration or rerunFailed.")
        config = json.loads(row[7])
        if number is not None and config.get("maxTrialNumber") and number < config["maxTrialNumber"]:
            raise HTTPProblem(
                422, f"maxTrialNumber can only grow (it is {config['maxTrialNumber']}).", path="maxTrialNumber"
            )
        detail = {"maxTrialNumber": number, "maxExperimentDuration": duration, "rerunFailed": rerun}
        if number is not None:
            config["maxTrialNumber"] = number
        if duration is not None:
            config["maxExperimentDuration"] = duration
        if self.manager.is_live(experiment_id):
            if rerun:
                raise HTTPProblem(409, f"Experiment {experiment_id} is running; re-run failed trials after it ends.")
            await self.manager.extend_live(experiment_id, max_trial_number=number, max_duration=duration)
            await self.db.execute(
                "UPDATE svc_experiments SET config = $1, updated_ms = $2 WHERE id = $3",
                json.dumps(config),
                now_ms(),
                experiment_id,
            )
            await audit(self.db, user.name, "experiment.extend", f"{row[1]}/{row[2]}/{experiment_id}", detail)
        else:
            if row[5] == "RUNNING" and row[11] != self.settings.replica:
                raise HTTPProblem(409, f"Experiment {experiment_id} runs on the replica {row[11]!r}.")
            owner = await users_mod.get_user(self.db, row[1]) or user
            async with self._quota_lock(owner.name):
                async with self.db.transaction() as tx:
                    await self._check_quota(tx, owner, int(row[8]), int(row[9]), exclude=experiment_id)
                    # RUNNING before it starts: its end (however soon) is recorded after this.
                    await tx.execute(
                        "UPDATE svc_experiments SET config = $1, status = $2, message = NULL, ended_ms = NULL, "
                        "owner = $3, updated_ms = $4 WHERE id = $5",
                        json.dumps(config),
                        "RUNNING",
                        self.settings.replica,
                        now_ms(),
                        experiment_id,
                    )
                    await audit(tx, user.name, "experiment.extend", f"{row[1]}/{row[2]}/{experiment_id}", detail)
                try:
                    await self.manager.resume(
                        experiment_id,
                        max_trial_number=number,
                        max_experiment_duration=duration,
                        rerun_failed=rerun,
                    )
                except NniTsError as exc:
                    await self.db.execute(
                        "UPDATE svc_experiments SET status = $1, message = $2, config = $3 WHERE id = $4",
                        row[5],
                        row[6],
                        row[7],
                        experiment_id,
                    )
                    raise HTTPProblem(409, f"Experiment {experiment_id} cannot be continued: {exc}") from None
        row = await self._experiment_row(user, experiment_id)
        return web.json_response(await self._details(row))

    def _page(self, request: web.Request) -> tuple[int | None, int]:
        limit = self._query_int(request, "limit", minimum=1, maximum=1_000_000)
        offset = self._query_int(request, "offset", minimum=0, maximum=2**31) or 0
        return limit, offset

    async def _trials(self, request: web.Request) -> web.Response:
        row = await self._experiment_row(self._user(request), request.match_info["experiment_id"])
        limit, offset = self._page(request)
        rows = await self._trial_rows(row[0], limit=limit, offset=offset if limit is not None else 0)
        return web.json_response([self._trial_dict(t) for t in rows])

    async def _trial(self, request: web.Request) -> web.Response:
        row = await self._experiment_row(self._user(request), request.match_info["experiment_id"])
        trial_id = request.match_info["trial_id"]
        trow = await self.db.fetchrow(
            f"SELECT {self._TRIAL_COLS} FROM svc_trials WHERE experiment_id = $1 AND id = $2", row[0], trial_id
        )
        if trow is None:
            raise HTTPProblem(404, f"Experiment {row[0]} has no trial {trial_id!r}.")
        out = self._trial_dict(trow)
        metrics = await self.db.fetch(
            "SELECT seq, type, value, data FROM svc_metrics WHERE experiment_id = $1 AND trial_id = $2 ORDER BY seq",
            row[0],
            trial_id,
        )
        out["metrics"] = [_metric_dict(trial_id, m) for m in metrics]
        return web.json_response(out)

    async def _metrics(self, request: web.Request) -> web.Response:
        row = await self._experiment_row(self._user(request), request.match_info["experiment_id"])
        limit, offset = self._page(request)
        page = f" LIMIT {limit} OFFSET {offset}" if limit is not None else ""
        trial = request.query.get("trial")
        if trial is not None:
            rows = await self.db.fetch(
                "SELECT seq, type, value, data, trial_id FROM svc_metrics WHERE experiment_id = $1 AND trial_id = $2 "
                f"ORDER BY seq{page}",
                row[0],
                trial,
            )
        else:
            rows = await self.db.fetch(
                "SELECT seq, type, value, data, trial_id FROM svc_metrics WHERE experiment_id = $1 "
                f"ORDER BY trial_id, seq{page}",
                row[0],
            )
        return web.json_response([_metric_dict(m[4], m) for m in rows])

    async def _log(self, request: web.Request) -> web.Response:
        row = await self._experiment_row(self._user(request), request.match_info["experiment_id"])
        trial_id = request.match_info["trial_id"]
        name = request.query.get("file", "stdout")
        if name not in TRIAL_FILES:
            raise HTTPProblem(400, f"file must be one of {', '.join(TRIAL_FILES)}, got {name!r}.")
        tail = self._query_int(request, "tail", minimum=0, maximum=_MAX_TAIL)
        known = await self.db.fetchrow(
            "SELECT id FROM svc_trials WHERE experiment_id = $1 AND id = $2", row[0], trial_id
        )
        if known is None:
            raise HTTPProblem(404, f"Experiment {row[0]} has no trial {trial_id!r}.")
        data = await self.manager.trial_file(row[0], trial_id, name, tail)
        if data is None:
            path = self.workspace_dir(row[1], row[2]) / "experiments" / row[0] / "trials" / trial_id / name
            data = await asyncio.to_thread(_read_tail, path, tail)
        return web.Response(body=data, content_type="text/plain", charset="utf-8")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        row = await self._experiment_row(self._user(request), request.match_info["experiment_id"])
        experiment_id = row[0]
        queue = self.manager.subscribe(experiment_id)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        if queue is None:
            await _sse(
                response, {"event": "experiment", "experimentId": experiment_id, "status": row[5], "message": row[6]}
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
                "SELECT at_ms, actor, action, target, detail FROM svc_audit WHERE actor = $1 OR actor = $2 "
                "ORDER BY id DESC LIMIT $3",
                user.name,
                f"{user.name} (unauthenticated)",
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


def _write_file(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _read_tail(path: Path, tail: int | None) -> bytes:
    try:
        with open(path, "rb") as fh:
            if tail is not None:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - tail))
            return fh.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return b""


_ = ID_PATTERN  # the route patterns above and the OpenAPI patterns agree (see openapi.py)
