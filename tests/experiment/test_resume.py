"""Kill the manager with SIGKILL mid-experiment; ``nni-ts resume`` re-attaches and finishes the budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from nni_ts.models import TrialJobStatus
from nni_ts.storage import open_store

# Trials 0 and 1 finish at once. Later trials report three intermediate results, then wait for the
# gate file before their final result. Every start is logged, so a re-run would show.
GATED_TRIAL = textwrap.dedent(
    """\
    import os, time, nni
    p = nni.get_next_parameter()
    seq = nni.get_sequence_id()
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "starts.log"), "a") as f:
        f.write(f"{seq}\\n")
    for i in range(3):
        nni.report_intermediate_result(i)
    if seq >= 2:
        gate = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gate")
        for _ in range(1200):
            if os.path.exists(gate):
                break
            time.sleep(0.05)
    nni.report_final_result(p["x"])
    """
)


def _wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _trials(experiment_id: str) -> list:  # type: ignore[type-arg]
    try:
        with open_store(readonly=True) as store:
            return store.list_trials(experiment_id, with_detail=True)
    except Exception:
        return []


@pytest.mark.slow
def test_resume_after_sigkill_reattaches_and_loses_nothing(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(GATED_TRIAL)
    config = {
        "experimentName": "resume",
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": f"{sys.executable} trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": 2,
        "maxTrialNumber": 6,
        "tuner": {"name": "Random", "classArgs": {"seed": 5}},
        "trainingService": {"platform": "local"},
    }
    cfg_path = tmp_path / "config.yml"
    cfg_path.write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "nni_ts.cli"]
    manager = subprocess.Popen(
        [*cli, "create", "-c", str(cfg_path), "--id", "resumeme", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def two_blocked() -> bool:
            blocked = [
                t
                for t in _trials("resumeme")
                if t.sequence_id >= 2 and t.metric_count >= 3 and t.status is TrialJobStatus.RUNNING
            ]
            return len(blocked) == 2

        _wait_until(two_blocked, 60, "two trials blocked at the gate")
    finally:
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
        assert manager.stderr is not None
        manager.stderr.close()
    before = {t.id: t for t in _trials("resumeme")}
    running = [t for t in before.values() if t.status is TrialJobStatus.RUNNING]
    assert len(running) == 2
    pids = [t.detail.platform_data["pid"] for t in running if t.detail]
    assert all(psutil.pid_exists(p) for p in pids), "trials must survive the manager"

    # view is read-only and reports the manager's death
    view = subprocess.run([*cli, "--json", "view", "resumeme"], capture_output=True, text=True, timeout=60)
    assert view.returncode == 0, view.stderr
    assert json.loads(view.stdout)["status"] == "INTERRUPTED"

    (code / "gate").touch()
    resumed = subprocess.run(
        [*cli, "--json", "resume", "resumeme", "--quiet"], capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["status"] == "DONE"

    after = _trials("resumeme")
    assert len(after) == 6
    assert sorted(t.parameter_id for t in after) == list(range(6))
    assert all(t.status is TrialJobStatus.SUCCEEDED for t in after)
    for t in running:  # the same trials finished: re-attached, not re-run
        assert next(a for a in after if a.id == t.id).status is TrialJobStatus.SUCCEEDED
    starts = sorted(int(x) for x in (code / "starts.log").read_text().split())
    assert starts == list(range(6)), "a trial was run twice"
    with open_store(readonly=True) as store:
        for t in after:
            metrics = store.metrics("resumeme", t.id)
            assert [m.seq for m in metrics] == [0, 1, 2, 3], t.id
            assert [m.type for m in metrics] == ["PERIODICAL"] * 3 + ["FINAL"]
            assert metrics[-1].value == t.parameters["x"]
    for p in pids:
        assert not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE
    assert os.environ["NNI_TS_HOME"]
