"""How the local platform starts trials: on the loop's starter, one per turn of the event loop, in
submission order, and never leaving a process behind when the trial or its submission is cancelled
meanwhile."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nni_ts.errors import TrialNotFoundError
from nni_ts.models import TrialJobDetail, TrialJobStatus
from nni_ts.platforms import local
from nni_ts.platforms.local import LocalTrainingService
from nni_ts.processes import group_alive
from nni_ts.testing.conformance import form, wait_for_status


def _form(trial_id: str, seq: int) -> Any:
    f = form({"x": seq}, seq)
    f.trial_job_id = trial_id
    return f


def _service(tmp_path: Path, command: str = "true") -> LocalTrainingService:
    return LocalTrainingService(
        {"trialCommand": command, "trialCodeDirectory": str(tmp_path), "cancelGracePeriod": 2},
        experiment_dir=tmp_path / "exp",
    )


@pytest.fixture
async def popens(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[tuple[int, str]]]:
    """Every process the platform starts: (the turn of the event loop it started in, its
    NNI_TRIAL_JOB_ID). A callback that schedules itself again counts the turns."""
    seen: list[tuple[int, str]] = []
    real = subprocess.Popen
    loop = asyncio.get_running_loop()
    turns = [0]
    ticking = [True]

    def tick() -> None:
        turns[0] += 1
        if ticking[0]:
            loop.call_soon(tick)

    def recording(*args: Any, **kwargs: Any) -> Any:
        trial = (kwargs.get("env") or {}).get("NNI_TRIAL_JOB_ID")
        if trial is not None:
            seen.append((turns[0], trial))
        return real(*args, **kwargs)

    monkeypatch.setattr(local.subprocess, "Popen", recording)
    loop.call_soon(tick)
    yield seen
    ticking[0] = False


class HeldStarter:
    """The loop's starter, held: jobs queue and none runs until :meth:`release`."""

    def __init__(self) -> None:
        self.starter = local._starter()
        assert not self.starter.scheduled and not self.starter.jobs
        self.starter.scheduled = True  # as if a job were due: a new one only queues
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.starter.jobs:
            self.starter.loop.call_soon(self.starter._run_one)
        else:
            self.starter.scheduled = False


@pytest.fixture
async def held_starter() -> AsyncIterator[HeldStarter]:
    """Hold the loop's starter until the test releases it (released at the end in any case)."""
    held = HeldStarter()
    try:
        yield held
    finally:
        held.release()


async def test_trials_start_one_per_turn_of_the_loop_in_submission_order(
    tmp_path: Path, popens: list[tuple[int, str]]
) -> None:
    ids = [f"order{i}" for i in range(6)]
    running: list[str] = []
    async with _service(tmp_path) as svc:
        svc.events.on(
            "trial_status",
            lambda d: running.append(d.id) if d.status is TrialJobStatus.RUNNING else None,
        )
        returned = await asyncio.gather(*(svc.submit_trial_job(_form(tid, i)) for i, tid in enumerate(ids)))
        # A submission returns once its trial runs, as when it was started in place.
        assert [d.status for d in returned] == [TrialJobStatus.RUNNING] * len(ids)
        assert all(isinstance(d.platform_data["create_time"], float) for d in returned)
        for tid in ids:
            done = await wait_for_status(svc, tid, timeout=30)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message
            assert (Path(done.working_directory) / "parameter.cfg").read_text() == done.form.hyper_parameters.value
    assert [tid for _, tid in popens] == ids  # started in submission order ...
    assert running == ids  # ... and reported so
    turns = [turn for turn, _ in popens]
    assert turns == sorted(set(turns)), turns  # one start per turn of the loop: I/O is handled between two


async def test_what_io_wakes_during_a_burst_of_starts_runs_before_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database reply that arrives while a trial starts is read in the next turn of the loop, and
    the task waiting for it (a storage lane, whose COMMIT acknowledges metrics) runs in the turn after:
    before the next start, not after it (a start takes milliseconds, and there may be hundreds)."""
    loop = asyncio.get_running_loop()
    order: list[str] = []
    reply, sender = __import__("socket").socketpair()
    reply.setblocking(False)
    arrived: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        loop.remove_reader(reply.fileno())
        reply.recv(1)
        arrived.set_result(None)

    async def lane() -> None:
        await arrived
        order.append("lane")

    real = subprocess.Popen

    def recording(*args: Any, **kwargs: Any) -> Any:
        trial = (kwargs.get("env") or {}).get("NNI_TRIAL_JOB_ID")
        if trial is not None:
            order.append(trial)
            if trial == "io0":  # the reply arrives while the first trial starts
                sender.send(b"x")
        return real(*args, **kwargs)

    monkeypatch.setattr(local.subprocess, "Popen", recording)
    loop.add_reader(reply.fileno(), readable)
    waiting = asyncio.ensure_future(lane())
    try:
        async with _service(tmp_path) as svc:
            await asyncio.gather(*(svc.submit_trial_job(_form(f"io{i}", i)) for i in range(3)))
            for i in range(3):
                await wait_for_status(svc, f"io{i}", timeout=30)
        await asyncio.wait_for(waiting, 10)
    finally:
        reply.close()
        sender.close()
    assert order == ["io0", "lane", "io1", "io2"], order


async def test_cancel_while_starting_stops_the_trial_once_it_runs(
    tmp_path: Path, popens: list[tuple[int, str]], held_starter: HeldStarter
) -> None:
    async with _service(tmp_path, "sleep 30") as svc:
        submit = asyncio.ensure_future(svc.submit_trial_job(_form("cancel1", 0)))
        await asyncio.sleep(0)  # the submission has queued its start behind the blocked one
        assert not submit.done()
        cancel = asyncio.ensure_future(svc.cancel_trial_job("cancel1"))
        await asyncio.sleep(0.05)
        assert not cancel.done()  # it waits for the start
        held_starter.release()
        await asyncio.wait_for(cancel, 30)
        started = await asyncio.wait_for(submit, 30)
        done = await svc.get_trial_job("cancel1")
    assert started.id == "cancel1"
    assert done.status is TrialJobStatus.USER_CANCELED
    assert len(popens) == 1
    pid = int(done.platform_data["pid"])
    assert pid > 0 and not group_alive(pid)


async def test_a_cancelled_submission_starts_nothing(
    tmp_path: Path, popens: list[tuple[int, str]], held_starter: HeldStarter
) -> None:
    async with _service(tmp_path, "sleep 30") as svc:
        submit = asyncio.ensure_future(svc.submit_trial_job(_form("gone1", 0)))
        await asyncio.sleep(0)
        submit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await submit
        held_starter.release()
        # The next trial starts behind the abandoned one on the same starter: once it runs, the
        # abandoned start has been dealt with.
        after = await svc.submit_trial_job(_form("after1", 1))
        with pytest.raises(TrialNotFoundError):
            await svc.get_trial_job("gone1")
        assert [d.id for d in await svc.list_trial_jobs()] == ["after1"]
    assert [tid for _, tid in popens] == ["after1"]
    assert after.status is TrialJobStatus.RUNNING


async def test_a_directory_that_cannot_be_made_fails_the_submission(tmp_path: Path) -> None:
    async with _service(tmp_path) as svc:
        (svc.experiment_dir / "trials").write_text("a file where the trials' directory should be")
        with pytest.raises(NotADirectoryError):
            await svc.submit_trial_job(_form("nodir1", 0))
        (svc.experiment_dir / "trials").unlink()
        (svc.experiment_dir / "trials" / "nodir2").mkdir(parents=True)
        (svc.experiment_dir / "trials" / "nodir2" / ".nni").write_text("a file where .nni/ should be")
        with pytest.raises(FileExistsError):
            await svc.submit_trial_job(_form("nodir2", 1))
        assert await svc.list_trial_jobs() == []


async def test_a_trial_that_cannot_be_started_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = subprocess.Popen

    def refuse(*args: Any, **kwargs: Any) -> Any:
        if "NNI_TRIAL_JOB_ID" in (kwargs.get("env") or {}):
            raise PermissionError(13, "Permission denied", "/bin/sh")
        return real(*args, **kwargs)

    monkeypatch.setattr(local.subprocess, "Popen", refuse)
    async with _service(tmp_path) as svc:
        await svc.submit_trial_job(_form("nostart1", 0))
        done: TrialJobDetail = await wait_for_status(svc, "nostart1", timeout=10)
    assert done.status is TrialJobStatus.FAILED and done.infrastructure_failure
    assert done.message is not None and "could not be started" in done.message


async def test_records_larger_than_one_read_arrive_whole_and_in_order(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text(
        "import nni\nnni.get_next_parameter()\n"
        "for i in range(3):\n    nni.report_intermediate_result(str(i) * (150_000 + i))\n"
        "nni.report_final_result(7)\n"
    )
    metrics: list[Any] = []
    async with _service(tmp_path, f"{sys.executable} big.py") as svc:
        svc.add_trial_job_metric_listener(metrics.append)
        await svc.submit_trial_job(_form("big1", 0))
        done = await wait_for_status(svc, "big1", timeout=30)
    assert done.status is TrialJobStatus.SUCCEEDED, done.message
    values = [json.loads(json.loads(m.data)["value"]) for m in metrics]
    assert values == [str(i) * (150_000 + i) for i in range(3)] + [7]
    assert [m.sequence for m in metrics] == [0, 1, 2, 3]
