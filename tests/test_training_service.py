"""The base class's rules, with an in-process platform: state machine, UNKNOWN time-out, states."""

from __future__ import annotations

import asyncio
import copy
import random
import re
from typing import Any

import pydantic
import pytest

from nni_ts import (
    InvalidStateError,
    MetricRefused,
    TrainingService,
    TrialJobDetail,
    TrialJobStatus,
    TrialStateError,
)
from nni_ts.config import TrainingServiceConfig
from nni_ts.testing import FakeClock
from nni_ts.testing.conformance import form
from nni_ts.training_service import ServiceState, new_trial_id


class Manual(TrainingService[TrainingServiceConfig]):
    """A platform driven by the test: nothing runs until the test says so."""

    platform_name = "manual"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__({"platform": "manual"}, **kwargs)
        self.clock = FakeClock()  # the UNKNOWN time-out (60 s) passes when the test says so
        self.cancelled: list[tuple[str, TrialJobStatus]] = []

    async def _submit(self, detail: TrialJobDetail) -> None:
        pass

    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        self.cancelled.append((detail.id, status))

    async def _clean_up(self) -> None:
        pass


@pytest.fixture
async def svc(tmp_path: Any) -> Any:
    async with Manual(experiment_dir=tmp_path) as s:
        yield s


async def test_terminal_status_is_final(svc: Manual) -> None:
    d = await svc.submit_trial_job(form({}))
    events: list[TrialJobStatus] = []
    svc.events.on("trial_status", lambda t: events.append(t.status))
    rep = svc.reporter
    assert rep.running(d.id)
    assert not rep.waiting(d.id, "queued")  # RUNNING never goes back to WAITING
    assert await rep.ended(d.id, TrialJobStatus.SUCCEEDED, exit_code=0)
    assert not await rep.ended(d.id, TrialJobStatus.FAILED)
    assert not rep.running(d.id)
    assert events == [TrialJobStatus.RUNNING, TrialJobStatus.SUCCEEDED]
    got = await svc.get_trial_job(d.id)
    assert got.status is TrialJobStatus.SUCCEEDED and got.end_time is not None and got.exit_code == 0
    # Records after the terminal status are refused (a platform bug), not delivered.
    seen: list[Any] = []
    svc.add_trial_job_metric_listener(seen.append)
    assert await rep.metric(d.id, "{}") is None and seen == []
    with pytest.raises(ValueError, match="terminal"):
        await rep.ended(d.id, TrialJobStatus.RUNNING)


async def test_unknown_times_out_as_infrastructure_failure(svc: Manual) -> None:
    d = await svc.submit_trial_job(form({}))
    svc.reporter.running(d.id)
    svc.reporter.unknown(d.id, "host gone")
    assert isinstance(svc.clock, FakeClock)
    await svc.clock.advance(svc.unknown_timeout - 0.01)
    assert (await svc.get_trial_job(d.id)).status is TrialJobStatus.UNKNOWN
    assert svc.cancelled == []
    await svc.clock.advance(0.01)  # runs the loop until idle: the best-effort stop of the lost trial too
    done = await svc.get_trial_job(d.id)
    assert done.status is TrialJobStatus.FAILED
    assert done.infrastructure_failure
    assert "host gone" in (done.message or "") and "60 s" in (done.message or "")
    assert svc.cancelled == [(d.id, TrialJobStatus.FAILED)]


async def test_requeued_goes_back_to_waiting_and_only_from_a_live_status(svc: Manual) -> None:
    """Kueue preempts a running trial: it waits again (not a failure), keeps its start time and its
    metric count, runs again, and an UNKNOWN one can be requeued too (its time-out is cancelled)."""
    rep = svc.reporter
    a = await svc.submit_trial_job(form({}, 0))
    assert not rep.requeued(a.id, "preempted")  # WAITING -> WAITING is not a move
    rep.running(a.id, when=1000)
    await rep.metric(a.id, "1")
    assert rep.requeued(a.id, "Preempted by Kueue: a higher-priority workload needed the quota.")
    got = await svc.get_trial_job(a.id)
    assert got.status is TrialJobStatus.WAITING and got.start_time == 1000 and "Kueue" in (got.message or "")
    assert rep.delivered(a.id) == 1
    assert rep.running(a.id)
    assert (await rep.metric(a.id, "2")) is not None and rep.delivered(a.id) == 2
    b = await svc.submit_trial_job(form({}, 1))
    rep.running(b.id)
    rep.unknown(b.id, "silent")
    assert rep.requeued(b.id, "evicted")
    assert isinstance(svc.clock, FakeClock)
    await svc.clock.advance(10 * svc.unknown_timeout)
    assert (await svc.get_trial_job(b.id)).status is TrialJobStatus.WAITING  # the UNKNOWN timer is gone
    await rep.ended(a.id, TrialJobStatus.SUCCEEDED, exit_code=0)
    assert not rep.requeued(a.id, "too late")  # never out of a terminal status
    assert (await svc.get_trial_job(a.id)).status is TrialJobStatus.SUCCEEDED


async def test_unknown_can_recover_and_be_cancelled(svc: Manual) -> None:
    a = await svc.submit_trial_job(form({}, 0))
    b = await svc.submit_trial_job(form({}, 1))
    for t in (a, b):
        svc.reporter.running(t.id)
        svc.reporter.unknown(t.id, "silent")
    assert svc.reporter.running(a.id)  # back: its timer is cancelled
    await svc.cancel_trial_job(b.id)  # an UNKNOWN trial can always be cancelled
    assert (await svc.get_trial_job(b.id)).status is TrialJobStatus.USER_CANCELED
    assert isinstance(svc.clock, FakeClock)
    await svc.clock.advance(10 * svc.unknown_timeout)
    assert (await svc.get_trial_job(a.id)).status is TrialJobStatus.RUNNING
    assert svc.cancelled == [(b.id, TrialJobStatus.USER_CANCELED)]


async def test_update_is_refused_where_unsupported(svc: Manual) -> None:
    d = await svc.submit_trial_job(form({}))
    with pytest.raises(TrialStateError, match="does not support"):
        await svc.update_trial_job(d.id, form({"x": 1}))


async def test_clean_up_sys_cancels_live_trials(tmp_path: Any) -> None:
    s = Manual(experiment_dir=tmp_path)
    with pytest.raises(InvalidStateError, match="RUNNING"):
        await s.cancel_trial_job("x")
    async with s:
        d = await s.submit_trial_job(form({}))
        s.reporter.running(d.id)
    assert (await s.get_trial_job(d.id)).status is TrialJobStatus.SYS_CANCELED
    await s.run()  # returns at once: already cleaned up


async def test_duplicate_trial_id_is_refused(svc: Manual) -> None:
    f = form({})
    f.trial_job_id = "fixed"
    await svc.submit_trial_job(f)
    with pytest.raises(TrialStateError, match="already exists"):
        await svc.submit_trial_job(f)


async def test_async_listeners_are_awaited_in_order(svc: Manual) -> None:
    d = await svc.submit_trial_job(form({}))
    got: list[str] = []

    async def slow(m: Any) -> None:
        await asyncio.sleep(0.01)
        got.append("slow:" + m.data)

    svc.add_trial_job_metric_listener(slow)
    svc.add_trial_job_metric_listener(lambda m: got.append("plain:" + m.data))
    first = await svc.reporter.metric(d.id, "1")
    await svc.reporter.metric(d.id, "2")
    assert first is not None and first.sequence == 0
    assert got == ["slow:1", "plain:1", "slow:2", "plain:2"]
    assert svc.reporter.delivered(d.id) == 2


async def test_a_refusing_listener_refuses_the_record(svc: Manual) -> None:
    """Durable before acknowledged: a listener that raises (its store write failed) refuses the
    record; it is not counted, the "metric" event is not emitted, and it comes again with the same
    sequence, which an idempotent listener stores once."""
    d = await svc.submit_trial_job(form({}))
    stored: dict[tuple[str, int], str] = {}
    failing = {"on": True}
    events: list[int] = []
    svc.events.on("metric", lambda m: events.append(m.sequence))

    def store(m: Any) -> None:
        stored.setdefault((m.trial_job_id, m.sequence), m.data)

    def flaky(_: Any) -> None:
        if failing["on"]:
            raise OSError("disk full")

    svc.add_trial_job_metric_listener(store)
    svc.add_trial_job_metric_listener(flaky)
    with pytest.raises(MetricRefused, match="record 0") as info:
        await svc.reporter.metric(d.id, "a")
    assert isinstance(info.value.__cause__, OSError)
    assert svc.reporter.delivered(d.id) == 0 and events == []
    failing["on"] = False
    again = await svc.reporter.metric(d.id, "a")
    assert again is not None and again.sequence == 0
    await svc.reporter.metric(d.id, "b")
    assert stored == {(d.id, 0): "a", (d.id, 1): "b"} and events == [0, 1]


async def test_ended_waits_for_the_metric_in_flight(svc: Manual) -> None:
    """The terminal status is applied after a metric being stored, never before it."""
    d = await svc.submit_trial_job(form({}))
    gate = asyncio.Event()
    order: list[str] = []

    async def slow_store(m: Any) -> None:
        await gate.wait()
        order.append("metric")

    svc.add_trial_job_metric_listener(slow_store)
    svc.events.on("trial_status", lambda t: order.append(t.status.value) if t.status.is_terminal else None)
    metric = asyncio.create_task(svc.reporter.metric(d.id, "x"))
    await asyncio.sleep(0)
    ended = asyncio.create_task(svc.reporter.ended(d.id, TrialJobStatus.SUCCEEDED, exit_code=0))
    await asyncio.sleep(0.01)
    assert order == []
    gate.set()
    assert (await metric) is not None and await ended
    assert order == ["metric", "SUCCEEDED"]


class Counting(Manual):
    """Counts the hooks and lets the test hold _start() open."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.starts = 0
        self.clean_ups = 0
        self.gate = asyncio.Event()
        self.fail_cancel = False

    async def _start(self) -> None:
        self.starts += 1
        await self.gate.wait()

    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        if self.fail_cancel:
            raise RuntimeError("the host is gone")
        await super()._cancel(detail, status)

    async def _clean_up(self) -> None:
        self.clean_ups += 1


async def test_concurrent_starts_start_once(tmp_path: Any) -> None:
    s = Counting(experiment_dir=tmp_path)
    first = asyncio.create_task(s.start())
    second = asyncio.create_task(s.start())
    await asyncio.sleep(0.01)
    s.gate.set()
    await asyncio.gather(first, second)
    assert s.starts == 1 and s.state is ServiceState.RUNNING
    await s.clean_up()
    assert s.clean_ups == 1


async def test_clean_up_during_start_leaves_it_stopped(tmp_path: Any) -> None:
    s = Counting(experiment_dir=tmp_path)
    starting = asyncio.create_task(s.start())
    await asyncio.sleep(0.01)
    cleaning = asyncio.create_task(s.clean_up())
    await asyncio.sleep(0.01)
    s.gate.set()
    await starting
    await cleaning
    assert s.state is ServiceState.STOPPED and s.clean_ups == 1
    with pytest.raises(InvalidStateError):
        await s.submit_trial_job(form({}))
    with pytest.raises(InvalidStateError):
        await s.start()


async def test_clean_up_runs_even_when_a_cancel_fails(tmp_path: Any, caplog: Any) -> None:
    s = Counting(experiment_dir=tmp_path)
    s.gate.set()
    await s.start()
    a = await s.submit_trial_job(form({}, 0))
    b = await s.submit_trial_job(form({}, 1))
    s.fail_cancel = True
    await s.clean_up()
    assert s.clean_ups == 1 and s.state is ServiceState.STOPPED
    for t in (a, b):
        assert (await s.get_trial_job(t.id)).status is TrialJobStatus.SYS_CANCELED
    assert caplog.text.count("the host is gone") >= 2


async def test_clean_up_stops_background_tasks_and_can_be_cancelled(tmp_path: Any) -> None:
    s = Counting(experiment_dir=tmp_path)
    s.gate.set()
    await s.start()
    forever = s.tasks.spawn(asyncio.sleep(3600), name="forever")
    await s.clean_up()
    assert forever.cancelled() and len(s.tasks) == 0
    with pytest.raises(InvalidStateError):
        s.tasks.spawn(asyncio.sleep(0), name="late")


async def test_clean_up_under_a_timeout_is_cancellable(tmp_path: Any) -> None:
    """A clean_up() stuck in a platform hook gives way to its caller's time-out."""

    class Stuck(Counting):
        async def _clean_up(self) -> None:
            await asyncio.sleep(3600)

    s = Stuck(experiment_dir=tmp_path)
    s.gate.set()
    await s.start()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await s.clean_up()
    assert s.state is ServiceState.STOPPED


@pytest.fixture
def deep_copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The type of everything given to ``copy.deepcopy`` or ``model_copy(deep=True)`` from now on."""
    made: list[str] = []
    real_deepcopy, real_model = copy.deepcopy, pydantic.BaseModel.__deepcopy__

    def counted(x: Any, memo: Any = None, *args: Any) -> Any:
        made.append(type(x).__name__)
        return real_deepcopy(x, memo, *args)

    def counted_model(self: pydantic.BaseModel, memo: Any = None) -> Any:
        made.append(type(self).__name__)
        return real_model(self, memo)

    monkeypatch.setattr(copy, "deepcopy", counted)
    monkeypatch.setattr(pydantic.BaseModel, "__deepcopy__", counted_model)
    return made


async def test_details_handed_out_are_copies_made_without_deepcopy(svc: Manual, deep_copies: list[str]) -> None:
    events: list[TrialJobDetail] = []
    svc.events.on("trial_status", events.append)
    f = form({"x": 1}).model_copy(update={"env": {"A": "1"}})
    submitted = await svc.submit_trial_job(f)
    tid = submitted.id
    svc.reporter.note(tid, platform_data={"pid": 1, "gpus": [0]})
    svc.reporter.running(tid)
    await svc.reporter.ended(tid, TrialJobStatus.SUCCEEDED)
    assert [e.status for e in events] == [TrialJobStatus.RUNNING, TrialJobStatus.SUCCEEDED]  # snapshots
    handed = [submitted, await svc.get_trial_job(tid), *await svc.list_trial_jobs(), svc.reporter.detail(tid), *events]
    for d in handed:  # whatever a caller does with its copy ...
        d.form.env["A"] = "changed"
        d.form.hyper_parameters.value = "{}"
        d.platform_data.setdefault("gpus", []).append(9)
        d.tags.append("mine")
        d.message = "mine"
    now = await svc.get_trial_job(tid)  # ... the service's own detail is untouched
    assert now.form.env == {"A": "1"} and now.form.hyper_parameters.value == f.hyper_parameters.value
    assert now.platform_data == {"pid": 1, "gpus": [0]} and now.tags == [] and now.message is None
    assert now.status is TrialJobStatus.SUCCEEDED
    assert deep_copies == []  # copied field by field: copy.deepcopy is several times slower


def test_a_trial_id_takes_one_read_of_the_random_source(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = random._urandom  # type: ignore[attr-defined]

    def counted(n: int) -> bytes:
        reads.append(n)
        return bytes(real(n))

    monkeypatch.setattr(random, "_urandom", counted)
    ids = [new_trial_id() for _ in range(3000)]
    assert len(reads) < 1.5 * len(ids)  # one read per id (a few retries); a letter at a time made five
    assert all(re.fullmatch(r"[A-Za-z0-9]{5}", i) for i in ids)
    # Uniform: every letter shows up at every position (3,000 draws: ~48 of each expected).
    alphabet = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    assert all({i[pos] for i in ids} == alphabet for pos in range(5))
    assert re.fullmatch(r"[A-Za-z0-9]{8}", new_trial_id(8))
