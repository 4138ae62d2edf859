"""Running experiments inside the service: start, stop, extend, re-attach, mirror, and broadcast events.

Threads
-------
Experiments run on their own event loop in one *engine* thread; the HTTP API runs on the main
loop. Starting trials is system-call heavy (directories, files, ``fork``), and those calls release
the GIL, so the API keeps answering while hundreds of trials start and end. Every Experiment,
its training service and the experiment store are touched only from the engine thread; the API
reaches them through :meth:`ExperimentManager._call`. Each thread has its own connection (pool) to
the service database.

Where results live
------------------
Each experiment runs the ordinary loop (:class:`~nni_ts.experiment.Experiment`), which writes its
trials and metrics durably to the experiment store (SQLite, under the service's data directory)
before anything else sees them. The service *mirrors* the store into its own database: every event
of the experiment (a status change, a metric, a trial's end) marks the experiment dirty and one
mirror task per experiment copies what changed (upserted trials, metrics inserted with
``ON CONFLICT DO NOTHING``). The API reads only the service database, so PostgreSQL replicas serve
every experiment's results. The copy is idempotent and restarts from what the database already
holds, so a crash between a store write and its mirror loses nothing: the next sync (at the latest
the one made when the experiment is re-attached) catches up.

Shutdown is crash-only: :meth:`detach` stops mirroring after a last sync and leaves trials running;
the next service re-attaches through :meth:`Experiment.resume`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import NniTsError, StoreError, UserError
from ..experiment import Experiment
from ..experiment.experiment import config_to_storable
from ..models import TrialJobDetail, now_ms
from ..storage import Store, TrialRecord, open_store
from ..tasks import TaskSupervisor
from ..training_service import TrainingService
from .db import Database, open_database

__all__ = ["ExperimentManager"]

log = logging.getLogger(__name__)

_QUEUE = 10_000
T = TypeVar("T")
#: Builds an experiment's training service: ``factory(experiment_id, stored_config, user_name)``.
PlatformFactory = Callable[[str, dict[str, Any], str], TrainingService[Any]]


def _clean_text(text: str | None) -> str | None:
    """Text PostgreSQL accepts: no NUL, no lone surrogates (the store keeps the exact bytes)."""
    if text is None:
        return None
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace").replace("\x00", "\ufffd")


@dataclass
class _Mirror:
    signatures: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    metric_counts: dict[str, int] = field(default_factory=dict)
    loaded: bool = False


@dataclass
class _Live:
    id: str
    exp: Experiment
    task: asyncio.Task[None] | None = None  # engine loop
    subscribers: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)  # API loop only
    mirror: _Mirror = field(default_factory=_Mirror)
    dirty: bool = False
    syncer: asyncio.Task[None] | None = None  # engine loop
    sync_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one sync at a time (engine loop)
    done: bool = False  # set by the engine thread when the experiment's loop has ended


class ExperimentManager:
    """The experiments this service process runs, on the engine thread."""

    def __init__(
        self,
        database_url: str | None,
        store_path: Path,
        *,
        replica: str,
        database_password: str | None = None,
        platform_factory: PlatformFactory | None = None,
    ) -> None:
        self.database_url = database_url
        self.database_password = database_password
        self.platform_factory = platform_factory
        self.store_path = store_path
        self.replica = replica
        self._live: dict[str, _Live] = {}
        self._closing = False
        #: Owns the engine loop's experiment runs and mirror syncs (spawned on the engine thread).
        self._tasks = TaskSupervisor("service-engine")
        self._db: Database | None = None  # the engine thread's connection
        self._store: Store | None = None
        self._api_loop: asyncio.AbstractEventLoop | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._engine_main, name="nni-ts-service-engine", daemon=True)

    # ------------------------------------------------------------------ the engine thread

    async def open(self) -> None:
        """Start the engine thread and open its database connection and the experiment store."""
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
        self._db = await open_database(self.database_url, password=self.database_password)
        try:
            self._store = open_store(self.store_path)
        except BaseException:
            await self._db.close()
            raise

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
        """Run ``coro`` on the engine loop and wait for it from the API loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    @property
    def db(self) -> Database:
        assert self._db is not None
        return self._db

    # ------------------------------------------------------------------ queries (API thread)

    def is_live(self, experiment_id: str) -> bool:
        live = self._live.get(experiment_id)
        return live is not None and not live.done

    @property
    def live_ids(self) -> list[str]:
        return [i for i in list(self._live) if self.is_live(i)]

    # ------------------------------------------------------------------ start and resume

    async def launch(self, factory: Any) -> None:
        """Build an Experiment with ``factory(store)`` and run it on the engine thread.

        The experiment is live (``is_live``, ``subscribe``) when this returns; its loop starts as
        soon as the engine thread gets to it (a busy engine does not delay the API's answer)."""
        exp = factory(self.store)  # a plain object until it runs: nothing here touches the engine's state
        live = _Live(exp.id, exp)
        self._live[exp.id] = live
        self._loop.call_soon_threadsafe(self._run_live, live)

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
            exp = Experiment.resume(
                experiment_id,
                store=self.store,
                max_trial_number=max_trial_number,
                max_experiment_duration=max_experiment_duration,
                rerun_failed=rerun_failed,
                service=self._platform(experiment_id, user),
                control_socket=False,
            )
            self._live.pop(experiment_id, None)
            self._start(exp)

        await self._call(go())

    def _platform(self, experiment_id: str, user: str) -> TrainingService[Any] | None:  # engine thread
        """The experiment's training service as the service builds it (its trials' OS user), or None."""
        if self.platform_factory is None:
            return None
        return self.platform_factory(experiment_id, dict(self.store.get_experiment(experiment_id).config), user)

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
        return await self._call(self._resume_owned())

    async def _resume_owned(self) -> list[str]:
        rows = await self.db.fetch(
            "SELECT id, user_name FROM svc_experiments WHERE status = $1 AND owner = $2 ORDER BY created_ms",
            "RUNNING",
            self.replica,
        )
        resumed = []
        for experiment_id, user in rows:
            if experiment_id in self._live:
                continue
            try:
                exp = Experiment.resume(
                    experiment_id,
                    store=self.store,
                    service=self._platform(experiment_id, user),
                    control_socket=False,
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
            self._to_api(self._close_streams, live)

    async def _final(self, live: _Live, status: str, message: str | None) -> None:
        try:
            await self.sync(live)
            await self._set_status(live.id, status, message, ended=True)
        except NniTsError as exc:
            log.error("Could not record the end of experiment %s: %s", live.id, exc)
        self._broadcast(live, {"event": "experiment", "status": status, "message": message})

    async def _set_status(self, experiment_id: str, status: str, message: str | None, *, ended: bool = False) -> None:
        now = now_ms()
        await self.db.execute(
            "UPDATE svc_experiments SET status = $1, message = $2, updated_ms = $3, ended_ms = $4 WHERE id = $5",
            status,
            message,
            now,
            now if ended else None,
            experiment_id,
        )

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
            self.store.update_experiment(experiment_id, config=config_to_storable(live.exp.config))

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
        """Remove a stopped experiment's rows from the experiment store (on the engine thread, its owner)."""

        async def go() -> None:
            if experiment_id in self._live and not self._live[experiment_id].done:
                raise UserError(f"Experiment {experiment_id} is still running; stop it first.")
            self.store.delete_experiment(experiment_id)

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
        self._poke(live)

    def _on_trial_status(self, live: _Live, detail: TrialJobDetail) -> None:
        self._broadcast(live, {"event": "trial", "trialId": detail.id, "status": detail.status.value})
        self._poke(live)

    def _on_metric(self, live: _Live, trial_id: str, parsed: Any) -> None:
        value = parsed.value
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            value = parsed.scalar
        self._broadcast(live, {"event": "metric", "trialId": trial_id, "type": parsed.type, "value": value})
        self._poke(live)

    def _on_trial_end(self, live: _Live, record: TrialRecord) -> None:
        event = {"event": "trial_end", "trialId": record.id, "status": record.status.value}
        self._broadcast(live, event | {"finalValue": record.final_value})
        self._poke(live)

    # ------------------------------------------------------------------ mirror (engine thread)

    def _poke(self, live: _Live) -> None:
        live.dirty = True
        if self._closing:
            return
        if live.syncer is None or live.syncer.done():
            live.syncer = self._tasks.spawn(self._sync_loop(live), name=f"mirror-{live.id}")

    async def _sync_loop(self, live: _Live) -> None:
        while live.dirty and not self._closing:
            live.dirty = False
            try:
                await self.sync(live)
            except Exception as exc:  # a database outage must not end the experiment
                log.warning("Mirroring experiment %s failed (retried on its next event): %s", live.id, exc)
                return

    async def sync(self, live: _Live) -> None:
        """Copy what changed in the store for this experiment into the service database. One at a
        time: a slower sync that read the store earlier must not write its older rows last."""
        async with live.sync_lock:
            await self._sync(live)

    async def _sync(self, live: _Live) -> None:
        mirror = live.mirror
        experiment_id = live.id
        if not mirror.loaded:
            rows = await self.db.fetch(
                "SELECT trial_id, COUNT(*) FROM svc_metrics WHERE experiment_id = $1 GROUP BY trial_id", experiment_id
            )
            mirror.metric_counts = {r[0]: int(r[1]) for r in rows}
            mirror.loaded = True
        try:
            trials = self.store.list_trials(experiment_id)
        except StoreError:
            return
        trial_rows = []
        metric_rows = []
        new_sigs: dict[str, tuple[Any, ...]] = {}
        new_counts: dict[str, int] = {}
        for t in trials:
            sig = (t.status.value, t.metric_count, t.start_ms, t.end_ms, t.exit_code, t.message, t.final_value)
            if mirror.signatures.get(t.id) == sig:
                continue
            trial_rows.append(
                (
                    experiment_id,
                    t.id,
                    t.sequence_id,
                    t.parameter_id,
                    t.attempt,
                    json.dumps(t.parameters),
                    t.status.value,
                    t.start_ms,
                    t.end_ms,
                    t.exit_code,
                    _clean_text(t.message),
                    t.final_value,
                    _clean_text(t.final_data),
                    t.metric_count,
                )
            )
            have = mirror.metric_counts.get(t.id, 0)
            if t.metric_count > have:
                records = self.store.metrics(experiment_id, t.id)
                metric_rows += [
                    (experiment_id, t.id, m.seq, m.type, m.value, _clean_text(m.data), m.created_ms)
                    for m in records[have:]
                ]
                new_counts[t.id] = len(records)
            new_sigs[t.id] = sig
        if metric_rows:
            await self.db.executemany(
                "INSERT INTO svc_metrics (experiment_id, trial_id, seq, type, value, data, created_ms) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (experiment_id, trial_id, seq) DO NOTHING",
                metric_rows,
            )
        if trial_rows:
            await self.db.executemany(
                "INSERT INTO svc_trials (experiment_id, id, sequence_id, parameter_id, attempt, parameters, status, "
                "start_ms, end_ms, exit_code, message, final_value, final_data, metric_count) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) "
                "ON CONFLICT (experiment_id, id) DO UPDATE SET status = excluded.status, "
                "start_ms = excluded.start_ms, end_ms = excluded.end_ms, exit_code = excluded.exit_code, "
                "message = excluded.message, final_value = excluded.final_value, final_data = excluded.final_data, "
                "metric_count = excluded.metric_count",
                trial_rows,
            )
        mirror.signatures.update(new_sigs)
        mirror.metric_counts.update(new_counts)

    # ------------------------------------------------------------------ shutdown

    async def detach(self) -> None:
        """Stop mirroring after a last sync; experiments and trials keep running (crash-only shutdown).

        The process must then exit (``os._exit``) without cancelling the engine's tasks, or their
        trials would be cancelled."""
        await self._call(self._detach())
        for live in list(self._live.values()):
            self._close_streams(live)

    async def _detach(self) -> None:
        self._closing = True
        for live in list(self._live.values()):
            if live.syncer is not None and not live.syncer.done():
                await asyncio.wait([live.syncer], timeout=10)
            if not live.done:
                try:
                    await self.sync(live)
                except Exception as exc:
                    log.warning("The last sync of experiment %s failed: %r", live.id, exc)
        if self._db is not None:
            await self._db.close()

    async def close(self, reason: str = "The service stopped.") -> None:
        """Stop every live experiment (their trials are cancelled), record their end, end the thread."""
        if not self._thread.is_alive():
            return
        await self._call(self._close(reason))
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 60)

    async def _close(self, reason: str) -> None:
        await asyncio.gather(*(self._stop(i, reason, 120.0) for i in list(self._live)), return_exceptions=True)
        for live in list(self._live.values()):
            if live.syncer is not None and not live.syncer.done():
                await asyncio.wait([live.syncer], timeout=10)
        self._closing = True
        await self._tasks.stop(10)
        leftovers = [t for t in self._live_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=10)
        if self._db is not None:
            await self._db.close()
        if self._store is not None:
            self._store.close()
