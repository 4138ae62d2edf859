"""The experiment loop: a tuner proposes parameters, a training service runs trials, the store remembers.

Everything a trial reports goes to the store first (durably), then to the tuner, the assessor and
whoever watches the experiment. A manager killed at any point can therefore be resumed: trials still
running are re-attached (never re-run), finished ones are replayed into a fresh tuner, and the
remaining budget is completed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pydantic
from pyee import EventEmitter

from ..errors import ConfigError, NniTsError, StoreError, UserError
from ..models import HyperParameters, TrialJobApplicationForm, TrialJobDetail, TrialJobMetric, TrialJobStatus
from ..storage import Store, TrialRecord, open_store
from ..tasks import TaskSupervisor
from ..training_service import TrainingService, new_trial_id
from .records import parse_record

if TYPE_CHECKING:
    from ..config.experiment import ExperimentConfig
    from ..tuners import Assessor, Tuner

__all__ = ["Experiment", "ExperimentResult", "ExperimentStatus", "Progress", "manager_alive"]

log = logging.getLogger(__name__)


class ExperimentStatus:
    """The experiment's status as stored. INTERRUPTED is derived: RUNNING with a dead manager."""

    RUNNING = "RUNNING"
    DONE = "DONE"
    STOPPED = "STOPPED"
    ERROR = "ERROR"
    INTERRUPTED = "INTERRUPTED"


@dataclass
class Progress:
    """A snapshot of an experiment for display."""

    submitted: int
    done: int
    running: int
    succeeded: int
    failed: int
    infra_retries: int
    best_value: float | None
    best_trial: str | None
    elapsed: float
    eta: float | None
    max_trial_number: int | None


@dataclass
class ExperimentResult:
    """What an experiment produced: its trials (parameters, final values) and the best one."""

    experiment_id: str
    status: str
    optimize_mode: str
    trials: list[TrialRecord] = field(default_factory=list)
    message: str | None = None

    @property
    def best(self) -> TrialRecord | None:
        """The trial with the best final value (max or min by ``optimize_mode``)."""
        scored = [t for t in self.trials if t.final_value is not None]
        if not scored:
            return None
        sign = -1.0 if self.optimize_mode == "minimize" else 1.0
        return max(scored, key=lambda t: sign * (t.final_value or 0.0))


def manager_alive(pid: int | None, started: float | None) -> bool:
    """Whether the manager process recorded for an experiment still runs (pid and start time match)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return started is None or abs(proc.create_time() - started) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _self_started() -> float:
    return float(psutil.Process(os.getpid()).create_time())


def _optimize_mode(config: ExperimentConfig) -> str:
    algo = config.tuner or config.advisor
    mode = str((algo.class_args or {}).get("optimize_mode", "maximize")) if algo else "maximize"
    return "minimize" if mode.lower().startswith("min") else "maximize"


def config_to_storable(config: ExperimentConfig) -> dict[str, Any]:
    """The config as stored: v2 camelCase, the search space inlined (the file may change later)."""
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.pop("searchSpaceFile", None)
    return data


class _Live:
    """The loop's bookkeeping for one trial it currently owns."""

    __slots__ = ("attempt", "history", "parameter_id", "parameters", "reattached", "sequence_id", "told", "timer")

    def __init__(self, parameter_id: int, sequence_id: int, parameters: dict[str, Any], attempt: int) -> None:
        self.parameter_id = parameter_id
        self.sequence_id = sequence_id
        self.parameters = parameters
        self.attempt = attempt
        self.history: list[Any] = []
        self.told = False
        self.reattached = False
        self.timer: asyncio.TimerHandle | None = None


class Experiment:
    """Run a tuner against a training service until the budget is spent.

    ``config`` is an :class:`~nni_ts.config.experiment.ExperimentConfig`, a dict in NNI v2 form, or
    the path of an NNI v1 or v2 YAML/JSON file. ``service``, ``tuner`` and ``assessor`` may be given
    to override what the config names (tests, notebooks); ``store`` defaults to the database under
    ``NNI_TS_HOME``.

    ``events`` (pyee) emits ``"trial_end"`` (a TrialRecord), ``"metric"`` (trial id, parsed record)
    and ``"status"`` (the experiment status).
    """

    def __init__(
        self,
        config: ExperimentConfig | Mapping[str, Any] | str | os.PathLike[str],
        *,
        experiment_id: str | None = None,
        store: Store | None = None,
        service: TrainingService[Any] | None = None,
        tuner: Tuner | None = None,
        assessor: Assessor | None = None,
        control_socket: bool = True,
    ) -> None:
        from ..config.experiment import ExperimentConfig
        from ..config.loader import config_from_dict, load_experiment_config

        if isinstance(config, ExperimentConfig):
            self.config = config
        elif isinstance(config, Mapping):
            self.config = config_from_dict(dict(config))
        else:
            self.config = load_experiment_config(config)
        self.id = experiment_id or new_trial_id(8).lower()
        self.store = store or open_store()
        self._own_store = store is None
        self.events = EventEmitter()
        self.optimize_mode = _optimize_mode(self.config)
        self.control_socket = control_socket
        self._service = service
        self._tuner = tuner
        self._assessor = assessor
        self._resuming = False
        self._rerun_failed = False
        self._status = ExperimentStatus.RUNNING
        self._message: str | None = None
        self._live: dict[str, _Live] = {}
        self._pending_retries: deque[_Live] = deque()
        self._wake = asyncio.Event()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._stop_reason: str | None = None
        self._tuner_exhausted = False
        self._next_parameter_id = 0
        self._next_sequence_id = 0
        self._trial_count = 0  # distinct parameter sets submitted (retries not counted)
        self._succeeded = 0
        self._failed = 0  # failures of the user's code (and trial time-outs)
        self._infra_retries = 0
        self._other_ends = 0  # early stopped or cancelled
        self._timed_out: set[str] = set()
        self._best_value: float | None = None
        self._best_trial: str | None = None
        self._started_at = 0.0
        self._active_before = 0.0
        self._cancel_reasons: dict[str, str] = {}
        #: Owns the loop's background work (early stops, time-outs); stopped when the run ends.
        self._tasks = TaskSupervisor(f"experiment-{self.id}")
        self._errors: list[BaseException] = []

    # ------------------------------------------------------------------ resume

    @classmethod
    def resume(
        cls,
        experiment_id: str,
        *,
        store: Store | None = None,
        max_trial_number: int | None = None,
        max_experiment_duration: str | int | None = None,
        rerun_failed: bool = False,
        service: TrainingService[Any] | None = None,
        tuner: Tuner | None = None,
        control_socket: bool = True,
    ) -> Experiment:
        """An experiment that continues ``experiment_id``: re-attaches to its running trials, replays
        its finished ones into the tuner and completes the budget. ``max_trial_number`` and
        ``max_experiment_duration`` extend the budget; ``rerun_failed`` runs failed trials again."""
        from ..config.loader import config_from_dict

        own = store is None
        store = store or open_store()
        record = store.get_experiment(experiment_id)
        if record.status == ExperimentStatus.RUNNING and manager_alive(record.manager_pid, record.manager_started):
            raise UserError(
                f"Experiment {experiment_id} is still running (manager pid {record.manager_pid}); "
                f"stop it first with `nni-ts stop {experiment_id}`."
            )
        data = dict(record.config)
        if max_trial_number is not None:
            data["maxTrialNumber"] = max_trial_number
        if max_experiment_duration is not None:
            data["maxExperimentDuration"] = max_experiment_duration
        config = config_from_dict(data, source=f"experiment {experiment_id}")
        exp = cls(
            config,
            experiment_id=experiment_id,
            store=store,
            service=service,
            tuner=tuner,
            control_socket=control_socket,
        )
        exp._own_store = own
        exp._resuming = True
        exp._rerun_failed = rerun_failed
        exp._active_before = record.active_ms / 1000
        return exp

    # ------------------------------------------------------------------ public API

    @property
    def status(self) -> str:
        return self._status

    @property
    def working_directory(self) -> Path:
        from ..paths import experiment_dir

        if self.config.experiment_working_directory:
            return Path(self.config.experiment_working_directory).expanduser() / self.id
        return experiment_dir(self.id)

    @property
    def service(self) -> TrainingService[Any] | None:
        """The training service, once the experiment runs."""
        return self._service

    async def kill_trial(self, trial_id: str) -> None:
        """Cancel one trial of this experiment (``nni-ts trial kill``). It is not retried."""
        if trial_id not in self._live:
            raise UserError(f"Trial {trial_id} is not running in experiment {self.id}.")
        self._cancel_reasons[trial_id] = "Killed by the user."
        await self._cancel(trial_id, early=False)

    def extend(
        self, *, max_trial_number: int | None = None, max_experiment_duration: str | int | float | None = None
    ) -> None:
        """Raise the budget of this running experiment in place; the loop acts on it at once.

        Values are validated like the config's (a ConfigError names the key). The caller persists the new
        config if it must survive a restart (``nni-ts extend`` and the service do).
        """
        from ..config.errors import format_validation_error

        try:
            if max_trial_number is not None:
                self.config.max_trial_number = max_trial_number
            if max_experiment_duration is not None:
                self.config.max_experiment_duration = max_experiment_duration
        except pydantic.ValidationError as exc:
            raise ConfigError(f"Cannot extend experiment {self.id}: {format_validation_error(exc)}") from None
        deadline = self.config.max_experiment_seconds
        if max_experiment_duration is not None and deadline is not None:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            loop = asyncio.get_running_loop()
            self._deadline_timer = loop.call_later(max(0.0, deadline - self._elapsed()), self._wake.set)
        self._wake.set()

    def stop(self, reason: str = "Stopped by the user.") -> None:
        """Ask the loop to stop: no new trials, running ones are cancelled. Safe from signal handlers."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._wake.set()

    def progress(self) -> Progress:
        elapsed = self._elapsed()
        done = self._succeeded + self._failed + self._other_ends
        eta = None
        limit = self.config.max_trial_number
        if limit and done:
            eta = max(0.0, (limit - done) * (time.monotonic() - self._started_at) / max(done, 1))
        deadline = self.config.max_experiment_seconds
        if deadline is not None:
            left = max(0.0, deadline - elapsed)
            eta = left if eta is None else min(eta, left)
        return Progress(
            submitted=self._trial_count,
            done=done,
            running=len(self._live),
            succeeded=self._succeeded,
            failed=self._failed,
            infra_retries=self._infra_retries,
            best_value=self._best_value,
            best_trial=self._best_trial,
            elapsed=elapsed,
            eta=eta,
            max_trial_number=limit,
        )

    def result(self) -> ExperimentResult:
        return ExperimentResult(
            experiment_id=self.id,
            status=self._status,
            optimize_mode=self.optimize_mode,
            trials=self.store.list_trials(self.id),
            message=self._message,
        )

    async def run(self) -> ExperimentResult:
        """Run (or continue) the experiment to its end and return the result."""
        self._started_at = time.monotonic()
        try:
            # Everything the config names is built before anything is recorded: a mistake in the
            # tuner or platform section leaves no half-created experiment behind.
            self._tuner = self._tuner or self._make_tuner()
            if self._assessor is None:
                self._assessor = self._make_assessor()
            service = self._service or self._make_service()
            self._service = service
            self._prepare_record()
        except BaseException:
            self._close_store()
            raise
        self.events.emit("started", self.id)
        try:
            service.add_trial_job_metric_listener(self._on_metric)
            service.events.on("trial_status", self._on_status)
            from .control import ControlServer

            control = ControlServer(self) if self.control_socket else None
            async with service:
                if control is not None:
                    await control.start()
                try:
                    if self._resuming:
                        await self._restore()
                    await self._main_loop()
                    await self._cancel_live()
                finally:
                    if control is not None:
                        await control.close()
        except BaseException as exc:
            self._status = ExperimentStatus.ERROR
            if isinstance(exc, NniTsError):
                self._message = str(exc)
            elif isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                self._status = ExperimentStatus.STOPPED
                self._message = "Interrupted."
            else:
                self._message = f"Internal error: {exc!r}"
            self._finish_record()
            self._close_store()
            raise
        finally:
            service.remove_trial_job_metric_listener(self._on_metric)
            service.events.remove_listener("trial_status", self._on_status)
            await self._tasks.stop()
        if self._errors:
            self._status = ExperimentStatus.ERROR
            self._message = f"The tuner or assessor failed: {self._errors[0]!r}"
        self._finish_record()
        result = self.result()
        self._close_store()
        return result

    # ------------------------------------------------------------------ set-up

    def _prepare_record(self) -> None:
        storable = config_to_storable(self.config)
        platform = self.config.training_service.platform
        if self._resuming:
            self.store.update_experiment(
                self.id,
                status=ExperimentStatus.RUNNING,
                config=storable,
                manager_pid=os.getpid(),
                manager_started=_self_started(),
                ended_ms=None,
                message=None,
            )
        else:
            self.store.create_experiment(
                self.id,
                name=self.config.experiment_name,
                platform=platform,
                config=storable,
                working_dir=self.working_directory,
                manager_pid=os.getpid(),
                manager_started=_self_started(),
            )
        self.working_directory.mkdir(parents=True, exist_ok=True)

    def _finish_record(self) -> None:
        from ..models import now_ms

        try:
            self.store.update_experiment(
                self.id,
                status=self._status,
                ended_ms=now_ms(),
                message=self._message,
                active_ms=int(self._elapsed() * 1000),
                manager_pid=None,
            )
        except StoreError:
            log.exception("Could not record the end of experiment %s.", self.id)
        self.events.emit("status", self._status)

    def _close_store(self) -> None:
        if self._own_store:
            self.store.close()

    def _make_service(self) -> TrainingService[Any]:
        from ..registry import get_platform_class

        ts = self.config.training_service
        cls = get_platform_class(ts.platform)
        return cls(ts, experiment_id=self.id, experiment_dir=self.working_directory)

    def _make_tuner(self) -> Tuner:
        from ..tuners import create_tuner

        algo = self.config.tuner or self.config.advisor
        if algo is None:
            raise ConfigError("The experiment names no tuner; add `tuner: {name: TPE}` for example.", path="tuner")
        if self.config.search_space is None:
            raise ConfigError("The experiment has no search space: set searchSpace or searchSpaceFile.")
        return create_tuner(
            algo.name,
            class_name=algo.class_name,
            code_directory=algo.code_directory,
            class_args=dict(algo.class_args or {}),
            search_space=self.config.search_space,
            seed=self.config.seed,
        )

    def _make_assessor(self) -> Assessor | None:
        builtin: Assessor | None = getattr(self._tuner, "builtin_assessor", None)
        algo = self.config.assessor
        if algo is None:
            return builtin
        from ..tuners import create_assessor

        return create_assessor(
            algo.name,
            class_name=algo.class_name,
            code_directory=algo.code_directory,
            class_args=dict(algo.class_args or {}),
            tuner=self._tuner,
        )

    async def _restore(self) -> None:
        """Pick up where an earlier manager left off."""
        assert self._service is not None and self._tuner is not None
        trials = self.store.list_trials(self.id, with_detail=True)
        replay: list[dict[str, Any]] = []
        latest: dict[int, TrialRecord] = {}
        for t in trials:
            self._next_parameter_id = max(self._next_parameter_id, t.parameter_id + 1)
            self._next_sequence_id = max(self._next_sequence_id, t.sequence_id + 1)
            latest[t.parameter_id] = t
        self._trial_count = len(latest)
        for t in latest.values():
            if t.status.is_terminal:
                self._count_end(t.id, t.status, t.final_value, t.infrastructure_failure, live=None)
                if t.final_data is not None:
                    parsed = parse_record(t.final_data)
                    replay.append({"parameter": t.parameters, "value": parsed.value})
                if self._rerun_failed and t.status is not TrialJobStatus.SUCCEEDED:
                    self._failed -= t.status is TrialJobStatus.FAILED and not t.infrastructure_failure
                    self._pending_retries.append(_Live(t.parameter_id, t.sequence_id, t.parameters, t.attempt + 1))
        if replay:
            self._tuner.import_data(replay)
        for t in latest.values():
            if t.status.is_terminal:
                continue
            detail = t.detail or TrialJobDetail(
                id=t.id,
                status=t.status,
                form=self._form(t.id, t.parameter_id, t.sequence_id, t.parameters),
                sequence_id=t.sequence_id,
            )
            live = _Live(t.parameter_id, t.sequence_id, t.parameters, t.attempt)
            live.reattached = True
            live.history = [
                parse_record(m.data).value for m in self.store.metrics(self.id, t.id) if m.type == "PERIODICAL"
            ]
            live.told = t.final_data is not None
            self._live[t.id] = live
            log.info("Re-attaching to trial %s (%s).", t.id, t.status)
            await self._service.reattach_trial_job(detail, metrics_delivered=t.metric_count)

    # ------------------------------------------------------------------ the loop

    def _elapsed(self) -> float:
        if not self._started_at:
            return self._active_before
        return self._active_before + time.monotonic() - self._started_at

    def _budget_left(self) -> bool:
        limit = self.config.max_trial_number
        return (limit is None or self._trial_count < limit) and not self._tuner_exhausted

    def _check_limits(self) -> None:
        deadline = self.config.max_experiment_seconds
        if deadline is not None and self._elapsed() >= deadline:
            self.stop(f"maxExperimentDuration ({self.config.max_experiment_duration}) reached.")
        limit = self.config.max_failed_trial_number
        if limit is not None and self._failed >= limit:
            self.stop(f"maxFailedTrialNumber ({limit}) reached: {self._failed} trials failed.")

    async def _main_loop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self.config.max_experiment_seconds
        if deadline is not None:
            self._deadline_timer = loop.call_later(max(0.0, deadline - self._elapsed()), self._wake.set)
        try:
            while True:
                self._wake.clear()
                self._check_limits()
                if self._stop_reason is not None:
                    break
                while len(self._live) < self.config.trial_concurrency and self._stop_reason is None:
                    if self._pending_retries:
                        await self._submit(self._pending_retries.popleft())
                    elif self._budget_left():
                        live = self._next_from_tuner()
                        if live is None:
                            break
                        await self._submit(live)
                    else:
                        break
                if not self._live and not self._pending_retries and not self._budget_left():
                    break
                if self._errors:
                    raise self._errors[0]
                await self._wake.wait()
        finally:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
                self._deadline_timer = None
        if self._stop_reason is not None:
            self._message = self._stop_reason
            user_stop = not self._stop_reason.startswith("max")
            self._status = ExperimentStatus.STOPPED if user_stop else ExperimentStatus.DONE
        else:
            self._status = ExperimentStatus.DONE
            self._message = "All trials done." if not self._tuner_exhausted else "The tuner has no more parameters."

    def _next_from_tuner(self) -> _Live | None:
        from ..tuners import NoMoreTrialError

        assert self._tuner is not None
        pid = self._next_parameter_id
        try:
            params = self._tuner.generate_parameters(pid)
        except NoMoreTrialError:
            self._tuner_exhausted = True
            return None
        self._next_parameter_id += 1
        live = _Live(pid, self._next_sequence_id, dict(params), 1)
        self._next_sequence_id += 1
        self._trial_count += 1
        return live

    def _form(
        self, trial_id: str, parameter_id: int, sequence_id: int, params: dict[str, Any]
    ) -> TrialJobApplicationForm:
        value = json.dumps(
            {"parameter_id": parameter_id, "parameter_source": "algorithm", "parameters": params, "parameter_index": 0}
        )
        return TrialJobApplicationForm(
            sequence_id=sequence_id,
            hyper_parameters=HyperParameters(value=value),
            trial_job_id=trial_id,
        )

    async def _submit(self, live: _Live) -> None:
        assert self._service is not None
        trial_id = new_trial_id()
        form = self._form(trial_id, live.parameter_id, live.sequence_id, live.parameters)
        # The trial exists in the store before it exists anywhere else: a crash right after the
        # submission still leaves a record to re-attach to.
        self.store.insert_trial(
            TrialRecord(
                experiment_id=self.id,
                id=trial_id,
                sequence_id=live.sequence_id,
                parameter_id=live.parameter_id,
                parameters=live.parameters,
                attempt=live.attempt,
            )
        )
        self._live[trial_id] = live
        if self._assessor is not None:
            self._call_algo(self._assessor.trial_submitted, trial_id, live.parameter_id)
        try:
            detail = await self._service.submit_trial_job(form)
        except NniTsError as exc:
            # The platform refused the trial: an infrastructure failure of this attempt.
            log.warning("Submitting trial %s failed: %s", trial_id, exc)
            fake = TrialJobDetail(
                id=trial_id,
                status=TrialJobStatus.FAILED,
                form=form,
                sequence_id=live.sequence_id,
                message=f"Submission failed: {exc}",
                infrastructure_failure=True,
            )
            self.store.update_trial(self.id, fake)
            self._trial_ended(fake)
            return
        self.store.update_trial(self.id, detail)
        if detail.status.is_terminal and trial_id in self._live:
            self._trial_ended(detail)

    # ------------------------------------------------------------------ events from the service

    def _on_metric(self, metric: TrialJobMetric) -> None:
        live = self._live.get(metric.trial_job_id)
        parsed = parse_record(metric.data)
        inserted = self.store.add_metric(
            self.id, metric.trial_job_id, metric.sequence, type=parsed.type, value=parsed.scalar, data=metric.data
        )
        if not inserted or live is None:
            return
        if not parsed.valid:
            log.warning("Trial %s wrote a record that is not JSON; it is stored as is.", metric.trial_job_id)
        elif parsed.type == "FINAL" and not live.told:
            live.told = True
            self._note_best(metric.trial_job_id, parsed.scalar)
            assert self._tuner is not None
            if live.reattached:
                self._call_algo(self._tuner.import_data, [{"parameter": live.parameters, "value": parsed.value}])
            else:
                self._call_algo(self._tuner.receive_trial_result, live.parameter_id, live.parameters, parsed.value)
        elif parsed.type == "PERIODICAL":
            live.history.append(parsed.value)
            if self._assessor is not None:
                from ..tuners import AssessResult

                verdict = self._call_algo(self._assessor.assess_trial, metric.trial_job_id, list(live.history))
                if verdict is AssessResult.Bad:
                    self._cancel_reasons[metric.trial_job_id] = "Early stopped by the assessor."
                    self._spawn(self._early_stop(metric.trial_job_id), f"early-stop-{metric.trial_job_id}")
        self.events.emit("metric", metric.trial_job_id, parsed)

    def _on_status(self, detail: TrialJobDetail) -> None:
        if detail.id not in self._live:
            return
        reason = self._cancel_reasons.get(detail.id)
        if reason and detail.status.is_terminal:
            detail.message = reason
        self.store.update_trial(self.id, detail)
        live = self._live[detail.id]
        if detail.status is TrialJobStatus.RUNNING and live.timer is None:
            limit = self.config.max_trial_seconds
            if limit is not None:
                started = (detail.start_time or 0) / 1000
                left = max(0.0, limit - (time.time() - started)) if started else limit
                live.timer = asyncio.get_running_loop().call_later(left, self._trial_timed_out, detail.id)
        if detail.status.is_terminal:
            self._trial_ended(detail)

    def _trial_timed_out(self, trial_id: str) -> None:
        if trial_id in self._live:
            self._timed_out.add(trial_id)
            self._cancel_reasons[trial_id] = (
                f"Cancelled: the trial ran longer than maxTrialDuration ({self.config.max_trial_duration})."
            )
            self._spawn(self._cancel(trial_id, early=False), f"timeout-{trial_id}")

    async def _early_stop(self, trial_id: str) -> None:
        await self._cancel(trial_id, early=True)

    async def _cancel(self, trial_id: str, *, early: bool) -> None:
        assert self._service is not None
        try:
            await self._service.cancel_trial_job(trial_id, is_early_stopped=early)
        except NniTsError as exc:
            log.warning("Cancelling trial %s failed: %s", trial_id, exc)

    def _trial_ended(self, detail: TrialJobDetail) -> None:
        live = self._live.pop(detail.id, None)
        if live is None:
            return
        if live.timer is not None:
            live.timer.cancel()
        retry = (
            detail.infrastructure_failure
            and detail.status is TrialJobStatus.FAILED
            and not live.told
            and live.attempt <= self.config.max_infra_retries
            and self._stop_reason is None
        )
        if retry:
            self._infra_retries += 1
            log.warning(
                "Trial %s failed because of the platform (%s); retrying its parameters (attempt %d).",
                detail.id,
                detail.message,
                live.attempt + 1,
            )
            self._pending_retries.append(_Live(live.parameter_id, live.sequence_id, live.parameters, live.attempt + 1))
        else:
            final = self._final_value(detail.id) if live.told else None
            self._count_end(detail.id, detail.status, final, detail.infrastructure_failure, live=live)
        self._wake.set()
        try:
            record = self.store.get_trial(self.id, detail.id)
        except StoreError:
            return
        self.events.emit("trial_end", record)

    def _final_value(self, trial_id: str) -> float | None:
        return self.store.get_trial(self.id, trial_id).final_value

    def _count_end(
        self, trial_id: str, status: TrialJobStatus, final: float | None, infra: bool, *, live: _Live | None
    ) -> None:
        success = status is TrialJobStatus.SUCCEEDED
        if success:
            self._succeeded += 1
        elif status is TrialJobStatus.FAILED or trial_id in self._timed_out:
            self._failed += 1
        else:
            self._other_ends += 1
        self._note_best(trial_id, final)
        if live is not None and not live.reattached:
            assert self._tuner is not None
            self._call_algo(self._tuner.trial_end, live.parameter_id, success)
        if live is not None and self._assessor is not None:
            self._call_algo(self._assessor.trial_end, trial_id, success)

    def _note_best(self, trial_id: str, value: float | None) -> None:
        if value is None:
            return
        better = (
            self._best_value is None
            or (self.optimize_mode == "maximize" and value > self._best_value)
            or (self.optimize_mode == "minimize" and value < self._best_value)
        )
        if better:
            self._best_value = value
            self._best_trial = trial_id

    def _call_algo(self, fn: Any, *args: Any) -> Any:
        """Call the tuner or assessor; its exceptions end the experiment with a clear message."""
        try:
            return fn(*args)
        except Exception as exc:
            log.exception("%s raised.", getattr(fn, "__qualname__", fn))
            self._errors.append(exc)
            self._wake.set()
            return None

    def _spawn(self, coro: Any, name: str = "work") -> None:
        self._tasks.spawn(coro, name=name)

    async def _cancel_live(self) -> None:
        """Cancel every trial still running (a stop, or a limit reached) and wait for them."""
        if not self._live:
            return
        reason = self._stop_reason or "Experiment ended."
        for trial_id in list(self._live):
            self._cancel_reasons.setdefault(trial_id, f"Cancelled: {reason}")
        await asyncio.gather(*(self._cancel(t, early=False) for t in list(self._live)))
        if self._tasks.tasks:
            await asyncio.wait(self._tasks.tasks, timeout=30)
