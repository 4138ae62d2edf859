"""The :class:`TrainingService` contract: one asyncio interface in front of every platform.

Lifecycle
---------
A service is constructed with its platform configuration (validated in the constructor), then goes
through these states::

    CREATED ──start()──► RUNNING ──clean_up()──► STOPPED

``async with service:`` calls :meth:`~TrainingService.start` on entry and
:meth:`~TrainingService.clean_up` on exit. :meth:`~TrainingService.run` starts the service if needed
and returns when it has been cleaned up, for callers written in NNI's style.

=============================================  ==========================================
call                                           valid in
=============================================  ==========================================
``set_cluster_metadata``                       CREATED
``get_cluster_metadata``, ``list_trial_jobs``  any state
``get_trial_job``, ``get_trial_file``          any state
``submit_trial_job``, ``update_trial_job``     RUNNING
``cancel_trial_job``                           RUNNING (a no-op for a finished trial)
``add/remove_trial_job_metric_listener``       any state
``clean_up``                                   any state; idempotent
=============================================  ==========================================

A call made in the wrong state raises :class:`~nni_ts.errors.InvalidStateError`.

Trial status
------------
::

    WAITING ──► RUNNING ──► SUCCEEDED | FAILED | USER_CANCELED | SYS_CANCELED | EARLY_STOPPED
       │   ▲       │  ▲
       │   │       ▼  │
       └───┼──► UNKNOWN ┘   (temporary: back to RUNNING, or terminal after ``unknown_timeout``)
           └── requeued ──  (RUNNING or UNKNOWN back to WAITING, through ``reporter.requeued`` only)

A trial reaches exactly one terminal status and never leaves it. A trial goes back to WAITING only
through :meth:`TrialReporter.requeued`: a queue (Kueue) preempted it and will run it again. That is not
a failure and counts against no failure budget; the trial keeps its start time and the metrics it
delivered (its records carry on from the same sequence when it runs again). UNKNOWN means the platform lost
sight of the trial (a host or keeper stopped answering). It never holds a slot forever: after
``unknown_timeout`` seconds the trial becomes FAILED with ``infrastructure_failure=True``, and a
trial in UNKNOWN can be cancelled at any time. ``clean_up`` ends every live trial as SYS_CANCELED.

Metric delivery: durable before acknowledged
----------------------------------------------
Each metric record a trial writes is delivered to the metric listeners **exactly once, in the order
the trial wrote it, before that trial's terminal status event**. ``TrialJobMetric.data`` holds the
record's bytes as the trial's SDK wrote them (decoded as UTF-8); ``TrialJobMetric.sequence`` counts
the trial's records from 0.

Listeners are plain or ``async`` callables, called on the event loop in the order they were added
(an ``async`` one is awaited before the next is called); they must not block the loop. A listener
that raises **refuses** the record: it is not counted, the ``"metric"`` event is not emitted, and
the platform delivers it again later (a keeper resends it, since the cluster server acknowledges
only delivered records). A listener that accepted the record may therefore see it again with the
same ``(trial_job_id, sequence)``: listeners are idempotent on that pair (the experiment store
ignores a record it already has). A listener that stores records returns only once the record is
durable: so when a platform's ``await reporter.metric(...)`` returns, the record is stored, and only
then does the platform acknowledge it to the trial.

Events
------
``service.events`` is a :class:`pyee.EventEmitter` with two events:
``"trial_status"`` (a :class:`~nni_ts.models.TrialJobDetail`, after each status change) and
``"metric"`` (a :class:`~nni_ts.models.TrialJobMetric`). Handlers run synchronously.

Concurrency
-----------
A service belongs to the event loop it was started on. Its methods are coroutine-safe (any number of
tasks may call them concurrently) but not thread-safe. :meth:`~TrainingService.start` and
:meth:`~TrainingService.clean_up` are serialised: a ``clean_up()`` that arrives while ``start()``
runs waits for it and then cleans up (the service never ends RUNNING after a clean-up), two
concurrent ``start()`` calls start the platform once, and ``_clean_up()`` always runs once the
platform was started, even if cancelling a trial failed (each failure is logged). A trial submitted
while ``clean_up()`` is waiting for the lock is cancelled with the others.

Background tasks
----------------
``service.tasks`` (a :class:`~nni_ts.tasks.TaskSupervisor`) owns every background task of the
service and its platform: each is named, its failure logged, and all are stopped, with a time-out,
at the end of ``clean_up()``.

Writing a platform
------------------
Subclass, set ``platform_name`` and ``config_class``, and implement the hooks declared with
``abc.abstractmethod`` (``_submit``, ``_cancel``, ``_clean_up``) and the optional ones (``_start``,
``_reattach``, ``_update``, ``_read_trial_file``). Report what the trials do through
``self.reporter`` (a :class:`TrialReporter`: running, metric, ended, ...), the one public
reporting seam, where the ordering rules above are enforced; build a trial's shell command with
:meth:`~TrainingService.trial_command`; spawn background work with ``self.tasks.spawn``. Then run
the conformance kit in :mod:`nni_ts.testing`. See ``docs/new-platform.md``.
"""

from __future__ import annotations

import abc
import asyncio
import copy
import enum
import inspect
import json
import logging
import secrets
import shlex
import string
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import pydantic
from pyee import EventEmitter

from .clock import REAL_CLOCK, Clock, TimerHandle
from .config.base import TrainingServiceConfig
from .errors import ConfigError, InvalidStateError, MetricRefused, TrialNotFoundError, TrialStateError
from .models import TrialJobApplicationForm, TrialJobDetail, TrialJobMetric, TrialJobStatus
from .tasks import TaskSupervisor

__all__ = [
    "MetricListener",
    "ServiceState",
    "TrainingService",
    "TrialReporter",
    "new_trial_id",
    "parameters_as_args",
    "trial_shell_command",
]

log = logging.getLogger(__name__)

MetricListener = Callable[[TrialJobMetric], object | Awaitable[object]]
ConfigT = TypeVar("ConfigT", bound=TrainingServiceConfig)

_ID_ALPHABET = string.ascii_letters + string.digits

_ALLOWED: dict[TrialJobStatus, frozenset[TrialJobStatus]] = {
    TrialJobStatus.WAITING: frozenset(TrialJobStatus) - {TrialJobStatus.WAITING},
    TrialJobStatus.RUNNING: frozenset(TrialJobStatus) - {TrialJobStatus.WAITING, TrialJobStatus.RUNNING},
    TrialJobStatus.UNKNOWN: frozenset(TrialJobStatus) - {TrialJobStatus.WAITING, TrialJobStatus.UNKNOWN},
}
#: The moves :meth:`TrialReporter.requeued` adds to ``_ALLOWED``: back to WAITING, never from a terminal status.
_REQUEUE_FROM: frozenset[TrialJobStatus] = frozenset({TrialJobStatus.RUNNING, TrialJobStatus.UNKNOWN})

TRIAL_FILES = ("stdout", "stderr", "trial.log")


_ATOMIC = (str, int, float, bool, type(None), enum.Enum, bytes)


def _deep_copy(value: Any) -> Any:
    """``copy.deepcopy`` for what a trial's detail holds (pydantic models, JSON-like containers and
    atomic values), at a fraction of its cost (no memo): a detail is copied on every status change and
    for every caller that asks for one. Anything else goes to ``copy.deepcopy``."""
    if isinstance(value, _ATOMIC):
        return value
    if isinstance(value, pydantic.BaseModel):
        new = copy.copy(value)  # its own __dict__, fields-set and private state
        fields = new.__dict__
        for name, item in fields.items():
            if not isinstance(item, _ATOMIC):
                fields[name] = _deep_copy(item)
        return new
    kind = type(value)
    if kind is dict:
        return {k: _deep_copy(v) for k, v in value.items()}
    if kind is list:
        return [_deep_copy(v) for v in value]
    if kind is tuple:
        return tuple(_deep_copy(v) for v in value)
    return copy.deepcopy(value)


def _copy_detail(detail: TrialJobDetail) -> TrialJobDetail:
    """A deep copy of ``detail`` (what ``detail.model_copy(deep=True)`` gives, about twice as fast)."""
    copied: TrialJobDetail = _deep_copy(detail)
    return copied


def new_trial_id(length: int = 5) -> str:
    """A random trial id in NNI's style (letters and digits), uniform over all ``length``-letter ids.

    Drawn as one number (one read of the system's random source, where a letter at a time took one
    each), written in base 62."""
    base = len(_ID_ALPHABET)
    number = secrets.randbelow(base**length)
    letters = []
    for _ in range(length):
        number, digit = divmod(number, base)
        letters.append(_ID_ALPHABET[digit])
    return "".join(letters)


def parameters_as_args(parameters: Mapping[str, Any]) -> str:
    """``--name=value`` arguments for the hyper-parameters, each shell-quoted (cube-studio style)."""
    args = []
    for name, value in parameters.items():
        text = value if isinstance(value, str) else json.dumps(value)
        args.append(shlex.quote(f"--{name}={text}"))
    return " ".join(args)


def trial_shell_command(
    command: str, parameters: Mapping[str, Any], *, prepare: str | None = None, as_args: bool = False
) -> str:
    """The shell command a trial runs: ``prepare`` on its own line first, then ``command``, with the
    hyper-parameters appended as shell-quoted ``--name=value`` arguments when ``as_args``.

    The one place a trial's command is built: every platform calls it (through
    :meth:`TrainingService.trial_command`), so quoting is decided here only.
    """
    if as_args:
        args = parameters_as_args(parameters)
        if args:
            command = f"{command} {args}"
    if prepare:
        command = f"{prepare}\n{command}"
    return command


class ServiceState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class TrialReporter:
    """The one public seam through which a platform (or a sink) reports what its trials do.

    A platform gets it as ``self.reporter``; a :class:`~nni_ts.server.ServiceSink` maps a keeper's
    reports onto it. It is where the contract's rules are enforced, once for every platform: the
    status state machine, the UNKNOWN time-out, and metric delivery (exactly once, in order, durable
    before acknowledged, before the terminal status). Nothing outside the base class touches a
    service's trials any other way. Every method raises :class:`~nni_ts.errors.TrialNotFoundError`
    for an id the service does not know.
    """

    def __init__(self, service: TrainingService[Any]) -> None:
        self._service = service
        self._metric_locks: dict[str, asyncio.Lock] = {}

    # -------------------------------------------------------------- reading

    def detail(self, trial_id: str) -> TrialJobDetail:
        """A copy of the trial's detail."""
        return _copy_detail(self._service._get(trial_id))

    def status(self, trial_id: str) -> TrialJobStatus:
        return self._service._get(trial_id).status

    def delivered(self, trial_id: str) -> int:
        """How many of the trial's records were delivered (and stored) so far."""
        self._service._get(trial_id)
        return self._service._metric_counts.get(trial_id, 0)

    # -------------------------------------------------------------- statuses

    def running(
        self, trial_id: str, *, when: int | None = None, host: str | None = None, message: str | None = None
    ) -> bool:
        """The trial runs (from WAITING, or back from UNKNOWN). Returns whether the status moved."""
        if host is not None:
            self._service._get(trial_id).host = host
        return self._service._set_status(trial_id, TrialJobStatus.RUNNING, message=message, when=when)

    def waiting(self, trial_id: str, message: str) -> bool:
        """Say why a WAITING trial waits (queued, not yet scheduled). Returns False if it is not WAITING."""
        detail = self._service._get(trial_id)
        if detail.status is not TrialJobStatus.WAITING:
            return False
        if detail.message != message:
            detail.message = message
            self._service.events.emit("trial_status", _copy_detail(detail))
        return True

    def requeued(self, trial_id: str, message: str) -> bool:
        """A RUNNING (or UNKNOWN) trial was preempted by a queue and waits to run again: back to WAITING.

        Not a failure (nothing counts it against a failure budget); the trial keeps its start time and
        its delivered metrics. Returns False, changing nothing, unless the trial was RUNNING or UNKNOWN.
        """
        return self._service._set_status(trial_id, TrialJobStatus.WAITING, message=message, requeue=True)

    def unknown(self, trial_id: str, message: str) -> bool:
        """The platform lost sight of the trial; it fails after ``unknown_timeout`` unless it comes back."""
        return self._service._set_status(trial_id, TrialJobStatus.UNKNOWN, message=message)

    def note(
        self,
        trial_id: str,
        *,
        message: str | None = None,
        host: str | None = None,
        url: str | None = None,
        platform_data: Mapping[str, Any] | None = None,
    ) -> None:
        """Record facts about a trial without changing its status. ``platform_data`` replaces the
        trial's platform data (what a restarted manager needs to re-attach); it must be JSON-serialisable."""
        detail = self._service._get(trial_id)
        if message is not None:
            detail.message = message
        if host is not None:
            detail.host = host
        if url is not None:
            detail.url = url
        if platform_data is not None:
            detail.platform_data = dict(platform_data)

    async def metric(self, trial_id: str, data: str) -> TrialJobMetric | None:
        """Deliver one record to every listener; return once all of them accepted it.

        Records of one trial are delivered one at a time in call order. Raises
        :class:`~nni_ts.errors.MetricRefused` (the listener's exception chained) if a listener
        refused: the record is not counted and must be delivered again. Returns None, dropping the
        record, if the trial has already ended (a platform bug: records come before the end).
        """
        service = self._service
        service._get(trial_id)
        lock = self._metric_locks.setdefault(trial_id, asyncio.Lock())
        async with lock:
            detail = service._get(trial_id)
            if detail.status.is_terminal:
                log.error("Dropping a metric for trial %s, which has ended (%s).", trial_id, detail.status.value)
                return None
            seq = service._metric_counts.get(trial_id, 0)
            metric = TrialJobMetric(trial_job_id=trial_id, data=data, sequence=seq)
            for listener in list(service._listeners):
                try:
                    result = listener(metric)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    raise MetricRefused(
                        trial_id,
                        f"A metric listener refused record {seq} of trial {trial_id}: {exc!r}; "
                        "it will be delivered again.",
                    ) from exc
            service._metric_counts[trial_id] = seq + 1
            service.events.emit("metric", metric)
            return metric

    async def ended(
        self,
        trial_id: str,
        status: TrialJobStatus,
        *,
        message: str | None = None,
        exit_code: int | None = None,
        infrastructure_failure: bool = False,
        when: int | None = None,
    ) -> bool:
        """The trial reached terminal ``status``. Applied after every metric of the trial that is
        being delivered; returns whether the status moved (False if it had ended already)."""
        if not status.is_terminal:
            raise ValueError(f"ended() takes a terminal status, not {status.value}.")
        self._service._get(trial_id)
        lock = self._metric_locks.setdefault(trial_id, asyncio.Lock())
        async with lock:
            moved = self._service._set_status(
                trial_id,
                status,
                message=message,
                exit_code=exit_code,
                infrastructure_failure=infrastructure_failure,
                when=when,
            )
        self._metric_locks.pop(trial_id, None)
        return moved


class TrainingService(abc.ABC, Generic[ConfigT]):
    """The asyncio contract every platform implements. See the module docstring for the rules."""

    #: The name under which the platform registers in the ``nni_ts.platforms`` entry-point group.
    platform_name: ClassVar[str] = ""
    #: The pydantic model of the platform's configuration.
    config_class: ClassVar[type[TrainingServiceConfig]] = TrainingServiceConfig

    #: Seconds a trial may stay UNKNOWN before it is failed as an infrastructure failure.
    unknown_timeout: float = 60.0
    #: Seconds ``clean_up()`` gives background tasks to finish once cancelled.
    task_stop_timeout: float = 10.0
    #: The time source of the service's timeouts (tests set a :class:`nni_ts.testing.FakeClock`).
    clock: Clock = REAL_CLOCK

    def __init__(
        self,
        config: ConfigT | Mapping[str, Any] | None = None,
        *,
        experiment_id: str | None = None,
        experiment_dir: str | Path | None = None,
    ) -> None:
        self.config: ConfigT = self._validate_config(config)
        self.experiment_id = experiment_id or new_trial_id(8)
        if experiment_dir is None:
            from .paths import experiment_dir as default_dir

            experiment_dir = default_dir(self.experiment_id)
        self.experiment_dir = Path(experiment_dir)
        self.events = EventEmitter()
        #: Owns every background task of the service and its platform.
        self.tasks = TaskSupervisor(f"{self.platform_name or type(self).__name__}-{self.experiment_id}")
        #: The one public reporting seam (see :class:`TrialReporter`).
        self.reporter = TrialReporter(self)
        self._state = ServiceState.CREATED
        self._trials: dict[str, TrialJobDetail] = {}
        self._metric_counts: dict[str, int] = {}
        self._listeners: list[MetricListener] = []
        self._unknown_timers: dict[str, TimerHandle] = {}
        self._stopped = asyncio.Event()
        self._lifecycle = asyncio.Lock()
        self._closing = False
        self._started = False
        self._submitting = 0
        self._submits_done = asyncio.Event()
        self._submits_done.set()

    # ------------------------------------------------------------------ configuration

    @classmethod
    def _validate_config(cls, config: Any) -> ConfigT:
        model = cls.config_class
        if config is None:
            config = {"platform": cls.platform_name}
        if isinstance(config, model):
            return config  # type: ignore[return-value]
        if isinstance(config, TrainingServiceConfig):
            config = config.model_dump(by_alias=False)
        try:
            return model.model_validate(config)  # type: ignore[return-value]
        except pydantic.ValidationError as exc:
            from .config.errors import format_validation_error

            raise ConfigError(format_validation_error(exc), source=f"{cls.platform_name} config") from exc

    @property
    def state(self) -> ServiceState:
        return self._state

    def _require(self, *states: ServiceState, call: str) -> None:
        if self._state not in states or (self._closing and ServiceState.RUNNING in states):
            allowed = " or ".join(s.value.upper() for s in states)
            now = "STOPPING" if self._closing and self._state is not ServiceState.STOPPED else self._state.value.upper()
            raise InvalidStateError(
                f"{type(self).__name__}.{call}() is valid only when the service is {allowed}; it is {now}."
            )

    async def set_cluster_metadata(self, key: str, value: str) -> None:
        """Set one configuration key, NNI style. ``value`` is JSON text or a plain string.

        The key is a config field name (camelCase or snake_case); the value is validated by the same
        typed model as the constructor's config. Unknown keys raise :class:`ConfigError`.
        """
        self._require(ServiceState.CREATED, call="set_cluster_metadata")
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        data = self.config.model_dump(by_alias=False)
        fields = self.config_class.model_fields
        name = key if key in fields else next((n for n, f in fields.items() if f.alias == key), None)
        if name is None:
            known = ", ".join(sorted(f.alias or n for n, f in fields.items()))
            raise ConfigError(f"unknown cluster metadata key {key!r}; expected one of: {known}.")
        data[name] = parsed
        self.config = self._validate_config(data)

    async def get_cluster_metadata(self, key: str) -> str:
        """The value of a configuration key, as JSON text."""
        fields = self.config_class.model_fields
        name = key if key in fields else next((n for n, f in fields.items() if f.alias == key), None)
        if name is None:
            raise ConfigError(f"unknown cluster metadata key {key!r}.")
        return json.dumps(self.config.model_dump(mode="json")[name])

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Prepare the platform (connections, watches, directories). Idempotent and coroutine-safe:
        concurrent calls start the platform once. Raises :class:`InvalidStateError` once
        :meth:`clean_up` has been called."""
        async with self._lifecycle:
            if self._state is ServiceState.RUNNING and not self._closing:
                return
            self._require(ServiceState.CREATED, call="start")
            if self._closing:
                raise InvalidStateError(f"{type(self).__name__}.start() was called after clean_up().")
            self.experiment_dir.mkdir(parents=True, exist_ok=True)
            self._started = True  # from here on _clean_up() must run, even if _start() fails half-way
            await self._start()
            self._state = ServiceState.RUNNING

    async def run(self) -> None:
        """Start the service if needed and return once :meth:`clean_up` has finished."""
        if self._state is ServiceState.CREATED and not self._closing:
            await self.start()
        await self._stopped.wait()

    async def clean_up(self) -> None:
        """Cancel every live trial (as SYS_CANCELED), release resources, stop background tasks.

        Idempotent; a second call waits for the first to finish. If ``start()`` is running it
        finishes first. ``_clean_up()`` runs whatever happened to the cancels (their failures are
        logged), and so does stopping the background tasks.
        """
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        try:
            async with self._lifecycle:
                was_running = self._state is ServiceState.RUNNING
                if self._state is not ServiceState.STOPPED:
                    self._state = ServiceState.STOPPING
                try:
                    if was_running:
                        await self._cancel_all_live()
                finally:
                    try:
                        if self._started:
                            await self._clean_up()
                    finally:
                        for timer in self._unknown_timers.values():
                            timer.cancel()
                        self._unknown_timers.clear()
                        await self.tasks.stop(self.task_stop_timeout)
        finally:
            self._state = ServiceState.STOPPED
            self._stopped.set()

    async def _cancel_all_live(self) -> None:
        # Submissions in flight finish first, so that their trials are cancelled too.
        await self._submits_done.wait()
        for _round in range(3):
            live = [t.id for t in self._trials.values() if not t.status.is_terminal]
            if not live:
                return
            results = await asyncio.gather(
                *(self._cancel_one(tid, TrialJobStatus.SYS_CANCELED) for tid in live), return_exceptions=True
            )
            for tid, result in zip(live, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, BaseException):
                    log.error("Cancelling trial %s at clean-up failed.", tid, exc_info=result)
                    detail = self._trials.get(tid)
                    if detail is not None and not detail.status.is_terminal:
                        self._set_status(
                            tid,
                            TrialJobStatus.SYS_CANCELED,
                            message=f"Cancelled at clean-up; stopping it failed: {result}.",
                        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.clean_up()

    # ------------------------------------------------------------------ trials

    async def list_trial_jobs(self) -> list[TrialJobDetail]:
        """Every trial this service knows, in submission order (copies)."""
        return [_copy_detail(t) for t in self._trials.values()]

    async def get_trial_job(self, trial_job_id: str) -> TrialJobDetail:
        """One trial (a copy). Raises :class:`TrialNotFoundError`."""
        return _copy_detail(self._get(trial_job_id))

    async def submit_trial_job(self, form: TrialJobApplicationForm) -> TrialJobDetail:
        """Submit a trial. It starts WAITING; the platform moves it on. Returns a copy of its detail."""
        self._require(ServiceState.RUNNING, call="submit_trial_job")
        trial_id = form.trial_job_id or new_trial_id()
        while trial_id in self._trials:
            if form.trial_job_id:
                raise TrialStateError(f"A trial with the id {trial_id!r} already exists.")
            trial_id = new_trial_id()
        detail = TrialJobDetail(
            id=trial_id,
            status=TrialJobStatus.WAITING,
            form=form,
            sequence_id=form.sequence_id,
            working_directory=str(self.trial_dir(trial_id)),
            submit_time=int(self.clock.wall() * 1000),
        )
        self._trials[trial_id] = detail
        self._metric_counts[trial_id] = 0
        self._submitting += 1
        self._submits_done.clear()
        try:
            await self._submit(detail)
        except BaseException:
            if not detail.status.is_terminal:
                del self._trials[trial_id]
                self._metric_counts.pop(trial_id, None)
            raise
        finally:
            self._submitting -= 1
            if self._submitting == 0:
                self._submits_done.set()
        return _copy_detail(detail)

    async def reattach_trial_job(self, detail: TrialJobDetail, metrics_delivered: int = 0) -> TrialJobDetail:
        """Take over a trial started by an earlier run of the manager (resume).

        ``detail`` is the trial as it was persisted (with its ``platform_data``); ``metrics_delivered``
        is how many of its records the caller already has: the platform delivers only the ones after.
        If the trial is still running it is watched again; if it ended meanwhile, its remaining records
        and its terminal status are delivered. A trial the platform cannot find ends FAILED with
        ``infrastructure_failure=True``. Never re-runs the trial. Returns a copy of the detail.
        """
        self._require(ServiceState.RUNNING, call="reattach_trial_job")
        if detail.id in self._trials:
            raise TrialStateError(f"Trial {detail.id} is already known to this service.")
        detail = _copy_detail(detail)
        self._trials[detail.id] = detail
        self._metric_counts[detail.id] = metrics_delivered
        if detail.status.is_terminal:
            return _copy_detail(detail)
        try:
            await self._reattach(detail, metrics_delivered)
        except NotImplementedError:
            await self.reporter.ended(
                detail.id,
                TrialJobStatus.FAILED,
                message=f"The {self.platform_name} platform cannot re-attach to a running trial.",
                infrastructure_failure=True,
            )
        return _copy_detail(detail)

    async def update_trial_job(self, trial_job_id: str, form: TrialJobApplicationForm) -> TrialJobDetail:
        """Give a live trial new hyper-parameters (multi-phase). Most platforms do not support it."""
        self._require(ServiceState.RUNNING, call="update_trial_job")
        detail = self._get(trial_job_id)
        if detail.status.is_terminal:
            raise TrialStateError(f"Trial {trial_job_id} is {detail.status.value}; it cannot be updated.")
        await self._update(detail, form)
        detail.form = form
        return _copy_detail(detail)

    async def cancel_trial_job(self, trial_job_id: str, is_early_stopped: bool = False) -> None:
        """Stop a trial and everything it started. It ends USER_CANCELED, or EARLY_STOPPED.

        Cancelling a finished trial does nothing. Returns once no process of the trial is left.
        """
        self._require(ServiceState.RUNNING, call="cancel_trial_job")
        status = TrialJobStatus.EARLY_STOPPED if is_early_stopped else TrialJobStatus.USER_CANCELED
        await self._cancel_one(trial_job_id, status)

    async def _cancel_one(self, trial_job_id: str, status: TrialJobStatus) -> None:
        detail = self._get(trial_job_id)
        if detail.status.is_terminal:
            return
        if status is TrialJobStatus.EARLY_STOPPED:
            detail.is_early_stopped = True
        await self._cancel(detail, status)
        # The platform normally sets the status itself once the trial is gone; make sure it is final.
        if not detail.status.is_terminal:
            await self.reporter.ended(detail.id, status, message="Cancelled.")

    async def get_trial_file(self, trial_job_id: str, name: str = "stdout", *, tail: int | None = None) -> bytes:
        """The content of one of the trial's files: ``stdout``, ``stderr`` or ``trial.log``.

        ``tail`` limits the result to the last bytes. A file that does not exist yet is empty.
        """
        if name not in TRIAL_FILES:
            raise ValueError(f"Unknown trial file {name!r}; expected one of {', '.join(TRIAL_FILES)}.")
        detail = self._get(trial_job_id)
        return await self._read_trial_file(detail, name, tail)

    # ------------------------------------------------------------------ listeners

    def add_trial_job_metric_listener(self, listener: MetricListener) -> None:
        """Call ``listener(metric)`` (plain or ``async``) for every metric record from now on.

        A listener that raises refuses the record (see the module docstring); it must be idempotent
        on ``(metric.trial_job_id, metric.sequence)``.
        """
        self._listeners.append(listener)

    def remove_trial_job_metric_listener(self, listener: MetricListener) -> None:
        """Stop calling ``listener``. Removing a listener that was never added does nothing."""
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    # ------------------------------------------------------------------ for platforms

    def trial_dir(self, trial_job_id: str) -> Path:
        """The trial's directory on the manager's side."""
        return self.experiment_dir / "trials" / trial_job_id

    def trial_command(self, detail: TrialJobDetail) -> str:
        """The shell command the trial runs (see :func:`trial_shell_command`): the form's command or
        the config's ``trialCommand``, with the config's prepare command and arguments applied."""
        cfg = self.config
        return trial_shell_command(
            detail.form.command or cfg.trial_command or "",
            detail.form.parameters(),
            prepare=cfg.trial_prepare_command,
            as_args=cfg.hyperparameters_as_args,
        )

    def _get(self, trial_job_id: str) -> TrialJobDetail:
        try:
            return self._trials[trial_job_id]
        except KeyError:
            raise TrialNotFoundError(trial_job_id) from None

    def _set_status(
        self,
        trial_job_id: str,
        status: TrialJobStatus,
        *,
        message: str | None = None,
        exit_code: int | None = None,
        infrastructure_failure: bool = False,
        when: int | None = None,
        requeue: bool = False,
    ) -> bool:
        """Move a trial to ``status`` if the state machine allows it. Returns whether it moved.

        Private to the base class: platforms go through :attr:`reporter`, which orders a terminal
        status after the trial's metrics.
        """
        detail = self._get(trial_job_id)
        allowed = _ALLOWED.get(detail.status, frozenset())
        if requeue and detail.status in _REQUEUE_FROM:
            allowed = allowed | {TrialJobStatus.WAITING}
        if status not in allowed:
            if status is not detail.status:
                log.debug("Ignoring %s -> %s for trial %s.", detail.status, status, trial_job_id)
            return False
        timer = self._unknown_timers.pop(trial_job_id, None)
        if timer is not None:
            timer.cancel()
        stamp = when if when is not None else int(self.clock.wall() * 1000)
        detail.status = status
        if message is not None:
            detail.message = message
        if exit_code is not None:
            detail.exit_code = exit_code
        if status is TrialJobStatus.RUNNING and detail.start_time is None:
            detail.start_time = stamp
        if status.is_terminal:
            detail.end_time = stamp
            if detail.start_time is None and status is not TrialJobStatus.WAITING:
                detail.start_time = stamp
            detail.infrastructure_failure = infrastructure_failure
        if status is TrialJobStatus.UNKNOWN:
            self._unknown_timers[trial_job_id] = self.clock.call_later(
                self.unknown_timeout, self._unknown_expired, trial_job_id
            )
        self.events.emit("trial_status", _copy_detail(detail))
        return True

    def _unknown_expired(self, trial_job_id: str) -> None:
        self._unknown_timers.pop(trial_job_id, None)
        detail = self._trials.get(trial_job_id)
        if detail is None or detail.status is not TrialJobStatus.UNKNOWN or self.tasks.closed:
            return
        self.tasks.spawn(self._lost(detail), name=f"lost-{trial_job_id}")

    async def _lost(self, detail: TrialJobDetail) -> None:
        """Fail a trial that stayed UNKNOWN too long, then try to stop it for good."""
        message = f"Lost: no word from the trial for {self.unknown_timeout:g} s. {detail.message or ''}".strip()
        moved = await self.reporter.ended(
            detail.id, TrialJobStatus.FAILED, message=message, infrastructure_failure=True
        )
        if moved:
            await self._forget_lost(detail)

    async def _forget_lost(self, detail: TrialJobDetail) -> None:
        """Best effort to stop a lost trial for good once it has been failed. Platforms may override."""
        try:
            await self._cancel(detail, TrialJobStatus.FAILED)
        except Exception as exc:  # the host may be gone for good; the trial is already failed
            log.warning("Could not stop lost trial %s: %s", detail.id, exc)

    # ------------------------------------------------------------------ hooks

    async def _start(self) -> None:  # noqa: B027 - optional hook
        """Prepare the platform. Called once by :meth:`start`."""

    @abc.abstractmethod
    async def _submit(self, detail: TrialJobDetail) -> None:
        """Launch (or queue) the trial described by ``detail``. Report through ``self.reporter``."""

    async def _reattach(self, detail: TrialJobDetail, metrics_delivered: int) -> None:
        """Watch an adopted trial again; skip its first ``metrics_delivered`` records."""
        raise NotImplementedError

    async def _update(self, detail: TrialJobDetail, form: TrialJobApplicationForm) -> None:
        raise TrialStateError(f"The {self.platform_name} platform does not support updating a running trial.")

    @abc.abstractmethod
    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        """Stop the trial and all its processes, deliver its last metrics, then end it with ``status``."""

    @abc.abstractmethod
    async def _clean_up(self) -> None:
        """Release everything (after live trials have been cancelled). Runs whenever start() began."""

    async def _read_trial_file(self, detail: TrialJobDetail, name: str, tail: int | None) -> bytes:
        path = Path(detail.working_directory) / name
        return await asyncio.to_thread(_read_tail, path, tail)


def _read_tail(path: Path, tail: int | None) -> bytes:
    """The file's (last) bytes; empty if it is missing, a symlink or not a regular file (a trial that
    runs as another OS user owns its directory and could put a link to the manager's secrets there)."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        if tail is not None:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - tail))
        return fh.read()
