"""Secrets stay secret: ``experiment show`` redacts them, the store and experiment directories are private."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
import yaml

from nni_ts.cli import main
from nni_ts.paths import experiment_dir
from nni_ts.storage import open_store
from nni_ts.storage.store import default_store_path

PASSWORD = "hunter2-never-shown"
PASSPHRASE = "key-phrase-never-shown"


def _remote_config() -> dict[str, object]:
    return {
        "experimentName": "secret-test",
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": ".",
        "trainingService": {
            "platform": "remote",
            "machineList": [
                {"host": "10.0.0.1", "user": "alice", "password": PASSWORD},
                {"host": "10.0.0.2", "user": "bob", "sshKeyFile": "~/.ssh/id_ed25519", "sshPassphrase": PASSPHRASE},
                {"ip": "10.0.0.3", "username": "carol", "passwd": PASSWORD, "passphrase": PASSPHRASE},
            ],
        },
    }


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
@pytest.mark.parametrize(
    "command", [["experiment", "show"], ["config", "show"]], ids=["experiment-show", "config-show"]
)
def test_experiment_show_redacts_passwords_and_passphrases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool, command: list[str]
) -> None:
    store = open_store()
    store.create_experiment("sec1", name="s", platform="remote", config=_remote_config(), working_dir=tmp_path)
    store.close()
    assert main([*(["--json"] if as_json else []), *command, "sec1"]) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out and PASSPHRASE not in out
    shown = json.loads(out)
    if command[0] == "experiment":
        shown = shown["config"]
    machines = shown["trainingService"]["machineList"]
    assert machines[0]["password"] == "<hidden>"
    assert machines[1]["sshPassphrase"] == "<hidden>"
    assert machines[2]["passwd"] == "<hidden>" and machines[2]["passphrase"] == "<hidden>"
    assert machines[1]["sshKeyFile"] == "~/.ssh/id_ed25519" and machines[0]["host"] == "10.0.0.1"


def test_store_and_experiment_directory_are_owner_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text("import nni\nnni.get_next_parameter()\nnni.report_final_result(1)\n")
    cfg = {
        "searchSpace": {"x": {"_type": "choice", "_value": [1]}},
        "trialCommand": f"{sys.executable} trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": 1,
        "maxTrialNumber": 1,
        "tuner": {"name": "Random"},
        "trainingService": {"platform": "local"},
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--json", "create", "-c", str(path), "--id", "private1", "--quiet"]) == 0
    db = default_store_path()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    for extra in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if extra.exists():
            assert stat.S_IMODE(extra.stat().st_mode) == 0o600, extra
    assert stat.S_IMODE(experiment_dir("private1").stat().st_mode) == 0o700
