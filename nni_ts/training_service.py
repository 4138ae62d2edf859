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
       │           │  ▲
       └──────► UNKNOWN ┘   (temporary: back to RUNNING, or terminal after ``unknown_timeout``)

A trial reaches exactly one terminal status and never leaves it. UNKNOWN means the platform lost
sight of the trial (a host or keeper stopped answering). It never holds a slot forever: after
``unknown_timeout`` seconds the trial becomes FAILED with ``infrastructure_failure=True``, and a
trial in UNKNOWN can be cancelled at any time. ``clean_up`` ends every live trial as SYS_CANCELED.

Metric delivery
---------------
Each metric record a trial writes is delivered to every metric listener **exactly once, in the order
the trial wrote it, before that trial's terminal status event**. ``TrialJobMetric.data`` holds the
record's bytes as the trial's SDK wrote them (decoded as UTF-8). Listeners are plain callables,
called synchronously on the event loop in the order they were added; they must not block. An
exception raised by a listener is logged and does not stop delivery to the others.

Events
------
``service.events`` is a :class:`pyee.EventEmitter` with two events:
``"trial_status"`` (a :class:`~nni_ts.models.TrialJobDetail`, after each status change) and
``"metric"`` (a :class:`~nni_ts.models.TrialJobMetric`). Handlers run synchronously.

Concurrency
-----------
A service belongs to the event loop it was started on. Its methods are coroutine-safe (any number of
tasks may call them concurrently) but not thread-safe.

Writing a platform
------------------
Subclass, set ``platform_name`` and ``config_class``, and implement the private hooks
(``_start``, ``_submit``, ``_cancel``, ``_clean_up``, optionally ``_update``, ``_read_trial_file``).
Report progress with ``_set_status`` and ``_deliver_metric``. Then run the conformance kit in
:mod:`nni_ts.testing`. See ``docs/new-platform.md``.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
import secrets
import string
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import pydantic
from pyee import EventEmitter

from .config.base import TrainingServiceConfig
from .errors import ConfigError, InvalidStateError, TrialNotFoundError, TrialStateError
from .models import TrialJobApplicationForm, TrialJobDetail, TrialJobMetric, TrialJobStatus, now_ms

__all__ = ["MetricListener", "ServiceState", "TrainingService", "new_trial_id"]

log = logging.getLogger(__name__)

MetricListener = Callable[[TrialJobMetric], object]
ConfigT = TypeVar("ConfigT", bound=TrainingServiceConfig)

_ID_ALPHABET = string.ascii_letters + string.digits

_ALLOWED: dict[TrialJobStatus, frozenset[TrialJobStatus]] = {
    TrialJobStatus.WAITING: frozenset(TrialJobStatus) - {TrialJobStatus.WAITING},
    TrialJobStatus.RUNNING: frozenset(TrialJobStatus) - {TrialJobStatus.WAITING, TrialJobStatus.RUNNING},
    TrialJobStatus.UNKNOWN: frozenset(TrialJobStatus) - {TrialJobStatus.WAITING, TrialJobStatus.UNKNOWN},
}

TRIAL_FILES = ("stdout", "stderr", "trial.log")


def new_trial_id(length: int = 5) -> str:
    """A random trial id in NNI's style (letters and digits)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


class ServiceState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class TrainingService(abc.ABC, Generic[ConfigT]):
    """The asyncio contract every platform implements. See the module docstring for the rules."""

    #: The name under which the platform registers in the ``nni_ts.platforms`` entry-point group.
    platform_name: ClassVar[str] = ""
    #: The pydantic model of the platform's configuration.
    config_class: ClassVar[type[TrainingServiceConfig]] = TrainingServiceConfig

    #: Seconds a trial may stay UNKNOWN before it is failed as an infrastructure failure.
    unknown_timeout: float = 60.0

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
        self._state = ServiceState.CREATED
        self._trials: dict[str, TrialJobDetail] = {}
        self._metric_counts: dict[str, int] = {}
        self._listeners: list[MetricListener] = []
        self._metadata: dict[str, str] = {}
        self._unknown_timers: dict[str, asyncio.TimerHandle] = {}
        self._stopped = asyncio.Event()
        self._lock = asyncio.Lock()

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
        if self._state not in states:
            allowed = " or ".join(s.value.upper() for s in states)
            raise InvalidStateError(
                f"{type(self).__name__}.{call}() is valid only when the service is {allowed}; "
                f"it is {self._state.value.upper()}."
            )

    async def set_cluster_metadata(self, key: str, value: str) -> None:
        """Set one configuration key, NNI style. ``value`` is JSON text or a plain string.

        The key is a config field name (camelCase or snake_case); the value is validated by the same
        typed model as the constructor's config. Unknown keys raise :class:`ConfigError`.
        """
        self._require(ServiceState.CREATED, call="set_cluster_metadata")
        import json

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
        self._metadata[key] = value

    async def get_cluster_metadata(self, key: str) -> str:
        """The value of a configuration key, as JSON text."""
        import json

        fields = self.config_class.model_fields
        name = key if key in fields else next((n for n, f in fields.items() if f.alias == key), None)
        if name is None:
            raise ConfigError(f"unknown cluster metadata key {key!r}.")
        return json.dumps(self.config.model_dump(mode="json")[name])

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Prepare the platform (connections, watches, directories). Idempotent."""
        if self._state is ServiceState.RUNNING:
            return
        self._require(ServiceState.CREATED, call="start")
        self.experiment_dir.mkdir(parents=True, exist_ok=True)
        await self._start()
        self._state = ServiceState.RUNNING

    async def run(self) -> None:
        """Start the service if needed and return once :meth:`clean_up` has finished."""
        if self._state is ServiceState.CREATED:
            await self.start()
        await self._stopped.wait()

    async def clean_up(self) -> None:
        """Cancel every live trial (as SYS_CANCELED), release resources. Idempotent."""
        if self._state in (ServiceState.STOPPING, ServiceState.STOPPED):
            await self._stopped.wait()
            return
        was_running = self._state is ServiceState.RUNNING
        self._state = ServiceState.STOPPING
        try:
            if was_running:
                live = [t.id for t in self._trials.values() if not t.status.is_terminal]
                if live:
                    await asyncio.gather(*(self._cancel_one(tid, TrialJobStatus.SYS_CANCELED) for tid in live))
            await self._clean_up()
        finally:
            for timer in self._unknown_timers.values():
                timer.cancel()
            self._unknown_timers.clear()
            self._state = ServiceState.STOPPED
            self._stopped.set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.clean_up()

    # ------------------------------------------------------------------ trials

    async def list_trial_jobs(self) -> list[TrialJobDetail]:
        """Every trial this service knows, in submission order (copies)."""
        return [t.model_copy(deep=True) for t in self._trials.values()]

    async def get_trial_job(self, trial_job_id: str) -> TrialJobDetail:
        """One trial (a copy). Raises :class:`TrialNotFoundError`."""
        return self._get(trial_job_id).model_copy(deep=True)

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
        )
        self._trials[trial_id] = detail
        self._metric_counts[trial_id] = 0
        try:
            await self._submit(detail)
        except BaseException:
            if not detail.status.is_terminal:
                del self._trials[trial_id]
            raise
        return detail.model_copy(deep=True)

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
        detail = detail.model_copy(deep=True)
        self._adopt(detail, metrics_delivered)
        if detail.status.is_terminal:
            return detail.model_copy(deep=True)
        try:
            await self._reattach(detail, metrics_delivered)
        except NotImplementedError:
            self._set_status(
                detail.id,
                TrialJobStatus.FAILED,
                message=f"The {self.platform_name} platform cannot re-attach to a running trial.",
                infrastructure_failure=True,
            )
        return detail.model_copy(deep=True)

    async def update_trial_job(self, trial_job_id: str, form: TrialJobApplicationForm) -> TrialJobDetail:
        """Give a live trial new hyper-parameters (multi-phase). Most platforms do not support it."""
        self._require(ServiceState.RUNNING, call="update_trial_job")
        detail = self._get(trial_job_id)
        if detail.status.is_terminal:
            raise TrialStateError(f"Trial {trial_job_id} is {detail.status.value}; it cannot be updated.")
        await self._update(detail, form)
        detail.form = form
        return detail.model_copy(deep=True)

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
            self._set_status(detail.id, status, message="Cancelled.")

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
        """Call ``listener(metric)`` for every metric record from now on."""
        if asyncio.iscoroutinefunction(listener):
            raise TypeError("Metric listeners are called synchronously; pass a plain function.")
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

    def _get(self, trial_job_id: str) -> TrialJobDetail:
        try:
            return self._trials[trial_job_id]
        except KeyError:
            raise TrialNotFoundError(trial_job_id) from None

    def _adopt(self, detail: TrialJobDetail, metrics_delivered: int = 0) -> None:
        """Take over a trial that already exists (re-attach on resume)."""
        self._trials[detail.id] = detail
        self._metric_counts[detail.id] = metrics_delivered

    def _deliver_metric(self, trial_job_id: str, data: str) -> TrialJobMetric | None:
        """Hand one record to the listeners. Platforms call it in the trial's order, once per record.

        Returns None (and drops the record) if the trial has already ended, which would be a
        platform bug: the guarantee is that records come before the terminal status.
        """
        detail = self._trials.get(trial_job_id)
        if detail is None or detail.status.is_terminal:
            log.error("Dropping a metric for trial %s, which is finished or unknown.", trial_job_id)
            return None
        seq = self._metric_counts.get(trial_job_id, 0)
        self._metric_counts[trial_job_id] = seq + 1
        metric = TrialJobMetric(trial_job_id=trial_job_id, data=data, sequence=seq)
        for listener in list(self._listeners):
            try:
                listener(metric)
            except Exception:
                log.exception("A metric listener raised; delivery to the other listeners goes on.")
        self.events.emit("metric", metric)
        return metric

    def _set_status(
        self,
        trial_job_id: str,
        status: TrialJobStatus,
        *,
        message: str | None = None,
        exit_code: int | None = None,
        infrastructure_failure: bool = False,
        when: int | None = None,
    ) -> bool:
        """Move a trial to ``status`` if the state machine allows it. Returns whether it moved."""
        detail = self._get(trial_job_id)
        allowed = _ALLOWED.get(detail.status, frozenset())
        if status not in allowed:
            if status is not detail.status:
                log.debug("Ignoring %s -> %s for trial %s.", detail.status, status, trial_job_id)
            return False
        timer = self._unknown_timers.pop(trial_job_id, None)
        if timer is not None:
            timer.cancel()
        stamp = when if when is not None else now_ms()
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
            loop = asyncio.get_running_loop()
            self._unknown_timers[trial_job_id] = loop.call_later(
                self.unknown_timeout, self._unknown_expired, trial_job_id
            )
        self.events.emit("trial_status", detail.model_copy(deep=True))
        return True

    def _unknown_expired(self, trial_job_id: str) -> None:
        self._unknown_timers.pop(trial_job_id, None)
        detail = self._trials.get(trial_job_id)
        if detail is None or detail.status is not TrialJobStatus.UNKNOWN:
            return
        self._set_status(
            trial_job_id,
            TrialJobStatus.FAILED,
            message=f"Lost: no word from the trial for {self.unknown_timeout:g} s. {detail.message or ''}".strip(),
            infrastructure_failure=True,
        )
        task = asyncio.get_running_loop().create_task(
            self._forget_lost(detail), name=f"nni-ts-forget-lost-{trial_job_id}"
        )
        task.add_done_callback(_log_task_error)

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
        """Launch (or queue) the trial described by ``detail``. Status changes go through ``_set_status``."""

    async def _reattach(self, detail: TrialJobDetail, metrics_delivered: int) -> None:
        """Watch an adopted trial again; skip its first ``metrics_delivered`` records."""
        raise NotImplementedError

    async def _update(self, detail: TrialJobDetail, form: TrialJobApplicationForm) -> None:
        raise TrialStateError(f"The {self.platform_name} platform does not support updating a running trial.")

    @abc.abstractmethod
    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        """Stop the trial and all its processes, deliver its last metrics, then set ``status``."""

    @abc.abstractmethod
    async def _clean_up(self) -> None:
        """Release everything (after live trials have been cancelled)."""

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


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Background task %s failed.", task.get_name(), exc_info=task.exception())
