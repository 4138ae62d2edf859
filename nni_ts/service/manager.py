"""Running experiments inside the service: start, stop, extend, re-attach, and broadcast events.

Threads
-------
Experiments run on their own event loop in one *engine* thread; the HTTP API runs on the main
loop. Starting trials is system-call heavy (directories, files, ``fork``): the local platform makes
those calls on a worker thread of its own, so that neither loop waits for them (every call that
releases the GIL also waits to get it back), and the API keeps answering while hundreds of trials
start and end. Every Experiment,
its training service and the experiment storage are touched only from the engine thread; the API
reaches them through :meth:`ExperimentManager._call`. The few service-database statements the
engine makes (an experiment's end) run on the API loop, through the API's connection.

Where results live
------------------
Each experiment runs the ordinary loop (:class:`~nni_ts.experiment.Experiment`), which writes its
trials and metrics through one :class:`~nni_ts.storage.base.ExperimentStorage`, durably, before
anything else sees them (a metric is acknowledged to the trial's platform after its COMMIT):

* service on PostgreSQL: :class:`~nni_ts.storage.base.PostgresStorage`, tables ``exp_*`` of the
  service's own database. The API reads those same tables, so every replica serves every
  experiment's results the moment they are committed.
* service on SQLite: :class:`~nni_ts.storage.base.SqliteStorage`, the store file
  ``<data-dir>/experiments.db`` (the schema ``nni-ts view`` and the dashboard read), written on the
  store's writer thread. The API attaches that file to its connection and reads it directly.

There is no copy of the results anywhere (the mirror of earlier versions is gone).

Shutdown is crash-only: :meth:`detach` leaves trials running; the next service re-attaches through
:meth:`Experiment.resume_from`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import NniTsError, UserError
from ..experiment import Experiment
from ..experiment.experiment import config_to_storable
from ..models import TrialJobDetail, now_ms
from ..storage import Store, TrialRecord
from ..storage.base import ExperimentStorage, PostgresStorage, SqliteStorage
from ..tasks import TaskSupervisor
from ..training_service import TrainingService
from .db import Database

__all__ = ["ExperimentManager"]

log = logging.getLogger(__name__)

_QUEUE = 10_000
T = TypeVar("T")
#: Builds an experiment's training service: ``factory(experiment_id, stored_config, user_name)``.
PlatformFactory = Callable[[str, dict[str, Any], str], TrainingService[Any]]


def _threadsafe(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> Any:
    """``run_coroutine_threadsafe`` in an empty context: a task on the other loop must not inherit
    the caller's context variables (an HTTP request's bound database connection, released when the
    request ends, while the experiment it started runs on)."""
    return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, loop)


@dataclass
class _Live:
    id: str
    exp: Experiment
    task: asyncio.Task[None] | None = None  # engine loop
    subscribers: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)  # API loop only
    done: bool = False  # set by the engine thread when the experiment's loop has ended


class ExperimentManager:
    """The experiments this service process runs, on the engine thread.

    ``db`` is the API's connection to the service database (used on the API loop only).
    ``storage_url`` says where experiments keep their records: the service's PostgreSQL URL, or
    ``sqlite:///<data-dir>/experiments.db``."""

    def __init__(
        self,
        db: Database,
        storage_url: str,
        *,
        replica: str,
        database_password: str | None = None,
        storage_pool_size: int = 10,
        platform_factory: PlatformFactory | None = None,
        legacy_store: Path | None = None,
    ) -> None:
        self.api_db = db
        self.storage_url = storage_url
        self.database_password = database_password
        self.storage_pool_size = storage_pool_size
        #: PostgreSQL: a store file of an earlier version whose experiments are copied in at start.
        self.legacy_store = legacy_store
        self.platform_factory = platform_factory
        self.replica = replica
        self._live: dict[str, _Live] = {}
        self._closing = False
        #: Owns the engine loop's experiment runs (spawned on the engine thread).
        self._tasks = TaskSupervisor("service-engine")
        self._storage: ExperimentStorage | None = None
        self._api_loop: asyncio.AbstractEventLoop | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._engine_main, name="nni-ts-service-engine", daemon=True)
        #: Told ``(experiment_id, what)`` when an experiment's stored state changed, after the change
        #: is committed ("trials", "metrics" or "experiment"); from either thread (the read cache).
        self.on_change: Callable[[str, str], None] | None = None

    # ------------------------------------------------------------------ the engine thread

    async def open(self) -> None:
        """Start the engine thread and open the experiment storage on it."""
        self._api_loop = asyncio.get_running_loop()
        self._thread.start()
        try:
            await self._call(self._engine_open())
        except BaseException:
            self._closing = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 60)
            raise

    async def _engine_open(self) -> None:
        url = self.storage_url
        if url.startswith("sqlite:///"):
            # Opened off the loop (SQLite opens and creates its schema synchronously).
            path = Path(url[len("sqlite:///") :]).expanduser()
            self._storage = await asyncio.to_thread(SqliteStorage, path)
        else:
            storage = await PostgresStorage.connect(
                url, password=self.database_password, pool_size=self.storage_pool_size
            )
            self._storage = storage
            storage.add_commit_listener(self._changed)
            if self.legacy_store is not None:
                await self._import_legacy_store(storage, self.legacy_store)

    async def _import_legacy_store(self, storage: PostgresStorage, path: Path) -> None:
        """A service upgraded from the mirroring versions kept its experiments' records in the store
        file ``experiments.db``: copy every experiment not in PostgreSQL yet (once; a marker file next
        to the store records it), so that their results stay readable and running ones re-attach."""
        marker = path.with_name(path.name + ".imported")
        if not path.exists() or marker.exists():
            return

        def read() -> list[tuple[Any, list[TrialRecord], list[Any]]]:
            with Store(path, readonly=True) as store:
                return [
                    (record, store.list_trials(record.id, with_detail=True), list(store.iter_metrics(record.id)))
                    for record in store.list_experiments()
                ]

        copied = 0
        for record, trials, metrics in await asyncio.to_thread(read):
            copied += await storage.import_experiment(record, trials, metrics)
        await asyncio.to_thread(marker.write_text, f"{copied} experiment(s) copied to PostgreSQL\n")
        log.info("Copied %d experiment(s) from %s into the service database.", copied, path)

    def _changed(self, experiment_id: str, what: str = "experiment") -> None:
        if self.on_change is not None:
            self.on_change(experiment_id, what)

    def _engine_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        # Detached (experiments still running): leave the loop as it is, the process exits.
        if self._closing and not self._live_tasks():
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    def _live_tasks(self) -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks(self._loop) if not t.done()]

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the engine loop and wait for it from the API loop. A request's database
        connection goes back to the pool meanwhile (a stop can take minutes)."""
        async with self.api_db.unbound():
            return await asyncio.wrap_future(_threadsafe(coro, self._loop))

    async def _on_api(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the API loop (its database connection) and wait for it from the engine loop."""
        assert self._api_loop is not None
        return await asyncio.wrap_future(_threadsafe(coro, self._api_loop))

    @property
    def storage(self) -> ExperimentStorage:
        """Where the experiments keep their records (engine thread only)."""
        assert self._storage is not None
        return self._storage

    # ------------------------------------------------------------------ queries (API thread)

    def is_live(self, experiment_id: str) -> bool:
        live = self._live.get(experiment_id)
        return live is not None and not live.done

    @property
    def live_ids(self) -> list[str]:
        return [i for i in list(self._live) if self.is_live(i)]

    # ------------------------------------------------------------------ start and resume

    async def launch(self, factory: Any) -> None:
        """Build an Experiment with ``factory(storage)`` and run it on the engine thread.

        The experiment is live (``is_live``, ``subscribe``) when this returns; its loop starts as
        soon as the engine thread gets to it (a busy engine does not delay the API's answer)."""
        exp = factory(self.storage)  # a plain object until it runs: nothing here touches the engine's state
        live = _Live(exp.id, exp)
        self._live[exp.id] = live
        self._loop.call_soon_threadsafe(self._run_live, live, context=contextvars.Context())

    async def resume(
        self,
        experiment_id: str,
        *,
        max_trial_number: int | None = None,
        max_experiment_duration: str | int | None = None,
        rerun_failed: bool = False,
        user: str = "",
    ) -> None:
        """Continue an ended (or orphaned) experiment with more budget. Raises StoreError."""

        async def go() -> None:
            exp = await Experiment.resume_from(
                experiment_id,
                self.storage,
                max_trial_number=max_trial_number,
                max_experiment_duration=max_experiment_duration,
                rerun_failed=rerun_failed,
                service=await self._platform(experiment_id, user),
            )
            self._live.pop(experiment_id, None)
            self._start(exp)

        await self._call(go())

    async def _platform(self, experiment_id: str, user: str) -> TrainingService[Any] | None:  # engine thread
        """The experiment's training service as the service builds it (its trials' OS user), or None."""
        if self.platform_factory is None:
            return None
        record = await self.storage.get_experiment(experiment_id)
        return self.platform_factory(experiment_id, dict(record.config), user)

    def _start(self, exp: Experiment) -> None:  # engine thread
        live = _Live(exp.id, exp)
        self._live[exp.id] = live
        self._run_live(live)

    def _run_live(self, live: _Live) -> None:  # engine thread
        exp = live.exp
        exp.events.on("started", lambda _id: self._on_started(live))
        exp.events.on("metric", lambda trial_id, parsed: self._on_metric(live, trial_id, parsed))
        exp.events.on("trial_end", lambda record: self._on_trial_end(live, record))
        live.task = self._tasks.spawn(self._run(live), name=f"experiment-{exp.id}")

    async def resume_owned(self) -> list[str]:
        """Re-attach to every experiment this replica was running when it stopped."""
        rows = await self.api_db.fetch(
            "SELECT id, user_name FROM svc_experiments WHERE status = $1 AND owner = $2 ORDER BY created_ms",
            "RUNNING",
            self.replica,
        )
        return await self._call(self._resume_owned([(str(r[0]), str(r[1])) for r in rows]))

    async def _resume_owned(self, rows: list[tuple[str, str]]) -> list[str]:
        resumed = []
        for experiment_id, user in rows:
            if experiment_id in self._live:
                continue
            try:
                exp = await Experiment.resume_from(
                    experiment_id, self.storage, service=await self._platform(experiment_id, user)
                )
            except (NniTsError, OSError) as exc:
                log.warning("Experiment %s cannot be re-attached: %s", experiment_id, exc)
                await self._set_status(experiment_id, "ERROR", f"It could not be re-attached after a restart: {exc}")
                continue
            log.info("Re-attaching to experiment %s.", experiment_id)
            self._start(exp)
            resumed.append(experiment_id)
        return resumed

    async def _run(self, live: _Live) -> None:
        status, message = "ERROR", None
        try:
            result = await live.exp.run()
            status, message = result.status, result.message
        except asyncio.CancelledError:
            status, message = "STOPPED", "The service stopped."
            raise
        except NniTsError as exc:
            message = str(exc)
        except Exception as exc:  # the service keeps serving whatever one experiment does
            log.exception("Experiment %s failed.", live.id)
            message = f"Internal error: {exc!r}"
        finally:
            if not self._closing:
                await self._final(live, status, message)
            live.done = True
            self._changed(live.id)  # no longer live: its answers say so
            self._to_api(self._close_streams, live)

    async def _final(self, live: _Live, status: str, message: str | None) -> None:
        try:
            await self._set_status(live.id, status, message, ended=True)
        except (NniTsError, RuntimeError) as exc:
            log.error("Could not record the end of experiment %s: %s", live.id, exc)
        self._broadcast(live, {"event": "experiment", "status": status, "message": message})

    async def _set_status(self, experiment_id: str, status: str, message: str | None, *, ended: bool = False) -> None:
        """The experiment's row in svc_experiments (engine thread; the statement runs on the API loop)."""
        now = now_ms()
        await self._on_api(
            self.api_db.execute(
                "UPDATE svc_experiments SET status = $1, message = $2, updated_ms = $3, ended_ms = $4 WHERE id = $5",
                status,
                message,
                now,
                now if ended else None,
                experiment_id,
            )
        )
        self._changed(experiment_id)

    # ------------------------------------------------------------------ control

    async def stop(self, experiment_id: str, reason: str, *, timeout: float = 120.0) -> bool:
        """Stop a live experiment and wait until its trials are cancelled. False if it was not live."""
        return await self._call(self._stop(experiment_id, reason, timeout))

    async def _stop(self, experiment_id: str, reason: str, timeout: float) -> bool:
        live = self._live.get(experiment_id)
        if live is None or live.done or live.task is None:
            return False
        live.exp.stop(reason)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(live.task)
        except TimeoutError:
            raise UserError(f"Experiment {experiment_id} did not stop within {timeout:.0f} s; try again.") from None
        except Exception:  # noqa: S110 - _run records every failure itself
            pass
        return True

    async def extend_live(
        self, experiment_id: str, *, max_trial_number: int | None, max_duration: str | int | None
    ) -> None:
        """Raise the budget of a running experiment in place (its loop picks it up at once)."""

        async def go() -> None:
            live = self._live[experiment_id]
            live.exp.extend(max_trial_number=max_trial_number, max_experiment_duration=max_duration)
            await self.storage.update_experiment(experiment_id, config=config_to_storable(live.exp.config))

        await self._call(go())

    async def update_live(self, experiment_id: str, **changes: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """:meth:`Experiment.update` on a running experiment (it stores the new config itself).

        Returns what changed and the new stored config. Raises UserError if it is not running here."""

        async def go() -> tuple[dict[str, Any], dict[str, Any]]:
            live = self._live.get(experiment_id)
            if live is None:
                raise UserError(f"Experiment {experiment_id} is not running here.")
            done = await live.exp.update(**changes)
            return done, config_to_storable(live.exp.config)

        return await self._call(go())

    async def add_trial(self, experiment_id: str, parameters: dict[str, Any]) -> None:
        """:meth:`Experiment.add_trial` (a customized trial) on a running experiment."""

        async def go() -> None:
            live = self._live.get(experiment_id)
            if live is None:
                raise UserError(f"Experiment {experiment_id} is not running here.")
            live.exp.add_trial(parameters)

        await self._call(go())

    async def kill_trial(self, experiment_id: str, trial_id: str) -> None:
        """Cancel one trial of a running experiment (not retried)."""

        async def go() -> None:
            live = self._live.get(experiment_id)
            if live is None:
                raise UserError(f"Experiment {experiment_id} is not running here.")
            await live.exp.kill_trial(trial_id)

        await self._call(go())

    async def trial_file(self, experiment_id: str, trial_id: str, name: str, tail: int | None) -> bytes | None:
        """A trial file through the live experiment's platform; None if the experiment is not live."""

        async def go() -> bytes | None:
            live = self._live.get(experiment_id)
            if live is None or live.done or live.exp.service is None:
                return None
            try:
                return await live.exp.service.get_trial_file(trial_id, name, tail=tail)
            except NniTsError:
                return None

        return await self._call(go())

    def forget(self, experiment_id: str) -> None:
        live = self._live.get(experiment_id)
        if live is not None and live.done:
            self._live.pop(experiment_id, None)

    async def purge(self, experiment_id: str) -> None:
        """Remove a stopped experiment's records from the storage (on the engine thread, its owner)."""

        async def go() -> None:
            if experiment_id in self._live and not self._live[experiment_id].done:
                raise UserError(f"Experiment {experiment_id} is still running; stop it first.")
            await self.storage.delete_experiment(experiment_id)

        await self._call(go())

    # ------------------------------------------------------------------ events

    def subscribe(self, experiment_id: str) -> asyncio.Queue[dict[str, Any] | None] | None:
        """A queue of the experiment's events (API loop); None when it is not live."""
        live = self._live.get(experiment_id)
        if live is None or live.done:
            return None
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_QUEUE)
        live.subscribers.add(queue)
        return queue

    def unsubscribe(self, experiment_id: str, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        live = self._live.get(experiment_id)
        if live is not None:
            live.subscribers.discard(queue)

    def _to_api(self, fn: Any, *args: Any) -> None:
        if self._api_loop is not None and not self._api_loop.is_closed():
            try:
                self._api_loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the API loop closed meanwhile
                pass

    def _broadcast(self, live: _Live, event: dict[str, Any]) -> None:  # engine thread
        if not live.subscribers:  # nobody streams it: no wake-up of the API loop (four per trial)
            return
        self._to_api(self._deliver, live, {"experimentId": live.id, "time": now_ms(), **event})

    @staticmethod
    def _deliver(live: _Live, event: dict[str, Any]) -> None:  # API thread
        for queue in list(live.subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a reader that does not keep up is dropped, not waited for
                live.subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)

    @staticmethod
    def _close_streams(live: _Live) -> None:  # API thread
        for queue in list(live.subscribers):
            live.subscribers.discard(queue)
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                queue.get_nowait()
                queue.put_nowait(None)

    def _on_started(self, live: _Live) -> None:
        service = live.exp.service
        if service is not None:
            service.events.on("trial_status", lambda detail: self._on_trial_status(live, detail))

    def _on_trial_status(self, live: _Live, detail: TrialJobDetail) -> None:
        self._broadcast(live, {"event": "trial", "trialId": detail.id, "status": detail.status.value})

    def _on_metric(self, live: _Live, trial_id: str, parsed: Any) -> None:
        value = parsed.value
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            value = parsed.scalar
        self._broadcast(live, {"event": "metric", "trialId": trial_id, "type": parsed.type, "value": value})

    def _on_trial_end(self, live: _Live, record: TrialRecord) -> None:
        event = {"event": "trial_end", "trialId": record.id, "status": record.status.value}
        self._broadcast(live, event | {"finalValue": record.final_value})

    # ------------------------------------------------------------------ shutdown

    async def detach(self) -> None:
        """Leave the experiments and their trials running (crash-only shutdown): every record the
        loop acknowledged is committed already, so nothing is left to copy.

        The process must then exit (``os._exit``) without cancelling the engine's tasks, or their
        trials would be cancelled."""
        self._closing = True
        for live in list(self._live.values()):
            self._close_streams(live)

    async def close(self, reason: str = "The service stopped.") -> None:
        """Stop every live experiment (their trials are cancelled), record their end, end the thread."""
        if not self._thread.is_alive():
            return
        await self._call(self._close(reason))
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 60)

    async def _close(self, reason: str) -> None:
        await asyncio.gather(*(self._stop(i, reason, 120.0) for i in list(self._live)), return_exceptions=True)
        self._closing = True
        await self._tasks.stop(10)
        leftovers = [t for t in self._live_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=10)
        if self._storage is not None:
            await self._storage.close()
