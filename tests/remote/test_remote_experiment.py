"""Done means: an experiment of 100 trials runs across two SSH hosts, from an NNI v1 and a v2 config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from remote_support import PYTHON_DIR

from nni_ts.config.loader import load_experiment_config
from nni_ts.experiment import Experiment
from nni_ts.testing.sshd import SshdCluster

pytestmark = pytest.mark.slow  # seconds per test (a real sshd): scripts/test --fast leaves it out

TRIAL = "import nni\np = nni.get_next_parameter()\nnni.report_final_result(p['x'])\n"


def _v2(cluster: SshdCluster, code: Path) -> dict[str, object]:
    return {
        "experimentName": "remote-100",
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": 10,
        "maxTrialNumber": 100,
        "tuner": {"name": "Random", "classArgs": {"seed": 7}},
        "trainingService": {
            "platform": "remote",
            "knownHostsFile": str(cluster.known_hosts),
            "machineList": [h.machine(workDirectory=str(h.work_dir), pythonPath=PYTHON_DIR) for h in cluster.hosts],
        },
    }


def _v1(cluster: SshdCluster, code: Path) -> dict[str, object]:
    (code.parent / "space.json").write_text(json.dumps({"x": {"_type": "uniform", "_value": [0, 1]}}))
    return {
        "authorName": "test",
        "experimentName": "remote-100-v1",
        "trialConcurrency": 10,
        "maxTrialNum": 100,
        "trainingServicePlatform": "remote",
        "searchSpacePath": str(code.parent / "space.json"),
        "tuner": {"builtinTunerName": "Random", "classArgs": {"seed": 7}},
        "trial": {"codeDir": str(code), "command": "python3 trial.py", "gpuNum": 0},
        "machineList": [h.machine_v1(pythonPath=PYTHON_DIR) for h in cluster.hosts],
    }


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_hundred_trials_across_two_hosts(
    version: str, sshd_cluster: SshdCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(TRIAL)
    if version == "v1":
        # v1 has no knownHostsFile: the default, ~/.ssh/known_hosts, is used.
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh" / "known_hosts").write_text(sshd_cluster.known_hosts.read_text())
        monkeypatch.setenv("HOME", str(home))
        data = _v1(sshd_cluster, code)
    else:
        data = _v2(sshd_cluster, code)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    config = load_experiment_config(path)
    if version == "v1":
        # v1 cannot name a work directory on the host; keep the test out of the real home directory.
        for m, host in zip(config.training_service.machine_list, sshd_cluster.hosts, strict=True):  # type: ignore[attr-defined]
            m.work_directory = str(host.work_dir)
    result = await Experiment(config, control_socket=False).run()
    assert result.status in ("DONE", "done"), result.message
    assert len(result.trials) == 100
    assert all(t.status.value == "SUCCEEDED" for t in result.trials)
    assert all(t.final_value is not None for t in result.trials)
    for host in sshd_cluster.hosts:  # both hosts ran trials
        assert list(host.work_dir.glob("experiments/*/trials/*/parameter.cfg")), host.name
