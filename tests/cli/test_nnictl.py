"""nnictl's commands in nni-ts: exports and imports, delete, top, logs, stop, algo, trial run; honest endings."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from nni_ts.cli import main
from nni_ts.models import TrialJobStatus
from nni_ts.storage import open_store
from nni_ts.testing.sshd import SshdCluster

CLI = [sys.executable, "-m", "nni_ts.cli"]
REAL_NNI_PYTHON = os.environ.get("NNI_TS_REAL_NNI_PYTHON", "/opt/nni-real/bin/python")

DICT_TRIAL = textwrap.dedent(
    """\
    import nni
    p = nni.get_next_parameter()
    for i in range(2):
        nni.report_intermediate_result({"default": p["x"] + i, "loss": -i, "note": "é"})
    nni.report_final_result({"default": p["x"], "loss": 1.0 / p["x"], "acc5": [1, 2]})
    """
)


def _config(tmp_path: Path, trial: str, name: str = "config.yml", **over: Any) -> Path:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "trial.py").write_text(trial)
    cfg: dict[str, Any] = {
        "searchSpace": {"x": {"_type": "choice", "_value": [1, 2, 3]}},
        "trialCommand": f"{sys.executable} trial.py",
        "trialCodeDirectory": "code",
        "trialConcurrency": 1,
        "maxTrialNumber": 3,
        "tuner": {"name": "GridSearch"},
        "trainingService": {"platform": "local"},
    }
    cfg.update(over)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _manager_pid(experiment_id: str) -> int | None:
    with open_store(readonly=True) as s:
        return s.get_experiment(experiment_id).manager_pid


# ---------------------------------------------------------------------- exports


def test_exports_keep_every_key_and_the_intermediate_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["create", "-c", str(_config(tmp_path, DICT_TRIAL)), "--id", "ex", "--quiet"]) == 0
    capsys.readouterr()

    # Our CSV: one column per parameter and per key of the final result, the intermediate results too.
    assert main(["experiment", "export", "ex", "--format", "csv", "--intermediate"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 3
    for r in rows:
        x = int(r["x"])
        assert float(r["final.default"]) == x and float(r["final.loss"]) == pytest.approx(1.0 / x)
        assert json.loads(r["final.acc5"]) == [1, 2]
        assert json.loads(r["intermediate"]) == [
            {"default": x, "loss": 0, "note": "é"},
            {"default": x + 1, "loss": -1, "note": "é"},
        ]

    # Our JSON with nnictl's flag names: the whole dict of every record.
    out = tmp_path / "out.json"
    assert main(["experiment", "export", "ex", "--type", "json", "--filename", str(out), "-i"]) == 0
    exported = json.loads(out.read_text())
    for t in exported:
        x = t["parameters"]["x"]
        assert t["final"] == {"default": x, "loss": pytest.approx(1.0 / x), "acc5": [1, 2]}
        assert [m["value"]["loss"] for m in t["metrics"] if m["type"] == "PERIODICAL"] == [0, -1]

    # NNI's JSON: value and intermediate results as JSON text, only trials with a final result.
    assert main(["experiment", "export", "ex", "--format", "nni", "--intermediate"]) == 0
    nni_json = json.loads(capsys.readouterr().out)
    assert {tuple(sorted(e)) for e in nni_json} == {("intermediate", "parameter", "trialJobId", "value")}
    for e in nni_json:
        assert isinstance(e["value"], str) and json.loads(e["value"])["default"] == e["parameter"]["x"]
        assert [json.loads(v)["loss"] for v in e["intermediate"]] == [0, -1]

    # NNI's CSV: parameters, the result's keys as they are, trialJobId.
    assert main(["experiment", "export", "ex", "--format", "nni", "--type", "csv"]) == 0
    nni_rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert set(nni_rows[0]) == {"x", "default", "loss", "acc5", "trialJobId"}
    assert sorted(r["trialJobId"] for r in nni_rows) == sorted(e["trialJobId"] for e in nni_json)


def test_an_nni_export_imported_steers_the_tuner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GridSearch skips the points an import says are done; the import reaches the tuner before it suggests."""
    trial = "import nni\np = nni.get_next_parameter()\nnni.report_final_result(p['x'] * 1.5)\n"
    space = {"x": {"_type": "choice", "_value": [1, 2, 3, 4]}}
    cfg = _config(tmp_path, trial, searchSpace=space, maxTrialNumber=1)
    assert main(["create", "-c", str(cfg), "--id", "imp", "--quiet"]) == 0
    capsys.readouterr()
    # What nnictl's export of another experiment wrote: points 2 and 3 (value as JSON text, as NNI does),
    # and NNI's CSV export of point 4.
    nni_json = tmp_path / "nni.json"
    nni_json.write_text(
        json.dumps([{"parameter": {"x": x}, "value": json.dumps(x * 1.5), "trialJobId": f"T{x}"} for x in (2, 3)])
    )
    nni_csv = tmp_path / "nni.csv"
    nni_csv.write_text("x,reward,trialJobId\n4,6.0,T4\n")
    assert main(["--json", "experiment", "import", "imp", "-f", str(nni_json)]) == 0
    assert json.loads(capsys.readouterr().out) == {"id": "imp", "imported": 2, "live": False}
    assert main(["experiment", "import", "imp", "--filename", str(nni_csv)]) == 0
    capsys.readouterr()
    # Grid order is 1, 2, 3, 4: trial 1 ran; with 2, 3, 4 imported there is nothing left to try.
    assert main(["--json", "extend", "imp", "--max-trial-number", "3", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    with open_store(readonly=True) as s:
        tried = [t.parameters["x"] for t in s.list_trials("imp")]
    assert tried == [1], result
    assert result["status"] == "DONE" and "no more parameters" in result["message"]


def test_import_reaches_a_custom_nni_tuner_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tuner written for NNI (`from nni.tuner import Tuner`) loads without nni; imported data comes first."""
    tuners = tmp_path / "tuners"
    tuners.mkdir()
    (tuners / "recording_tuner.py").write_text(
        textwrap.dedent(
            """\
            import json, os
            from nni.tuner import Tuner
            from nni.utils import OptimizeMode, extract_scalar_reward

            LOG = os.environ["RECORD_TO"]

            class RecordingTuner(Tuner):
                def __init__(self, optimize_mode="maximize"):
                    self.mode = OptimizeMode(optimize_mode)
                    self.best = None
                def _log(self, *what):
                    with open(LOG, "a") as fh:
                        fh.write(json.dumps(what) + "\\n")
                def update_search_space(self, search_space):
                    self.space = search_space
                def import_data(self, data):
                    self._log("import", [extract_scalar_reward(d["value"]) for d in data])
                    self.best = max(data, key=lambda d: extract_scalar_reward(d["value"]))["parameter"]
                def generate_parameters(self, parameter_id, **kwargs):
                    self._log("generate", parameter_id)
                    return dict(self.best or {"x": 1})
                def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
                    self._log("result", parameter_id, value)
            """
        )
    )
    record = tmp_path / "record.jsonl"
    os.environ["RECORD_TO"] = str(record)
    try:
        trial = "import nni\np = nni.get_next_parameter()\nnni.report_final_result(p['x'])\n"
        tuner = {"className": "recording_tuner.RecordingTuner", "codeDirectory": "tuners"}
        cfg = _config(tmp_path, trial, tuner=tuner, maxTrialNumber=1)
        assert main(["create", "-c", str(cfg), "--id", "rec", "--quiet"]) == 0
        data = tmp_path / "data.json"
        data.write_text(
            json.dumps([{"parameter": {"x": 3}, "value": {"default": 9.0}}, {"parameter": {"x": 2}, "value": 4}])
        )
        assert main(["experiment", "import", "rec", "-f", str(data)]) == 0
        record.write_text("")
        assert main(["extend", "rec", "--max-trial-number", "2", "--quiet"]) == 0
        capsys.readouterr()
    finally:
        del os.environ["RECORD_TO"]
    events = [json.loads(line) for line in record.read_text().splitlines()]
    first_generate = events.index(["generate", 1])
    imported = [v for kind, *rest in events[:first_generate] if kind == "import" for v in rest[0]]
    assert sorted(imported) == [1, 4, 9.0]  # the earlier trial replayed, then the file's two results
    with open_store(readonly=True) as s:
        assert [t.parameters for t in s.list_trials("rec")] == [{"x": 1}, {"x": 3}]


def test_import_mistakes_are_sentences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, "import nni\nnni.get_next_parameter()\nnni.report_final_result(1)\n", maxTrialNumber=1)
    assert main(["create", "-c", str(cfg), "--id", "bad", "--quiet"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"parameter": {"x": 1}, "value": {"loss": 3}}]))
    capsys.readouterr()
    assert main(["experiment", "import", "bad", "-f", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "entry 1" in err and "'default'" in err and "Traceback" not in err
    bad.write_text(json.dumps([{"parameter": {"x": 1}, "value": 1}, {"parameter": {"lr": 1}, "value": 1}]))
    assert main(["experiment", "import", "bad", "-f", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "result 2: lr is not a parameter" in err and "nothing was imported" in err
    assert not (
        Path(json.loads(_run("--json", "experiment", "show", "bad").stdout)["workingDirectory"]) / "imported.jsonl"
    ).exists()


# ---------------------------------------------------------------------- honest endings


def test_best_trial_is_a_succeeded_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """x=3 reports the best value, then fails: the best trial is x=2."""
    trial = "import nni, sys\np = nni.get_next_parameter()\nnni.report_final_result(p['x'])\nsys.exit(p['x'] == 3)\n"
    assert main(["--json", "create", "-c", str(_config(tmp_path, trial)), "--id", "b", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["best"]["parameters"] == {"x": 2} and result["succeeded"] == 2
    assert main(["--json", "view", "b"]) == 0
    assert json.loads(capsys.readouterr().out)["best"]["parameters"] == {"x": 2}
    # nnictl's `experiment status`, `config show` and `log trial`
    assert main(["--json", "experiment", "status", "b"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "DONE"
    assert main(["--json", "config", "show", "b"]) == 0
    assert json.loads(capsys.readouterr().out)["maxTrialNumber"] == 3
    assert main(["--json", "log", "trial", "b"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert len(paths) == 3 and all(Path(p, "stdout").exists() for p in paths.values())
    assert main(["log", "trial", "b", "--trial_id", "NOPE"]) == 2


def test_no_trial_succeeded_exits_1_and_says_why(tmp_path: Path) -> None:
    trial = "import sys\nprint('loading data', file=sys.stderr)\nraise SystemExit('the data set is missing')\n"
    proc = _run("create", "-c", str(_config(tmp_path, trial, maxTrialNumber=2)), "--id", "nope", "--quiet")
    assert proc.returncode == 1
    assert "No trial succeeded (2 failed)" in proc.stdout
    assert "the data set is missing" in proc.stdout  # the first failed trial's stderr
    assert "nni-ts trial log nope" in proc.stdout and "--stderr" in proc.stdout
    assert "Traceback" not in proc.stderr
    view = _run("view", "nope")
    assert view.returncode == 0 and "no trial succeeded: see why with `nni-ts trial log nope" in view.stdout


def test_detach_checks_the_platform_before_returning(tmp_path: Path) -> None:
    """No GPU here: `create --detach` fails with the reason instead of returning 0."""
    cfg = _config(tmp_path, "print(1)\n", trialGpuNumber=1)
    proc = _run("create", "-c", str(cfg), "--id", "gpu", "--detach", timeout=120)
    assert proc.returncode == 2, proc.stdout
    assert "GPU" in proc.stderr and "did not start" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------- trial commands


def test_trial_log_tail_counts_lines_and_ls_head_tail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trial = textwrap.dedent(
        """\
        import nni
        p = nni.get_next_parameter()
        for i in range(5000):
            print(f"ligne {i} é中" + "x" * (i % 7))
        nni.report_final_result(p["x"])
        """
    )
    assert main(["create", "-c", str(_config(tmp_path, trial)), "--id", "tl", "--quiet"]) == 0
    capsys.readouterr()
    with open_store(readonly=True) as s:
        first = s.list_trials("tl")[0].id
    proc = subprocess.run([*CLI, "trial", "log", "tl", first, "--tail", "3"], capture_output=True, timeout=60)
    assert proc.returncode == 0
    text = proc.stdout.decode("utf-8")  # never a cut character
    assert text.splitlines() == [f"ligne {i} é中" + "x" * (i % 7) for i in (4997, 4998, 4999)]

    assert main(["--json", "trial", "ls", "tl", "--head", "2"]) == 0
    assert [t["finalValue"] for t in json.loads(capsys.readouterr().out)] == [3, 2]
    assert main(["--json", "trial", "ls", "tl", "--tail", "1"]) == 0
    assert [t["finalValue"] for t in json.loads(capsys.readouterr().out)] == [1]


@pytest.mark.skipif(
    not Path(REAL_NNI_PYTHON).exists(),
    reason="needs a Python with the real nni installed (set NNI_TS_REAL_NNI_PYTHON; .ci/run creates /opt/nni-real)",
)
def test_trial_log_shows_trial_log_of_a_real_nni_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trial = "import nni\np = nni.get_next_parameter()\nprint('printed by the trial', p)\nnni.report_final_result(1)\n"
    cfg = _config(tmp_path, trial, trialCommand=f"{REAL_NNI_PYTHON} trial.py", maxTrialNumber=1)
    assert main(["create", "-c", str(cfg), "--id", "real", "--quiet"]) == 0
    capsys.readouterr()
    with open_store(readonly=True) as s:
        (t,) = s.list_trials("real")
    assert main(["trial", "log", "real", t.id]) == 0
    captured = capsys.readouterr()
    assert "printed by the trial" in captured.out and "trial.log" in captured.err


def test_trial_run_by_hand(tmp_path: Path) -> None:
    script = tmp_path / "t.py"
    script.write_text(DICT_TRIAL)
    proc = _run("--json", "trial", "run", str(script), "--params", '{"x": 2}')
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["final"] == {"default": 2, "loss": 0.5, "acc5": [1, 2]}
    assert [v["default"] for v in out["intermediate"]] == [2, 3]
    bad = _run("trial", "run", str(script), "--params", "[1]")
    assert bad.returncode == 2 and "JSON object" in bad.stderr


# ---------------------------------------------------------------------- delete, log, top, stop


@pytest.mark.allow_leaked_children
def test_running_experiment_top_log_stop_then_delete(tmp_path: Path) -> None:
    trial = "import nni, time\np = nni.get_next_parameter()\nprint('started', flush=True)\ntime.sleep(120)\n"
    cfg = _config(tmp_path, trial, trialConcurrency=2)
    start = _run("create", "-c", str(cfg), "--id", "live", "--detach")
    assert start.returncode == 0, start.stderr
    pid = _manager_pid("live")
    try:
        top = _run("--json", "top", "--once")
        assert top.returncode == 0, top.stderr
        (row,) = json.loads(top.stdout)
        assert row["id"] == "live" and "running" in row

        path = _run("log", "stderr", "--path")  # no id: the one running experiment
        assert path.returncode == 0 and path.stdout.strip().endswith("manager.err")
        assert _run("log", "stdout", "live", "--tail", "5").returncode == 0

        data = tmp_path / "more.json"
        data.write_text(json.dumps([{"parameter": {"x": 3}, "value": 0.5}]))
        imported = _run("--json", "experiment", "import", "-f", str(data))  # into the running manager
        assert imported.returncode == 0, imported.stderr
        assert json.loads(imported.stdout) == {"id": "live", "imported": 1, "live": True}
        assert _run("experiment", "list", "--all").returncode == 0

        refused = _run("experiment", "delete", "live")
        assert refused.returncode == 2 and "stop it first" in refused.stderr

        with open_store(readonly=True) as s:
            _wait(lambda: any(t.status is TrialJobStatus.RUNNING for t in s.list_trials("live")), 60, "a trial")
            victim = next(t.id for t in s.list_trials("live") if t.status is TrialJobStatus.RUNNING)
        kill = _run("trial", "kill", "--trial_id", victim)  # nnictl's form, no experiment id
        assert kill.returncode == 0, kill.stderr

        stop = _run("--json", "stop")  # no id: the one running experiment
        assert stop.returncode == 0, stop.stderr
        assert json.loads(stop.stdout) == {"stopped": ["live"], "notStopped": {}}
        # Gone, or a zombie not yet reaped by its parent (in a container, PID 1 may never reap it).
        assert pid is not None
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if pid and psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)
    wd = Path(json.loads(_run("--json", "experiment", "show", "live").stdout)["workingDirectory"])
    assert wd.is_dir()
    deleted = _run("experiment", "delete", "live")
    assert deleted.returncode == 0, deleted.stderr
    assert not wd.exists()
    with open_store(readonly=True) as s:
        assert s.list_experiments() == []
        assert s.list_trials("live") == []


BLOCKING_TUNER = """\
import time
from nni.tuner import Tuner

class BlockingTuner(Tuner):
    def update_search_space(self, search_space):
        pass
    def generate_parameters(self, parameter_id, **kwargs):
        while True:
            time.sleep(1)
    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        pass
"""


@pytest.mark.slow
@pytest.mark.allow_leaked_children
def test_stop_ends_a_manager_whose_tuner_blocks(tmp_path: Path) -> None:
    """NNI's multi-thread test tuner never returns: `stop` still ends the manager, and says so."""
    (tmp_path / "blocking_tuner.py").write_text(BLOCKING_TUNER)
    tuner = {"className": "blocking_tuner.BlockingTuner", "codeDirectory": "."}
    cfg = _config(tmp_path, "print(1)\n", tuner=tuner)
    assert _run("create", "-c", str(cfg), "--id", "blk", "--detach").returncode == 0
    pid = _manager_pid("blk")
    assert pid is not None
    try:
        stop = _run("stop", "blk", "--timeout", "1", timeout=120)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert "Experiment blk stopped." in stop.stdout
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.allow_leaked_children
def test_stop_says_when_the_manager_has_not_stopped(tmp_path: Path) -> None:
    """A manager that cannot act (frozen with SIGSTOP): `stop` says it has not stopped, exit 1."""
    trial = "import nni, time\nnni.get_next_parameter()\ntime.sleep(120)\n"
    cfg = _config(tmp_path, trial)
    assert _run("create", "-c", str(cfg), "--id", "frozen", "--detach").returncode == 0
    pid = _manager_pid("frozen")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        stop = _run("stop", "frozen", "--timeout", "1", timeout=120)
        assert stop.returncode == 1
        assert "has NOT stopped" in stop.stdout and f"pid {pid}" in stop.stdout
        assert "SIGINT" in stop.stdout and "SIGTERM" in stop.stdout and f"kill -9 {pid}" in stop.stdout
        assert psutil.pid_exists(pid)
    finally:
        os.kill(pid, signal.SIGCONT)  # the signals it held arrive: it stops and cancels its trial
        try:
            psutil.Process(pid).wait(60)
        except psutil.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    with open_store(readonly=True) as s:
        assert all(t.status.is_terminal for t in s.list_trials("frozen"))


def test_platform_clean_removes_only_unrecorded_directories(tmp_path: Path, nni_ts_home: Path) -> None:
    cfg = _config(tmp_path, "import nni\nnni.get_next_parameter()\nnni.report_final_result(1)\n", maxTrialNumber=1)
    assert _run("create", "-c", str(cfg), "--id", "kept", "--quiet").returncode == 0
    stale = nni_ts_home / "experiments" / "stale"
    (stale / "trials" / "abc").mkdir(parents=True)
    other = nni_ts_home / "experiments" / "not-ours"
    other.mkdir()
    proc = _run("--json", "platform", "clean", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["removed"] == [str(stale)]
    assert not stale.exists() and other.exists() and (nni_ts_home / "experiments" / "kept").exists()


def test_platform_clean_on_remote_machines(tmp_path: Path, sshd_cluster: SshdCluster) -> None:
    """Over real SSH: every experiment directory on every machine goes, but a running experiment's."""
    with open_store() as s:
        s.create_experiment(
            "busy", name=None, platform="remote", config={}, working_dir=tmp_path / "busy", manager_pid=None
        )
    machines = []
    for host in sshd_cluster.hosts:
        for name in ("busy", "old1", "old2"):
            (host.work_dir / "experiments" / name / "trials").mkdir(parents=True)
        (host.work_dir / "code").mkdir()
        machines.append(host.machine(workDirectory=str(host.work_dir)))
    ts = {"platform": "remote", "machineList": machines, "knownHostsFile": str(sshd_cluster.known_hosts)}
    cfg = _config(tmp_path, "print(1)\n", trainingService=ts)
    proc = _run("--json", "platform", "clean", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["removed"]) == 4
    for host in sshd_cluster.hosts:
        assert sorted(p.name for p in (host.work_dir / "experiments").iterdir()) == ["busy"]
        assert (host.work_dir / "code").is_dir()


# ---------------------------------------------------------------------- algo register


def test_algo_register_then_use_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NNI's demotuner flow: a meta file registers a class; the name then works in a config."""
    pkg = tmp_path / "demo"
    pkg.mkdir()
    (pkg / "demo_tuner.py").write_text(
        textwrap.dedent(
            """\
            from nni.tuner import Tuner
            from nni.utils import ClassArgsValidator

            class DemoTuner(Tuner):
                def __init__(self, value=7):
                    self.value = value
                def update_search_space(self, search_space):
                    pass
                def generate_parameters(self, parameter_id, **kwargs):
                    return {"x": self.value}
                def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
                    pass

            class MyClassArgsValidator(ClassArgsValidator):
                def validate_class_args(self, **kwargs):
                    pass
            """
        )
    )
    meta = pkg / "meta_file.yml"
    meta.write_text(
        "algoType: tuner\nbuiltinName: demotuner\nclassName: demo_tuner.DemoTuner\n"
        "classArgsValidator: demo_tuner.MyClassArgsValidator\n"
    )
    assert main(["algo", "register", "-m", str(meta)]) == 0
    assert "demotuner registered" in capsys.readouterr().out
    assert main(["--json", "algo", "list"]) == 0
    listed = {r["builtinName"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["demotuner"]["source"] == "user" and listed["TPE"]["source"] == "nni-ts"

    trial = "import nni\np = nni.get_next_parameter()\nnni.report_final_result(p['x'])\n"
    cfg = _config(tmp_path, trial, tuner={"name": "demotuner", "classArgs": {"value": 5}}, maxTrialNumber=1)
    assert main(["--json", "create", "-c", str(cfg), "--id", "demo", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["best"]["parameters"] == {"x": 5}

    assert main(["algo", "unregister", "demotuner"]) == 0
    assert main(["algo", "unregister", "TPE"]) == 2
    assert "built into nni-ts" in capsys.readouterr().err
    assert main(["create", "-c", str(cfg), "--id", "demo2", "--quiet"]) == 2
    assert "demotuner" in capsys.readouterr().err


# ---------------------------------------------------------------------- config errors and remote failures


def test_every_config_mistake_in_one_run(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yml"
    cfg.write_text(
        textwrap.dedent(
            """\
            searchSpace: {x: {_type: choice, _value: [1, 2]}}
            trialConcurrency: 0
            maxExperimentDuration: 1 hour
            tunr: {name: TPE}
            tuner:
              name: TPE
              classArgs: {optimize_mode: maximize, bogus: 1}
            assessor: {name: Medianstop, classArgs: {start_stp: 3}}
            trainingService: {platform: local, useActiveGpu: maybe}
            """
        )
    )
    proc = _run("create", "-c", str(cfg))
    assert proc.returncode == 2
    err = proc.stderr
    for key, line in [
        ("trialConcurrency", 2),
        ("maxExperimentDuration", 3),
        ("tunr", 4),
        ("trainingService.useActiveGpu", 9),
    ]:
        assert f"{key} (line {line})" in err, err
    assert "trialCommand" in err  # a check across keys, reported with the others
    assert err.count("'1 hour'") == 1  # said once, not "got '1 hour' (got '1 hour')"
    cfg.write_text(
        textwrap.dedent(
            """\
            searchSpace: {x: {_type: choice, _value: [1, 2]}}
            trialCommand: python3 trial.py
            trialConcurrency: 1
            tuner:
              name: TPE
              classArgs: {optimize_mode: maximize, bogus: 1}
            assessor: {name: Medianstop, classArgs: {start_stp: 3}}
            trainingService: {platform: local}
            """
        )
    )
    proc = _run("create", "-c", str(cfg))
    assert proc.returncode == 2
    assert "tuner.classArgs.bogus (line 6)" in proc.stderr and "assessor.classArgs.start_stp (line 7)" in proc.stderr


def test_remote_connection_failure_is_a_sentence(tmp_path: Path) -> None:
    """A host that does not speak SSH: one sentence, no paramiko traceback."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        machine = {"host": "127.0.0.1", "port": server.getsockname()[1], "user": "nobody", "password": "x"}
        cfg = _config(tmp_path, "print(1)\n", trainingService={"platform": "remote", "machineList": [machine]})
        proc = _run("create", "-c", str(cfg), "--quiet", timeout=180)
    finally:
        done.set()
        thread.join(5)
        server.close()
    assert proc.returncode != 0
    assert "Cannot connect to nobody@127.0.0.1" in proc.stderr
    assert "Traceback" not in proc.stderr and "paramiko" not in proc.stderr
