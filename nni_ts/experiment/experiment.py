"""The experiment loop: a tuner proposes parameters, a training service runs trials, the store remembers.

Everything a trial reports goes to the store first (durably), then to the tuner, the assessor and
whoever watches the experiment. The loop never touches the database itself: every read and write
goes through the experiment storage (:class:`~nni_ts.storage.base.ExperimentStorage`: the SQLite
store on its writer thread, or PostgreSQL when the experiment service runs on it), queued in the
order the loop makes them. The metric listener awaits its record's commit and raises if it failed, which
refuses the record: the platform delivers it again. A status or submission write that fails ends
the experiment with an error (a status cannot be refused).

A manager killed at any point can therefore be resumed: trials still running are re-attached (never
re-run), finished ones are replayed into a fresh tuner, and the remaining budget is completed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pydantic
from pyee import EventEmitter

from ..clock import REAL_CLOCK, Clock, TimerHandle
from ..clock import to_thread as clock_to_thread
from ..errors import ConfigError, NniTsError, StoreError, UserError
from ..models import HyperParameters, TrialJobApplicationForm, TrialJobDetail, TrialJobMetric, TrialJobStatus
from ..storage import Store, TrialRecord, open_store
from ..storage.base import ExperimentStorage, SqliteStorage
from ..tasks import TaskSupervisor
from ..training_service import TrainingService, new_trial_id
from .algo_worker import AlgoWorker
from .records import parse_record
from .results import best_trial, is_better, no_success_summary, optimize_mode

if TYPE_CHECKING:
    from ..config.experiment import ExperimentConfig
    from ..tuners import Assessor, Tuner

__all__ = ["Experiment", "ExperimentResult", "ExperimentStatus", "Progress", "manager_alive", "tuner_for"]

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
    #: When trials ended and none succeeded: what went wrong and how to see why (else None).
    no_success: str | None = None

    @property
    def best(self) -> TrialRecord | None:
        """The SUCCEEDED trial with the best final value (max or min by ``optimize_mode``)."""
        return best_trial(self.trials, self.optimize_mode)

    @property
    def succeeded(self) -> int:
        """How many trials succeeded."""
        return sum(t.status is TrialJobStatus.SUCCEEDED for t in self.trials)


#: Results imported into an experiment (one JSON entry a line), fed to every tuner it runs.
IMPORTED_FILE = "imported.jsonl"


def read_imported(path: Path, offset: int = 0) -> list[dict[str, Any]]:
    """The entries of an imported-results file, from byte ``offset`` on."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        return [json.loads(line) for line in fh.read().splitlines() if line.strip()]


def manager_alive(pid: int | None, started: float | None) -> bool:
    """Whether the manager process recorded for an experiment still runs: its lease is the pid *and*
    its start time (a reused pid is another process), and a zombie (killed, not yet reaped) is dead."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) >= 0.01:
            return False
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _self_started() -> float:
    return float(psutil.Process(os.getpid()).create_time())


def _algo_source(algo: Any, kind: str) -> tuple[str | None, str | None, str | None]:
    """``(name, className, codeDirectory)`` of a config's algorithm, a registered name resolved to its class.

    Classes written for NNI import ``nni``: the light module stands in when NNI is not installed.
    """
    from ..algorithms import ensure_nni_importable, resolve

    ensure_nni_importable()
    meta = resolve(algo.name, kind) if algo.class_name is None else None
    if meta is None:
        return algo.name, algo.class_name, algo.code_directory
    return None, str(meta["className"]), algo.code_directory or meta.get("codeDirectory")


def tuner_for(config: ExperimentConfig, experiment_dir: Path | None = None) -> Tuner:
    """The tuner (or advisor) the config names, built for its search space and seed.

    ``experiment_dir`` is where PBT keeps its checkpoints (``<experiment_dir>/checkpoint``).

    The one place a config becomes a tuner: the experiment builds it at start, the service when an
    experiment is created (so that a bad name or classArgs is refused before anything runs).
    """
    from ..tuners import create_tuner

    algo = config.tuner or config.advisor
    if algo is None:
        raise ConfigError("The experiment names no tuner; add `tuner: {name: TPE}` for example.", path="tuner")
    if config.search_space is None:
        raise ConfigError("The experiment has no search space: set searchSpace or searchSpaceFile.")
    name, class_name, code_directory = _algo_source(algo, "tuner")
    return create_tuner(
        name,
        class_name=class_name,
        code_directory=code_directory,
        class_args=dict(algo.class_args or {}),
        search_space=config.search_space,
        seed=config.seed,
        experiment_dir=experiment_dir,
    )


def config_to_storable(config: ExperimentConfig) -> dict[str, Any]:
    """The config as stored: v2 camelCase, the search space inlined (the file may change later)."""
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.pop("searchSpaceFile", None)
    return data


class _Live:
    """The loop's bookkeeping for one trial it currently owns."""

    __slots__ = (
        "attempt",
        "final",
        "history",
        "parameter_id",
        "parameters",
        "reattached",
        "sequence_id",
        "told",
        "timer",
    )

    def __init__(self, parameter_id: int, sequence_id: int, parameters: dict[str, Any], attempt: int) -> None:
        self.parameter_id = parameter_id
        self.sequence_id = sequence_id
        self.parameters = parameters
        self.attempt = attempt
        self.history: list[Any] = []
        self.told = False
        self.final: float | None = None  # the scalar of its stored FINAL record
        self.reattached = False
        self.timer: TimerHandle | None = None


class Experiment:
    """Run a tuner against a training service until the budget is spent.

    ``config`` is an :class:`~nni_ts.config.experiment.ExperimentConfig`, a dict in NNI v2 form, or
    the path of an NNI v1 or v2 YAML/JSON file. ``service``, ``tuner`` and ``assessor`` may be given
    to override what the config names (tests, notebooks); ``store`` defaults to the database under
    ``NNI_TS_HOME``. ``storage`` (instead of ``store``) is any
    :class:`~nni_ts.storage.base.ExperimentStorage`: the experiment service passes its PostgreSQL
    storage, so that the loop writes there directly; its owner closes it.

    ``events`` (pyee) emits ``"started"`` (the record exists), ``"running"`` (the platform is up),
    ``"trial_end"`` (a TrialRecord), ``"metric"`` (trial id, parsed record) and ``"status"`` (the
    experiment status).

    ``clock`` times ``maxTrialDuration`` and ``maxExperimentDuration`` (tests pass a
    :class:`nni_ts.testing.FakeClock`; the service it makes gets the same clock).
    """

    def __init__(
        self,
        config: ExperimentConfig | Mapping[str, Any] | str | os.PathLike[str],
        *,
        experiment_id: str | None = None,
        store: Store | None = None,
        storage: ExperimentStorage | None = None,
        service: TrainingService[Any] | None = None,
        tuner: Tuner | None = None,
        assessor: Assessor | None = None,
        control_socket: bool = True,
        clock: Clock = REAL_CLOCK,
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
        if storage is not None and store is not None:
            raise ValueError("Give an experiment a store or a storage, not both.")
        if isinstance(storage, SqliteStorage):
            store = storage.store
        self._store = store
        self._storage = storage
        self._db: ExperimentStorage | None = None  # the storage for the loop, once it runs
        self._own_store = store is None and storage is None
        self.events = EventEmitter()
        self.optimize_mode = optimize_mode(self.config)
        self.control_socket = control_socket
        self.clock = clock
        self._service = service
        self._tuner = tuner
        self._assessor = assessor
        self._resuming = False
        self._rebuilding = False  # resumed from the platform's trials: the store had lost the experiment
        self._discarded = False  # a rebuild found nothing: its record was deleted again
        self._rerun_failed = False
        self._status = ExperimentStatus.RUNNING
        self._message: str | None = None
        self._live: dict[str, _Live] = {}
        self._pending_retries: deque[_Live] = deque()
        self._wake = asyncio.Event()
        self._deadline_timer: TimerHandle | None = None
        self._stop_reason: str | None = None
        self._tuner_exhausted = False
        # The tuner and assessor run in a thread of their own; the next suggestion is computed there
        # ahead of the next free slot. _tuner_paused: the tuner said "no more" (NoMoreTrialError) and
        # no result came since; with nothing running, that ends the experiment.
        self._worker = AlgoWorker(f"nni-ts-tuner-{self.id}")
        self._suggestion: asyncio.Future[Any] | None = None
        self._suggestion_pid = 0
        self._tuner_paused = False
        self._tuner_news = 0  # results and trial ends told to the tuner so far
        self._suggestion_news = 0  # that count when the suggestion in flight was asked
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
        #: Waits for the store calls the loop does not wait for itself (statuses); drained, not cancelled.
        self._writes = TaskSupervisor(f"experiment-{self.id}-store")
        self._errors: list[BaseException] = []
        self._no_success: str | None = None

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
        clock: Clock = REAL_CLOCK,
        config: ExperimentConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    ) -> Experiment:
        """An experiment that continues ``experiment_id``: re-attaches to its running trials, replays
        its finished ones into the tuner and completes the budget. ``max_trial_number`` and
        ``max_experiment_duration`` extend the budget; ``rerun_failed`` runs failed trials again.

        ``config`` (the experiment's config file, or its content) is used only when the store does not
        know the experiment (the manager's data directory was lost): the experiment is then rebuilt from
        its platform (:meth:`_rebuild`; the Kubernetes platforms keep each trial's id, sequence id and
        parameters on its object in the cluster)."""
        own = store is None
        store = store or open_store()
        try:
            record = store.get_experiment(experiment_id)
        except StoreError:
            if config is None:
                raise
            exp = cls(
                config, experiment_id=experiment_id, store=store, service=service, tuner=tuner,
                control_socket=control_socket, clock=clock,
            )  # fmt: skip
            if max_trial_number is not None:
                exp.config.max_trial_number = max_trial_number
            if max_experiment_duration is not None:
                exp.config.max_experiment_duration = max_experiment_duration
            exp._own_store = own
            exp._resuming = exp._rebuilding = True
            exp._rerun_failed = rerun_failed
            return exp
        if config is not None:
            log.warning(
                "Experiment %s is in the store: it resumes with its stored config; the config given is only used "
                "to rebuild an experiment the store lost.",
                experiment_id,
            )
        exp = cls._resumed(
            record,
            store=store,
            max_trial_number=max_trial_number,
            max_experiment_duration=max_experiment_duration,
            rerun_failed=rerun_failed,
            service=service,
            tuner=tuner,
            control_socket=control_socket,
            clock=clock,
        )
        exp._own_store = own
        return exp

    @classmethod
    async def resume_from(
        cls,
        experiment_id: str,
        storage: ExperimentStorage,
        *,
        max_trial_number: int | None = None,
        max_experiment_duration: str | int | None = None,
        rerun_failed: bool = False,
        service: TrainingService[Any] | None = None,
        control_socket: bool = False,
    ) -> Experiment:
        """:meth:`resume` from an :class:`ExperimentStorage`, read without blocking the event loop
        (the experiment service re-attaches and continues experiments with it)."""
        record = await storage.get_experiment(experiment_id)
        return cls._resumed(
            record,
            storage=storage,
            max_trial_number=max_trial_number,
            max_experiment_duration=max_experiment_duration,
            rerun_failed=rerun_failed,
            service=service,
            control_socket=control_socket,
        )

    @classmethod
    def _resumed(
        cls,
        record: Any,
        *,
        store: Store | None = None,
        storage: ExperimentStorage | None = None,
        max_trial_number: int | None,
        max_experiment_duration: str | int | None,
        rerun_failed: bool,
        service: TrainingService[Any] | None,
        tuner: Tuner | None = None,
        control_socket: bool,
        clock: Clock = REAL_CLOCK,
    ) -> Experiment:
        from ..config.loader import config_from_dict

        experiment_id = record.id
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
            storage=storage,
            service=service,
            tuner=tuner,
            control_socket=control_socket,
            clock=clock,
        )
        exp._resuming = True
        exp._rerun_failed = rerun_failed
        exp._active_before = record.active_ms / 1000
        return exp

    # ------------------------------------------------------------------ public API

    @property
    def store(self) -> Store:
        """The experiment's store (``$NNI_TS_HOME/nni-ts.db`` unless one was given)."""
        if self._storage is not None and self._store is None:
            raise RuntimeError(f"Experiment {self.id} keeps its records in {self._storage.location}, not in a store.")
        if self._store is None:
            self._store = open_store()
        return self._store

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
            self._deadline_timer = self.clock.call_later(max(0.0, deadline - self._elapsed()), self._wake.set)
        self._wake.set()

    async def update(
        self,
        *,
        trial_concurrency: int | None = None,
        max_trial_number: int | None = None,
        max_experiment_duration: str | int | float | None = None,
        search_space: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Change this running experiment (``nnictl update``): concurrency, budget, search space.

        Every value is validated before any is applied (a ConfigError names the key), then the new
        config is written to the store (through its writer thread, awaited) so that ``nni-ts resume``
        keeps it, and the loop acts at once.
        ``maxTrialNumber`` cannot drop below the trials already submitted, nor ``maxExperimentDuration``
        below the time already spent. A new search space goes to the tuner for the trials to come.
        Returns the changed keys (camelCase) with their new values.
        """

        new_space = dict(search_space) if search_space is not None else None
        changes: dict[str, Any] = {
            "trialConcurrency": trial_concurrency,
            "maxTrialNumber": max_trial_number,
            "maxExperimentDuration": max_experiment_duration,
            "searchSpace": new_space,
        }
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            raise ConfigError(
                f"Nothing to update in experiment {self.id}: give trialConcurrency, maxTrialNumber, "
                "maxExperimentDuration or searchSpace."
            )
        if self._status != ExperimentStatus.RUNNING or self._stop_reason is not None:
            raise UserError(f"Experiment {self.id} is not running any more ({self._stop_reason or self._status}).")
        if self._db is None:
            raise UserError(f"Experiment {self.id} is not running yet; update it once it has started.")
        candidate = self.config.model_copy(deep=True)
        fields = {
            "searchSpace": "search_space",
            "trialConcurrency": "trial_concurrency",
            "maxTrialNumber": "max_trial_number",
            "maxExperimentDuration": "max_experiment_duration",
        }
        for key, value in changes.items():
            try:
                setattr(candidate, fields[key], value)
            except pydantic.ValidationError as exc:
                errors = exc.errors(include_url=False)
                reason = errors[0]["msg"] if errors else str(exc)
                raise ConfigError(
                    f"Cannot update experiment {self.id}: {key}: {reason} (got {value!r}).", path=key
                ) from None
        if max_trial_number is not None and max_trial_number < self._trial_count:
            raise ConfigError(
                f"maxTrialNumber cannot be {max_trial_number}: experiment {self.id} already submitted "
                f"{self._trial_count} trials.",
                path="maxTrialNumber",
            )
        seconds = candidate.max_experiment_seconds
        if max_experiment_duration is not None and seconds is not None and seconds <= self._elapsed():
            raise ConfigError(
                f"maxExperimentDuration cannot be {max_experiment_duration!r}: experiment {self.id} has already "
                f"run {int(self._elapsed())} s.",
                path="maxExperimentDuration",
            )
        if new_space is not None and self._tuner is not None:
            try:
                self._tuner.update_search_space(new_space)
            except Exception as exc:
                raise ConfigError(f"The tuner refused the new search space: {exc}", path="searchSpace") from None
        await self.db.update_experiment(self.id, config=config_to_storable(candidate))
        self.config = candidate
        if max_experiment_duration is not None:
            self._rearm_deadline()
        log.info("Experiment %s updated: %s", self.id, ", ".join(sorted(changes)))
        self.events.emit("updated", dict(changes))
        self._wake.set()
        return changes

    def add_trial(self, parameters: Mapping[str, Any]) -> None:
        """NNI's "customized trial": run one more trial with these parameters (say, a finished trial's,
        edited), as soon as concurrency allows, ahead of the tuner's next proposal. It does not count
        towards maxTrialNumber; its result reaches the tuner like any other.
        """
        if self._status != ExperimentStatus.RUNNING or self._stop_reason is not None:
            raise UserError(f"Experiment {self.id} is not running any more ({self._stop_reason or self._status}).")
        if not isinstance(parameters, Mapping) or not parameters:
            raise ConfigError("The parameters of a trial must be a non-empty JSON object.", path="parameters")
        try:
            params = json.loads(json.dumps(dict(parameters), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"The parameters of a trial must be plain JSON: {exc}.", path="parameters") from None
        live = _Live(self._next_parameter_id, self._next_sequence_id, params, 1)
        self._next_parameter_id += 1
        self._next_sequence_id += 1
        self._pending_retries.append(live)
        log.info("Experiment %s: a customized trial with %s is queued.", self.id, json.dumps(params)[:200])
        self._wake.set()

    def _rearm_deadline(self) -> None:
        """Restart the maxExperimentDuration timer after the limit changed (only while the loop runs)."""
        if not self._started_at:
            return  # not running yet: the loop arms the timer when it starts
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        deadline = self.config.max_experiment_seconds
        if deadline is not None:
            self._deadline_timer = self.clock.call_later(max(0.0, deadline - self._elapsed()), self._wake.set)

    def import_results(self, entries: list[dict[str, Any]]) -> None:
        """Results from elsewhere (``nni-ts experiment import``): the tuner learns them as finished trials."""
        if entries and self._tuner is not None:
            self._call_algo(self._tuner.import_data, list(entries))
            self._wake.set()

    def _feed_imported(self) -> None:
        """Give the tuner what was imported into this experiment, before its first suggestion."""
        path = self.working_directory / IMPORTED_FILE
        if path.exists():
            self.import_results(read_imported(path))

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
            eta = max(0.0, (limit - done) * (self.clock.time() - self._started_at) / max(done, 1))
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
        """The result as stored now (synchronous: not for the event loop; ``run()`` returns it)."""
        return self._result(self.store.list_trials(self.id))

    def _result(self, trials: list[TrialRecord]) -> ExperimentResult:
        return ExperimentResult(
            experiment_id=self.id,
            status=self._status,
            optimize_mode=self.optimize_mode,
            trials=trials,
            message=self._message,
            no_success=self._no_success,
        )

    async def run(self) -> ExperimentResult:
        """Run (or continue) the experiment to its end and return the result."""
        self._started_at = self.clock.time()
        try:
            # Everything the config names is built before anything is recorded: a mistake in the
            # tuner or platform section leaves no half-created experiment behind.
            self._tuner = self._tuner or await self._worker.call(tuner_for, self.config, self.working_directory)
            if self._assessor is None:
                self._assessor = await self._worker.call(self._make_assessor)
            service = self._service or self._make_service()
            self._service = service
            if self._rebuilding and not hasattr(service, "recover_trial_jobs"):
                raise UserError(
                    f"The store has no experiment {self.id}, and the {service.platform_name} platform cannot "
                    "rebuild one from its trials (the Kubernetes platforms can, from the trial objects in the cluster)."
                )
            if self._storage is not None:
                self._db = self._storage
            else:
                if self._store is None:
                    self._store = await clock_to_thread(open_store)
                self._db = SqliteStorage(self._store)
            await self._prepare_record()
        except BaseException:
            self._worker.close()
            await self._close_store()
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
                self.events.emit("running", self.id)  # the platform is up: what the config asks can run
                try:
                    if self._rebuilding:
                        await self._rebuild()
                    if self._resuming:
                        await self._restore()
                    self._feed_imported()
                    await self._main_loop()
                    await self._cancel_live()
                    trials = await self.db.list_trials(self.id)
                    self._no_success = await no_success_summary(self.id, trials, service)
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
            await self._drain_writes()
            await self._finish_record()
            await self._close_store()
            raise
        finally:
            service.remove_trial_job_metric_listener(self._on_metric)
            service.events.remove_listener("trial_status", self._on_status)
            if self._suggestion is not None:
                self._suggestion.cancel()
            self._worker.close()
            await self._tasks.stop()
        await self._drain_writes()
        if self._errors:
            self._status = ExperimentStatus.ERROR
            first = self._errors[0]
            self._message = str(first) if isinstance(first, StoreError) else f"The tuner or assessor failed: {first!r}"
        await self._finish_record()
        try:
            result = self._result(await self.db.list_trials(self.id))
        finally:
            await self._close_store()
        return result

    # ------------------------------------------------------------------ set-up

    @property
    def db(self) -> ExperimentStorage:
        """The storage as the loop uses it (never blocking the loop); set while ``run()`` runs."""
        if self._db is None:
            raise RuntimeError("The experiment's store is used by the loop only while run() runs.")
        return self._db

    async def _prepare_record(self) -> None:
        storable = config_to_storable(self.config)
        platform = self.config.training_service.platform
        if self._resuming and not self._rebuilding:
            await self.db.update_experiment(
                self.id,
                status=ExperimentStatus.RUNNING,
                config=storable,
                manager_pid=os.getpid(),
                manager_started=_self_started(),
                ended_ms=None,
                message=None,
            )
        else:
            await self.db.create_experiment(
                self.id,
                name=self.config.experiment_name,
                platform=platform,
                config=storable,
                working_dir=self.working_directory,
                manager_pid=os.getpid(),
                manager_started=_self_started(),
            )
        self.working_directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def _finish_record(self) -> None:
        from ..models import now_ms

        if self._discarded:
            self.events.emit("status", self._status)
            return
        try:
            await self.db.update_experiment(
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

    async def _close_store(self) -> None:
        if self._own_store and self._store is not None:
            await clock_to_thread(self._store.close)

    def _track(self, call: Awaitable[Any], what: str, then: Callable[[Any], object] | None = None) -> None:
        """Wait for a store call the loop does not wait for (it is queued already, so it keeps its
        place in the order); ``then`` gets its result. A failure ends the experiment with an error."""

        async def wait() -> None:
            try:
                result = await call
            except StoreError as exc:
                log.error("Could not record %s: %s", what, exc)
                self._errors.append(StoreError(f"Could not record {what}: {exc}"))
                self._wake.set()
                return
            if then is not None:
                then(result)

        self._writes.spawn(wait(), name=what)

    async def _drain_writes(self) -> None:
        """Wait for every store call in flight (a status written as the service cleaned up, ...)."""
        while self._writes.tasks:
            await asyncio.wait(self._writes.tasks)

    def _make_service(self) -> TrainingService[Any]:
        from ..registry import get_platform_class

        ts = self.config.training_service
        cls = get_platform_class(ts.platform)
        service = cls(ts, experiment_id=self.id, experiment_dir=self.working_directory)
        service.clock = self.clock
        return service

    def _make_assessor(self) -> Assessor | None:
        builtin: Assessor | None = getattr(self._tuner, "builtin_assessor", None)
        algo = self.config.assessor
        if algo is None:
            return builtin
        from ..tuners import create_assessor

        name, class_name, code_directory = _algo_source(algo, "assessor")
        return create_assessor(
            name,
            class_name=class_name,
            code_directory=code_directory,
            class_args=dict(algo.class_args or {}),
            tuner=self._tuner,
        )

    async def _rebuild(self) -> None:
        """Put the trials the platform still knows into the (new) store, as trials to re-attach to: the
        store had lost the experiment. :meth:`_restore` then re-attaches them, which gives each its status
        and its metrics (those of a finished trial from its journal on the shared storage), and tells the
        tuner every point (a GridSearch does not repeat one)."""
        assert self._service is not None
        details: list[TrialJobDetail] = await self._service.recover_trial_jobs()  # type: ignore[attr-defined]
        if not details:
            # Nothing of it anywhere: a mistyped id, or an experiment that ended (its objects went with it).
            # Starting a new experiment under that id is not what `resume` means: nothing is kept.
            await self.db.delete_experiment(self.id)
            self._discarded = True
            raise UserError(
                f"There is no experiment {self.id} in the store, nor any trial object of it in the cluster "
                f"({self._service.platform_name}): nothing to resume. An experiment that ended took its objects "
                "with it; `nni-ts create` starts a new one."
            )
        attempts: dict[int, int] = {}
        for detail in details:
            try:
                parameter_id = int(json.loads(detail.form.hyper_parameters.value).get("parameter_id"))
            except (TypeError, ValueError, AttributeError):
                parameter_id = detail.sequence_id
            attempts[parameter_id] = attempts.get(parameter_id, 0) + 1
            await self.db.insert_trial(
                TrialRecord(
                    experiment_id=self.id,
                    id=detail.id,
                    sequence_id=detail.sequence_id,
                    parameter_id=parameter_id,
                    parameters=detail.form.parameters(),
                    attempt=attempts[parameter_id],
                    submit_ms=detail.submit_time,
                    detail=detail,
                )
            )
        log.warning(
            "Experiment %s was not in the store: rebuilt %d trial(s) from the %s platform.",
            self.id,
            len(details),
            self._service.platform_name,
        )

    async def _restore(self) -> None:
        """Pick up where an earlier manager left off."""
        assert self._service is not None and self._tuner is not None
        trials = await self.db.list_trials(self.id, with_detail=True)
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
            await self._worker.call(self._tuner.import_data, replay)
        # Points submitted without a result (running, or ended without one) are the tuner's too: a
        # GridSearch must not hand them out again.
        pending = [t.parameters for t in latest.values() if t.final_data is None]
        hook = getattr(self._tuner, "import_submitted", None)
        if pending and hook is not None:
            await self._worker.call(hook, pending)
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
                parse_record(m.data).value for m in await self.db.metrics(self.id, t.id) if m.type == "PERIODICAL"
            ]
            live.told = t.final_data is not None
            live.final = t.final_value
            self._live[t.id] = live
            log.info("Re-attaching to trial %s (%s).", t.id, t.status)
            await self._service.reattach_trial_job(detail, metrics_delivered=t.metric_count)

    # ------------------------------------------------------------------ the loop

    def _elapsed(self) -> float:
        if not self._started_at:
            return self._active_before
        return self._active_before + self.clock.time() - self._started_at

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
        deadline = self.config.max_experiment_seconds
        if deadline is not None:
            self._deadline_timer = self.clock.call_later(max(0.0, deadline - self._elapsed()), self._wake.set)
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
                if self._stop_reason is None:
                    self._request_suggestion()  # the next one, computed while trials run
                idle = not self._live and not self._pending_retries and self._suggestion is None
                if idle and self._tuner_paused:
                    self._tuner_exhausted = True
                if idle and not self._budget_left():
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

    def _request_suggestion(self) -> None:
        """Ask the tuner (in its thread) for the next parameters, unless one is already asked or due."""
        if self._suggestion is not None or self._tuner_paused or not self._budget_left():
            return
        assert self._tuner is not None
        pid = self._next_parameter_id
        self._next_parameter_id += 1
        self._suggestion_pid = pid
        self._suggestion_news = self._tuner_news
        self._suggestion = self._worker.call(self._tuner.generate_parameters, pid)
        self._suggestion.add_done_callback(lambda _: self._wake.set())

    def _next_from_tuner(self) -> _Live | None:
        """The tuner's next suggestion if it is ready (else None; the loop wakes when it is)."""
        from ..tuners import NoMoreTrialError

        self._request_suggestion()
        future = self._suggestion
        if future is None or not future.done():
            return None
        self._suggestion = None
        exc = future.exception()
        if isinstance(exc, NoMoreTrialError):
            # asked again after the next result, as NNI does; at once if one came while it was asked
            self._tuner_paused = self._tuner_news == self._suggestion_news
            return None
        if exc is not None:
            self._algo_failed(self._tuner.generate_parameters, exc)  # type: ignore[union-attr]
            return None
        live = _Live(self._suggestion_pid, self._next_sequence_id, dict(future.result()), 1)
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
        await self.db.insert_trial(
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
            await self.db.update_trial(self.id, fake)
            self._trial_ended(fake)
            return
        await self.db.update_trial(self.id, detail)
        if detail.status.is_terminal and trial_id in self._live:
            self._trial_ended(detail)

    # ------------------------------------------------------------------ events from the service

    async def _on_metric(self, metric: TrialJobMetric) -> None:
        """The metric listener: returns once the record is committed; raises (which refuses the
        record, so the platform delivers it again) if the store failed."""
        parsed = parse_record(metric.data)
        inserted = await self.db.add_metric(
            self.id, metric.trial_job_id, metric.sequence, type=parsed.type, value=parsed.scalar, data=metric.data
        )
        live = self._live.get(metric.trial_job_id)
        if not inserted or live is None:
            return
        if parsed.type == "FINAL":
            live.final = parsed.scalar
        if not parsed.valid:
            log.warning("Trial %s wrote a record that is not JSON; it is stored as is.", metric.trial_job_id)
        elif parsed.type == "FINAL" and not live.told:
            live.told = True
            assert self._tuner is not None
            if live.reattached:
                self._call_algo(self._tuner.import_data, [{"parameter": live.parameters, "value": parsed.value}])
            else:
                self._call_algo(self._tuner.receive_trial_result, live.parameter_id, live.parameters, parsed.value)
            self._tuner_paused = False
            self._tuner_news += 1
        elif parsed.type == "PERIODICAL":
            live.history.append(parsed.value)
            if self._assessor is not None:
                from ..tuners import AssessResult

                trial_id = metric.trial_job_id

                def verdict(result: Any) -> None:
                    if result is AssessResult.Bad and trial_id in self._live:
                        self._cancel_reasons[trial_id] = "Early stopped by the assessor."
                        self._spawn(self._early_stop(trial_id), f"early-stop-{trial_id}")

                self._call_algo(self._assessor.assess_trial, trial_id, list(live.history), then=verdict)
        self.events.emit("metric", metric.trial_job_id, parsed)

    def _on_status(self, detail: TrialJobDetail) -> None:
        if detail.id not in self._live:
            return
        reason = self._cancel_reasons.get(detail.id)
        if reason and detail.status.is_terminal:
            detail.message = reason
        # Queued now, so it is stored after the trial's metrics and before anything the loop does next.
        self._track(self.db.update_trial(self.id, detail), f"the status of trial {detail.id}")
        live = self._live[detail.id]
        if detail.status is TrialJobStatus.RUNNING and live.timer is None:
            limit = self.config.max_trial_seconds
            if limit is not None:
                started = (detail.start_time or 0) / 1000
                left = max(0.0, limit - (self.clock.wall() - started)) if started else limit
                live.timer = self.clock.call_later(left, self._trial_timed_out, detail.id)
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
            final = live.final if live.told else None
            self._count_end(detail.id, detail.status, final, detail.infrastructure_failure, live=live)
        self._wake.set()
        # Queued after the trial's status write: the record read is the one just stored.
        self._track(
            self.db.get_trial(self.id, detail.id),
            f"the end of trial {detail.id}",
            then=lambda record: self.events.emit("trial_end", record),
        )

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
        if success:
            self._note_best(trial_id, final)
        if live is not None and not live.reattached:
            assert self._tuner is not None
            self._call_algo(self._tuner.trial_end, live.parameter_id, success)
            self._tuner_paused = False
            self._tuner_news += 1
        if live is not None and self._assessor is not None:
            self._call_algo(self._assessor.trial_end, trial_id, success)

    def _note_best(self, trial_id: str, value: float | None) -> None:
        if value is None:
            return
        if is_better(value, self._best_value, self.optimize_mode):
            self._best_value = value
            self._best_trial = trial_id

    def _call_algo(self, fn: Any, *args: Any, then: Any = None) -> None:
        """Call the tuner or assessor in its thread, after every earlier call; ``then(result)`` runs on
        the loop. Its exceptions end the experiment with a clear message."""

        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                return
            exc = future.exception()
            if exc is not None:
                self._algo_failed(fn, exc)
            elif then is not None:
                then(future.result())

        self._worker.call(fn, *args).add_done_callback(done)

    def _algo_failed(self, fn: Any, exc: BaseException) -> None:
        log.error("%s raised.", getattr(fn, "__qualname__", fn), exc_info=exc)
        self._errors.append(exc)
        self._wake.set()

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
