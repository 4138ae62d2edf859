"""The conformance kit: one pytest suite that every TrainingService must pass, ours and third parties'.

Use it by subclassing :class:`TrainingServiceConformance` in a test module and providing the
``service_factory`` fixture::

    import pytest
    from nni_ts.testing.conformance import TrainingServiceConformance

    class TestMyPlatform(TrainingServiceConformance):
        @pytest.fixture
        def service_factory(self, tmp_path):
            def make(code_dir, command, **overrides):
                config = {"trialCommand": command, "trialCodeDirectory": str(code_dir), **overrides}
                return MyTrainingService(config, experiment_dir=tmp_path / "exp")
            return make

``make`` returns a service that is not started yet; the kit starts it with ``async with``. Trials
are Python scripts the kit writes into ``code_dir``; they run with ``python3`` and the trial SDK the
platform provides (the light ``nni`` module or the real one). The kit finds the trials' processes
through pid files under a directory the tests create, so the platform's trials must run on this
machine (true of every platform tested against local fakes: sshd on loopback, the fake cluster).

Class attributes tune the kit for slow platforms: ``timeout`` (seconds for one trial to finish)
and ``concurrency`` (trials run at once in the concurrency test). Two say what the platform can do,
and the kit checks the promised behaviour either way (never skips): ``supports_reattach`` (a
restarted manager takes over a trial with ``reattach_trial_job``; without it, the trial ends FAILED
as an infrastructure failure) and ``supports_update`` (``update_trial_job`` on a running trial;
without it, :class:`~nni_ts.errors.TrialStateError`). ``processes = False`` is for a platform that
runs no process at all (the in-memory :class:`~nni_ts.testing.FakeTrainingService`, with
:func:`kit_script`): the kit then checks statuses, metrics and files, not pid files.

``make`` must return services that share their experiment directory (the re-attach test builds a
second service, as a restarted manager would).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shlex
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from ..errors import InvalidStateError, TrialNotFoundError, TrialStateError
from ..models import HyperParameters, TrialJobApplicationForm, TrialJobDetail, TrialJobMetric, TrialJobStatus
from ..training_service import TrainingService
from .fake import FakeTrial, ScriptedTrial

__all__ = ["TrainingServiceConformance", "form", "kit_script", "wait_for_status"]

KIT_TRIAL = textwrap.dedent(
    r"""
    import json, os, subprocess, sys, time
    import nni

    params = nni.get_next_parameter()
    mode = params.get("mode", "ok")
    pid_dir = params.get("pid_dir")
    if pid_dir:
        with open(os.path.join(pid_dir, "%s.pid" % nni.get_trial_id()), "w") as fh:
            fh.write(str(os.getpid()))
            if mode == "sleep":
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
                fh.write(" %d" % child.pid)
    if mode == "ok":
        for i in range(params.get("n", 5)):
            nni.report_intermediate_result({"default": i / 10, "step": i, "text": "it's \"q\" é"})
        nni.report_final_result(params.get("final", 0.5))
    elif mode == "nan":
        nni.report_intermediate_result(float("nan"))
        nni.report_final_result(float("inf"))
    elif mode == "fail":
        nni.report_intermediate_result(1.0)
        sys.stderr.write("failing on purpose\n")
        sys.exit(params.get("code", 3))
    elif mode == "sleep":
        nni.report_intermediate_result(0.0)
        time.sleep(params.get("seconds", 300))
        nni.report_final_result(1.0)
    elif mode == "spam":
        block = "x" * 1023 + "\n"
        for _ in range(params.get("kib", 2048)):
            sys.stdout.write(block)
        sys.stdout.flush()
        nni.report_final_result(1.0)
    elif mode == "echo":
        nni.report_final_result({"default": 1.0, "params": params, "argv": sys.argv[1:]})
    runs = params.get("runs_file")
    if runs:
        with open(runs, "a") as fh:
            fh.write(nni.get_trial_id() + "\n")
    """
)


def kit_script(trial: FakeTrial) -> ScriptedTrial:
    """What ``python3 kit_trial.py`` (KIT_TRIAL) does, as a :class:`~nni_ts.testing.FakeTrainingService`
    script: the same records, output and exit code, and no process. Any other command is refused."""
    if trial.argv[:2] != ["python3", "kit_trial.py"]:
        raise ValueError(f"the fake platform runs only the kit's trial, not {shlex.join(trial.argv)!r}")
    p = trial.parameters
    if p.get("runs_file"):  # the kit trial notes each run (at its end; here when it starts)
        with open(p["runs_file"], "a") as fh:
            fh.write(trial.id + "\n")
    mode = p.get("mode", "ok")
    if mode == "ok":
        steps = [{"default": i / 10, "step": i, "text": 'it\'s "q" é'} for i in range(p.get("n", 5))]
        return ScriptedTrial(intermediate=steps, final=p.get("final", 0.5))
    if mode == "nan":
        return ScriptedTrial(intermediate=[math.nan], final=math.inf)
    if mode == "fail":
        return ScriptedTrial(intermediate=[1.0], exit_code=p.get("code", 3), stderr="failing on purpose\n")
    if mode == "sleep":
        return ScriptedTrial(intermediate=[0.0], final=1.0, duration=p.get("seconds", 300))
    if mode == "spam":
        return ScriptedTrial(stdout=("x" * 1023 + "\n") * p.get("kib", 2048), final=1.0)
    if mode == "echo":
        return ScriptedTrial(final={"default": 1.0, "params": p, "argv": trial.argv[2:]})
    raise ValueError(f"unknown kit trial mode {mode!r}")


def form(parameters: dict[str, Any], sequence_id: int = 0, parameter_id: int | None = None) -> TrialJobApplicationForm:
    """An application form for the given hyper-parameters, as the tuner loop would build it."""
    pid = sequence_id if parameter_id is None else parameter_id
    value = json.dumps(
        {"parameter_id": pid, "parameter_source": "algorithm", "parameters": parameters, "parameter_index": 0}
    )
    return TrialJobApplicationForm(sequence_id=sequence_id, hyper_parameters=HyperParameters(value=value))


async def wait_for_status(
    service: TrainingService[Any],
    trial_id: str,
    *,
    timeout: float,
    terminal: bool = True,
    status: TrialJobStatus | None = None,
) -> TrialJobDetail:
    """Wait (event-driven, bounded) until the trial is terminal, or has ``status``."""

    def reached(detail: TrialJobDetail) -> bool:
        if status is not None:
            return detail.status is status
        return detail.status.is_terminal if terminal else True

    loop = asyncio.get_running_loop()
    fut: asyncio.Future[TrialJobDetail] = loop.create_future()

    def on_status(detail: TrialJobDetail) -> None:
        if detail.id == trial_id and reached(detail) and not fut.done():
            fut.set_result(detail)

    service.events.on("trial_status", on_status)
    try:
        current = await service.get_trial_job(trial_id)
        if reached(current):
            return current
        async with asyncio.timeout(timeout):
            return await fut
    finally:
        service.events.remove_listener("trial_status", on_status)


def _pids(pid_dir: Path, trial_id: str) -> list[int]:
    path = pid_dir / f"{trial_id}.pid"
    try:
        return [int(p) for p in path.read_text().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def _wait_pids(pid_dir: Path, trial_id: str, count: int, timeout: float) -> list[int]:
    async with asyncio.timeout(timeout):
        while True:
            pids = _pids(pid_dir, trial_id)
            if len(pids) >= count:
                return pids
            await asyncio.sleep(0.02)


class _Recorder:
    """Records metrics and status events in one ordered log."""

    def __init__(self, service: TrainingService[Any]) -> None:
        self.log: list[tuple[str, str, Any]] = []
        self.metrics: list[TrialJobMetric] = []
        service.add_trial_job_metric_listener(self.on_metric)
        service.events.on("trial_status", self.on_status)

    def on_metric(self, metric: TrialJobMetric) -> None:
        self.metrics.append(metric)
        self.log.append(("metric", metric.trial_job_id, metric))

    def on_status(self, detail: TrialJobDetail) -> None:
        self.log.append(("status", detail.id, detail.status))

    def of(self, trial_id: str) -> list[TrialJobMetric]:
        return [m for m in self.metrics if m.trial_job_id == trial_id]


class TrainingServiceConformance:
    """The contract tests. Subclass and provide the ``service_factory`` fixture (see module docstring)."""

    timeout: float = 60.0
    concurrency: int = 50
    supports_reattach: bool = True
    supports_update: bool = False
    #: Whether the platform runs each trial as processes on this machine (the kit then checks they all end).
    processes: bool = True

    @pytest.fixture
    def service_factory(self) -> Callable[..., TrainingService[Any]]:
        raise NotImplementedError("Provide a service_factory fixture in your conformance test class.")

    @pytest.fixture
    def code_dir(self, tmp_path: Path) -> Path:
        code = tmp_path / "kit code"  # a space in the path, on purpose
        code.mkdir()
        (code / "kit_trial.py").write_text(KIT_TRIAL, encoding="utf-8")
        return code

    @pytest.fixture
    def pid_dir(self, tmp_path: Path) -> Path:
        d = tmp_path / "pids"
        d.mkdir()
        return d

    @pytest.fixture
    async def service(
        self, service_factory: Callable[..., TrainingService[Any]], code_dir: Path
    ) -> AsyncIterator[TrainingService[Any]]:
        svc = service_factory(code_dir, "python3 kit_trial.py")
        async with svc:
            yield svc

    # ------------------------------------------------------------------ the tests

    async def test_succeeds_with_metrics_exactly_once_in_order(self, service: TrainingService[Any]) -> None:
        rec = _Recorder(service)
        detail = await service.submit_trial_job(form({"mode": "ok", "n": 5, "final": 0.75}))
        assert detail.status in (TrialJobStatus.WAITING, TrialJobStatus.RUNNING)
        done = await wait_for_status(service, detail.id, timeout=self.timeout)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        assert done.exit_code == 0
        assert done.start_time is not None and done.end_time is not None
        assert done.submit_time <= done.start_time <= done.end_time
        records = [json.loads(m.data) for m in rec.of(detail.id)]
        assert [r["type"] for r in records] == ["PERIODICAL"] * 5 + ["FINAL"]
        assert [r["sequence"] for r in records] == [0, 1, 2, 3, 4, 0]
        assert [m.sequence for m in rec.of(detail.id)] == list(range(6))
        assert all(r["trial_job_id"] == detail.id for r in records)
        first = json.loads(records[0]["value"])
        assert first == {"default": 0.0, "step": 0, "text": 'it\'s "q" é'}
        assert json.loads(records[-1]["value"]) == 0.75
        # Every record arrives before the terminal status event.
        kinds = [k for k, tid, _ in rec.log if tid == detail.id]
        last_metric = max(i for i, k in enumerate(kinds) if k == "metric")
        terminal = [
            i
            for i, (k, tid, v) in enumerate(e for e in rec.log if e[1] == detail.id)
            if k == "status" and v.is_terminal
        ]
        assert len(terminal) == 1 and terminal[0] > last_metric

    async def test_nan_and_infinity_are_kept(self, service: TrainingService[Any]) -> None:
        rec = _Recorder(service)
        detail = await service.submit_trial_job(form({"mode": "nan"}))
        done = await wait_for_status(service, detail.id, timeout=self.timeout)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        values = [json.loads(json.loads(m.data)["value"]) for m in rec.of(detail.id)]
        assert math.isnan(values[0]) and values[1] == math.inf

    async def test_failing_command(self, service: TrainingService[Any]) -> None:
        rec = _Recorder(service)
        detail = await service.submit_trial_job(form({"mode": "fail", "code": 3}))
        done = await wait_for_status(service, detail.id, timeout=self.timeout)
        assert done.status is TrialJobStatus.FAILED
        assert done.exit_code == 3
        assert done.message and "3" in done.message
        assert not done.infrastructure_failure
        assert len(rec.of(detail.id)) == 1
        assert b"failing on purpose" in await service.get_trial_file(detail.id, "stderr")

    async def _trial_pids(self, service: TrainingService[Any], pid_dir: Path, trial_id: str) -> list[int]:
        """The trial's processes (its own and a child), once it runs them; none on a process-less platform."""
        if self.processes:
            return await _wait_pids(pid_dir, trial_id, 2, self.timeout)
        await wait_for_status(service, trial_id, timeout=self.timeout, status=TrialJobStatus.RUNNING)
        return []

    async def test_cancel_leaves_no_process(self, service: TrainingService[Any], pid_dir: Path) -> None:
        detail = await service.submit_trial_job(form({"mode": "sleep", "pid_dir": str(pid_dir)}))
        pids = await self._trial_pids(service, pid_dir, detail.id)
        await wait_for_status(service, detail.id, timeout=self.timeout, status=TrialJobStatus.RUNNING)
        await service.cancel_trial_job(detail.id)
        done = await wait_for_status(service, detail.id, timeout=self.timeout)
        assert done.status is TrialJobStatus.USER_CANCELED
        assert not done.is_early_stopped
        assert [p for p in pids if _alive(p)] == []
        # Cancelling again, or cancelling a finished trial, does nothing.
        await service.cancel_trial_job(detail.id)
        assert (await service.get_trial_job(detail.id)).status is TrialJobStatus.USER_CANCELED

    async def test_early_stop(self, service: TrainingService[Any], pid_dir: Path) -> None:
        detail = await service.submit_trial_job(form({"mode": "sleep", "pid_dir": str(pid_dir)}))
        pids = await self._trial_pids(service, pid_dir, detail.id)
        await service.cancel_trial_job(detail.id, is_early_stopped=True)
        done = await wait_for_status(service, detail.id, timeout=self.timeout)
        assert done.status is TrialJobStatus.EARLY_STOPPED
        assert done.is_early_stopped
        assert [p for p in pids if _alive(p)] == []

    async def test_list_and_get_agree(self, service: TrainingService[Any]) -> None:
        ids = [(await service.submit_trial_job(form({"mode": "ok", "n": 1}, i))).id for i in range(3)]
        for tid in ids:
            await wait_for_status(service, tid, timeout=self.timeout)
        listed = {t.id: t for t in await service.list_trial_jobs()}
        assert set(ids) <= set(listed)
        for tid in ids:
            got = await service.get_trial_job(tid)
            assert got == listed[tid]
            assert got.sequence_id == ids.index(tid)
        with pytest.raises(TrialNotFoundError):
            await service.get_trial_job("no-such-trial")
        with pytest.raises(TrialNotFoundError):
            await service.cancel_trial_job("no-such-trial")
        # The service hands out copies: changing one does not change the service's state.
        got = await service.get_trial_job(ids[0])
        got.status = TrialJobStatus.RUNNING
        assert (await service.get_trial_job(ids[0])).status is TrialJobStatus.SUCCEEDED

    async def test_listener_removal(self, service: TrainingService[Any]) -> None:
        first: list[TrialJobMetric] = []
        second: list[TrialJobMetric] = []
        service.add_trial_job_metric_listener(first.append)
        service.add_trial_job_metric_listener(second.append)
        t1 = await service.submit_trial_job(form({"mode": "ok", "n": 2}, 0))
        await wait_for_status(service, t1.id, timeout=self.timeout)
        service.remove_trial_job_metric_listener(first.append)
        service.remove_trial_job_metric_listener(first.append)  # twice: no error
        t2 = await service.submit_trial_job(form({"mode": "ok", "n": 2}, 1))
        await wait_for_status(service, t2.id, timeout=self.timeout)
        assert [m.trial_job_id for m in first] == [t1.id] * 3
        assert [m.trial_job_id for m in second] == [t1.id] * 3 + [t2.id] * 3

    async def test_clean_up_leaves_nothing_running(
        self, service_factory: Callable[..., TrainingService[Any]], code_dir: Path, pid_dir: Path
    ) -> None:
        svc = service_factory(code_dir, "python3 kit_trial.py")
        with pytest.raises(InvalidStateError):
            await svc.submit_trial_job(form({"mode": "ok"}))
        async with svc:
            ids = [
                (await svc.submit_trial_job(form({"mode": "sleep", "pid_dir": str(pid_dir)}, i))).id for i in range(3)
            ]
            pids = [p for tid in ids for p in await self._trial_pids(svc, pid_dir, tid)]
        for tid in ids:
            assert (await svc.get_trial_job(tid)).status is TrialJobStatus.SYS_CANCELED
        assert [p for p in pids if _alive(p)] == []
        with pytest.raises(InvalidStateError):
            await svc.submit_trial_job(form({"mode": "ok"}))
        await svc.clean_up()  # idempotent

    async def test_many_concurrent_trials(self, service: TrainingService[Any]) -> None:
        rec = _Recorder(service)
        n = self.concurrency
        details = await asyncio.gather(
            *(service.submit_trial_job(form({"mode": "ok", "n": 1, "final": i}, i)) for i in range(n))
        )
        assert len({d.id for d in details}) == n
        done = await asyncio.gather(*(wait_for_status(service, d.id, timeout=self.timeout * 3) for d in details))
        assert [d.status for d in done] == [TrialJobStatus.SUCCEEDED] * n
        for i, d in enumerate(details):
            records = [json.loads(m.data) for m in rec.of(d.id)]
            assert [r["type"] for r in records] == ["PERIODICAL", "FINAL"]
            assert json.loads(records[-1]["value"]) == i

    async def test_megabytes_of_stdout(self, service: TrainingService[Any]) -> None:
        rec = _Recorder(service)
        detail = await service.submit_trial_job(form({"mode": "spam", "kib": 4096}))
        done = await wait_for_status(service, detail.id, timeout=self.timeout * 2)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        out = await service.get_trial_file(detail.id, "stdout")
        assert out.count(b"x" * 1023 + b"\n") == 4096
        assert len(rec.of(detail.id)) == 1
        tail = await service.get_trial_file(detail.id, "stdout", tail=10)
        assert tail == b"x" * 9 + b"\n"

    async def test_unicode_and_quotes_in_command_and_parameters(
        self, service_factory: Callable[..., TrainingService[Any]], code_dir: Path, tmp_path: Path
    ) -> None:
        canary = tmp_path / f"pwned-{uuid.uuid4().hex}"
        tricky = {
            "mode": "echo",
            "quote": 'it\'s a "test"',
            "shell": f"$(touch {canary}) `touch {canary}`; touch {canary}",
            "newline": "a\nb",
            "unicode": "héllo wörld ✓ 你好",
        }
        command = "python3 kit_trial.py --name \"it's ü\" 'x\"y'"
        svc = service_factory(code_dir, command)
        async with svc:
            rec = _Recorder(svc)
            detail = await svc.submit_trial_job(form(tricky))
            done = await wait_for_status(svc, detail.id, timeout=self.timeout)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message
        value = json.loads(json.loads(rec.of(detail.id)[-1].data)["value"])
        assert value["params"] == tricky
        assert value["argv"] == ["--name", "it's ü", 'x"y']
        assert not canary.exists()

    async def test_parameters_as_arguments(
        self, service_factory: Callable[..., TrainingService[Any]], code_dir: Path, tmp_path: Path
    ) -> None:
        canary = tmp_path / f"pwned-{uuid.uuid4().hex}"
        params = {"mode": "echo", "lr": 0.0216, "name": f"$(touch {canary})'"}
        svc = service_factory(code_dir, "python3 kit_trial.py", hyperparametersAsArgs=True)
        async with svc:
            rec = _Recorder(svc)
            detail = await svc.submit_trial_job(form(params))
            done = await wait_for_status(svc, detail.id, timeout=self.timeout)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message
        value = json.loads(json.loads(rec.of(detail.id)[-1].data)["value"])
        assert value["argv"] == ["--mode=echo", "--lr=0.0216", f"--name=$(touch {canary})'"]
        assert not canary.exists()

    async def test_trial_environment(self, service: TrainingService[Any], code_dir: Path) -> None:
        (code_dir / "env_trial.py").write_text(
            "import json, os, nni\nnni.get_next_parameter()\n"
            "keys = ['NNI_PLATFORM', 'NNI_TRIAL_JOB_ID', 'NNI_EXP_ID', 'NNI_TRIAL_SEQ_ID', 'MULTI_PHASE',"
            " 'CUDA_VISIBLE_DEVICES', 'NNI_SYS_DIR', 'NNI_OUTPUT_DIR']\n"
            "env = {k: os.environ.get(k) for k in keys}\n"
            "env['cfg'] = json.load(open(os.path.join(os.environ['NNI_SYS_DIR'], 'parameter.cfg')))\n"
            "env['ids'] = [nni.get_trial_id(), nni.get_experiment_id(), nni.get_sequence_id()]\n"
            "nni.report_final_result({'default': 0, 'env': env})\n",
            encoding="utf-8",
        )
        rec = _Recorder(service)
        f = form({"a": 1}, sequence_id=7, parameter_id=12)
        f.command = "python3 env_trial.py"
        detail = await service.submit_trial_job(f)
        done = await wait_for_status(service, detail.id, timeout=self.timeout)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        env = json.loads(json.loads(rec.of(detail.id)[-1].data)["value"])["env"]
        assert env["NNI_TRIAL_JOB_ID"] == detail.id
        assert env["NNI_EXP_ID"] == service.experiment_id
        assert env["NNI_TRIAL_SEQ_ID"] == "7"
        assert env["MULTI_PHASE"] == "false"
        assert env["CUDA_VISIBLE_DEVICES"] in ("", "-1")
        assert env["NNI_PLATFORM"] and env["NNI_PLATFORM"] != "unittest"
        assert env["NNI_SYS_DIR"] and env["NNI_OUTPUT_DIR"]
        assert env["cfg"] == json.loads(f.hyper_parameters.value)
        assert env["ids"] == [detail.id, service.experiment_id, 7]

    async def test_cluster_metadata_is_typed(
        self, service_factory: Callable[..., TrainingService[Any]], code_dir: Path
    ) -> None:
        from ..errors import ConfigError

        svc = service_factory(code_dir, "python3 kit_trial.py")
        await svc.set_cluster_metadata("trialGpuNumber", "0")
        assert json.loads(await svc.get_cluster_metadata("trialGpuNumber")) == 0
        with pytest.raises(ConfigError):
            await svc.set_cluster_metadata("noSuchKey", "1")
        with pytest.raises(ConfigError):
            await svc.set_cluster_metadata("trialGpuNumber", '"many"')
        async with svc:
            with pytest.raises(InvalidStateError):
                await svc.set_cluster_metadata("trialGpuNumber", "0")

    async def test_files_of_a_trial(self, service: TrainingService[Any]) -> None:
        detail = await service.submit_trial_job(form({"mode": "fail", "code": 1}))
        await wait_for_status(service, detail.id, timeout=self.timeout)
        assert b"failing on purpose" in await service.get_trial_file(detail.id, "stderr")
        assert isinstance(await service.get_trial_file(detail.id, "trial.log"), bytes)
        with pytest.raises(ValueError):
            await service.get_trial_file(detail.id, "../etc/passwd")

    async def test_environment_is_not_shared(self, service: TrainingService[Any]) -> None:
        """Trials see their own ids even when many run at once (no shared mutable env)."""
        rec = _Recorder(service)
        details = await asyncio.gather(*(service.submit_trial_job(form({"mode": "ok", "n": 0}, i)) for i in range(4)))
        for d in details:
            await wait_for_status(service, d.id, timeout=self.timeout)
        for d in details:
            assert [json.loads(m.data)["trial_job_id"] for m in rec.of(d.id)] == [d.id]

    # ------------------------------------------------------------------ lifecycle races

    async def test_concurrent_starts_and_clean_up_during_start(
        self, service_factory: Callable[..., TrainingService[Any]], code_dir: Path
    ) -> None:
        svc = service_factory(code_dir, "python3 kit_trial.py")
        await asyncio.gather(svc.start(), svc.start())
        assert svc.state.value == "running"
        await svc.clean_up()
        other = service_factory(code_dir, "python3 kit_trial.py")
        starting = asyncio.create_task(other.start())
        await asyncio.sleep(0)  # start() is under way
        await other.clean_up()
        await starting
        assert other.state.value == "stopped"  # never RUNNING after a clean-up
        with pytest.raises(InvalidStateError):
            await other.submit_trial_job(form({"mode": "ok"}))

    async def test_clean_up_while_submitting_cancels_the_new_trials(
        self, service_factory: Callable[..., TrainingService[Any]], code_dir: Path, pid_dir: Path
    ) -> None:
        svc = service_factory(code_dir, "python3 kit_trial.py")
        await svc.start()
        submits = [
            asyncio.create_task(svc.submit_trial_job(form({"mode": "sleep", "pid_dir": str(pid_dir)}, i)))
            for i in range(3)
        ]
        await asyncio.sleep(0)
        await svc.clean_up()
        results = await asyncio.gather(*submits, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                assert isinstance(result, InvalidStateError), result
            else:
                assert (await svc.get_trial_job(result.id)).status.is_terminal
        await asyncio.sleep(0.2)
        pids = [int(p) for f in pid_dir.iterdir() for p in f.read_text().split()]
        assert [p for p in pids if _alive(p)] == []

    # ------------------------------------------------------------------ durable before acknowledged

    async def test_refused_records_come_again_exactly_once(self, service: TrainingService[Any]) -> None:
        """A listener that refuses (its store is failing) gets every record again until it accepts;
        in the end each record is accepted once, in order, before the terminal status."""
        accepted: list[tuple[str, int, str]] = []
        refusals = {"left": 3}

        def flaky_store(metric: TrialJobMetric) -> None:
            if refusals["left"] > 0:
                refusals["left"] -= 1
                raise OSError("database is locked")
            accepted.append((metric.trial_job_id, metric.sequence, metric.data))

        service.add_trial_job_metric_listener(flaky_store)
        detail = await service.submit_trial_job(form({"mode": "ok", "n": 4}))
        done = await wait_for_status(service, detail.id, timeout=self.timeout)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        mine = [a for a in accepted if a[0] == detail.id]
        assert [seq for _, seq, _ in mine] == list(range(5))
        kinds = [json.loads(data)["type"] for _, _, data in mine]
        assert kinds == ["PERIODICAL"] * 4 + ["FINAL"]
        assert refusals["left"] == 0

    # ------------------------------------------------------------------ re-attach, UNKNOWN, update

    async def test_reattach_after_a_restart_never_reruns(
        self, service_factory: Callable[..., TrainingService[Any]], code_dir: Path, tmp_path: Path
    ) -> None:
        """A second service (a restarted manager) takes over a trial as it was persisted while it ran:
        it delivers only the records after those already delivered, then the end; it never re-runs it."""
        runs = tmp_path / "runs.txt"
        first = service_factory(code_dir, "python3 kit_trial.py")
        snapshots: list[TrialJobDetail] = []
        first.events.on("trial_status", lambda d: snapshots.append(d) if d.status is TrialJobStatus.RUNNING else None)
        async with first:
            detail = await first.submit_trial_job(form({"mode": "ok", "n": 4, "runs_file": str(runs)}))
            done = await wait_for_status(first, detail.id, timeout=self.timeout)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message
            # What a store would hold had the manager died while the trial ran: RUNNING, 2 records in.
            persisted = (snapshots[0] if snapshots else done).model_copy(deep=True)
            persisted.platform_data = done.platform_data
            persisted.status, persisted.end_time, persisted.exit_code = TrialJobStatus.RUNNING, None, None
            second = service_factory(code_dir, "python3 kit_trial.py")
            async with second:
                rec = _Recorder(second)
                again = await second.reattach_trial_job(persisted, metrics_delivered=2)
                assert again.id == detail.id
                ended = await wait_for_status(second, detail.id, timeout=self.timeout)
                if self.supports_reattach:
                    assert ended.status is TrialJobStatus.SUCCEEDED, ended.message
                    assert [m.sequence for m in rec.of(detail.id)] == [2, 3, 4]
                    assert json.loads(rec.of(detail.id)[-1].data)["type"] == "FINAL"
                else:
                    assert ended.status is TrialJobStatus.FAILED and ended.infrastructure_failure
                with pytest.raises(TrialStateError):
                    await second.reattach_trial_job(persisted)  # already known
        assert runs.read_text().split() == [detail.id]  # it ran once

    async def test_unknown_comes_back_and_can_be_cancelled(self, service: TrainingService[Any], pid_dir: Path) -> None:
        detail = await service.submit_trial_job(form({"mode": "sleep", "pid_dir": str(pid_dir)}))
        pids = await self._trial_pids(service, pid_dir, detail.id)
        await wait_for_status(service, detail.id, timeout=self.timeout, status=TrialJobStatus.RUNNING)
        assert service.reporter.unknown(detail.id, "the kit lost sight of it")
        assert (await service.get_trial_job(detail.id)).status is TrialJobStatus.UNKNOWN
        assert service.reporter.running(detail.id, message="back")
        assert service.reporter.unknown(detail.id, "lost again")
        await service.cancel_trial_job(detail.id)  # an UNKNOWN trial can always be cancelled
        done = await wait_for_status(service, detail.id, timeout=self.timeout)
        assert done.status is TrialJobStatus.USER_CANCELED
        assert [p for p in pids if _alive(p)] == []

    async def test_update(self, service: TrainingService[Any], pid_dir: Path) -> None:
        detail = await service.submit_trial_job(form({"mode": "sleep", "seconds": 30, "pid_dir": str(pid_dir)}))
        await self._trial_pids(service, pid_dir, detail.id)
        new = form({"mode": "sleep", "seconds": 1}, 0, parameter_id=99)
        if self.supports_update:
            updated = await service.update_trial_job(detail.id, new)
            assert updated.form == new
        else:
            with pytest.raises(TrialStateError, match="does not support"):
                await service.update_trial_job(detail.id, new)
            assert (await service.get_trial_job(detail.id)).form == detail.form
        with pytest.raises(TrialNotFoundError):
            await service.update_trial_job("no-such-trial", new)
        await service.cancel_trial_job(detail.id)
        with pytest.raises(TrialStateError):
            await service.update_trial_job(detail.id, new)  # finished

    def test_kit_trial_script_is_valid_python(self) -> None:
        compile(KIT_TRIAL, "kit_trial.py", "exec")
        assert os.path.basename(__file__) == "conformance.py"
