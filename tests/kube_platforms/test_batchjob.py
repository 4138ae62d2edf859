"""The ``kubernetes`` platform (a batch/v1 Job per trial) against the fake cluster's real Job controller:
the Job it builds, a trial end to end, the trial's own failure failing it at once (PodFailurePolicy), an
eviction mid-trial that does not fail it (the pod is replaced, every metric once), DeadlineExceeded from
maxTrialDuration, and configuration errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nni_ts.models import TrialJobMetric, TrialJobStatus
from nni_ts.testing.conformance import KIT_TRIAL, form, wait_for_status
from nni_ts.testing.k8s import FakeCluster

from .conftest import Factory

TIMEOUT = 60.0


@pytest.fixture
def platform() -> str:
    return "kubernetes"


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "kit_trial.py").write_text(KIT_TRIAL, encoding="utf-8")
    return code


def _values(metrics: list[TrialJobMetric], trial_id: str) -> list[Any]:
    return [json.loads(json.loads(m.data)["value"]) for m in metrics if m.trial_job_id == trial_id]


def _pods(cluster: FakeCluster, trial_id: str) -> list[dict[str, Any]]:
    return cluster.list("pods", label_selector=f"nni-ts.io/trial={trial_id}")


async def test_a_trial_runs_end_to_end_as_a_job(cluster: FakeCluster, make_service: Factory, code_dir: Path) -> None:
    svc = make_service(code_dir, "python3 kit_trial.py")
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        detail = await svc.submit_trial_job(form({"mode": "ok", "n": 3, "final": 0.75}))
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        assert _values(metrics, detail.id)[-1] == 0.75 and len(metrics) == 4
        job = cluster.get("jobs", detail.platform_data["job"])
        assert job is not None
        spec = job["spec"]
        assert spec["backoffLimit"] == 1 and spec["podReplacementPolicy"] == "Failed"
        rules = spec["podFailurePolicy"]["rules"]
        assert rules[0]["action"] == "Ignore" and rules[0]["onPodConditions"][0]["type"] == "DisruptionTarget"
        assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["operator"] == "NotIn"
        assert "activeDeadlineSeconds" not in spec and "ttlSecondsAfterFinished" not in spec
        assert job["metadata"]["ownerReferences"][0]["uid"] == svc.anchor["metadata"]["uid"]
        (pod,) = _pods(cluster, detail.id)
        assert pod["metadata"]["name"].startswith(job["metadata"]["name"] + "-")
