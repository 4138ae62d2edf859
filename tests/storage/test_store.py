"""The SQLite store: durability across a killed writer, idempotent metrics, read-only access."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nni_ts.errors import StoreError
from nni_ts.models import TrialJobApplicationForm, TrialJobDetail, TrialJobStatus
from nni_ts.storage import Store, TrialRecord, open_store


def _trial(exp: str, tid: str, seq: int = 0) -> TrialRecord:
    return TrialRecord(experiment_id=exp, id=tid, sequence_id=seq, parameter_id=seq, parameters={"x": seq})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = open_store(tmp_path / "db.sqlite")
    s.create_experiment("e1", name="demo", platform="local", config={"a": 1}, working_dir=tmp_path)
    yield s
    s.close()


def test_wal_mode_and_roundtrip(store: Store) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.insert_trial(_trial("e1", "t1"))
    store.add_metric("e1", "t1", 0, type="PERIODICAL", value=0.5, data='{"type":"PERIODICAL"}')
    store.add_metric("e1", "t1", 1, type="FINAL", value=0.9, data='{"type":"FINAL","value":"0.9"}')
    t = store.get_trial("e1", "t1")
    assert (t.metric_count, t.final_value, t.final_data) == (2, 0.9, '{"type":"FINAL","value":"0.9"}')
    assert [m.seq for m in store.metrics("e1", "t1")] == [0, 1]


def test_metric_written_twice_is_kept_once(store: Store) -> None:
    store.insert_trial(_trial("e1", "t1"))
    assert store.add_metric("e1", "t1", 0, type="PERIODICAL", value=1.0, data="a") is True
    assert store.add_metric("e1", "t1", 0, type="PERIODICAL", value=1.0, data="a") is False
    assert store.get_trial("e1", "t1").metric_count == 1
    assert len(store.metrics("e1", "t1")) == 1


def test_update_trial_keeps_platform_data(store: Store) -> None:
    store.insert_trial(_trial("e1", "t1"))
    form = TrialJobApplicationForm.model_validate({"sequence_id": 0, "hyper_parameters": {"value": "{}", "index": 0}})
    detail = TrialJobDetail(id="t1", status=TrialJobStatus.RUNNING, form=form, platform_data={"pid": 42})
    store.update_trial("e1", detail)
    t = store.get_trial("e1", "t1")
    assert t.status is TrialJobStatus.RUNNING
    assert t.detail is not None and t.detail.platform_data == {"pid": 42}


def test_unknown_experiment_names_recent_ones(store: Store) -> None:
    with pytest.raises(StoreError, match=r"no experiment with the id 'nope'.*Recent experiments: e1"):
        store.get_experiment("nope")


def test_duplicate_experiment_is_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="already exists"):
        store.create_experiment("e1", name=None, platform="local", config={}, working_dir=tmp_path)


def test_readonly_store_cannot_write(store: Store) -> None:
    ro = Store(store.path, readonly=True)
    try:
        assert ro.get_experiment("e1").name == "demo"
        with pytest.raises(StoreError, match="read-only"):
            ro.update_experiment("e1", status="DONE")
        with pytest.raises(StoreError, match="read-only"):
            ro.add_metric("e1", "t", 0, type="FINAL", value=None, data="x")
    finally:
        ro.close()


def test_readonly_without_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no experiment was run here yet"):
        Store(tmp_path / "missing.db", readonly=True)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    open_store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer nni-ts"):
        open_store(path)


WRITER = textwrap.dedent(
    """
    import sys
    from nni_ts.storage import open_store, TrialRecord
    s = open_store(sys.argv[1])
    s.create_experiment("e1", name=None, platform="local", config={}, working_dir="/tmp")
    s.insert_trial(TrialRecord(experiment_id="e1", id="t1", sequence_id=0, parameter_id=0, parameters={}))
    for i in range(100000):
        s.add_metric("e1", "t1", i, type="PERIODICAL", value=float(i), data=str(i))
        print(i, flush=True)
    """
)


def test_acknowledged_metrics_survive_sigkill(tmp_path: Path) -> None:
    """A writer killed with SIGKILL mid-stream loses nothing it had acknowledged."""
    path = tmp_path / "db.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = -1
    for line in proc.stdout:
        acked = int(line)
        if acked >= 300:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with open_store(path) as s:
        seqs = [m.seq for m in s.metrics("e1", "t1")]
        assert seqs[: acked + 1] == list(range(acked + 1))
        assert s.get_trial("e1", "t1").metric_count == len(seqs)


def test_delete_experiment_removes_its_trials_and_metrics_only(store: Store, tmp_path: Path) -> None:
    store.create_experiment("e2", name="other", platform="local", config={}, working_dir=tmp_path)
    for exp in ("e1", "e2"):
        store.insert_trial(_trial(exp, "t1"))
        store.add_metric(exp, "t1", 0, type="FINAL", value=1.0, data="x")
    assert store.delete_experiment("e1") is True
    assert store.delete_experiment("e1") is False
    with pytest.raises(StoreError, match="no experiment"):
        store.get_experiment("e1")
    assert store.list_trials("e1") == [] and store.metrics("e1", "t1") == []
    assert [t.id for t in store.list_trials("e2")] == ["t1"] and len(store.metrics("e2", "t1")) == 1
    store.create_experiment("e1", name="again", platform="local", config={}, working_dir=tmp_path)  # the id is free
