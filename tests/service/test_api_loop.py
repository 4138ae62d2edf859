"""What the service's API loop does not do itself: build an experiment's tuner."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from service_support import Running, quick_config

from nni_ts.experiment import experiment


async def test_a_create_builds_its_tuner_off_the_api_loop(svc: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = experiment.tuner_for

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "tuner_for", recording)
    body = await svc.api.ok("POST", "/workspaces/w/experiments", token=svc.tokens["alice"], json=quick_config(trials=1))
    done = await svc.api.wait_experiment(str(body["id"]), svc.tokens["alice"])
    assert done["trialCounts"] == {"SUCCEEDED": 1}
    # Built once, by the API (to refuse a bad name with a 422 before anything runs), and not on its
    # loop, which the first import of a tuner library (or a custom tuner's code) stalled.
    assert len(threads) == 1 and threading.get_ident() not in threads
    bad = quick_config(trials=1, tuner={"name": "NoSuchTuner"})
    status, problem = await svc.api.call("POST", "/workspaces/w/experiments", token=svc.tokens["alice"], json=bad)
    assert status == 422 and "NoSuchTuner" in str(problem)
