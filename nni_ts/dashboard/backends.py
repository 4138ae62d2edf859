"""Where the dashboard's actions go: an experiment loop in this process, or the experiment service."""

from __future__ import annotations

import errno
import json
import logging
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import UserError
from .server import Backend, Dashboard, Viewer

if TYPE_CHECKING:
    from ..experiment import Experiment
    from ..service.app import ExperimentService

__all__ = ["LocalBackend", "ServiceBackend", "start_dashboard"]

log = logging.getLogger(__name__)


def update_kwargs(changes: dict[str, Any]) -> dict[str, Any]:
    """An update's camelCase keys as :meth:`Experiment.update` arguments."""
    return {
        "trial_concurrency": changes.get("trialConcurrency"),
        "max_trial_number": changes.get("maxTrialNumber"),
        "max_experiment_duration": changes.get("maxExperimentDuration"),
        "search_space": changes.get("searchSpace"),
    }


class LocalBackend(Backend):
    """``nni-ts create``: the experiment's loop runs in this process, on this event loop."""

    readonly = False

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment

    def is_live(self, experiment_id: str) -> bool:
        exp = self.experiment
        return experiment_id == exp.id and exp.service is not None and exp.status == "RUNNING"

    def elapsed(self, experiment_id: str) -> float | None:
        return self.experiment.progress().elapsed if experiment_id == self.experiment.id else None

    async def stop(self, viewer: Viewer, experiment_id: str) -> None:
        self.experiment.stop("Stopped from the dashboard.")

    async def extend(
        self, viewer: Viewer, experiment_id: str, max_trial_number: int | None, max_duration: str | None
    ) -> None:
        await self.experiment.update(max_trial_number=max_trial_number, max_experiment_duration=max_duration)

    async def kill(self, viewer: Viewer, experiment_id: str, trial_id: str) -> None:
        await self.experiment.kill_trial(trial_id)

    async def rerun(self, viewer: Viewer, experiment_id: str, parameters: dict[str, Any]) -> None:
        self.experiment.add_trial(parameters)

    async def update(self, viewer: Viewer, experiment_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        return await self.experiment.update(**update_kwargs(changes))

    async def log(self, experiment_id: str, trial_id: str, name: str, tail: int | None) -> bytes | None:
        service = self.experiment.service
        if service is None:
            return None
        return await service.get_trial_file(trial_id, name, tail=tail)


class ServiceBackend(Backend):
    """``nni-ts serve``: users log in with their API token and see only their own experiments."""

    login_required = True
    readonly = False

    def __init__(self, service: ExperimentService) -> None:
        self.service = service

    async def authenticate(self, token: str) -> tuple[str, bool] | None:
        from ..service import users

        user = await users.user_by_token(self.service.db, token)
        return (user.name, user.is_admin) if user is not None else None

    async def lookup(self, name: str) -> tuple[str, bool] | None:
        from ..service import users

        user = await users.get_user(self.service.db, name)
        return (user.name, user.is_admin) if user is not None else None

    async def visible(self, viewer: Viewer) -> set[str] | None:
        if viewer.admin:
            return None
        rows = await self.service.db.fetch("SELECT id FROM svc_experiments WHERE user_name = $1", viewer.name)
        return {str(r[0]) for r in rows}

    def is_live(self, experiment_id: str) -> bool:
        return self.service.manager.is_live(experiment_id)

    async def _target(self, experiment_id: str) -> str:
        row = await self.service.db.fetchrow(
            "SELECT user_name, workspace FROM svc_experiments WHERE id = $1", experiment_id
        )
        return f"{row[0]}/{row[1]}/{experiment_id}" if row else experiment_id

    async def stop(self, viewer: Viewer, experiment_id: str) -> None:
        from ..service.users import audit

        await audit(self.service.db, viewer.name, "experiment.stop", await self._target(experiment_id))
        await self.service.manager.stop(experiment_id, f"Stopped by {viewer.name} (dashboard).")

    async def extend(
        self, viewer: Viewer, experiment_id: str, max_trial_number: int | None, max_duration: str | None
    ) -> None:
        await self.update(
            viewer, experiment_id, {"maxTrialNumber": max_trial_number, "maxExperimentDuration": max_duration}
        )

    async def update(self, viewer: Viewer, experiment_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        from ..models import now_ms
        from ..service.users import audit

        changes = {k: v for k, v in changes.items() if v is not None}
        done, config = await self.service.manager.update_live(experiment_id, **update_kwargs(changes))
        await self.service.db.execute(
            "UPDATE svc_experiments SET config = $1, trial_concurrency = $2, updated_ms = $3 WHERE id = $4",
            json.dumps(config),
            int(config.get("trialConcurrency") or 1),
            now_ms(),
            experiment_id,
        )
        await audit(self.service.db, viewer.name, "experiment.update", await self._target(experiment_id), done)
        return done

    async def kill(self, viewer: Viewer, experiment_id: str, trial_id: str) -> None:
        from ..service.users import audit

        await self.service.manager.kill_trial(experiment_id, trial_id)
        await audit(self.service.db, viewer.name, "trial.kill", f"{await self._target(experiment_id)}/{trial_id}")

    async def rerun(self, viewer: Viewer, experiment_id: str, parameters: dict[str, Any]) -> None:
        from ..service.users import audit

        await self.service.manager.add_trial(experiment_id, parameters)
        await audit(self.service.db, viewer.name, "trial.add", await self._target(experiment_id), parameters)

    async def log(self, experiment_id: str, trial_id: str, name: str, tail: int | None) -> bytes | None:
        return await self.service.manager.trial_file(experiment_id, trial_id, name, tail)


async def start_dashboard(
    dashboard: Dashboard, host: str, port: int, *, port_given: bool = True
) -> tuple[web.AppRunner, str]:
    """Serve ``dashboard`` alone on ``host:port`` (0: a free port). Returns the runner and the URL.

    If the default port is taken and the user did not ask for it, a free port is used instead.
    """
    dashboard.loopback_only = host in ("127.0.0.1", "localhost", "::1")
    runner = web.AppRunner(dashboard.app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port_given:
            await runner.cleanup()
            raise UserError(
                f"The dashboard cannot listen on {host}:{port}: {exc.strerror or exc}. "
                "Choose another --port (0 picks a free one) or pass --no-dashboard."
            ) from None
        log.warning("Port %d is in use; the dashboard takes a free port instead.", port)
        site = web.TCPSite(runner, host, 0)
        await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    return runner, f"http://{shown}:{bound}{dashboard.base}"
