"""The in-memory FakeTrainingService passes the conformance kit, and its scripted trials keep to their script."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nni_ts import TrainingService, TrialJobStatus
from nni_ts.testing import NO_FINAL, FakeClock, FakeTrainingService, FakeTrial, ScriptedTrial
from nni_ts.testing.conformance import TrainingServiceConformance, form, kit_script, wait_for_status


class TestFakeConformance(TrainingServiceConformance):
    timeout = 10.0
    processes = False  # it runs no process: the kit checks statuses, metrics and files only
    supports_reattach = False  # a restarted manager cannot take over an in-memory trial

    @pytest.fixture
    def service_factory(self, tmp_path: Path) -> Any:
        def make(code_dir: Path, command: str, **overrides: Any) -> FakeTrainingService:
            config = {"trialCommand": command, "trialCodeDirectory": str(code_dir), **overrides}
            return FakeTrainingService(config, script=kit_script, experiment_dir=tmp_path / "exp")

        return make

    async def test_trial_environment(self, service: TrainingService[Any], code_dir: Path) -> None:
        """Replaces the kit's: a fake trial has no environment, and a command it has no script for fails."""
        f = form({"a": 1})
        f.command = "python3 env_trial.py"
        detail = await service.submit_trial_job(f)
        done = await wait_for_status(service, detail.id, timeout=self.timeout)
        assert done.status is TrialJobStatus.FAILED and done.exit_code == 1
        assert "runs only the kit's trial" in (done.message or "")
        assert b"env_trial.py" in await service.get_trial_file(detail.id, "stderr")


async def test_a_scripted_trial_follows_the_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock()

    def script(trial: FakeTrial) -> ScriptedTrial:
        return ScriptedTrial(intermediate=[1, 2, 3], final=trial.parameters["x"], duration=3600, queue=60)

    seen: list[tuple[float, str]] = []
    async with FakeTrainingService(script=script, clock=clock, experiment_dir=tmp_path) as service:
        service.add_trial_job_metric_listener(lambda m: seen.append((clock.elapsed, json.loads(m.data)["type"])))
        service.events.on("trial_status", lambda d: seen.append((clock.elapsed, d.status.value)))
        detail = await service.submit_trial_job(form({"x": 0.25}))
        await clock.advance(59)
        assert (await service.get_trial_job(detail.id)).status is TrialJobStatus.WAITING
        await clock.advance(3601)
        done = await service.get_trial_job(detail.id)
    assert done.status is TrialJobStatus.SUCCEEDED and done.exit_code == 0
    assert seen == [
        (60.0, "RUNNING"),
        (780.0, "PERIODICAL"),
        (1500.0, "PERIODICAL"),
        (2220.0, "PERIODICAL"),
        (3660.0, "FINAL"),
        (3660.0, "SUCCEEDED"),
    ]
    assert done.end_time is not None and done.start_time is not None
    assert done.end_time - done.start_time == 3600_000  # the trial's times are on the fake clock too


async def test_a_lost_trial_fails_after_the_unknown_timeout(tmp_path: Path) -> None:
    clock = FakeClock()
    script = ScriptedTrial(intermediate=[1], final=NO_FINAL, duration=100, lost_after=70)
    async with FakeTrainingService(script=lambda t: script, clock=clock, experiment_dir=tmp_path) as service:
        detail = await service.submit_trial_job(form({}))
        await clock.advance(70)
        assert (await service.get_trial_job(detail.id)).status is TrialJobStatus.UNKNOWN
        await clock.advance(service.unknown_timeout)
        done = await service.get_trial_job(detail.id)
    assert done.status is TrialJobStatus.FAILED and done.infrastructure_failure
