"""A manager SIGKILLed mid-experiment on the Kubernetes platform: the jobs run on; ``nni-ts resume``
re-attaches them (same jobs, nothing re-run, no record delivered twice) and completes the budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nni_ts.models import TrialJobStatus
from nni_ts.storage import open_store

from .conftest import TRAINER_CRDS, running_with_metrics, serve_fake_cluster, trainjob_runtime, wait_until

pytestmark = pytest.mark.slow  # seconds per test: scripts/test --fast leaves it out

CLI = [sys.executable, "-m", "nni_ts.cli"]
RUNTIME = trainjob_runtime()
TRIAL = """\
import os, time, nni
p = nni.get_next_parameter()
with open(os.path.join(os.environ["NNI_OUTPUT_DIR"], "runs.txt"), "a") as fh:
    fh.write("run\\n")
for i in range(6):
    nni.report_intermediate_result(i)
    time.sleep(0.5)
nni.report_final_result(p["x"])
"""


@pytest.mark.parametrize("platform", ["kubeflow", "kubernetes", "trainjob"])
def test_sigkilled_manager_is_resumed_without_rerunning(tmp_path: Path, platform: str) -> None:
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(TRIAL)
    config: dict[str, Any] = {
        "experimentName": "k8s-resume",
        "searchSpace": {"x": {"_type": "choice", "_value": [1, 2, 3, 4]}},
        "trialCodeDirectory": str(code),
        "trialConcurrency": 2,
        "maxTrialNumber": 3,
        "tuner": {"name": "Random", "classArgs": {"seed": 1}},
        "trainingService": {
            "platform": "kubeflow",
            "operator": "tf-operator",
            "storage": {"storageType": "nfs", "server": "127.0.0.1", "path": str(nfs)},
            "worker": {
                "replicas": 1,
                "command": "python3 trial.py",
                "memorySize": "512m",
                "cpuNumber": 0.5,
                "dockerImage": "python:3.11",
            },
            "keeperHeartbeat": 0.5,
            "cancelGracePeriod": 2,
        },
    }
    if platform == "kubernetes":  # the batch-Job platform has no roles: the worker's keys sit at the top
        service = config["trainingService"]
        worker = service.pop("worker")
        del worker["replicas"]
        del service["operator"]
        service.update(worker, platform="kubernetes")
    elif platform == "trainjob":  # one trainer node of the example's ClusterTrainingRuntime
        service = config["trainingService"]
        worker = service.pop("worker")
        del service["operator"]
        service["platform"] = "trainjob"
        service["runtimeRef"] = {"kind": "ClusterTrainingRuntime", "name": RUNTIME["metadata"]["name"]}
        service["trainer"] = {
            "image": worker["dockerImage"],
            "resourcesPerNode": {"cpuNumber": worker["cpuNumber"], "memorySize": worker["memorySize"]},
        }
        config["trialCommand"] = worker["command"]
    cfg = tmp_path / "config.yml"
    cfg.write_text(yaml.safe_dump(config))
    extra = TRAINER_CRDS if platform == "trainjob" else None
    with serve_fake_cluster(tmp_path, nfs, extra_crds=extra) as kubeconfig:
        env = dict(os.environ, KUBECONFIG=str(kubeconfig))
        if platform == "trainjob":
            runtime = tmp_path / "runtime.yaml"
            runtime.write_text(yaml.safe_dump(RUNTIME))
            applied = subprocess.run(["kubectl", "apply", "-f", str(runtime)], env=env, capture_output=True,
                                     text=True, timeout=30)  # fmt: skip
            assert applied.returncode == 0, applied.stderr
        manager = subprocess.Popen([*CLI, "create", "-c", str(cfg), "--id", "k8sresume", "--quiet"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_until(lambda: len(running_with_metrics("k8sresume")) == 2, 90, "two running trials with metrics")
        finally:
            os.kill(manager.pid, signal.SIGKILL)
            manager.wait(timeout=30)
        before = {t.id: t.detail.platform_data["job"] for t in running_with_metrics("k8sresume")}
        kind = {"kubeflow": "tfjobs", "kubernetes": "jobs", "trainjob": "trainjobs"}[platform]
        jobs = subprocess.run(["kubectl", "get", kind, "-o", "json"], env=env, capture_output=True, text=True,
                              timeout=30)  # fmt: skip
        if jobs.returncode == 0:  # kubectl is optional here: the jobs outlive their manager
            assert set(before.values()) <= {j["metadata"]["name"] for j in json.loads(jobs.stdout)["items"]}
        resume = subprocess.run([*CLI, "--json", "resume", "k8sresume", "--quiet"], env=env, capture_output=True,
                                text=True, timeout=180)  # fmt: skip
        assert resume.returncode == 0, (resume.stdout, resume.stderr)
    with open_store(readonly=True) as s:
        trials = s.list_trials("k8sresume", with_detail=True)
        assert len(trials) == 3 and {t.attempt for t in trials} == {1}
        assert all(t.status is TrialJobStatus.SUCCEEDED for t in trials), [(t.status, t.message) for t in trials]
        for t in trials:
            metrics = s.metrics("k8sresume", t.id)
            assert [m.type for m in metrics] == ["PERIODICAL"] * 6 + ["FINAL"], t.id
            if t.id in before:
                assert t.detail is not None and t.detail.platform_data["job"] == before[t.id]
    for trial_dir in (nfs / "nni-ts" / "k8sresume" / "trials").iterdir():
        assert (trial_dir / "runs.txt").read_text() == "run\n", trial_dir.name  # never re-run
