"""ServiceSink wires the server to a TrainingService: a SIGKILLed keeper turns UNKNOWN, then FAILED
as an infrastructure failure; a keeper that could not reach the manager is read back from its journal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import psutil
from cluster_support import Gate

from nni_ts.models import HyperParameters, TrialJobApplicationForm, TrialJobDetail, TrialJobMetric, TrialJobStatus
from nni_ts.server import ClusterServer
from nni_ts.server.loopback import LoopbackKeeperService


def form(command: str) -> TrialJobApplicationForm:
    params = {"parameter_id": 1, "parameter_source": "algorithm", "parameters": {"x": 1}, "parameter_index": 0}
    return TrialJobApplicationForm(
        sequence_id=0, hyper_parameters=HyperParameters(value=json.dumps(params)), command=command
    )


async def test_sigkilled_keeper_goes_unknown_then_infrastructure_failure(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(
        "import socket, sys, nni\nnni.get_next_parameter()\n"
        "for i in range(5):\n    nni.report_intermediate_result(i)\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'waiting'); s.recv(2)\n",
        encoding="utf-8",
    )
    statuses: list[TrialJobDetail] = []
    metrics: list[TrialJobMetric] = []
    failed = asyncio.Event()
    running = asyncio.Event()
    five = asyncio.Event()

    def on_metric(metric: TrialJobMetric) -> None:
        metrics.append(metric)
        if len(metrics) == 5:
            five.set()

    def on_status(detail: TrialJobDetail) -> None:
        statuses.append(detail)
        if detail.status is TrialJobStatus.RUNNING:
            running.set()
        if detail.status.is_terminal:
            failed.set()

    async with ClusterServer(heartbeat_timeout=0.5) as server, Gate() as gate:
        config = {"trialCommand": "unused", "trialCodeDirectory": str(code), "cancelGracePeriod": 1}
        service = LoopbackKeeperService(config, server=server, heartbeat=0.1, experiment_dir=tmp_path / "exp")
        service.unknown_timeout = 0.5
        service.events.on("trial_status", on_status)
        service.add_trial_job_metric_listener(on_metric)
        async with service:
            detail = await service.submit_trial_job(form(f"python3 trial.py {gate.path}"))
            async with asyncio.timeout(60):
                await running.wait()
                await gate.waiting.wait()
                await five.wait()
            keeper = psutil.Process(detail.platform_data["keeper_pid"])
            trial = keeper.children()[0]
            keeper.send_signal(signal.SIGKILL)
            os.killpg(trial.pid, signal.SIGKILL)
            async with asyncio.timeout(60):
                await failed.wait()
    seen = [d.status for d in statuses if d.id == detail.id]
    assert seen == [TrialJobStatus.RUNNING, TrialJobStatus.UNKNOWN, TrialJobStatus.FAILED]
    assert statuses[-1].infrastructure_failure
    assert [json.loads(json.loads(m.data)["value"]) for m in metrics] == [0, 1, 2, 3, 4]


async def test_unreachable_manager_is_read_back_from_the_journal(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(
        "import nni\nnni.get_next_parameter()\nfor i in range(50):\n    nni.report_intermediate_result(i)\n",
        encoding="utf-8",
    )
    done = asyncio.Event()
    metrics: list[TrialJobMetric] = []
    async with ClusterServer() as server:
        config = {"trialCommand": "python3 trial.py", "trialCodeDirectory": str(code)}
        service = LoopbackKeeperService(config, server=server, experiment_dir=tmp_path / "exp")
        service.events.on("trial_status", lambda d: done.set() if d.status.is_terminal else None)
        service.add_trial_job_metric_listener(metrics.append)
        async with service:
            # The keeper is told a wrong token: every report is refused and it gives up reporting.
            f = form("python3 trial.py")
            f.env["NNI_TS_KEEPER_REPORT_TIMEOUT"] = "0.5"
            f.env["NNI_TS_KEEPER_TOKEN"] = "wrong"
            server_token_for = server.token_for
            server.token_for = lambda trial_id: "wrong"  # type: ignore[method-assign]
            detail = await service.submit_trial_job(f)
            server.token_for = server_token_for  # type: ignore[method-assign]
            async with asyncio.timeout(60):
                await done.wait()
            final = await service.get_trial_job(detail.id)
    assert final.status is TrialJobStatus.SUCCEEDED, final.message
    assert [json.loads(json.loads(m.data)["value"]) for m in metrics] == list(range(50))
