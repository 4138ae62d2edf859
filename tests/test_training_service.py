"""The base class's rules, with an in-process platform: state machine, UNKNOWN time-out, states."""

from __future__ import annotations

from typing import Any

import pytest

from nni_ts import InvalidStateError, TrainingService, TrialJobDetail, TrialJobStatus, TrialStateError
from nni_ts.config import TrainingServiceConfig
from nni_ts.testing import FakeClock
from nni_ts.testing.conformance import form


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
    assert svc._set_status(d.id, TrialJobStatus.RUNNING)
    assert not svc._set_status(d.id, TrialJobStatus.WAITING)
    assert svc._set_status(d.id, TrialJobStatus.SUCCEEDED, exit_code=0)
    assert not svc._set_status(d.id, TrialJobStatus.FAILED)
    assert not svc._set_status(d.id, TrialJobStatus.RUNNING)
    assert events == [TrialJobStatus.RUNNING, TrialJobStatus.SUCCEEDED]
    got = await svc.get_trial_job(d.id)
    assert got.status is TrialJobStatus.SUCCEEDED and got.end_time is not None and got.exit_code == 0
    # Records after the terminal status are refused (a platform bug), not delivered.
    seen: list[Any] = []
    svc.add_trial_job_metric_listener(seen.append)
    assert svc._deliver_metric(d.id, "{}") is None and seen == []


async def test_unknown_times_out_as_infrastructure_failure(svc: Manual) -> None:
    d = await svc.submit_trial_job(form({}))
    svc._set_status(d.id, TrialJobStatus.RUNNING)
    svc._set_status(d.id, TrialJobStatus.UNKNOWN, message="host gone")
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


async def test_unknown_can_recover_and_be_cancelled(svc: Manual) -> None:
    a = await svc.submit_trial_job(form({}, 0))
    b = await svc.submit_trial_job(form({}, 1))
    for t in (a, b):
        svc._set_status(t.id, TrialJobStatus.RUNNING)
        svc._set_status(t.id, TrialJobStatus.UNKNOWN)
    assert svc._set_status(a.id, TrialJobStatus.RUNNING)  # back: its timer is cancelled
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
        s._set_status(d.id, TrialJobStatus.RUNNING)
    assert (await s.get_trial_job(d.id)).status is TrialJobStatus.SYS_CANCELED
    await s.run()  # returns at once: already cleaned up


async def test_duplicate_trial_id_is_refused(svc: Manual) -> None:
    f = form({})
    f.trial_job_id = "fixed"
    await svc.submit_trial_job(f)
    with pytest.raises(TrialStateError, match="already exists"):
        await svc.submit_trial_job(f)


async def test_async_listener_is_refused(svc: Manual) -> None:
    async def listener(_: Any) -> None:
        pass

    with pytest.raises(TypeError, match="synchronously"):
        svc.add_trial_job_metric_listener(listener)


async def test_a_failing_listener_does_not_stop_the_others(svc: Manual) -> None:
    d = await svc.submit_trial_job(form({}))
    got: list[str] = []

    def bad(_: Any) -> None:
        raise RuntimeError("boom")

    svc.add_trial_job_metric_listener(bad)
    svc.add_trial_job_metric_listener(lambda m: got.append(m.data))
    svc._deliver_metric(d.id, "1")
    svc._deliver_metric(d.id, "2")
    assert got == ["1", "2"]
