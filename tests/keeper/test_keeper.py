"""The keeper on its own (no server): arguments, environment, output, the journal, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trial_keeper
from trial_keeper.journal import Journal, read_exit, read_journal, records_in_stdout, recover_records
from trial_keeper.keeper import Reporter

REPO = Path(__file__).resolve().parents[2]
PARAMS = '{"parameter_id": 3, "parameter_source": "algorithm", "parameters": {"lr": 0.01}, "parameter_index": 0}'


def keeper(trial_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    full = dict(os.environ)
    full["PYTHONPATH"] = str(REPO)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "trial_keeper", "--trial-dir", str(trial_dir), "--no-passthrough", *args],
        env=full,
        capture_output=True,
        timeout=120,
        cwd=str(trial_dir.parent),
    )


@pytest.fixture
def trial_dir(tmp_path: Path) -> Path:
    d = tmp_path / "trial"
    d.mkdir()
    (d / "parameter.cfg").write_text(PARAMS, encoding="utf-8")
    return d


def test_help_and_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trial_keeper", "--help"], capture_output=True, timeout=60, cwd=str(REPO)
    )
    assert out.returncode == 0 and b"--server-url" in out.stdout and b"NNI_TS_KEEPER_TRIAL_ID" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "trial_keeper", "--version"], capture_output=True, timeout=60, cwd=str(REPO)
    )
    assert out.stdout.strip().decode() == trial_keeper.__version__


def test_environment_parameters_and_quoting(trial_dir: Path) -> None:
    script = (
        "import json, os, sys, nni\n"
        "p = nni.get_next_parameter()\n"
        "keys = ['NNI_PLATFORM', 'NNI_TRIAL_JOB_ID', 'NNI_EXP_ID', 'NNI_SYS_DIR', 'NNI_OUTPUT_DIR',"
        " 'NNI_TRIAL_SEQ_ID', 'CUDA_VISIBLE_DEVICES', 'MULTI_PHASE', 'NNI_TS_KEEPER_TOKEN']\n"
        "env = {k: os.environ.get(k) for k in keys}\n"
        "nni.report_final_result({'default': p['lr'], 'env': env, 'argv': sys.argv[1:],"
        " 'nni': nni.__file__, 'ids': [nni.get_trial_id(), nni.get_experiment_id(), nni.get_sequence_id()]})\n"
    )
    (trial_dir.parent / "t.py").write_text(script, encoding="utf-8")
    canary = trial_dir.parent / "canary"
    out = keeper(
        trial_dir,
        "--trial-id", "Ab1",
        "--experiment-id", "exp9",
        "--sequence-id", "4",
        "--platform", "kubeflow",
        "--", sys.executable, "t.py", "it's", f"$(touch {canary})", 'a "b"',
        env={"CUDA_VISIBLE_DEVICES": "1,3", "NNI_TS_KEEPER_TOKEN": "secret"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert not canary.exists()
    (record,) = read_journal(str(trial_dir / ".nni-ts" / "journal"), "Ab1", 1)
    value = json.loads(json.loads(record[1])["value"])
    assert value["default"] == 0.01
    assert value["argv"] == ["it's", f"$(touch {canary})", 'a "b"']
    assert value["ids"] == ["Ab1", "exp9", 4]
    assert value["nni"].startswith(trial_keeper.LIGHT_NNI_PATH)
    assert value["env"] == {
        "NNI_PLATFORM": "kubeflow",
        "NNI_TRIAL_JOB_ID": "Ab1",
        "NNI_EXP_ID": "exp9",
        "NNI_SYS_DIR": str(trial_dir),
        "NNI_OUTPUT_DIR": str(trial_dir),
        "NNI_TRIAL_SEQ_ID": "4",
        "CUDA_VISIBLE_DEVICES": "1,3",
        "MULTI_PHASE": "false",
        "NNI_TS_KEEPER_TOKEN": None,  # the keeper's secrets stay out of the trial's environment
    }
    assert read_exit(str(trial_dir), "Ab1", 1)["record_count"] == 1  # type: ignore[index]


def test_output_records_and_exit_code(trial_dir: Path) -> None:
    big = "y" * (3 * 1024 * 1024)
    script = (
        "import sys\n"
        "w = sys.stdout.buffer.write\n"
        "w(b'plain line\\n')\n"
        'w(b"NNISDK_MEb\'{\\"a\\": \\"it\'s\\"}\'\\r\\n")\n'  # greedy to the last quote; CRLF
        "w(b'no record: NNISDK_MEb\\'{broken\\'\\n')\n"
        f"w(b'NNISDK_MEb' + b'{big}' + b'\\n')\n"  # an overlong line is output, not a record
        "w(b\"NNISDK_MEb'[1, 2]'\\n\")\n"
        "sys.stderr.write('to stderr\\n')\n"
        "w(b'no newline at the end')\n"
        "sys.exit(7)\n"
    )
    (trial_dir.parent / "t.py").write_text(script, encoding="utf-8")
    out = keeper(trial_dir, "--trial-id", "X", "--", f"{sys.executable} t.py")
    assert out.returncode == 7
    journal = read_journal(str(trial_dir / ".nni-ts" / "journal"))
    assert journal == [(0, '{"a": "it\'s"}'), (1, "[1, 2]")]
    stdout = (trial_dir / "stdout").read_bytes()
    assert stdout.startswith(b"plain line\nno record: NNISDK_MEb'{broken'\nNNISDK_MEb" + b"y" * 100)
    assert stdout.endswith(b"y\nno newline at the end")
    assert b'{"a"' not in stdout
    assert (trial_dir / "stderr").read_bytes() == b"to stderr\n"
    assert read_exit(str(trial_dir)) == {
        "trial": "X",
        "attempt": 1,
        "exit_code": 7,
        "end_time_ms": read_exit(str(trial_dir))["end_time_ms"],  # type: ignore[index]
        "record_count": 2,
    }
    assert recover_records(str(trial_dir), "X", 1) == journal


def test_killed_by_a_signal_and_arguments_from_the_environment(trial_dir: Path) -> None:
    out = keeper(
        trial_dir,
        env={"NNI_TS_KEEPER_TRIAL_ID": "E1", "NNI_TS_KEEPER_COMMAND": "kill -9 $$", "NNI_TS_KEEPER_ATTEMPT": "3"},
    )
    assert out.returncode == 128 + 9
    assert read_exit(str(trial_dir), "E1", 3)["exit_code"] == 137  # type: ignore[index]


@pytest.mark.slow
def test_mistakes_are_one_sentence_without_traceback(trial_dir: Path) -> None:
    cases = [
        (["--trial-id", "A", "--platform", "local", "--", "true"], "--platform local is not supported"),
        (["--trial-id", "A"], "The trial command is empty"),
        (["--", "true"], "The trial id is empty"),
        (["--trial-id", "A", "--server-url", "ftp://x", "--token", "t", "--", "true"], "http:// or https://"),
        (["--trial-id", "A", "--server-url", "http://127.0.0.1:1", "--", "true"], "without a token"),
        (["--trial-id", "A", "--token-file", "/nonexistent", "--", "true"], "cannot read the token file"),
        (["--trial-id", "A", "--heartbeat", "0", "--", "true"], "--heartbeat must be a positive"),
    ]
    for args, message in cases:
        out = keeper(trial_dir, *args)
        assert out.returncode == 2, args
        assert message in out.stderr.decode(), out.stderr
        assert b"Traceback" not in out.stderr
    assert keeper(trial_dir, "--trial-id", "A", "--", "true").returncode == 0
    again = keeper(trial_dir, "--trial-id", "A", "--", "true")
    assert again.returncode == 2 and b"already ran" in again.stderr
    assert keeper(trial_dir, "--trial-id", "A", "--attempt", "2", "--", "true").returncode == 0


def test_journal_tolerates_a_torn_last_record(tmp_path: Path) -> None:
    path = tmp_path / "j" / "journal"
    journal = Journal(str(path), "T", 1)
    journal.append([(0, "a'\"ü"), (1, "b")])
    journal.append([(1, "b")])  # a duplicate seq keeps the first
    journal.close()
    other = Journal(str(path), "U", 1)
    other.append([(2, "other trial")])
    other.close()
    with open(path, "ab") as fh:
        fh.write(b'{"trial": "T", "attempt": 1, "seq": 2, "data": "torn')
    assert read_journal(str(path), "T", 1) == [(0, "a'\"ü"), (1, "b")]
    assert read_journal(str(path), "T", 2) == []
    assert read_journal(str(tmp_path / "missing")) == []
    assert records_in_stdout(b"x\nNNISDK_MEb'[1]'\nNNISDK_MEb'[2]'") == [(0, "[1]")]
    assert records_in_stdout(b"x\nNNISDK_MEb'[1]'\nNNISDK_MEb'[2]'", complete_only=False) == [(0, "[1]"), (1, "[2]")]


def test_reporter_reads_a_lost_acknowledgement_back_from_the_journal(tmp_path: Path) -> None:
    from trial_keeper.keeper import KeeperConfig

    path = tmp_path / "journal"
    journal = Journal(str(path), "T", 1)
    journal.append([(i, str(i)) for i in range(10)])
    journal.close()
    cfg = KeeperConfig("T", str(tmp_path), "true", server_url="http://127.0.0.1:9", token="t")
    reporter = Reporter(cfg, 0, 1, str(path))
    reporter.add([(i, str(i)) for i in range(10)])
    reporter._acknowledge({"next_seq": 6}, {})
    assert [s for s, _ in reporter._unacked] == [6, 7, 8, 9]
    reporter._acknowledge({"next_seq": 2}, {})  # a restarted server that has less
    assert [s for s, _ in reporter._unacked] == list(range(2, 10))
    reporter._acknowledge({"next_seq": 10}, {})
    assert reporter._unacked == []
    reporter._acknowledge({"next_seq": 0}, {})  # a fresh server: everything again
    assert [s for s, _ in reporter._unacked] == list(range(10))


def test_runs_on_python_3_8_syntax() -> None:
    import ast

    root = Path(trial_keeper.__file__).parent
    for path in root.rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 8))


def test_late_sigterm_cuts_the_final_report_short_and_pid_file(trial_dir: Path) -> None:
    import signal
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on: every report fails
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trial_keeper", "--trial-dir", str(trial_dir), "--no-passthrough", "--trial-id", "L",
         "--server-url", f"http://127.0.0.1:{port}", "--token", "x", "--report-timeout", "600",
         "--", "echo \"NNISDK_MEb'{\\\"v\\\": 1}'\""],
        env=env, cwd=str(trial_dir.parent), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(600):  # the trial ends at once; then the keeper keeps trying to report its exit
            if read_exit(str(trial_dir)) is not None:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the trial's exit was never written")
        assert proc.poll() is None, "the keeper should still be trying to report"
        pid = json.loads((trial_dir / ".nni-ts" / "pid").read_text())
        assert pid["keeper_pid"] == proc.pid and pid["trial_pgid"] > 0 and pid["start_time_ms"] > 0
        proc.send_signal(signal.SIGTERM)
        # Without the cut the keeper would wait for --report-timeout (600 s); the bound here is 60 s.
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert read_journal(str(trial_dir / ".nni-ts" / "journal")) == [(0, '{"v": 1}')]


def test_attempt_auto_takes_the_next_free_number_and_read_attempt_reads_the_latest(trial_dir: Path) -> None:
    """A pod a Job created in place of a disrupted one runs the trial again in the same directory: with
    ``--attempt auto`` (NNI_TS_KEEPER_ATTEMPT=auto) each keeper takes the next attempt number, and
    read_attempt(attempt=None) reads back the latest attempt's records and exit."""
    from trial_keeper.journal import read_attempt

    env = {"NNI_TS_KEEPER_ATTEMPT": "auto"}
    first = "import nni; nni.report_intermediate_result(1); nni.report_intermediate_result(2); raise SystemExit(143)"
    second = "import nni; nni.report_intermediate_result(1); nni.report_final_result(3)"
    (trial_dir.parent / "first.py").write_text(first, encoding="utf-8")
    (trial_dir.parent / "second.py").write_text(second, encoding="utf-8")
    nni = {"PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    assert (
        keeper(trial_dir, "--trial-id", "R", "--", f"{sys.executable} first.py", env={**env, **nni}).returncode == 143
    )
    assert keeper(trial_dir, "--trial-id", "R", "--", f"{sys.executable} second.py", env={**env, **nni}).returncode == 0
    assert sorted(p.name for p in (trial_dir / ".nni-ts").glob("attempt-*")) == ["attempt-1", "attempt-2"]
    records, ended = read_attempt(str(trial_dir), "R", None)
    assert ended is not None and ended["attempt"] == 2 and ended["exit_code"] == 0 and ended["record_count"] == 2
    assert [json.loads(r)["value"] for _, r in records] == ["1", "3"]
    first_records, first_exit = read_attempt(str(trial_dir), "R", 1)
    assert first_exit is None and [json.loads(r)["value"] for _, r in first_records] == ["1", "2"]
    bad = keeper(trial_dir, "--trial-id", "R", "--attempt", "later", "--", "true")
    assert bad.returncode == 2 and b"expected a number or 'auto'" in bad.stderr
