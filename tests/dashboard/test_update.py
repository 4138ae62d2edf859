"""Changing a running experiment (``Experiment.update``, the control channel, ``nni-ts update``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from nni_ts.errors import ConfigError
from nni_ts.experiment import Experiment
from nni_ts.experiment.control import socket_path
from nni_ts.storage import open_store

CLI = [sys.executable, "-m", "nni_ts.cli"]

# Reports one intermediate result, then waits for the file "release" next to it (at most 60 s).
GATED = textwrap.dedent(
    """\
    import nni, os, time
    p = nni.get_next_parameter()
    nni.report_intermediate_result(1)
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "release")):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    nni.report_final_result(p["x"])
    """
)


def _config(code: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "experimentName": "update-test",
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": f"{sys.executable} trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": 1,
        "maxTrialNumber": 3,
        "tuner": {"name": "Random", "classArgs": {"seed": 3}},
        "trainingService": {"platform": "local"},
    }
    cfg.update(over)
    return cfg


@pytest.fixture
def code(tmp_path: Path) -> Path:
    d = tmp_path / "code"
    d.mkdir()
    (d / "trial.py").write_text(GATED)
    return d


async def _until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


async def test_update_acts_at_once_and_resume_keeps_it(code: Path) -> None:
    exp = Experiment(_config(code), experiment_id="upd1", control_socket=False)
    run = asyncio.ensure_future(exp.run())
    try:
        await _until(lambda: exp.progress().running == 1)
        space = {"x": {"_type": "choice", "_value": [7, 8]}}
        changed = await exp.update(trial_concurrency=3, max_trial_number=6, search_space=space)
        assert changed == {"trialConcurrency": 3, "maxTrialNumber": 6, "searchSpace": space}
        # The loop starts two more trials at once, with parameters from the new search space.
        await _until(lambda: exp.progress().running == 3)
        with open_store() as store:
            stored = store.get_experiment("upd1").config
            newest = store.list_trials("upd1")[-1]
        assert stored["trialConcurrency"] == 3 and stored["maxTrialNumber"] == 6 and stored["searchSpace"] == space
        assert newest.parameters["x"] in (7, 8)
        exp.stop("test over")
        await asyncio.wait_for(run, 60)
    finally:
        if not run.done():
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    resumed = Experiment.resume("upd1", control_socket=False)
    try:
        assert resumed.config.trial_concurrency == 3
        assert resumed.config.max_trial_number == 6
        assert resumed.config.search_space == space
    finally:
        resumed.store.close()


async def test_update_refuses_bad_values_naming_the_key(code: Path) -> None:
    exp = Experiment(_config(code, trialConcurrency=2), experiment_id="upd2", control_socket=False)
    run = asyncio.ensure_future(exp.run())
    try:
        await _until(lambda: exp.progress().running == 2)
        with pytest.raises(ConfigError, match="trialConcurrency"):
            await exp.update(trial_concurrency=0)
        with pytest.raises(ConfigError, match="maxTrialNumber"):
            await exp.update(max_trial_number=0)
        with pytest.raises(ConfigError, match="already submitted 2 trials"):
            await exp.update(max_trial_number=1)
        with pytest.raises(ConfigError, match="searchSpace"):
            await exp.update(search_space={"x": {"_type": "uniform", "_value": "wide"}})
        with pytest.raises(ConfigError, match="already run"):
            await exp.update(max_experiment_duration=1e-3)
        with pytest.raises(ConfigError, match="Nothing to update"):
            await exp.update()
        # Nothing was applied by the refused calls.
        assert exp.config.trial_concurrency == 2 and exp.config.max_trial_number == 3
        exp.stop("test over")
        await asyncio.wait_for(run, 60)
    finally:
        if not run.done():
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)


async def test_a_customized_trial_runs_with_its_parameters_outside_the_budget(code: Path) -> None:
    exp = Experiment(_config(code, maxTrialNumber=1), experiment_id="upd4", control_socket=False)
    run = asyncio.ensure_future(exp.run())
    try:
        await _until(lambda: exp.progress().running == 1)
        for bad in ({}, {"x": float("nan")}, {"x": object()}):
            with pytest.raises(ConfigError, match="parameters"):
                exp.add_trial(bad)
        exp.add_trial({"x": 0.5})
        (code / "release").write_text("")
        result = await asyncio.wait_for(run, 60)
    finally:
        if not run.done():
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    assert result.status == "DONE" and len(result.trials) == 2
    assert result.trials[1].parameters == {"x": 0.5} and result.trials[1].final_value == 0.5


def test_cli_update_reaches_a_running_create(tmp_path: Path, code: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text(yaml.safe_dump(_config(code, maxTrialNumber=4)))
    err = open(tmp_path / "create.err", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*CLI, "create", "-c", str(cfg), "--id", "upd3", "--quiet", "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        deadline = time.monotonic() + 60
        while not socket_path("upd3").exists():
            assert proc.poll() is None, (tmp_path / "create.err").read_text()
            assert time.monotonic() < deadline, "the manager never opened its control socket"
            time.sleep(0.05)
        ok = subprocess.run(
            [*CLI, "--json", "update", "upd3", "concurrency", "3"], capture_output=True, text=True, timeout=60
        )
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["updated"] == {"trialConcurrency": 3}
        with open_store(readonly=True) as store:
            assert store.get_experiment("upd3").config["trialConcurrency"] == 3
        space = tmp_path / "space.json"
        space.write_text(json.dumps({"x": {"_type": "choice", "_value": [5]}}))
        ok = subprocess.run(
            [*CLI, "update", "upd3", "searchspace", str(space)], capture_output=True, text=True, timeout=60
        )
        assert ok.returncode == 0 and "searchSpace" in ok.stdout, ok.stderr
        bad = subprocess.run([*CLI, "update", "upd3", "trialnum", "0"], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "maxTrialNumber" in bad.stderr and "Traceback" not in bad.stderr
        bad = subprocess.run([*CLI, "update", "upd3", "duration", "soon"], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "maxExperimentDuration" in bad.stderr and "Traceback" not in bad.stderr
        # `nni-ts stop` waits for the manager to exit; reap it here or it stays a zombie that looks alive.
        stop = subprocess.Popen([*CLI, "stop", "upd3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.wait(timeout=60)
        out, errors = stop.communicate(timeout=60)
        assert stop.returncode == 0 and "stopped" in out, errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    gone = subprocess.run([*CLI, "update", "upd3", "concurrency", "2"], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 2 and "no running manager" in gone.stderr


def test_view_serves_a_read_only_dashboard_until_interrupted(tmp_path: Path, code: Path) -> None:
    import signal
    import urllib.request

    cfg = tmp_path / "config.yml"
    cfg.write_text(yaml.safe_dump(_config(code, maxTrialNumber=1)))
    (code / "release").write_text("")
    done = subprocess.run(
        [*CLI, "create", "-c", str(cfg), "--id", "upd5", "--quiet", "--no-dashboard"], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(
        [*CLI, "view", "upd5", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "Dashboard (read-only): http://127.0.0.1:" in line, line
        url = line.split(": ", 1)[1].split("#")[0]
        with urllib.request.urlopen(url + "dash/api/session", timeout=10) as resp:
            assert json.loads(resp.read())["readonly"] is True
        with urllib.request.urlopen(url + "dash/api/experiments/upd5", timeout=10) as resp:
            assert json.loads(resp.read())["status"] == "DONE"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    # Piped without --port (a script): the summary and the exit code, no server.
    piped = subprocess.run([*CLI, "view", "upd5"], capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and "DONE" in piped.stdout and "Dashboard" not in piped.stderr
