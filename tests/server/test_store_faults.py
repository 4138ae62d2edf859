"""Durable before acknowledged, end to end: the experiment store fails for a while under a running
experiment, and afterwards every metric is stored exactly once, in order.

The failures are real SQLite failures on the experiment's own database: "disk full" is a size cap
(``PRAGMA max_page_count``, SQLITE_FULL, what a full disk returns) and "locked" is a second
connection holding ``BEGIN EXCLUSIVE`` past the store's busy timeout. The trial reports one record,
waits at a gate while the fault is put in place, then reports the rest: the experiment's metric
listener raises, the record is refused, the platform delivers it again (the keeper resends it, since
the cluster server did not advance ``next_seq``; the local platform retries with back-off) until
the fault is lifted. Both platforms: the loopback keeper behind a real ClusterServer, and local.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_support import Gate

from nni_ts.config.loader import config_from_dict
from nni_ts.experiment import Experiment
from nni_ts.models import TrialJobMetric, TrialJobStatus
from nni_ts.platforms.local import LocalTrainingService
from nni_ts.server.loopback import LoopbackKeeperService
from nni_ts.storage import Store
from nni_ts.training_service import TrainingService

N = 12  # records the trial writes: N - 1 intermediate, then the final one
TRIAL = """
import socket, sys
import nni
nni.get_next_parameter()
pad = "x" * 3000  # each record needs pages of its own: a full database refuses it
nni.report_intermediate_result({"i": 0, "pad": pad})
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"waiting")
assert s.recv(2) == b"go"
s.close()
n = int(sys.argv[2])
for i in range(1, n - 1):
    nni.report_intermediate_result({"i": i, "pad": pad})
nni.report_final_result({"default": n - 1, "i": n - 1, "pad": pad})
"""


def _config(code: Path, command: str) -> dict[str, Any]:
    """One trial of ``command`` on the local platform."""
    return {
        "searchSpace": {"x": {"_type": "choice", "_value": [1]}},
        "trialCommand": command,
        "trialCodeDirectory": str(code),
        "trialConcurrency": 1,
        "maxTrialNumber": 1,
        "tuner": {"name": "Random"},
        "trainingService": {"platform": "local", "cancelGracePeriod": 1},
    }


@contextlib.asynccontextmanager
async def disk_full(store: Store) -> AsyncIterator[None]:
    cap = await asyncio.to_thread(store.set_max_pages, 1)  # never below its size: exactly full
    try:
        yield
    finally:
        await asyncio.to_thread(store.set_max_pages, cap * 1000)


@contextlib.asynccontextmanager
async def locked(store: Store) -> AsyncIterator[None]:
    other = await asyncio.to_thread(sqlite3.connect, store.path, isolation_level=None, check_same_thread=False)
    await asyncio.to_thread(other.execute, "BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        await asyncio.to_thread(other.execute, "ROLLBACK")
        await asyncio.to_thread(other.close)


FAULTS: dict[str, Callable[[Store], contextlib.AbstractAsyncContextManager[None]]] = {
    "disk-full": disk_full,
    "locked": locked,
}


@pytest.mark.parametrize("platform", ["keeper", "local"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_metrics_survive_a_failing_store_exactly_once_in_order(tmp_path: Path, platform: str, fault: str) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(TRIAL, encoding="utf-8")
    store = await asyncio.to_thread(Store, tmp_path / "nni-ts.db", busy_timeout=0.2)
    async with Gate() as gate:
        typed = config_from_dict(_config(code, f"python3 trial.py {gate.path} {N}"))
        place = {"experiment_id": "faulty", "experiment_dir": tmp_path / "exp"}
        service: TrainingService[Any] = (
            LoopbackKeeperService(typed.training_service, heartbeat=0.2, **place)
            if platform == "keeper"
            else LocalTrainingService(typed.training_service, **place)
        )
        deliveries: Counter[int] = Counter()
        redelivered = asyncio.Event()

        def spy(metric: TrialJobMetric) -> None:  # called before the experiment's own listener
            deliveries[metric.sequence] += 1
            if deliveries[metric.sequence] >= 3:  # refused twice, offered a third time
                redelivered.set()

        service.add_trial_job_metric_listener(spy)
        exp = Experiment(typed, experiment_id="faulty", store=store, service=service, control_socket=False)
        first_stored = asyncio.Event()
        exp.events.on("metric", lambda *_: first_stored.set())
        run = asyncio.ensure_future(exp.run())
        try:
            async with asyncio.timeout(60):
                await first_stored.wait()
                async with FAULTS[fault](store):
                    await gate.release()
                    await redelivered.wait()
            async with asyncio.timeout(60):
                result = await run
        finally:
            if not run.done():
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
    try:
        assert result.status == "DONE", result.message
        (trial,) = result.trials
        assert trial.status is TrialJobStatus.SUCCEEDED, trial.message
        metrics = await asyncio.to_thread(store.metrics, exp.id, trial.id)
        assert [m.seq for m in metrics] == list(range(N))
        assert [json.loads(json.loads(m.data)["value"])["i"] for m in metrics] == list(range(N))
        assert trial.metric_count == N  # counted once each, though some were offered several times
        assert trial.final_value == N - 1
        assert max(deliveries.values()) >= 3  # the fault was real: records were refused and came again
    finally:
        await asyncio.to_thread(store.close)


async def test_a_status_that_cannot_be_stored_ends_the_experiment_with_an_error(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(
        "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
        's.sendall(b"waiting")\nassert s.recv(2) == b"go"\n',
        encoding="utf-8",
    )
    store = await asyncio.to_thread(Store, tmp_path / "nni-ts.db", busy_timeout=0.2)
    try:
        async with Gate() as gate:
            config = _config(code, f"python3 trial.py {gate.path}")
            exp = Experiment(config, experiment_id="nostatus", store=store, control_socket=False)
            run = asyncio.ensure_future(exp.run())
            async with asyncio.timeout(60):
                await gate.waiting.wait()  # the trial runs (its RUNNING status was queued before it could connect)
                async with locked(store):
                    await gate.release()
                    result = await run  # its SUCCEEDED status cannot be written
        assert result.status == "ERROR"
        assert result.message is not None
        assert "Could not record the status of trial" in result.message and "locked" in result.message
    finally:
        await asyncio.to_thread(store.close)
