"""The local platform: every trial is a process group on this machine.

How a trial runs
----------------
* Its directory is ``<experiment dir>/trials/<id>/`` (``NNI_SYS_DIR`` and ``NNI_OUTPUT_DIR``), with
  ``parameter.cfg`` written before launch, ``stdout`` and ``stderr`` files, and ``.nni/``.
* It is started as ``/bin/sh -c`` with the trial command, in its own session and process group, with
  the working directory set to the trial code directory. A three-line wrapper records the command's
  exit code in ``.nni/code``, so that a restarted manager learns how a trial it did not start ended.
* Preparing its directory and starting its process are system-call heavy (metadata writes,
  ``fork``/``exec``): the local services of one event loop queue them on one *starter* that runs one
  start per turn of the loop, in submission order, so that the records and events that arrive during a
  burst of starts are handled between two of them instead of after all (a burst of 20 starts held the
  loop 60-100 ms). A thread of its own was measured too: it kept the loop free but, as a third thread
  competing for the GIL, made the service's API answers slower. The submission returns once the trial
  runs (or failed to start).
* ``NNI_PLATFORM=local``: NNI's SDK, and the light ``nni`` module, append records to
  ``.nni/metrics``. The service learns of each append through inotify (a poll elsewhere) and delivers
  the record's bytes to the listeners, in order, before the terminal status.
* No pipe connects the trial to the manager: a manager that dies leaves its trials running and
  ``reattach_trial_job`` takes them over (the pid is checked with its start time).

Cancel sends SIGTERM to the process group, waits ``cancelGracePeriod`` seconds, then SIGKILLs it.
When a trial's main process ends, what is left of its process group is killed too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import trial_keeper
from trial_keeper.records import FrameDecoder, FramingError

from ..config.local import LocalConfig
from ..errors import ConfigError, MetricRefused, PlatformError
from ..models import TrialJobDetail, TrialJobStatus
from ..processes import create_time, exit_message, group_alive, killpg, wait_pid
from ..training_service import TrainingService, parameters_as_args
from ._inotify import DirWatcher
from .gpu import GpuScheduler, query_local_gpus

__all__ = ["LocalTrainingService", "TrialIdentity", "build_trial_env", "parameters_as_args"]

log = logging.getLogger(__name__)

# $1 is the user's command (with the prepare command before it). The exit code goes to .nni/code.
_WRAPPER = 'eval "$1"\nrc=$?\necho "$rc" > "$NNI_SYS_DIR/.nni/code"\nexit "$rc"\n'


@dataclass(frozen=True)
class TrialIdentity:
    """Who trials run as, and the environment they start from (the experiment service's ``--trial-user``).

    Trials then never run with the manager's privileges: the process gets ``uid``/``gid``/``groups``
    and ``umask`` (the manager must be root or hold CAP_SETUID/CAP_SETGID), its trial directory is
    handed to ``uid``, and its environment is ``env`` (an allow-list built by the caller) plus NNI's
    variables, never a copy of the manager's."""

    env: dict[str, str] = field(default_factory=dict)
    uid: int | None = None  # None: the manager's own user (only the environment is replaced)
    gid: int | None = None
    groups: tuple[int, ...] = ()
    umask: int = 0o077


#: Bytes read from a metrics file at a time.
_READ_SIZE = 1 << 16

#: Back-off, in seconds, between attempts to deliver a record that a listener refused.
_REFUSED_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass
class _Run:
    """What the service tracks of one live trial."""

    detail: TrialJobDetail
    pid: int = 0
    popen: subprocess.Popen[bytes] | None = None
    gpus: list[int] = field(default_factory=list)
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    metrics_fd: int = -1  # the metrics file, open for reading once it exists
    skip: int = 0  # records already delivered before a re-attach
    pending: deque[str] = field(default_factory=deque)  # read from the file, not yet accepted
    cancel_status: TrialJobStatus | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # the metrics file grew, or the process ended
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    # Starting it (see LocalTrainingService._launch): the starter prepares its directory and
    # starts its process; ``settled`` is set once it runs, failed to start or was cancelled before.
    launched: bool = False
    prepared: bool = False
    prepare_error: OSError | None = None
    start_error: BaseException | None = None
    abandoned: bool = False  # its submission was cancelled: a process started for it is killed
    settled: asyncio.Event = field(default_factory=asyncio.Event)


class _PrepareFailed(Exception):
    """The trial's directory or parameter file could not be written (raised by the submission)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _LoopStarter:
    """Runs the start jobs of every local service on one event loop, one job every third turn of the
    loop: after one ran, the I/O that arrived meanwhile (a trial's record, a database reply) is
    handled, and what it woke up runs, before the next. No task: nothing to cancel or to own."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.jobs: deque[tuple[asyncio.Future[Any], Any, tuple[Any, ...]]] = deque()
        self.scheduled = False

    def submit(self, fn: Any, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        self.jobs.append((future, fn, args))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._run_one)
        return future

    def _run_one(self) -> None:
        future, fn, args = self.jobs.popleft()
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the job's future
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)
        if self.jobs:
            # The next one after the I/O that arrived meanwhile, and after what that I/O woke up. A
            # start takes milliseconds; a database reply that arrived during it is read in the next
            # turn (its callback queued behind this one's), and the storage lane waiting for it runs in
            # the turn after: the next start comes in the turn after that (when it came in the next
            # turn, a lane's COMMIT waited for two starts).
            self.loop.call_soon(self._after_turns, 2)
        else:
            self.scheduled = False

    def _after_turns(self, turns: int) -> None:
        if turns:
            self.loop.call_soon(self._after_turns, turns - 1)
        else:
            self._run_one()


_STARTERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopStarter] = weakref.WeakKeyDictionary()


def _starter() -> _LoopStarter:
    loop = asyncio.get_running_loop()
    starter = _STARTERS.get(loop)
    if starter is None:
        starter = _STARTERS[loop] = _LoopStarter(loop)
    return starter


class _Abandoned(Exception):
    """The trial's submission was cancelled before its process started: it is not started."""


def build_trial_env(
    base: dict[str, str],
    *,
    platform: str,
    trial_id: str,
    experiment_id: str,
    sequence_id: int,
    sys_dir: str,
    output_dir: str,
    code_dir: str,
    gpus: list[int],
) -> dict[str, str]:
    """The environment NNI's trial SDK expects (see docs/architecture.md), plus the light nni path."""
    env = dict(base)
    env.update(
        NNI_PLATFORM=platform,
        NNI_SYS_DIR=sys_dir,
        NNI_OUTPUT_DIR=output_dir,
        NNI_TRIAL_JOB_ID=trial_id,
        NNI_EXP_ID=experiment_id,
        NNI_TRIAL_SEQ_ID=str(sequence_id),
        NNI_CODE_DIR=code_dir,
        MULTI_PHASE="false",
        CUDA_VISIBLE_DEVICES=",".join(str(g) for g in gpus),
    )
    env.pop("NNI_TRIAL_COMMAND_CHANNEL", None)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = trial_keeper.LIGHT_NNI_PATH + (os.pathsep + path if path else "")
    return env


class LocalTrainingService(TrainingService[LocalConfig]):
    """Runs trials as local process groups. See the module docstring."""

    platform_name: ClassVar[str] = "local"
    config_class: ClassVar[type[LocalConfig]] = LocalConfig

    def __init__(
        self,
        config: LocalConfig | dict[str, Any] | None = None,
        *,
        identity: TrialIdentity | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self.identity = identity
        self._runs: dict[str, _Run] = {}
        self._queue: deque[_Run] = deque()
        self._watcher = DirWatcher()
        self._gpu: GpuScheduler | None = None
        self._base_env: dict[str, str] = {}
        self._code_dir = ""
        self._jobs: set[asyncio.Future[Any]] = set()  # this service's jobs on the starter

    # ------------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        cfg = self.config
        code_dir = Path(cfg.trial_code_directory).expanduser().resolve()
        if not code_dir.is_dir():
            raise ConfigError(
                f"the trial code directory {str(code_dir)!r} does not exist or is not a directory.",
                path="trialCodeDirectory",
            )
        self._code_dir = str(code_dir)
        self._base_env = dict(os.environ) if self.identity is None else dict(self.identity.env)
        if cfg.trial_gpu_number > 0 or cfg.gpu_indices is not None:
            gpus = await query_local_gpus()
            self._gpu = GpuScheduler(
                gpus,
                gpu_indices=cfg.gpu_indices,
                max_trials_per_gpu=cfg.max_trial_number_per_gpu,
                use_active_gpu=cfg.use_active_gpu,
            )
            if cfg.trial_gpu_number > self._gpu.capacity():
                raise ConfigError(
                    f"trials need {cfg.trial_gpu_number} GPU(s) but only {self._gpu.capacity()} usable GPU(s) "
                    "were found (nvidia-smi, gpuIndices and useActiveGpu decide which).",
                    path="trialGpuNumber",
                )
        self._watcher.start()

    async def _clean_up(self) -> None:
        self._queue.clear()
        self._watcher.close()
        if self._jobs:
            # A start still under way finishes, and its process is killed (see _process_started).
            await asyncio.wait(list(self._jobs))

    # ------------------------------------------------------------------ submit

    async def _submit(self, detail: TrialJobDetail) -> None:
        if self.config.trial_command is None and detail.form.command is None:
            raise ConfigError("no trial command is configured.", path="trialCommand")
        gpu_number = detail.form.gpu_number
        if gpu_number is None:
            gpu_number = self.config.trial_gpu_number
        if gpu_number > 0 and (self._gpu is None or gpu_number > self._gpu.capacity()):
            capacity = 0 if self._gpu is None else self._gpu.capacity()
            raise ConfigError(f"a trial asks for {gpu_number} GPU(s) but this machine has {capacity} usable.")
        run = _Run(detail)
        self._runs[detail.id] = run
        self._queue.append(run)  # now, so that trials start in submission order
        try:
            self._launch_queued()  # its one starter job prepares and starts it, if it can start now
            if not run.launched:
                # It waits for a GPU: its directory and parameter file are written now (an error is the
                # caller's), by the starter, which writes them before it starts the trial.
                try:
                    await _shielded(self._on_starter(self._prepare_files, run))
                except OSError as exc:
                    run.start_error = exc
            if run.launched:
                await run.settled.wait()
        except BaseException:
            # Cancelled (the caller gave up): the trial is forgotten; a process started for it is killed.
            run.abandoned = True
            if not run.launched:
                self._forget(run)
            raise
        if run.start_error is not None and run.cancel_status is None:  # (cancelled meanwhile: it has ended)
            self._forget(run)
            raise run.start_error

    def _gpu_need(self, run: _Run) -> int:
        n = run.detail.form.gpu_number
        return self.config.trial_gpu_number if n is None else n

    def _on_starter(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` on the loop's starter (one job per turn of the loop, in call order)."""
        job = _starter().submit(fn, args)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    def _launch_queued(self) -> None:
        while self._queue:
            run = self._queue[0]
            need = self._gpu_need(run)
            if need > 0:
                assert self._gpu is not None
                gpus = self._gpu.try_assign(run.detail.id, need)
                if gpus is None:
                    return  # wait until a trial releases a GPU
                run.gpus = gpus
            self._queue.popleft()
            self._launch(run)

    def _launch(self, run: _Run) -> None:
        """Start the trial on the starter; :meth:`_process_started` takes over when it ran."""
        env = build_trial_env(
            self._base_env,
            platform="local",
            trial_id=run.detail.id,
            experiment_id=self.experiment_id,
            sequence_id=run.detail.sequence_id,
            sys_dir=run.detail.working_directory,
            output_dir=run.detail.working_directory,
            code_dir=self._code_dir,
            gpus=run.gpus,
        )
        env.update(run.detail.form.env)
        job = self._on_starter(self._start_process, run, env, self.trial_command(run.detail))
        run.launched = True
        job.add_done_callback(lambda done: self._process_started(run, done))

    def _forget(self, run: _Run) -> None:
        """The trial will not run: release what it holds and wake whoever waits for it."""
        self._release(run)
        if run in self._queue:
            self._queue.remove(run)
        if self._runs.get(run.detail.id) is run:
            del self._runs[run.detail.id]
        run.done.set()
        run.settled.set()

    # ------------------------------------------------------------------ the starter's jobs

    def _prepare_files(self, run: _Run) -> None:
        """The trial's directory, ``.nni/`` and ``parameter.cfg`` (a starter job)."""
        if run.prepared:
            return
        if run.prepare_error is not None:
            raise run.prepare_error
        detail = run.detail
        try:
            try:
                _make_dir(detail.working_directory)
            except FileNotFoundError:  # the first trial: <experiment dir>/trials/ is made too
                os.makedirs(os.path.dirname(detail.working_directory), exist_ok=True)
                _make_dir(detail.working_directory)
            _make_dir(os.path.join(detail.working_directory, ".nni"))
            Path(detail.working_directory, "parameter.cfg").write_text(
                detail.form.hyper_parameters.value, encoding="utf-8"
            )
        except OSError as exc:
            run.prepare_error = exc
            raise
        run.prepared = True

    def _start_process(
        self, run: _Run, env: dict[str, str], command: str
    ) -> tuple[subprocess.Popen[bytes], float | None]:
        """Prepare the trial's files (unless done) and start its process group (a starter job)."""
        try:
            self._prepare_files(run)
        except OSError as exc:
            raise _PrepareFailed(exc) from exc
        if run.abandoned:
            raise _Abandoned
        trial_dir = run.detail.working_directory
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        out = os.open(os.path.join(trial_dir, "stdout"), flags, 0o644)
        try:
            err = os.open(os.path.join(trial_dir, "stderr"), flags, 0o644)
        except BaseException:
            os.close(out)
            raise
        ident = self.identity
        as_user: dict[str, Any] = {}
        try:
            if ident is not None and ident.uid is not None:
                for path in (trial_dir, os.path.join(trial_dir, ".nni")):
                    os.chown(path, ident.uid, -1 if ident.gid is None else ident.gid, follow_symlinks=False)
                    os.chmod(path, 0o700, follow_symlinks=False)
                as_user = {
                    "user": ident.uid,
                    "group": ident.gid,
                    "extra_groups": list(ident.groups),
                    "umask": ident.umask,
                }
            popen = subprocess.Popen(
                ["/bin/sh", "-c", _WRAPPER, "nni-ts-trial", command],
                cwd=self._code_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                **as_user,
            )
        finally:
            os.close(out)
            os.close(err)
        return popen, create_time(popen.pid)

    # ------------------------------------------------------------------ back on the loop

    def _process_started(self, run: _Run, job: asyncio.Future[tuple[subprocess.Popen[bytes], float | None]]) -> None:
        """The starter started the trial (or failed to): report it (in start order)."""
        detail = run.detail
        exc = job.exception()
        if exc is None:
            popen, started_at = job.result()
            run.popen = popen
            run.pid = popen.pid
            if run.abandoned or self.tasks.closed:  # nobody will watch it: it must not outlive this
                killpg(popen.pid, signal.SIGKILL)
                threading.Thread(target=popen.wait, name=f"nni-ts-reap-{popen.pid}", daemon=True).start()
                self._forget(run)
                return
            self.reporter.note(
                detail.id,
                host="localhost",
                url=f"file://{detail.working_directory}",
                platform_data={"pid": popen.pid, "create_time": started_at, "gpus": run.gpus},
            )
            self._watch(run, alive=True)
            self.reporter.running(detail.id)
            run.settled.set()
            return
        self._forget(run)
        if isinstance(exc, _PrepareFailed):
            run.start_error = exc.error  # the submission raises it, as a failed preparation always did
            return
        if isinstance(exc, _Abandoned) or run.abandoned:
            return
        if not isinstance(exc, OSError):
            log.error("Starting trial %s failed.", detail.id, exc_info=exc)
        if self.tasks.closed:
            return
        self.tasks.spawn(
            self.reporter.ended(
                detail.id,
                TrialJobStatus.FAILED,
                message=f"The trial could not be started: {exc}.",
                infrastructure_failure=True,
            ),
            name=f"failed-start-{detail.id}",
        )

    def _watch(self, run: _Run, *, alive: bool) -> None:
        """Follow the trial's metrics file and (if ``alive``) wait for its main process to end."""
        nni_dir = os.path.join(run.detail.working_directory, ".nni")
        if alive:
            self._watcher.watch(run.detail.id, nni_dir, self._on_files_changed)
            self.tasks.spawn(self._wait_exit(run), name=f"wait-{run.detail.id}")
        else:
            run.exited.set()
        self.tasks.spawn(self._follow(run), name=f"follow-{run.detail.id}")

    # ------------------------------------------------------------------ metrics

    def _on_files_changed(self, trial_id: str) -> None:
        run = self._runs.get(trial_id)
        if run is not None:
            run.wake.set()

    def _read_metrics(self, run: _Run) -> None:
        """Move the records appended to the metrics file since the last read into ``run.pending``."""
        if run.metrics_fd < 0:
            try:
                path = os.path.join(run.detail.working_directory, ".nni", "metrics")
                run.metrics_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:  # missing yet, or a symlink in its place (ELOOP): never followed
                return
        # One read(2) per wake-up as a rule (a short read is the end of the file): every system call
        # on the loop's thread gives the GIL away and waits to get it back. What is appended after
        # the read wakes the trial's task again.
        data = chunk = os.read(run.metrics_fd, _READ_SIZE)
        while len(chunk) == _READ_SIZE:
            chunk = os.read(run.metrics_fd, _READ_SIZE)
            data += chunk
        if not data:
            return
        try:
            records = run.decoder.feed(data)
        except FramingError as exc:
            log.error("Trial %s wrote a malformed metrics file: %s", run.detail.id, exc)
            return
        for record in records:
            if run.skip > 0:
                run.skip -= 1
                continue
            # Invalid UTF-8 becomes U+FFFD, as the keeper does: a record no store can encode would
            # otherwise be refused, and delivered again, forever.
            run.pending.append(record.decode("utf-8", errors="replace"))

    async def _deliver_pending(self, run: _Run) -> None:
        """Deliver ``run.pending`` in order; a refused record is retried with back-off (it stays first)."""
        refusals = 0
        while run.pending:
            try:
                await self.reporter.metric(run.detail.id, run.pending[0])
            except MetricRefused as exc:
                delay = _REFUSED_BACKOFF[min(refusals, len(_REFUSED_BACKOFF) - 1)]
                refusals += 1
                log.warning("%s Retrying in %.2g s.", exc, delay)
                await asyncio.sleep(delay)
                continue
            refusals = 0
            run.pending.popleft()

    async def _follow(self, run: _Run) -> None:
        """The trial's one task for metrics and its end: deliver records as they are appended; once
        the process has exited, deliver the rest, then the terminal status."""
        try:
            while True:
                run.wake.clear()
                self._read_metrics(run)
                await self._deliver_pending(run)
                if run.exited.is_set():
                    break
                await run.wake.wait()
            self._read_metrics(run)
            await self._deliver_pending(run)
        finally:  # (cancelled at clean-up, too: a descriptor is not left open)
            if run.metrics_fd >= 0:
                os.close(run.metrics_fd)
                run.metrics_fd = -1
        if run.decoder.pending:
            log.warning("Trial %s left an incomplete record in its metrics file.", run.detail.id)
        self._watcher.unwatch(run.detail.id)
        self._release(run)
        code = run.exit_code
        if run.cancel_status is not None:
            await self.reporter.ended(run.detail.id, run.cancel_status, message="Cancelled.", exit_code=code)
        elif code == 0:
            await self.reporter.ended(run.detail.id, TrialJobStatus.SUCCEEDED, exit_code=0)
        elif code is None and run.popen is None:
            await self.reporter.ended(
                run.detail.id,
                TrialJobStatus.FAILED,
                message="The trial was not running any more and left no exit status.",
                infrastructure_failure=True,
            )
        else:
            await self.reporter.ended(run.detail.id, TrialJobStatus.FAILED, message=exit_message(code), exit_code=code)
        run.done.set()
        self._runs.pop(run.detail.id, None)
        self._launch_queued()

    # ------------------------------------------------------------------ exit

    async def _wait_exit(self, run: _Run) -> None:
        code = await wait_pid(run.popen, run.pid)
        killpg(run.pid, signal.SIGKILL)  # what is left of its process group
        if code is None:
            code = _read_exit_code(run.detail.working_directory)
        run.exit_code = code
        run.exited.set()
        run.wake.set()

    def _release(self, run: _Run) -> None:
        if self._gpu is not None:
            self._gpu.release(run.detail.id)

    # ------------------------------------------------------------------ cancel

    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        run = self._runs.get(detail.id)
        if run is None:
            return
        run.cancel_status = status
        if run in self._queue:  # never started
            self._forget(run)
            await self.reporter.ended(detail.id, status, message="Cancelled before it started.")
            return
        if run.launched and not run.settled.is_set():  # queued on the starter: it runs first
            await run.settled.wait()
        if run.pid <= 0:  # it could not start (and has ended already)
            return
        killpg(run.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(self.config.cancel_grace_period):
                await run.exited.wait()
        except TimeoutError:
            killpg(run.pid, signal.SIGKILL)
        try:
            async with asyncio.timeout(10):
                await run.done.wait()
        except TimeoutError as exc:
            raise PlatformError(f"Trial {detail.id} (pid {run.pid}) did not stop within 10 s of SIGKILL.") from exc
        # Wait until nothing of the process group is left (bounded).
        for _ in range(200):
            if not group_alive(run.pid):
                break
            killpg(run.pid, signal.SIGKILL)
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ resume

    async def _reattach(self, detail: TrialJobDetail, metrics_delivered: int) -> None:
        data = detail.platform_data
        pid = int(data.get("pid", 0))
        run = _Run(detail, pid=pid, gpus=list(data.get("gpus", [])), skip=metrics_delivered)
        if self._gpu is not None and run.gpus:
            self._gpu.assign_exact(detail.id, run.gpus)
        alive = pid > 0 and create_time(pid) == data.get("create_time")
        nni_dir = os.path.join(detail.working_directory, ".nni")
        if alive:
            self._runs[detail.id] = run
            if detail.status is TrialJobStatus.WAITING:
                self.reporter.running(detail.id)
            self._watch(run, alive=True)
        elif os.path.isdir(nni_dir) and pid > 0:
            # It ended while no manager watched: its records and its exit code are in its directory.
            self._runs[detail.id] = run
            run.exit_code = _read_exit_code(detail.working_directory)
            self._watch(run, alive=False)
        else:
            self._release(run)
            await self.reporter.ended(
                detail.id,
                TrialJobStatus.FAILED,
                message="The trial was not running any more and left no exit status.",
                infrastructure_failure=True,
            )


def _make_dir(path: str) -> None:
    """``mkdir``; a directory already there is fine (one system call where pathlib's made up to three)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


async def _shielded(job: asyncio.Future[Any]) -> Any:
    """Wait for a starter job without cancelling it if the waiter is cancelled (it runs anyway)."""
    return await asyncio.shield(job)


def _read_exit_code(trial_dir: str) -> int | None:
    try:
        text = Path(trial_dir, ".nni", "code").read_text().strip()
        return int(text)
    except (FileNotFoundError, ValueError):
        return None
