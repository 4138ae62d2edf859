"""The ``nni-ts`` command: the main job, read-only views, exports, trial commands, stop, mistakes."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from nni_ts.cli import main
from nni_ts.models import TrialJobStatus
from nni_ts.storage import open_store

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "nni_ts.cli"]

FAST_TRIAL = (
    "import nni\np = nni.get_next_parameter()\nnni.report_intermediate_result(0)\nprint('hello from', p)\n"
    "nni.report_final_result(p['x'])\n"
)
SLOW_TRIAL = "import nni, time\np = nni.get_next_parameter()\nprint('started', flush=True)\ntime.sleep(120)\n"


def _write_config(tmp_path: Path, trial: str, **over: object) -> Path:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "trial.py").write_text(trial)
    cfg = {
        "experimentName": "cli-test",
        "searchSpace": {"x": {"_type": "choice", "_value": [1, 2, 3]}},
        "trialCommand": f"{sys.executable} trial.py",
        "trialCodeDirectory": "code",
        "trialConcurrency": 2,
        "maxTrialNumber": 3,
        "tuner": {"name": "Random", "classArgs": {"seed": 1}},
        "trainingService": {"platform": "local"},
    }
    cfg.update(over)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_quickstart_main_job(tmp_path: Path) -> None:
    """The README's main-job command completes an experiment and prints the best trial."""
    shutil.copytree(ROOT / "examples" / "quickstart", tmp_path / "quickstart")
    proc = subprocess.run(
        [*CLI, "create", "-c", str(tmp_path / "quickstart" / "config.yml")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "DONE" in proc.stdout
    assert "Best trial" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("config", ["config_v1.yml", "config_v2.yml"])
def test_nni_compat_example_runs(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--json", "create", "-c", str(ROOT / "examples" / "nni-compat" / config), "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["status"] == "DONE" and out["trials"] == 8
    assert 0 < out["best"]["finalValue"] <= 1


def test_views_exports_and_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write_config(tmp_path, FAST_TRIAL)
    assert main(["--json", "create", "-c", str(cfg), "--id", "exp1", "--quiet"]) == 0
    capsys.readouterr()

    assert main(["--json", "experiment", "list"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["id"] == "exp1" and listed["status"] == "DONE"

    assert main(["--json", "experiment", "show", "exp1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["trialCodeDirectory"] == str(tmp_path / "code")  # resolved against the file

    assert main(["--json", "trial", "ls", "exp1"]) == 0
    trials = json.loads(capsys.readouterr().out)
    assert len(trials) == 3 and {t["status"] for t in trials} == {"SUCCEEDED"}
    assert all(t["finalValue"] == t["parameters"]["x"] for t in trials)

    assert main(["experiment", "export", "exp1", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(r["trialId"] for r in rows) == sorted(t["id"] for t in trials)
    assert all(float(r["finalValue"]) == float(r["x"]) for r in rows)

    assert main(["experiment", "export", "exp1", "--format", "json", "--with-metrics"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert all([m["type"] for m in t["metrics"]] == ["PERIODICAL", "FINAL"] for t in exported)

    tid = trials[0]["id"]
    assert main(["trial", "log", "exp1", tid]) == 0
    assert "hello from" in capsys.readouterr().out

    assert main(["view", "exp1", "--no-dashboard"]) == 0
    text = capsys.readouterr().out
    assert "DONE" in text and "best (maximize): 3" in text


def test_view_never_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str], nni_ts_home: Path) -> None:
    cfg = _write_config(tmp_path, FAST_TRIAL)
    assert main(["create", "-c", str(cfg), "--id", "ro", "--quiet"]) == 0
    db = nni_ts_home / "nni-ts.db"
    with open_store() as store:  # checkpoint so the main file holds everything
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = db.read_bytes()
    assert main(["view", "ro", "--no-dashboard"]) == 0
    assert main(["trial", "ls", "ro"]) == 0
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("trialConcurency: 2\n", ["trialConcurency", "unknown"]),
        ("trialConcurrency: lots\n", ["trialConcurrency", "integer"]),
        ("{unclosed: [\n", ["config.yml"]),
    ],
)
def test_bad_config_is_exit_2_with_a_precise_message(tmp_path: Path, content: str, expected: list[str]) -> None:
    path = tmp_path / "config.yml"
    path.write_text(content)
    proc = subprocess.run([*CLI, "create", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for word in expected:
        assert word in proc.stderr


def test_user_mistakes_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create", "-c", str(tmp_path / "nope.yml")]) == 2
    assert "nope.yml" in capsys.readouterr().err
    assert main(["view", "no-such-experiment"]) == 2
    assert main(["trial", "ls", "no-such-experiment"]) == 2
    assert main(["stop"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["create"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_detach_then_trial_kill_and_stop(tmp_path: Path) -> None:
    cfg = _write_config(tmp_path, SLOW_TRIAL, maxTrialNumber=4)
    proc = subprocess.run(
        [*CLI, "--json", "create", "-c", str(cfg), "--id", "bg", "--detach"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["id"] == "bg"

    def running() -> list:  # type: ignore[type-arg]
        try:
            with open_store(readonly=True) as s:
                return [t for t in s.list_trials("bg", with_detail=True) if t.status is TrialJobStatus.RUNNING]
        except Exception:
            return []

    _wait(lambda: len(running()) == 2, 60, "two running trials")
    first, second = running()
    log = subprocess.run([*CLI, "trial", "log", "bg", first.id], capture_output=True, timeout=60)
    assert log.returncode == 0
    kill = subprocess.run([*CLI, "trial", "kill", "bg", first.id], capture_output=True, text=True, timeout=60)
    assert kill.returncode == 0, kill.stderr
    with open_store(readonly=True) as s:
        assert s.get_trial("bg", first.id).status is TrialJobStatus.USER_CANCELED
    stop = subprocess.run([*CLI, "stop", "bg"], capture_output=True, text=True, timeout=180)
    assert stop.returncode == 0, stop.stderr
    with open_store(readonly=True) as s:
        rec = s.get_experiment("bg")
        assert rec.status == "STOPPED"
        trials = s.list_trials("bg", with_detail=True)
    assert all(t.status.is_terminal for t in trials)
    import psutil

    for t in trials:
        pid = t.detail.platform_data.get("pid") if t.detail else None
        if pid:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_extend_a_finished_experiment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write_config(tmp_path, FAST_TRIAL, maxTrialNumber=2)
    assert main(["create", "-c", str(cfg), "--id", "ext", "--quiet"]) == 0
    assert main(["extend", "ext"]) == 2  # needs to say what to extend
    assert main(["--json", "extend", "ext", "--max-trial-number", "4", "--quiet"]) == 0
    capsys.readouterr()
    with open_store(readonly=True) as s:
        trials = s.list_trials("ext")
    assert sorted(t.parameter_id for t in trials) == [0, 1, 2, 3]


def test_rerun_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trial = textwrap.dedent(
        """\
        import nni, os, sys
        p = nni.get_next_parameter()
        if not os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixed")):
            sys.exit(1)
        nni.report_final_result(p["x"])
        """
    )
    cfg = _write_config(tmp_path, trial, maxTrialNumber=2)
    assert main(["create", "-c", str(cfg), "--id", "rr", "--quiet"]) == 1  # no trial succeeded
    (tmp_path / "code" / "fixed").touch()
    assert main(["extend", "rr", "--rerun-failed", "--quiet"]) == 0
    capsys.readouterr()
    with open_store(readonly=True) as s:
        trials = s.list_trials("rr")
    assert len(trials) == 4
    assert sorted((t.parameter_id, t.attempt, t.status.value) for t in trials) == [
        (0, 1, "FAILED"),
        (0, 2, "SUCCEEDED"),
        (1, 1, "FAILED"),
        (1, 2, "SUCCEEDED"),
    ]


def test_stop_after_the_manager_died_cancels_what_it_left(tmp_path: Path) -> None:
    """A manager killed with SIGKILL leaves trials running; `nni-ts stop` finds and cancels them."""
    import os
    import signal

    import psutil

    cfg = _write_config(tmp_path, SLOW_TRIAL, maxTrialNumber=2)
    manager = subprocess.Popen(
        [*CLI, "create", "-c", str(cfg), "--id", "orphan", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def running() -> list:  # type: ignore[type-arg]
        try:
            with open_store(readonly=True) as s:
                return [
                    t
                    for t in s.list_trials("orphan", with_detail=True)
                    if t.status is TrialJobStatus.RUNNING and t.detail and t.detail.platform_data.get("pid")
                ]
        except Exception:
            return []

    try:
        _wait(lambda: len(running()) == 2, 60, "two running trials")
    finally:
        os.kill(manager.pid, signal.SIGKILL)
        manager.wait(timeout=30)
    pids = [t.detail.platform_data["pid"] for t in running()]
    assert all(psutil.pid_exists(p) for p in pids)
    stop = subprocess.run([*CLI, "--json", "stop", "--all"], capture_output=True, text=True, timeout=180)
    assert stop.returncode == 0, stop.stderr
    assert json.loads(stop.stdout)["stopped"] == ["orphan"]
    for p in pids:
        assert not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE
    with open_store(readonly=True) as s:
        assert s.get_experiment("orphan").status == "STOPPED"
        assert {t.status for t in s.list_trials("orphan")} == {TrialJobStatus.USER_CANCELED}
