"""Local-platform behaviour beyond the conformance kit: GPUs, re-attach, the light and real nni."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from nni_ts.errors import ConfigError
from nni_ts.models import TrialJobDetail, TrialJobMetric, TrialJobStatus
from nni_ts.platforms.gpu import GpuScheduler, parse_nvidia_smi
from nni_ts.platforms.local import LocalTrainingService, parameters_as_args
from nni_ts.testing.conformance import form, wait_for_status

FAKE_SMI = textwrap.dedent(
    """\
    #!/bin/sh
    # A fake nvidia-smi: four GPUs, GPU 1 busy with another process.
    cat <<'CSV'
    0, 10, 16280, 0
    1, 9000, 16280, 87
    2, 0, 16280, 0
    3, 0, 16280, 0
    CSV
    """
)

GPU_TRIAL = (
    "import os, nni\nnni.get_next_parameter()\n"
    "nni.report_final_result({'default': 0, 'cuda': os.environ['CUDA_VISIBLE_DEVICES']})\n"
)


@pytest.fixture
def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return smi


def test_parse_nvidia_smi_and_schedule() -> None:
    gpus = parse_nvidia_smi("0, 10, 100, 0\n1, 9000, 16000, 50\n\n2, [N/A], 100, [N/A]\n")
    assert [g.index for g in gpus] == [0, 1, 2]
    assert [g.active for g in gpus] == [False, True, False]
    sched = GpuScheduler(gpus, max_trials_per_gpu=2)
    assert sched.capacity() == 2
    assert sched.try_assign("a", 2) == [0, 2]
    assert sched.try_assign("b", 1) in ([0], [2])
    assert sched.try_assign("c", 2) is None  # only one slot left
    sched.release("a")
    assert sched.try_assign("c", 2) == [0, 2]
    assert GpuScheduler(gpus, use_active_gpu=True, gpu_indices=[1]).try_assign("x", 1) == [1]


async def test_gpu_placement_and_queueing(tmp_path: Path, fake_nvidia_smi: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "t.py").write_text(GPU_TRIAL)
    config = {
        "trialCommand": "python3 t.py",
        "trialCodeDirectory": str(code),
        "trialGpuNumber": 1,
        "gpuIndices": [1, 2, 3],  # 0 excluded; 1 is busy and useActiveGpu is off
    }
    metrics: list[TrialJobMetric] = []
    async with LocalTrainingService(config, experiment_dir=tmp_path / "exp") as svc:
        svc.add_trial_job_metric_listener(metrics.append)
        details = [await svc.submit_trial_job(form({}, i)) for i in range(5)]
        # Two GPUs are usable, one trial each: at most two run at once, the rest wait.
        statuses = [(await svc.get_trial_job(d.id)).status for d in details]
        assert statuses.count(TrialJobStatus.WAITING) >= 3
        for d in details:
            done = await wait_for_status(svc, d.id, timeout=30)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message
    cuda = [json.loads(json.loads(m.data)["value"])["cuda"] for m in metrics]
    assert len(cuda) == 5 and set(cuda) <= {"2", "3"}


async def test_too_many_gpus_is_a_config_error(tmp_path: Path, fake_nvidia_smi: Path) -> None:
    svc = LocalTrainingService(
        {"trialCommand": "true", "trialCodeDirectory": str(tmp_path), "trialGpuNumber": 4},
        experiment_dir=tmp_path / "exp",
    )
    with pytest.raises(ConfigError, match="3 usable GPU"):
        await svc.start()
    await svc.clean_up()


async def test_missing_code_directory(tmp_path: Path) -> None:
    svc = LocalTrainingService(
        {"trialCommand": "true", "trialCodeDirectory": str(tmp_path / "nope")}, experiment_dir=tmp_path / "exp"
    )
    with pytest.raises(ConfigError, match="trialCodeDirectory"):
        await svc.start()
    await svc.clean_up()


def test_bad_config_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        LocalTrainingService({"trialCommand": "x", "maxTrialNumberPerGpu": 0, "bogus": 1})
    text = str(info.value)
    assert "maxTrialNumberPerGpu" in text or "max_trial_number_per_gpu" in text
    assert "bogus" in text


def test_parameters_as_args_quotes_everything() -> None:
    args = parameters_as_args({"lr": 0.1, "name": "a b'c", "nested": {"x": 1}})
    assert args == "--lr=0.1 '--name=a b'\"'\"'c' '--nested={\"x\": 1}'"


MANAGER = textwrap.dedent(
    """\
    import asyncio, json, os, sys
    from nni_ts.platforms.local import LocalTrainingService
    from nni_ts.testing.conformance import form

    async def main():
        code, exp = sys.argv[1], sys.argv[2]
        svc = LocalTrainingService({"trialCommand": "python3 t.py", "trialCodeDirectory": code},
                                   experiment_id="resume1", experiment_dir=exp)
        await svc.start()
        seen = []
        svc.add_trial_job_metric_listener(seen.append)
        d = await svc.submit_trial_job(form({}, 0))
        while len(seen) < 2:
            await asyncio.sleep(0.01)
        detail = await svc.get_trial_job(d.id)
        print(json.dumps({"detail": detail.model_dump(mode="json"), "delivered": len(seen)}), flush=True)
        os._exit(0)  # die like a SIGKILLed manager: no clean-up, trials keep running

    asyncio.run(main())
    """
)

RESUMABLE_TRIAL = textwrap.dedent(
    """\
    import os, sys, time, nni
    nni.get_next_parameter()
    go = os.path.join(os.environ["NNI_SYS_DIR"], "go")
    for i in range(2):
        nni.report_intermediate_result(i)
    while not os.path.exists(go):
        time.sleep(0.01)
    for i in range(2, 5):
        nni.report_intermediate_result(i)
    nni.report_final_result(42)
    """
)


async def _run_manager(tmp_path: Path, code: Path) -> dict[str, Any]:
    script = tmp_path / "manager.py"
    script.write_text(MANAGER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(code), str(tmp_path / "exp"), stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return json.loads(out)


@pytest.mark.slow
async def test_reattach_after_manager_death(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "t.py").write_text(RESUMABLE_TRIAL)
    state = await _run_manager(tmp_path, code)
    detail = TrialJobDetail.model_validate(state["detail"])
    assert detail.status is TrialJobStatus.RUNNING
    metrics: list[TrialJobMetric] = []
    async with LocalTrainingService(
        {"trialCommand": "python3 t.py", "trialCodeDirectory": str(code)},
        experiment_id="resume1",
        experiment_dir=tmp_path / "exp",
    ) as svc:
        svc.add_trial_job_metric_listener(metrics.append)
        await svc.reattach_trial_job(detail, metrics_delivered=state["delivered"])
        (Path(detail.working_directory) / "go").touch()
        done = await wait_for_status(svc, detail.id, timeout=30)
    assert done.status is TrialJobStatus.SUCCEEDED
    assert done.exit_code == 0
    records = [json.loads(m.data) for m in metrics]
    # Only the records the first manager had not delivered, each once, in order.
    assert [(r["type"], json.loads(r["value"])) for r in records] == [
        ("PERIODICAL", 2),
        ("PERIODICAL", 3),
        ("PERIODICAL", 4),
        ("FINAL", 42),
    ]


@pytest.mark.slow
async def test_reattach_to_a_trial_that_ended_meanwhile(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "t.py").write_text(RESUMABLE_TRIAL)
    state = await _run_manager(tmp_path, code)
    detail = TrialJobDetail.model_validate(state["detail"])
    (Path(detail.working_directory) / "go").touch()
    code_file = Path(detail.working_directory) / ".nni" / "code"
    async with asyncio.timeout(30):
        while not code_file.exists() or not code_file.read_text().strip():
            await asyncio.sleep(0.02)
    metrics: list[TrialJobMetric] = []
    async with LocalTrainingService(
        {"trialCommand": "python3 t.py", "trialCodeDirectory": str(code)},
        experiment_id="resume1",
        experiment_dir=tmp_path / "exp",
    ) as svc:
        svc.add_trial_job_metric_listener(metrics.append)
        await svc.reattach_trial_job(detail, metrics_delivered=state["delivered"])
        done = await wait_for_status(svc, detail.id, timeout=30)
    assert done.status is TrialJobStatus.SUCCEEDED
    assert len(metrics) == 4


async def test_reattach_never_reruns_a_vanished_trial(tmp_path: Path) -> None:
    detail = TrialJobDetail(
        id="gone1",
        status=TrialJobStatus.RUNNING,
        form=form({}),
        working_directory=str(tmp_path / "nowhere"),
        platform_data={"pid": 999999999, "create_time": 1.0},
    )
    async with LocalTrainingService(
        {"trialCommand": "true", "trialCodeDirectory": str(tmp_path)}, experiment_dir=tmp_path / "exp"
    ) as svc:
        await svc.reattach_trial_job(detail)
        got = await svc.get_trial_job("gone1")
    assert got.status is TrialJobStatus.FAILED and got.infrastructure_failure


NNI_STYLE_TRIAL = textwrap.dedent(
    """\
    import argparse
    import nni
    from nni.utils import merge_parameter

    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--optimizer", type=str, default="sgd")
    args = parser.parse_args()
    params = nni.get_next_parameter()
    args = merge_parameter(args, params)
    for epoch in range(3):
        nni.report_intermediate_result({"default": args.lr * epoch, "loss": float("nan") if epoch == 1 else 1.0})
    nni.report_final_result({"default": args.lr, "optimizer": args.optimizer, "note": "it's \\"fine\\""})
    print("which nni:", getattr(nni, "LIGHT", False))
    """
)


async def _run_nni_style(tmp_path: Path, python: str) -> tuple[TrialJobDetail, list[TrialJobMetric], bytes]:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "mnist.py").write_text(NNI_STYLE_TRIAL)
    metrics: list[TrialJobMetric] = []
    async with LocalTrainingService(
        {"trialCommand": f"{python} mnist.py", "trialCodeDirectory": str(code)}, experiment_dir=tmp_path / "exp"
    ) as svc:
        svc.add_trial_job_metric_listener(metrics.append)
        d = await svc.submit_trial_job(form({"lr": 0.05, "optimizer": "adam"}, 0, parameter_id=7))
        done = await wait_for_status(svc, d.id, timeout=60)
        out = await svc.get_trial_file(d.id, "stdout") + await svc.get_trial_file(d.id, "trial.log")
    return done, metrics, out


def _check_nni_style(done: TrialJobDetail, metrics: list[TrialJobMetric]) -> list[dict[str, Any]]:
    assert done.status is TrialJobStatus.SUCCEEDED, done.message
    records = [json.loads(m.data) for m in metrics]
    assert [r["type"] for r in records] == ["PERIODICAL"] * 3 + ["FINAL"]
    assert all(r["parameter_id"] == 7 and r["trial_job_id"] == done.id for r in records)
    assert json.loads(records[-1]["value"]) == {"default": 0.05, "optimizer": "adam", "note": 'it\'s "fine"'}
    return records


async def test_unmodified_nni_trial_with_the_light_module(tmp_path: Path) -> None:
    done, metrics, out = await _run_nni_style(tmp_path, sys.executable)
    records = _check_nni_style(done, metrics)
    assert "NaN" in records[1]["value"]
    assert b"which nni: True" in out
    # The listener got the bytes as the SDK framed them in the metrics file.
    raw = (Path(done.working_directory) / ".nni" / "metrics").read_bytes()
    assert [m.data.encode() for m in metrics] == [chunk[6:-1] for chunk in raw.split(b"ME")[1:]]


REAL_NNI_PYTHON = os.environ.get("NNI_TS_REAL_NNI_PYTHON", "/opt/nni-real/bin/python")


@pytest.mark.skipif(
    not Path(REAL_NNI_PYTHON).exists(),
    reason="needs a Python with the real nni installed (set NNI_TS_REAL_NNI_PYTHON; .ci/run creates /opt/nni-real)",
)
@pytest.mark.slow
async def test_unmodified_nni_trial_with_the_real_nni(tmp_path: Path) -> None:
    done, metrics, out = await _run_nni_style(tmp_path, REAL_NNI_PYTHON)
    _check_nni_style(done, metrics)
    assert b"which nni: False" in out  # the real SDK was loaded, not the light one
    raw = (Path(done.working_directory) / ".nni" / "metrics").read_bytes()
    assert b"".join(b"ME%06d" % (len(m.data.encode()) + 1) + m.data.encode() + b"\n" for m in metrics) == raw


async def test_a_record_with_invalid_utf8_is_stored_not_refused_forever(tmp_path: Path) -> None:
    """A trial that writes bytes that are not UTF-8: the record arrives with U+FFFD (as through the
    keeper), so a store that encodes strictly (as sqlite3 does) accepts it. Decoded with
    surrogateescape, it was refused, and offered again, forever; the trial never ended."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "t.py").write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from trial_keeper.records import encode_frame\n"
        "path = os.path.join(os.environ['NNI_SYS_DIR'], '.nni', 'metrics')\n"
        "with open(path, 'ab') as fh:\n"
        '    fh.write(encode_frame(b\'{"type": "FINAL", "value": "\\xff"}\'))\n',
        encoding="utf-8",
    )
    stored: list[str] = []

    def strict_store(metric: TrialJobMetric) -> None:
        metric.data.encode("utf-8")  # what sqlite3 does with a str; raises on a lone surrogate
        stored.append(metric.data)

    service = LocalTrainingService(
        {"trialCommand": f"{sys.executable} t.py", "trialCodeDirectory": str(code)}, experiment_dir=tmp_path / "exp"
    )
    async with service:
        service.add_trial_job_metric_listener(strict_store)
        detail = await service.submit_trial_job(form({}))
        done = await wait_for_status(service, detail.id, timeout=30)
    assert done.status is TrialJobStatus.SUCCEEDED, done.message
    assert stored == ['{"type": "FINAL", "value": "\ufffd"}']
