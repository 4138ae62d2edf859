"""``nni-ts serve`` as a real process, killed mid-experiment and started again: the trials it was
running are re-attached (not re-run) and nothing they reported is lost; on SQLite and PostgreSQL.
Also the ``nni-ts users`` commands."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import psutil
import pytest
from service_support import GATED_TRIAL, Api, quick_config

pytestmark = pytest.mark.slow  # seconds per test: scripts/test --fast leaves it out

CLI = [sys.executable, "-m", "nni_ts.cli"]


def _users(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--json", "users", "--db", db_url, *args], capture_output=True, text=True, timeout=60)


@contextmanager
def _serve(db_url: str, data_dir: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    log_path = data_dir.parent / f"serve-{len(list(data_dir.parent.glob('serve-*')))}.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [*CLI, "serve", "--port", "0", "--db", db_url, "--data-dir", str(data_dir), "--replica", "r1", *extra],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert "listening on http://" in line, line + log_path.read_text()
        yield proc, line.split("listening on ", 1)[1].split()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        proc.stdout.close()


def _stderr_logs(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in sorted(tmp_path.glob("serve-*.log")))


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
async def test_restart_reattaches_running_trials_and_loses_nothing(db_url: str, tmp_path: Path, how: str) -> None:
    data_dir = tmp_path / "svc"
    data_dir.mkdir()
    added = _users(db_url, "add", "alice")
    assert added.returncode == 0, added.stderr
    token = json.loads(added.stdout)["token"]
    gate = tmp_path / "gate"
    async with aiohttp.ClientSession() as session:
        with _serve(db_url, data_dir) as (proc, url):
            api = Api(url, session)
            await api.ok("PUT", "/workspaces/ws/files/trial.py", token=token, data=GATED_TRIAL.encode())
            created = await api.ok(
                "POST",
                "/workspaces/ws/experiments",
                token=token,
                json=quick_config(trials=4, concurrency=2, command=f"python3 trial.py {gate}"),
            )
            experiment_id = created["id"]
            async with asyncio.timeout(60):  # both trials run and their first records are mirrored
                while True:
                    trials = await api.ok("GET", f"/experiments/{experiment_id}/trials", token=token)
                    if len(trials) == 2 and all(t["status"] == "RUNNING" and t["metricCount"] == 2 for t in trials):
                        break
                    await asyncio.sleep(0.05)
            before = {t["id"] for t in trials}
            os.kill(proc.pid, getattr(signal, how))
            assert proc.wait(60) == (0 if how == "SIGTERM" else -signal.SIGKILL)
        # The trials outlived the service.
        pids = [
            p
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and "trial.py" in " ".join(p.info["cmdline"]) and str(gate) in p.info["cmdline"]
        ]
        assert len(pids) == 2
        with _serve(db_url, data_dir) as (proc, url):
            api = Api(url, session)
            shown = await api.ok("GET", f"/experiments/{experiment_id}", token=token)
            assert shown["status"] == "RUNNING" and shown["live"], shown
            trials = await api.ok("GET", f"/experiments/{experiment_id}/trials", token=token)
            assert {t["id"] for t in trials} == before and all(t["status"] == "RUNNING" for t in trials)
            gate.touch()
            done = await api.wait_experiment(experiment_id, token)
            assert done["status"] == "DONE", done
            assert done["trialCounts"] == {"SUCCEEDED": 4}, done
            trials = await api.ok("GET", f"/experiments/{experiment_id}/trials", token=token)
            assert before <= {t["id"] for t in trials} and len(trials) == 4
            assert all(t["attempt"] == 1 and t["metricCount"] == 4 for t in trials), trials
            metrics = await api.ok("GET", f"/experiments/{experiment_id}/metrics", token=token)
            for t in trials:
                mine = [m for m in metrics if m["trialId"] == t["id"]]
                assert [m["seq"] for m in mine] == [0, 1, 2, 3]
                assert [m["value"] for m in mine] == [1, 2, 3, t["parameters"]["x"]]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
    logs = _stderr_logs(tmp_path)
    assert "Re-attaching to experiment" in logs
    assert token not in logs and token[:12] not in logs.replace(token[:12] + "***", "")


def test_users_commands(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'users.db'}"
    first = _users(db_url, "add", "carol", "--admin", "--max-trials", "4")
    assert first.returncode == 0, first.stderr
    token = json.loads(first.stdout)["token"]
    assert token.startswith("nts_") and len(token) > 40
    assert token not in (tmp_path / "users.db").read_bytes().decode("latin-1")  # only its hash is stored
    again = _users(db_url, "add", "carol")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    shown = _users(db_url, "token", "carol")
    assert shown.returncode == 2 and "--rotate" in shown.stderr
    rotated = _users(db_url, "token", "carol", "--rotate")
    assert rotated.returncode == 0 and json.loads(rotated.stdout)["token"] != token
    after = subprocess.run(
        [*CLI, "--json", "users", "list", "--db", db_url], capture_output=True, text=True, timeout=60
    )
    assert after.returncode == 0 and json.loads(after.stdout)[0]["name"] == "carol", after.stderr
    listed = json.loads(_users(db_url, "list").stdout)
    assert listed == [{"name": "carol", "admin": True, "maxTrials": 4, "maxGpus": None}]
    assert _users(db_url, "quota", "carol", "--max-gpus", "2").returncode == 0
    assert json.loads(_users(db_url, "list").stdout)[0]["maxGpus"] == 2
    assert _users(db_url, "remove", "carol").returncode == 0
    gone = _users(db_url, "remove", "carol")
    assert gone.returncode == 2 and "no user" in gone.stderr
    bad = _users(db_url, "add", "no spaces")
    assert bad.returncode == 2 and "user name" in bad.stderr
    wrong = subprocess.run([*CLI, "users", "--db", "mysql://x", "list"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "Unsupported database URL" in wrong.stderr


GRID_TRIAL = """
import os, sys, time
import nni

params = nni.get_next_parameter()
nni.report_intermediate_result(1)
gates = (f"{sys.argv[1]}-{params['x']}", f"{sys.argv[1]}-all")
deadline = time.monotonic() + 120
while not any(os.path.exists(g) for g in gates) and time.monotonic() < deadline:
    time.sleep(0.02)
nni.report_final_result(params["x"])
"""


async def test_a_quick_restart_after_sigkill_reattaches_and_grid_search_never_repeats_a_point(
    db_url: str, tmp_path: Path
) -> None:
    """Restarted while the killed service is still a zombie (not reaped), the new one re-attaches
    (a zombie is no live manager), and GridSearch learns of the running points: 0..5 each run once,
    though a slot frees while a re-attached point still runs."""
    data_dir = tmp_path / "svc"
    data_dir.mkdir()
    added = _users(db_url, "add", "alice")
    assert added.returncode == 0, added.stderr
    token = json.loads(added.stdout)["token"]
    gate = tmp_path / "gate"
    config = quick_config(trials=6, concurrency=2, command=f"python3 trial.py {gate}")
    config["searchSpace"] = {"x": {"_type": "choice", "_value": [0, 1, 2, 3, 4, 5]}}
    config["tuner"] = {"name": "GridSearch", "classArgs": {"optimize_mode": "maximize"}}
    async with aiohttp.ClientSession() as session:
        with _serve(db_url, data_dir) as (proc, url):
            api = Api(url, session)
            await api.ok("PUT", "/workspaces/ws/files/trial.py", token=token, data=GRID_TRIAL.encode())
            created = await api.ok("POST", "/workspaces/ws/experiments", token=token, json=config)
            experiment_id = created["id"]
            async with asyncio.timeout(60):
                while True:
                    trials = await api.ok("GET", f"/experiments/{experiment_id}/trials", token=token)
                    if len(trials) == 2 and all(t["status"] == "RUNNING" for t in trials):
                        break
                    await asyncio.sleep(0.05)
            assert sorted(t["parameters"]["x"] for t in trials) == [0, 1]
            os.kill(proc.pid, signal.SIGKILL)
            async with asyncio.timeout(30):  # killed, and left unreaped: a zombie
                while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
                    await asyncio.sleep(0.01)
            with _serve(db_url, data_dir) as (proc2, url2):
                assert psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE  # still unreaped
                api = Api(url2, session)
                shown = await api.ok("GET", f"/experiments/{experiment_id}", token=token)
                assert shown["status"] == "RUNNING" and shown["live"], shown
                Path(f"{gate}-1").touch()  # x=1 ends; x=0 still runs when the tuner is asked again
                async with asyncio.timeout(60):
                    while len(await api.ok("GET", f"/experiments/{experiment_id}/trials", token=token)) < 3:
                        await asyncio.sleep(0.05)
                Path(f"{gate}-all").touch()
                done = await api.wait_experiment(experiment_id, token)
                assert done["status"] == "DONE", done
                trials = await api.ok("GET", f"/experiments/{experiment_id}/trials", token=token)
                assert sorted(t["parameters"]["x"] for t in trials) == [0, 1, 2, 3, 4, 5], trials
                proc2.send_signal(signal.SIGTERM)
                assert proc2.wait(60) == 0
