"""Password login (NNI users' machineList often has `passwd`): a real local user with a password, a
real sshd that accepts passwords for that user only, and an experiment run through it."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nni_ts.experiment import Experiment
from nni_ts.models import TrialJobStatus
from nni_ts.testing.sshd import SshHost, sshd_available

pytestmark = pytest.mark.slow  # seconds per test (a real sshd): scripts/test --fast leaves it out

USER = "nnits-pwtest"
TRIAL = "import nni\np = nni.get_next_parameter()\nnni.report_final_result(p['x'])\n"


@pytest.fixture(scope="module")
def password_user() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("chpasswd") is None:
        pytest.skip("a throw-away user with a password needs root and useradd/chpasswd")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
    password = "pw-" + secrets.token_urlsafe(12)
    subprocess.run(["chpasswd"], input=f"{USER}:{password}\n", text=True, check=True)
    try:
        yield USER, password
    finally:
        subprocess.run(["pkill", "-KILL", "-u", USER], check=False)
        subprocess.run(["userdel", "--remove", USER], check=False, capture_output=True)


@pytest.fixture
def password_host(tmp_path: Path, password_user: tuple[str, str]) -> Iterator[SshHost]:
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    host = SshHost(tmp_path / "pwhost", "pwhost", extra_config=[f"Match User {USER}", "    PasswordAuthentication yes"])
    host.start()
    try:
        yield host
    finally:
        host.stop()


async def test_experiment_through_password_login(
    password_host: SshHost, password_user: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    user, password = password_user
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(TRIAL)
    config = {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": 2,
        "maxTrialNumber": 3,
        "tuner": {"name": "Random", "classArgs": {"seed": 1}},
        "trainingService": {
            "platform": "remote",
            "knownHostsFile": str(password_host.known_hosts),
            "machineList": [
                {"host": password_host.host, "port": password_host.port, "user": user, "password": password}
            ],
        },
    }
    caplog.set_level("DEBUG")
    result = await Experiment(config).run()
    assert result.status == "DONE", result.message
    assert [t.status for t in result.trials] == [TrialJobStatus.SUCCEEDED] * 3
    # The trials really ran as that user, in its home.
    home = Path(pwd.getpwnam(user).pw_dir)
    assert any(p.name == "parameter.cfg" for p in home.rglob("parameter.cfg"))
    assert all(p.stat().st_uid == pwd.getpwnam(user).pw_uid for p in home.rglob("parameter.cfg"))
    assert password not in caplog.text


async def test_wrong_password_is_a_clear_error_without_the_password(
    password_host: SshHost, password_user: tuple[str, str], tmp_path: Path
) -> None:
    user, _ = password_user
    from nni_ts.errors import NniTsError
    from nni_ts.platforms.remote import RemoteTrainingService

    wrong = "wrong-" + secrets.token_urlsafe(8)
    service = RemoteTrainingService(
        {
            "trialCommand": "true",
            "trialCodeDirectory": str(tmp_path),
            "knownHostsFile": str(password_host.known_hosts),
            "machineList": [{"host": password_host.host, "port": password_host.port, "user": user, "password": wrong}],
        },
        experiment_dir=tmp_path / "exp",
    )
    with pytest.raises(NniTsError) as info:
        await service.start()
    await service.clean_up()
    text = str(info.value)
    assert wrong not in text
    assert f"{password_host.host}" in text and ("authentic" in text.lower() or "password" in text.lower())
