"""The experiment loop and its store: no database call on the event loop, and a trial's end is
announced with the record as stored (its metrics and terminal status committed before)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nni_ts.experiment import Experiment
from nni_ts.models import TrialJobStatus
from nni_ts.storage import Store, TrialRecord
from nni_ts.testing.loopguard import no_sqlite_on_loop

from .test_loop import ListTuner, _config, code  # noqa: F401  (code is a fixture)


@pytest.mark.parametrize("own_store", [False, True])
async def test_the_loop_runs_no_sqlite_call_on_the_event_loop(code: Path, tmp_path: Path, own_store: bool) -> None:  # noqa: F811
    tuner = ListTuner([{"x": 0.5}, {"x": 0.7, "fail": True}, {"x": 0.2, "steps": 3}])
    ended: list[TrialRecord] = []
    with no_sqlite_on_loop() as guard:
        store = None if own_store else await asyncio.to_thread(Store, tmp_path / "db.sqlite")
        exp = Experiment(_config(code, maxTrialNumber=3), tuner=tuner, store=store, control_socket=False)
        exp.events.on("trial_end", ended.append)
        try:
            result = await exp.run()
        finally:
            if store is not None:
                await asyncio.to_thread(store.close)
    assert guard.statements > 20  # the guard saw the store at work, and none of it on the loop
    assert result.status == "DONE", result.message
    assert sorted(t.status.value for t in result.trials) == ["FAILED", "SUCCEEDED", "SUCCEEDED"]
    # Each trial_end carries the record as stored: terminal, with its metrics counted.
    assert sorted(r.id for r in ended) == sorted(t.id for t in result.trials)
    for record in ended:
        assert record.status.is_terminal
        if record.status is TrialJobStatus.SUCCEEDED:
            assert record.final_value is not None and record.metric_count >= 3
    assert result.best is not None and result.best.final_value == 0.5


async def test_the_guard_catches_a_sqlite_call_on_the_loop(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="event loop's thread"), no_sqlite_on_loop():
        store = Store(tmp_path / "db.sqlite")  # on the loop: what the guard is there to catch
        store.close()
