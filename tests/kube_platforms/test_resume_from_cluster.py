"""``nni-ts resume ID -c config.yml`` after the manager's data directory (its store, its experiment
directory) was lost: the experiment is rebuilt from its trial objects in the cluster (trial id, sequence
id and parameters from their annotations), the running trial is re-attached (not re-run) and keeps
reporting to the new manager (the cluster server's port and secret are kept in a Secret), the finished
ones get their metrics back from their journals, the tuner learns every point (a GridSearch does not
repeat one) and the budget is completed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from nni_ts.cli import main
from nni_ts.errors import StoreError, UserError
from nni_ts.experiment import Experiment
from nni_ts.models import TrialJobMetric, TrialJobStatus
from nni_ts.storage import open_store
from nni_ts.testing.conformance import form, wait_for_status
from nni_ts.testing.k8s import FakeCluster

from .conftest import ALL_PLATFORMS, Factory, config_for, running_with_metrics, serve_fake_cluster, wait_until

TIMEOUT = 60.0
CLI = [sys.executable, "-m", "nni_ts.cli"]
EXP = "rebuildexp"

TRIAL = textwrap.dedent(
    """
    import os, time, nni
    p = nni.get_next_parameter()
    # A directory of the test's, on this host (the fake kubelet runs the pods' processes here), given to the
    # pods through the env pod setting: it works with and without shared storage.
    state = os.path.join(os.environ["TEST_STATE_DIR"], nni.get_trial_id())
    with open(state + ".runs", "a") as fh:
        fh.write("run\\n")
    nni.report_intermediate_result(p["x"])
    released = True
    if p["x"] == 3:  # the trial still running when the manager dies: the new manager releases it
        deadline = time.monotonic() + 20
        while not os.path.exists(state + ".release") and time.monotonic() < deadline:
            time.sleep(0.05)
        released = os.path.exists(state + ".release")
        nni.report_intermediate_result(p["x"] + 0.5)
    nni.report_final_result(p["x"] * 10 if released else -1)
    """
)


@pytest.fixture(params=ALL_PLATFORMS)
def platform(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(TRIAL, encoding="utf-8")
    return code


def _values(metrics: list[TrialJobMetric], trial_id: str) -> list[Any]:
    return [json.loads(json.loads(m.data)["value"]) for m in metrics if m.trial_job_id == trial_id]


#: Without shared storage a finished trial's metrics are in its reporting pod's log: FrameworkController deletes
#: a completed Framework's pods, so a Framework that finished while no manager ran keeps nothing to read back.
COMBINATIONS = [
    (platform, storage)
    for platform in ALL_PLATFORMS
    for storage in ("nfs", "none")
    if (platform, storage) != ("frameworkcontroller", "none")
]


@pytest.mark.parametrize(("platform", "storage"), COMBINATIONS)
async def test_resume_rebuilds_the_experiment_from_the_cluster(
    cluster: FakeCluster,
    make_service: Factory,
    code_dir: Path,
    nfs_dir: Path,
    tmp_path: Path,
    platform: str,
    storage: str,
) -> None:
    home = tmp_path / "home"
    state = tmp_path / "state"
    state.mkdir()
    settings: dict[str, Any] = {"env": {"TEST_STATE_DIR": str(state)}}
    if storage == "none":  # no shared storage: a finished trial's metrics come back from its pod's log
        settings["storage"] = {"storageType": "none"}
    # The first manager: three trials as the experiment loop submits them (GridSearch's first three points);
    # two end, one still runs when the manager dies.
    first = make_service(
        code_dir, "python3 trial.py", **settings, service_kwargs={"experiment_id": EXP, "experiment_dir": home}
    )
    metrics: list[TrialJobMetric] = []
    first.add_trial_job_metric_listener(metrics.append)
    await first.start()
    details = [await first.submit_trial_job(form({"x": x}, sequence_id=i)) for i, x in enumerate((1, 2, 3))]
    for d in details[:2]:
        assert (await wait_for_status(first, d.id, timeout=TIMEOUT)).status is TrialJobStatus.SUCCEEDED
    async with asyncio.timeout(TIMEOUT):
        while not _values(metrics, details[2].id):
            await asyncio.sleep(0.05)
    jobs = {d.id: (await first.get_trial_job(d.id)).platform_data["job"] for d in details}
    await first._close_resources()  # the manager dies: no clean-up, the objects stay
    shutil.rmtree(home)  # and its data directory is lost

    config = {
        "experimentName": "rebuilt",
        "searchSpace": {"x": {"_type": "choice", "_value": [1, 2, 3, 4]}},
        "trialConcurrency": 2,
        "maxTrialNumber": 4,
        "tuner": {"name": "GridSearch"},
        "experimentWorkingDirectory": str(tmp_path / "home2"),
        "trainingService": config_for(platform, cluster, nfs_dir, code_dir, "python3 trial.py", **settings),
    }
    store = open_store(tmp_path / "home2.db")
    try:
        exp = Experiment.resume(EXP, store=store, config=config, control_socket=False)

        def on_metric(trial_id: str, record: Any) -> None:
            # The re-attached trial reports to the new manager while it runs (its keeper kept the port and
            # its token: the cluster server's secret was in the cluster): let it end.
            if trial_id == details[2].id:
                (state / f"{trial_id}.release").touch()

        exp.events.on("metric", on_metric)
        result = await exp.run()
        assert result.status == "DONE", result.message
        trials = {t.id: t for t in store.list_trials(EXP, with_detail=True)}
        assert len(trials) == 4, trials
        for i, d in enumerate(details):
            t = trials[d.id]
            assert t.sequence_id == i and t.parameter_id == i and t.parameters == {"x": i + 1}
            assert t.status is TrialJobStatus.SUCCEEDED, t.message
            assert t.detail is not None and t.detail.platform_data["job"] == jobs[d.id]
            values = [json.loads(m.data)["value"] for m in store.metrics(EXP, d.id)]
            expected = [str(i + 1), str(i + 1.5)] if i == 2 else [str(i + 1)]
            assert values == [*expected, str((i + 1) * 10)], (d.id, values)
            assert (state / f"{d.id}.runs").read_text() == "run\n"  # never re-run
        (new,) = [t for t in trials.values() if t.id not in jobs]
        assert new.parameters == {"x": 4} and new.sequence_id == 3  # the tuner knew 1, 2 and 3
        assert new.status is TrialJobStatus.SUCCEEDED
        assert result.best is not None and result.best.final_value == 40
        # The finished trials' objects were not swept as orphans: they are the experiment's record in the cluster.
        assert exp.service is not None and exp.service.orphans_swept == []  # type: ignore[attr-defined]
    finally:
        store.close()


def test_resume_without_the_store_says_how_to_rebuild(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resume", "nosuchexp"]) == 2
    err = capsys.readouterr().err
    assert "no experiment with the id 'nosuchexp'" in err and "nni-ts resume nosuchexp -c config.yml" in err


def test_a_platform_that_cannot_rebuild_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        "searchSpace: {x: {_type: choice, _value: [1]}}\ntrialCommand: python3 -c pass\ntrialConcurrency: 1\n"
        f"tuner: {{name: Random}}\ntrainingService: {{platform: local}}\ntrialCodeDirectory: {tmp_path}\n"
    )
    assert main(["resume", "lostexp", "-c", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no experiment lostexp" in err and "cannot rebuild" in err, err
    with open_store() as store, pytest.raises(StoreError):
        store.get_experiment("lostexp")  # nothing half-made was recorded


async def test_resuming_an_experiment_that_is_nowhere_is_refused(
    cluster: FakeCluster, nfs_dir: Path, code_dir: Path, tmp_path: Path
) -> None:
    """A mistyped id (or an experiment that ended, its objects gone with its anchor): `resume -c` does not
    start a new experiment under that id, and leaves nothing in the store."""
    config = {
        "searchSpace": {"x": {"_type": "choice", "_value": [1]}},
        "trialConcurrency": 1,
        "tuner": {"name": "Random"},
        "experimentWorkingDirectory": str(tmp_path / "home"),
        "trainingService": config_for("kubeflow", cluster, nfs_dir, code_dir, "python3 trial.py"),
    }
    with open_store(tmp_path / "store.db") as store:
        exp = Experiment.resume("mistyped", store=store, config=config, control_socket=False)
        with pytest.raises(UserError, match="nor any trial object of it in the cluster"):
            await exp.run()
        with pytest.raises(StoreError):
            store.get_experiment("mistyped")
    assert cluster.list("configmaps", label_selector="nni-ts.io/experiment=mistyped") == []


@pytest.mark.slow
def test_cli_resume_after_the_data_directory_was_deleted(tmp_path: Path) -> None:
    """The whole story with the real command: `nni-ts create` (SIGKILLed mid-experiment), `rm -rf
    $NNI_TS_HOME`, `nni-ts resume ID -c config.yml` against the fake cluster served by another process."""
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(CLI_TRIAL)
    config = {
        "searchSpace": {"x": {"_type": "choice", "_value": [1, 2, 3]}},
        "trialCodeDirectory": str(code),
        "trialConcurrency": 2,
        "maxTrialNumber": 3,
        "tuner": {"name": "GridSearch"},
        "trainingService": {
            "platform": "kubernetes",
            "storage": {"storageType": "nfs", "server": "127.0.0.1", "path": str(nfs)},
            "command": "python3 trial.py",
            "memorySize": "512m",
            "cpuNumber": 0.5,
            "dockerImage": "python:3.11",
            "keeperHeartbeat": 0.5,
            "cancelGracePeriod": 2,
        },
    }
    cfg = tmp_path / "config.yml"
    cfg.write_text(yaml.safe_dump(config))
    home = Path(os.environ["NNI_TS_HOME"])
    with serve_fake_cluster(tmp_path, nfs) as kubeconfig:
        env = dict(os.environ, KUBECONFIG=str(kubeconfig))
        manager = subprocess.Popen([*CLI, "create", "-c", str(cfg), "--id", "lostdir", "--quiet"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_until(lambda: len(running_with_metrics("lostdir")) == 2, 90, "two running trials with metrics")
        finally:
            os.kill(manager.pid, signal.SIGKILL)
            manager.wait(timeout=30)
        before = {t.id: t.parameters for t in running_with_metrics("lostdir")}
        shutil.rmtree(home)
        resume = subprocess.run([*CLI, "--json", "resume", "lostdir", "-c", str(cfg), "--quiet"], env=env,
                                capture_output=True, text=True, timeout=180)  # fmt: skip
        assert resume.returncode == 0, (resume.stdout, resume.stderr)
    with open_store(readonly=True) as s:
        trials = s.list_trials("lostdir")
        assert len(trials) == 3 and all(t.status is TrialJobStatus.SUCCEEDED for t in trials), trials
        assert {t.id: t.parameters for t in trials if t.id in before} == before
        assert sorted(t.parameters["x"] for t in trials) == [1, 2, 3]  # the third point is the one not run yet
        for t in trials:
            assert [m.type for m in s.metrics("lostdir", t.id)] == ["PERIODICAL"] * 4 + ["FINAL"], t.id
    for trial_dir in (nfs / "nni-ts" / "lostdir" / "trials").iterdir():
        assert (trial_dir / "runs.txt").read_text() == "run\n", trial_dir.name  # never re-run


CLI_TRIAL = """\
import os, time, nni
p = nni.get_next_parameter()
with open(os.path.join(os.environ["NNI_OUTPUT_DIR"], "runs.txt"), "a") as fh:
    fh.write("run\\n")
for i in range(4):
    nni.report_intermediate_result(i)
    time.sleep(0.5)
nni.report_final_result(p["x"])
"""
