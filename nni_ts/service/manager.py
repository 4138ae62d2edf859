"""Running experiments inside the service: start, stop, extend, re-attach, mirror, and broadcast events.

Where results live
------------------
Each experiment runs the ordinary loop (:class:`~nni_ts.experiment.Experiment`), which writes its
trials and metrics durably to the experiment store (SQLite, under the service's data directory)
before anything else sees them. The service *mirrors* the store into its own database: every event
of the experiment (a status change, a metric, a trial's end) marks the experiment dirty and one
mirror task per experiment copies what changed (upserted trials, metrics inserted with
``ON CONFLICT DO NOTHING``). The API reads only the service database, so PostgreSQL replicas serve
every experiment's results. The copy is idempotent: a restarted service starts each experiment's
mirror from what the database already holds, so a crash between a store write and its mirror loses
nothing: the next sync (at the latest the one made on re-attach) catches up.

Shutdown is crash-only: ``detach()`` stops mirroring after a last sync and leaves trials running;
the next service re-attaches through :meth:`Experiment.resume`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from ..errors import NniTsError, StoreError, UserError
from ..experiment import Experiment
from ..experiment.experiment import config_to_storable
from ..models import TrialJobDetail, now_ms
from ..storage import Store, TrialRecord
from .db import Database

__all__ = ["ExperimentManager"]

log = logging.getLogger(__name__)

_QUEUE = 10_000


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
    task: asyncio.Task[None] | None = None
    subscribers: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)
    mirror: _Mirror = field(default_factory=_Mirror)
    dirty: bool = False
    syncer: asyncio.Task[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class ExperimentManager:
    """The experiments this service process runs. All methods run on the service's event loop."""

    def __init__(self, db: Database, store: Store, *, replica: str) -> None:
        self.db = db
        self.store = store
        self.replica = replica
        self._live: dict[str, _Live] = {}
        self._closing = False

    # ------------------------------------------------------------------ queries

    def is_live(self, experiment_id: str) -> bool:
        live = self._live.get(experiment_id)
        return live is not None and not live.finished.is_set()

    def experiment(self, experiment_id: str) -> Experiment | None:
        live = self._live.get(experiment_id)
        return live.exp if live is not None else None

    @property
    def live_ids(self) -> list[str]:
        return [i for i in self._live if self.is_live(i)]

    # ------------------------------------------------------------------ start and resume

    def start(self, exp: Experiment) -> None:
        """Run ``exp`` in the background; its status goes to the service database when it ends."""
        live = _Live(exp.id, exp)
        self._live[exp.id] = live
        exp.events.on("started", lambda _id: self._on_started(live))
        exp.events.on("metric", lambda trial_id, parsed: self._on_metric(live, trial_id, parsed))
        exp.events.on("trial_end", lambda record: self._on_trial_end(live, record))
        live.task = asyncio.get_running_loop().create_task(self._run(live), name=f"nni-ts-service-exp-{exp.id}")

    async def resume_owned(self) -> list[str]:
        """Re-attach to every experiment this replica was running when it stopped."""
        rows = await self.db.fetch(
            "SELECT id FROM svc_experiments WHERE status = $1 AND owner = $2 ORDER BY created_ms",
            "RUNNING",
            self.replica,
        )
        resumed = []
        for (experiment_id,) in rows:
            if experiment_id in self._live:
                continue
            try:
                exp = Experiment.resume(experiment_id, store=self.store, control_socket=False)
            except (NniTsError, OSError) as exc:
                log.warning("Experiment %s cannot be re-attached: %s", experiment_id, exc)
                await self._set_status(experiment_id, "ERROR", f"It could not be re-attached after a restart: {exc}")
                continue
            log.info("Re-attaching to experiment %s.", experiment_id)
            self.start(exp)
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
            live.finished.set()
            if not self._closing:
                await self._final(live, status, message)

    async def _final(self, live: _Live, status: str, message: str | None) -> None:
        try:
            await self.sync(live)
            await self._set_status(live.id, status, message, ended=True)
        except NniTsError as exc:
            log.error("Could not record the end of experiment %s: %s", live.id, exc)
        self._broadcast(live, {"event": "experiment", "status": status, "message": message})
        for queue in list(live.subscribers):
            queue.put_nowait(None)

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
        live = self._live.get(experiment_id)
        if live is None or live.finished.is_set():
            return False
        live.exp.stop(reason)
        assert live.task is not None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(live.task)
        except TimeoutError:
            raise UserError(f"Experiment {experiment_id} did not stop within {timeout:.0f} s; try again.") from None
        except Exception:  # noqa: S110 - _run records every failure itself
            pass
        return True

    def extend_live(self, experiment_id: str, *, max_trial_number: int | None, max_duration: str | int | None) -> None:
        """Raise the budget of a running experiment in place (its loop picks it up at once)."""
        live = self._live[experiment_id]
        config = live.exp.config
        if max_trial_number is not None:
            config.max_trial_number = max_trial_number
        if max_duration is not None:
            config.max_experiment_duration = max_duration
        self.store.update_experiment(experiment_id, config=config_to_storable(config))
        live.exp._wake.set()  # the loop re-reads its budget when woken

    def forget(self, experiment_id: str) -> None:
        self._live.pop(experiment_id, None)

    # ------------------------------------------------------------------ events

    def subscribe(self, experiment_id: str) -> asyncio.Queue[dict[str, Any] | None] | None:
        live = self._live.get(experiment_id)
        if live is None or live.finished.is_set():
            return None
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_QUEUE)
        live.subscribers.add(queue)
        return queue

    def unsubscribe(self, experiment_id: str, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        live = self._live.get(experiment_id)
        if live is not None:
            live.subscribers.discard(queue)

    def _broadcast(self, live: _Live, event: dict[str, Any]) -> None:
        event = {"experimentId": live.id, "time": now_ms(), **event}
        for queue in list(live.subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a reader that does not keep up is dropped, not waited for
                live.subscribers.discard(queue)
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
        self._broadcast(
            live,
            {
                "event": "trial_end",
                "trialId": record.id,
                "status": record.status.value,
                "finalValue": record.final_value,
            },
        )
        self._poke(live)

    # ------------------------------------------------------------------ mirror

    def _poke(self, live: _Live) -> None:
        live.dirty = True
        if self._closing:
            return
        if live.syncer is None or live.syncer.done():
            live.syncer = asyncio.get_running_loop().create_task(
                self._sync_loop(live), name=f"nni-ts-service-mirror-{live.id}"
            )

    async def _sync_loop(self, live: _Live) -> None:
        while live.dirty and not self._closing:
            live.dirty = False
            try:
                await self.sync(live)
            except NniTsError as exc:
                log.warning("Mirroring experiment %s failed (retried on its next event): %s", live.id, exc)
                return
            except Exception as exc:  # a database outage must not end the experiment
                log.warning("Mirroring experiment %s failed (retried on its next event): %r", live.id, exc)
                return

    async def sync(self, live: _Live | str) -> None:
        """Copy what changed in the store for this experiment into the service database."""
        if isinstance(live, str):
            found = self._live.get(live)
            target = found if found is not None else _Live(live, None)  # type: ignore[arg-type]
        else:
            target = live
        mirror = target.mirror
        experiment_id = target.id
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

        The process must then exit without cancelling the experiments' tasks (``os._exit``), or
        their trials would be cancelled."""
        self._closing = True
        for live in list(self._live.values()):
            if live.syncer is not None and not live.syncer.done():
                await asyncio.wait([live.syncer], timeout=10)
            if not live.finished.is_set():
                try:
                    await self.sync(live)
                except Exception as exc:
                    log.warning("The last sync of experiment %s failed: %r", live.id, exc)
            for queue in list(live.subscribers):
                queue.put_nowait(None)

    async def stop_all(self, reason: str = "The service stopped.") -> None:
        """Stop every live experiment (their trials are cancelled) and record their end."""
        await asyncio.gather(*(self.stop(i, reason) for i in list(self._live)), return_exceptions=True)
        for live in list(self._live.values()):
            if live.syncer is not None and not live.syncer.done():
                await asyncio.wait([live.syncer], timeout=10)
        self._closing = True
