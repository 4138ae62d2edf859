"""Experiments written straight into a store, for the dashboard's tests and benchmark."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from nni_ts.models import TrialJobStatus, now_ms
from nni_ts.storage.store import Store, TrialRecord

XSS = "<img src=x onerror=alert(1)>"


def record(kind: str, value: Any) -> str:
    """A metric record as NNI's SDK writes it (the value JSON-encoded inside the record)."""
    return json.dumps({"type": kind, "sequence": 0, "parameter_id": 0, "value": json.dumps(value)})


def fill(
    store: Store,
    experiment_id: str = "e1",
    *,
    trials: int = 30,
    steps: int = 5,
    seed: int = 1,
    running: int = 3,
    config: dict[str, Any] | None = None,
) -> list[TrialRecord]:
    """An experiment with ``trials`` trials (the last ``running`` still running, every 7th failed, some
    early-stopped), each
    with ``steps`` intermediate results (a dict metric with an XSS key) and a final one."""
    rnd = random.Random(seed)
    cfg = config or {
        "experimentName": "dash-test",
        "trialConcurrency": 3,
        "maxTrialNumber": trials + 10,
        "maxExperimentDuration": "2h",
        "searchSpace": {
            "lr": {"_type": "loguniform", "_value": [1e-4, 1]},
            "opt": {"_type": "choice", "_value": ["adam", "sgd", XSS]},
        },
        "tuner": {"name": "TPE", "classArgs": {"optimize_mode": "maximize"}},
        "trainingService": {"platform": "remote", "machineList": [{"host": "h", "user": "u", "password": "hunter2"}]},
    }
    store.create_experiment(
        experiment_id, name="dash <b>test</b>", platform="local", config=cfg, working_dir="/nonexistent"
    )
    t0 = now_ms() - trials * 1000
    out = []
    with store._transaction("Filling") as db:
        for i in range(trials):
            status = TrialJobStatus.RUNNING if i >= trials - running else TrialJobStatus.SUCCEEDED
            if status is TrialJobStatus.SUCCEEDED and i % 7 == 6:
                status = TrialJobStatus.FAILED
            elif status is TrialJobStatus.SUCCEEDED and i % 11 == 10:
                status = TrialJobStatus.EARLY_STOPPED
            params = {"lr": 10 ** rnd.uniform(-4, 0), "opt": rnd.choice(["adam", "sgd", XSS])}
            tid = f"t{i:05d}"
            final = rnd.random() if status is TrialJobStatus.SUCCEEDED else None
            end = t0 + i * 1000 + 5000 if status.is_terminal else None
            data = record("FINAL", {"default": final, "acc": final / 2, XSS: 1}) if final is not None else None
            db.execute(
                "INSERT INTO trials (experiment_id, id, sequence_id, parameter_id, attempt, parameters, status, "
                "submit_ms, start_ms, end_ms, final_value, final_data, metric_count) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    experiment_id,
                    tid,
                    i,
                    i,
                    1,
                    json.dumps(params),
                    status.value,
                    t0 + i * 1000,
                    t0 + i * 1000,
                    end,
                    final,
                    data,
                    steps + (final is not None),
                ),
            )
            rows = [
                (experiment_id, tid, k, "PERIODICAL", v, record("PERIODICAL", {"default": v, XSS: k}), t0)
                for k, v in ((k, (k + 1) * rnd.random()) for k in range(steps))
            ]
            if final is not None:
                rows.append((experiment_id, tid, steps, "FINAL", final, data, t0))
            db.executemany("INSERT INTO metrics VALUES (?,?,?,?,?,?,?)", rows)
            out.append(TrialRecord(experiment_id, tid, i, i, params, status=status, final_value=final))
    return out


def open_filled(path: Path, **kw: Any) -> tuple[Store, list[TrialRecord]]:
    store = Store(path)
    return store, fill(store, **kw)


async def copy_to_postgres(store: Store, url: str) -> None:
    """The store's experiments, as they are, into a PostgreSQL storage's tables (what a PostgreSQL
    service's experiments write), to compare the two readers on the same records."""
    from nni_ts.storage.base import PostgresStorage

    storage = await PostgresStorage.connect(url)
    try:
        for exp in store.list_experiments():
            trials = store.list_trials(exp.id, with_detail=True)
            assert await storage.import_experiment(exp, trials, list(store.iter_metrics(exp.id)))
    finally:
        await storage.close()
