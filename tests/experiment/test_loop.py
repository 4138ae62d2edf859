"""The experiment loop: budget, limits, retries, early stopping, results.

One test runs it end to end on the local platform (real trials, the real SDK's records byte for byte);
the others test the loop itself, on the in-memory FakeTrainingService and a FakeClock, so that a
60-second trial or a two-hour experiment takes milliseconds.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from nni_ts.errors import ConfigError
from nni_ts.experiment import Experiment
from nni_ts.models import TrialJobDetail, TrialJobStatus
from nni_ts.storage import open_store
from nni_ts.testing import NO_FINAL, FakeClock, FakeTrainingService, FakeTrial, ScriptedTrial
from nni_ts.tuners import Assessor, AssessResult, NoMoreTrialError, Tuner

REPORTING_TRIAL = textwrap.dedent(
    """\
    import nni, time
    p = nni.get_next_parameter()
    for i in range(p.get("steps", 2)):
        nni.report_intermediate_result(p["x"] * (i + 1))
    time.sleep(p.get("sleep", 0))
    if p.get("fail"):
        raise SystemExit(3)
    nni.report_final_result({"default": p["x"], "note": "it's \\"quoted\\""})
    """
)


def _config(code: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "experimentName": "loop-test",
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": 2,
        "maxTrialNumber": 4,
        "tuner": {"name": "Random", "classArgs": {"seed": 3}},
        "trainingService": {"platform": "local"},
    }
    cfg.update(over)
    return cfg


def reporting(trial: FakeTrial) -> ScriptedTrial:
    """REPORTING_TRIAL as a script: ``steps`` intermediate results over ``sleep`` seconds, then exit."""
    p = trial.parameters
    fail = bool(p.get("fail"))
    return ScriptedTrial(
        intermediate=[p["x"] * (i + 1) for i in range(p.get("steps", 2))],
        final=NO_FINAL if fail else {"default": p["x"], "note": 'it\'s "quoted"'},
        exit_code=3 if fail else 0,
        duration=p.get("sleep", 0),
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock, tmp_path: Path) -> FakeTrainingService:
    return FakeTrainingService(script=reporting, clock=clock, experiment_dir=tmp_path / "exp")


@pytest.fixture
def code(tmp_path: Path) -> Path:
    d = tmp_path / "code"
    d.mkdir()
    (d / "trial.py").write_text(REPORTING_TRIAL)
    return d


class ListTuner(Tuner):
    """Hands out a fixed list of parameter sets, then says there are no more. Records what it hears."""

    def __init__(self, params: list[dict[str, Any]]) -> None:
        self.params = list(params)
        self.results: dict[int, Any] = {}
        self.ended: dict[int, bool] = {}
        self.imported: list[dict[str, Any]] = []

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        pass

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        if not self.params:
            raise NoMoreTrialError()
        return self.params.pop(0)

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        assert parameter_id not in self.results, "a result was told twice"
        self.results[parameter_id] = value

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        assert parameter_id not in self.ended, "trial_end was called twice"
        self.ended[parameter_id] = success

    def import_data(self, data: list[dict[str, Any]]) -> None:
        self.imported.extend(data)


async def test_runs_the_budget_and_finds_the_best(code: Path) -> None:
    exp = Experiment(_config(code, maxTrialNumber=5))
    result = await exp.run()
    assert result.status == "DONE"
    assert len(result.trials) == 5
    assert all(t.status is TrialJobStatus.SUCCEEDED for t in result.trials)
    assert result.best is not None
    assert result.best.final_value == max(t.final_value or 0 for t in result.trials)
    assert result.best.final_value == result.best.parameters["x"]
    with open_store(readonly=True) as store:
        rec = store.get_experiment(exp.id)
        assert rec.status == "DONE" and rec.manager_pid is None
        for t in store.list_trials(exp.id):
            metrics = store.metrics(exp.id, t.id)
            assert [m.type for m in metrics] == ["PERIODICAL", "PERIODICAL", "FINAL"]
            assert [m.seq for m in metrics] == [0, 1, 2]
            # the record is kept byte for byte, quotes and all
            assert json.loads(json.loads(metrics[-1].data)["value"])["note"] == 'it\'s "quoted"'


async def test_tuner_is_told_each_result_once_and_every_end(
    code: Path, fake: FakeTrainingService, clock: FakeClock
) -> None:
    tuner = ListTuner([{"x": 0.1}, {"x": 0.9, "fail": True}, {"x": 0.5}])
    exp = Experiment(_config(code, maxTrialNumber=10), tuner=tuner, service=fake, clock=clock)
    result = await clock.run(exp.run())
    assert result.status == "DONE"
    assert "no more parameters" in (result.message or "")
    assert {pid: v["default"] for pid, v in tuner.results.items()} == {0: 0.1, 2: 0.5}
    assert tuner.ended == {0: True, 1: False, 2: True}
    assert result.best is not None and result.best.parameters == {"x": 0.5}
    failed = [t for t in result.trials if t.status is TrialJobStatus.FAILED]
    assert len(failed) == 1 and failed[0].exit_code == 3 and not failed[0].infrastructure_failure


async def test_minimize_picks_the_lowest(code: Path, fake: FakeTrainingService, clock: FakeClock) -> None:
    tuner = ListTuner([{"x": 0.3}, {"x": 0.2}, {"x": 0.7}])
    cfg = _config(code, tuner={"name": "Random", "classArgs": {"optimize_mode": "minimize"}})
    result = await clock.run(Experiment(cfg, tuner=tuner, service=fake, clock=clock).run())
    assert result.optimize_mode == "minimize"
    assert result.best is not None and result.best.parameters == {"x": 0.2}


async def test_max_trial_duration_cancels_a_long_trial(code: Path, fake: FakeTrainingService, clock: FakeClock) -> None:
    tuner = ListTuner([{"x": 0.5, "sleep": 7200}, {"x": 0.4, "sleep": 1800}])
    exp = Experiment(_config(code, maxTrialDuration="1h"), tuner=tuner, service=fake, clock=clock)
    result = await clock.run(exp.run())
    slow = next(t for t in result.trials if t.parameters["sleep"] == 7200)
    assert slow.status is TrialJobStatus.USER_CANCELED
    assert slow.end_ms is not None and slow.start_ms is not None
    assert slow.end_ms - slow.start_ms == 3600_000  # cancelled at the hour, not before, not after
    assert clock.elapsed == pytest.approx(3600, abs=0.01)  # trial start times are whole milliseconds
    assert "maxTrialDuration" in (slow.message or "")
    assert tuner.ended[0] is False
    assert exp.progress().failed == 1


async def test_max_failed_trial_number_stops_the_experiment(
    code: Path, fake: FakeTrainingService, clock: FakeClock
) -> None:
    tuner = ListTuner([{"x": 0.1, "fail": True}] * 6)
    cfg = _config(code, maxTrialNumber=6, maxFailedTrialNumber=2, trialConcurrency=1)
    result = await clock.run(Experiment(cfg, tuner=tuner, service=fake, clock=clock).run())
    assert "maxFailedTrialNumber" in (result.message or "")
    assert len(result.trials) == 2


async def test_max_experiment_duration_cancels_running_trials(
    code: Path, fake: FakeTrainingService, clock: FakeClock
) -> None:
    tuner = ListTuner([{"x": 0.1, "sleep": 3 * 3600}, {"x": 0.2, "sleep": 3 * 3600}, {"x": 0.3}])
    exp = Experiment(_config(code, maxExperimentDuration="2h"), tuner=tuner, service=fake, clock=clock)
    result = await clock.run(exp.run())
    assert clock.elapsed == 7200
    assert result.status == "DONE"
    assert "maxExperimentDuration" in (result.message or "")
    assert len(result.trials) == 2
    assert all(t.status is TrialJobStatus.USER_CANCELED for t in result.trials)


class StopBelow(Assessor):
    """Stops a trial whose second intermediate result is below 1."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.ended: list[str] = []

    def trial_submitted(self, trial_job_id: str, parameter_id: int) -> None:
        self.submitted.append(trial_job_id)

    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
        if len(trial_history) >= 2 and trial_history[-1] < 1:
            return AssessResult.Bad
        return AssessResult.Good

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        self.ended.append(trial_job_id)


async def test_assessor_early_stops(code: Path, fake: FakeTrainingService, clock: FakeClock) -> None:
    tuner = ListTuner([{"x": 0.1, "steps": 3, "sleep": 60}, {"x": 2.0, "steps": 3}])
    assessor = StopBelow()
    exp = Experiment(_config(code), tuner=tuner, assessor=assessor, service=fake, clock=clock)
    result = await clock.run(exp.run())
    by_x = {t.parameters["x"]: t for t in result.trials}
    assert by_x[0.1].status is TrialJobStatus.EARLY_STOPPED
    assert by_x[2.0].status is TrialJobStatus.SUCCEEDED
    assert sorted(assessor.submitted) == sorted(assessor.ended) == sorted(t.id for t in result.trials)


class FlakyFake(FakeTrainingService):
    """A platform whose first attempt at each parameter set is lost (an infrastructure failure)."""

    seen: set[int] = set()

    async def _submit(self, detail: TrialJobDetail) -> None:
        pid = json.loads(detail.form.hyper_parameters.value)["parameter_id"]
        if pid not in self.seen:
            self.seen.add(pid)
            await self.reporter.ended(
                detail.id, TrialJobStatus.FAILED, message="host lost", infrastructure_failure=True
            )
            return
        await super()._submit(detail)


async def test_infrastructure_failures_are_retried_apart(code: Path, tmp_path: Path, clock: FakeClock) -> None:
    FlakyFake.seen = set()
    tuner = ListTuner([{"x": 0.1}, {"x": 0.2}])
    cfg = _config(code)
    service = FlakyFake(script=reporting, clock=clock, experiment_dir=tmp_path / "exp")
    exp = Experiment(cfg, tuner=tuner, service=service, clock=clock)
    result = await clock.run(exp.run())
    assert exp.progress().infra_retries == 2
    assert exp.progress().failed == 0
    assert sorted(tuner.results) == [0, 1]  # each parameter set reached the tuner once
    lost = [t for t in result.trials if t.infrastructure_failure]
    assert len(lost) == 2 and all(t.attempt == 1 for t in lost)
    assert sorted(t.attempt for t in result.trials if t.status is TrialJobStatus.SUCCEEDED) == [2, 2]


async def test_infra_retries_are_bounded(code: Path, tmp_path: Path, clock: FakeClock) -> None:
    class AlwaysLost(FakeTrainingService):
        async def _submit(self, detail: TrialJobDetail) -> None:
            await self.reporter.ended(detail.id, TrialJobStatus.FAILED, message="gone", infrastructure_failure=True)

    tuner = ListTuner([{"x": 0.1}])
    service = AlwaysLost(clock=clock, experiment_dir=tmp_path / "exp")
    exp = Experiment(_config(code, maxInfraRetries=2), tuner=tuner, service=service, clock=clock)
    result = await clock.run(exp.run())
    assert [t.attempt for t in result.trials] == [1, 2, 3]
    assert tuner.ended == {0: False}


async def test_a_tuner_that_raises_ends_the_experiment_with_error(
    code: Path, fake: FakeTrainingService, clock: FakeClock
) -> None:
    class Broken(ListTuner):
        def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kw: Any) -> None:
            raise RuntimeError("tuner bug")

    exp = Experiment(_config(code), tuner=Broken([{"x": 0.1}, {"x": 0.2}]), service=fake, clock=clock)
    with pytest.raises(RuntimeError, match="tuner bug"):
        await clock.run(exp.run())
    with open_store(readonly=True) as store:
        (rec,) = store.list_experiments()
        assert rec.status == "ERROR" and "tuner bug" in (rec.message or "")
        assert all(t.status.is_terminal for t in store.list_trials(rec.id))


async def test_missing_search_space_is_a_config_error(code: Path) -> None:
    cfg = _config(code)
    del cfg["searchSpace"]
    with pytest.raises(ConfigError, match="(?i)search ?space"):
        await Experiment(cfg).run()


async def test_extend_raises_the_budget_of_a_running_experiment(
    code: Path, fake: FakeTrainingService, clock: FakeClock
) -> None:
    import asyncio

    tuner = ListTuner([{"x": 0.1 * i, "sleep": 600} for i in range(1, 8)])
    cfg = _config(code, maxTrialNumber=2, trialConcurrency=1, maxExperimentDuration="1h")
    exp = Experiment(cfg, tuner=tuner, service=fake, clock=clock)
    task = asyncio.create_task(exp.run())
    await clock.advance(300)  # the first trial is half-way through
    assert exp.progress().running == 1 and exp.progress().done == 0
    with pytest.raises(ConfigError, match="maxTrialNumber|max_trial_number"):
        exp.extend(max_trial_number=-1)
    exp.extend(max_trial_number=4, max_experiment_duration="2h")
    result = await clock.run(task)
    assert result.status == "DONE"
    assert len(result.trials) == 4
    assert exp.config.max_experiment_seconds == 7200
    assert clock.elapsed == 4 * 600
