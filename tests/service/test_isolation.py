"""Trials never run with the service's privileges (issue 14, findings 1 and 2).

The service runs as root here with ``trial_user="ntst-{user}"``: each service user's trials run as a
throw-away OS user made for this module (useradd, as tests/remote/test_remote_password.py does).
A trial tries to read the database, the experiment store, the data directory, another user's workspace
and the service's environment, and prints what it got.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_support import running_service

from nni_ts.service import ServiceSettings
from nni_ts.service.db import open_database
from nni_ts.service.users import add_user

OS_USERS = ("ntst-alice", "ntst-bob")


@pytest.fixture(scope="module")
def trial_users() -> Iterator[dict[str, int]]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("a throw-away OS user for trials needs root and useradd")
    uids = {}
    for name in OS_USERS:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", name], check=True)
        uids[name] = pwd.getpwnam(name).pw_uid
    try:
        yield uids
    finally:
        for name in OS_USERS:
            subprocess.run(["userdel", name], capture_output=True, check=False)


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """A directory the trial users can cross (pytest's tmp_path is under a 0700 directory)."""
    base = Path(tempfile.mkdtemp(prefix="nni-ts-iso-"))
    os.chmod(base, 0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


PROBE = r"""
echo "uid=$(id -u)"
echo "own=$(cat own.txt 2>&1)"
echo "db=$(head -c 15 {data}/service.db 2>&1)"
echo "store=$(head -c 15 {data}/experiments.db 2>&1)"
echo "list=$(ls {data} 2>&1 | tr '\n' ' ')"
echo "other=$(cat {data}/workspaces/bob/ws/code/secret.txt 2>&1)"
echo "otherls=$(ls {data}/workspaces/bob 2>&1 | tr '\n' ' ')"
echo "envdb=$(env | grep -c -e NNI_TS_SERVICE_DB -e SERVICE_SECRET)"
echo "done"
"""


async def test_a_trial_reads_nothing_of_the_service(
    trial_users: dict[str, int], base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = base_dir / "svc"
    db_url = f"sqlite:///{data / 'service.db'}"
    monkeypatch.setenv("NNI_TS_SERVICE_DB", "postgresql://svc:hunter2@127.0.0.1/svc")
    monkeypatch.setenv("SERVICE_SECRET", "hunter2")
    data.mkdir()
    db = await open_database(db_url)
    try:
        alice = await add_user(db, "alice")
        bob = await add_user(db, "bob")
    finally:
        await db.close()
    settings = ServiceSettings(data_dir=data, database_url=db_url, replica="iso", trial_user="ntst-{user}")
    async with running_service(settings) as (_service, api, _url):
        await api.ok("PUT", "/workspaces/ws/files/secret.txt", token=bob, data=b"bob's secret")
        await api.ok("PUT", "/workspaces/ws/files/own.txt", token=alice, data=b"alice's own")
        config = {
            "searchSpace": {"x": {"_type": "choice", "_value": [1]}},
            "trialCommand": PROBE.format(data=data),
            "trialConcurrency": 1,
            "maxTrialNumber": 1,
            "tuner": {"name": "Random"},
        }
        created = await api.ok("POST", "/workspaces/ws/experiments", token=alice, json=config)
        details = await api.wait_experiment(created["id"], alice)
        trials = await api.ok("GET", f"/experiments/{created['id']}/trials", token=alice)
        log = await api.ok("GET", f"/experiments/{created['id']}/trials/{trials[0]['id']}/log", token=alice)
    assert details["status"] == "DONE", details
    lines = dict(line.split("=", 1) for line in log.splitlines() if "=" in line)
    assert "done" in log, log
    assert lines["uid"] == str(trial_users["ntst-alice"]), log
    assert lines["own"] == "alice's own", log  # it does run, and reads its own code
    assert "SQLite format" not in lines["db"] and "Permission denied" in lines["db"], log
    assert "SQLite format" not in lines["store"] and "Permission denied" in lines["store"], log
    assert "Permission denied" in lines["list"] and "service.db" not in lines["list"], log
    assert "bob's secret" not in lines["other"] and "Permission denied" in lines["other"], log
    assert "secret.txt" not in lines["otherls"] and "ws" not in lines["otherls"].split(), log
    assert lines["envdb"] == "0", log


async def test_an_upload_never_follows_a_symlink(base_dir: Path, tmp_path: Path) -> None:
    """A link planted in the code directory (by a trial running as the service's user, or on shared
    storage) does not make an upload write outside the workspace."""
    data = base_dir / "svc"
    db_url = f"sqlite:///{data / 'service.db'}"
    data.mkdir()
    db = await open_database(db_url)
    try:
        alice = await add_user(db, "alice")
    finally:
        await db.close()
    outside = tmp_path / "outside"
    outside.mkdir()
    async with running_service(ServiceSettings(data_dir=data, database_url=db_url)) as (_s, api, _u):
        await api.ok("PUT", "/workspaces/ws/files/a.txt", token=alice, data=b"a")
        code = data / "workspaces" / "alice" / "ws" / "code"
        (code / "linkdir").symlink_to(outside)
        (code / "link.sh").symlink_to(outside / "target.sh")
        status, body = await api.call("PUT", "/workspaces/ws/files/linkdir/evil.sh", token=alice, data=b"evil")
        assert status == 409, body
        assert "link" in body["error"], body
        status, body = await api.call("PUT", "/workspaces/ws/files/link.sh", token=alice, data=b"evil")
        assert status == 201, body  # the link itself is replaced by a file; nothing is written through it
    assert list(outside.iterdir()) == []
    assert not (code / "link.sh").is_symlink() and (code / "link.sh").read_bytes() == b"evil"
