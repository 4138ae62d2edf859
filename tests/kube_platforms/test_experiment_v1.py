"""Whole experiments from the seeds' NNI v1 configs (kubeflowConfig, frameworkcontrollerConfig) on the fake
cluster: the cluster comes from $KUBECONFIG, the NFS server is this host (no mount, no upload needed),
and unmodified ``import nni`` trials run under the keeper in the pods."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from nni_ts.experiment import Experiment
from nni_ts.models import TrialJobStatus
from nni_ts.testing.k8s import FakeCluster, Node

from .conftest import crd_files

pytestmark = pytest.mark.slow  # seconds per test: scripts/test --fast leaves it out

SEEDS = Path(__file__).resolve().parents[1] / "config" / "seeds"

TRIAL = textwrap.dedent(
    """
    import nni

    params = nni.get_next_parameter()
    lr = float(params.get("learning_rate", 0.01))
    for epoch in range(3):
        nni.report_intermediate_result(lr * (epoch + 1))
    nni.report_final_result(lr * 10)
    """
)


@pytest.mark.parametrize("seed", ["config-kubeflow-tf.yml", "config-frameworkcontroller-filled.yml"])
async def test_seed_v1_config_runs_to_completion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: str) -> None:
    nfs = tmp_path / "nfs-export"
    nfs.mkdir()
    code = tmp_path / "code"
    code.mkdir()
    script = "mnist_tf.py" if "kubeflow" in seed else "mnist.py"
    (code / script).write_text(TRIAL, encoding="utf-8")
    (tmp_path / "search_space.json").write_text(
        json.dumps({"learning_rate": {"_type": "choice", "_value": [0.0001, 0.001, 0.01, 0.1]}})
    )
    text = (SEEDS / seed).read_text()
    # The seed as a user on this machine would adapt it: their NFS export, their address, a small budget.
    text = text.replace("210.28.132.167", "127.0.0.1").replace("10.0.0.5", "127.0.0.1")
    text = text.replace("/data/nfs/nni_storage", str(nfs)).replace("/exports/nni", str(nfs))
    text = text.replace("maxTrialNum: 5", "maxTrialNum: 3").replace("maxTrialNum: 100", "maxTrialNum: 3")
    text = text.replace("trialConcurrency: 1", "trialConcurrency: 2")
    text = text.replace("searchSpacePath: search_space_tf.json", "searchSpacePath: search_space.json")
    text = text.replace("searchSpacePath: ~/nni/examples/trials/mnist-tfv1/search_space.json",
                        "searchSpacePath: search_space.json")  # fmt: skip
    text = text.replace("codeDir: ~/nni/examples/trials/mnist-tfv1", "codeDir: code").replace(
        "codeDir: .", "codeDir: code"
    )
    if "nniManagerIp" not in text:
        text += "nniManagerIp: 127.0.0.1\n"
    config = tmp_path / "config.yml"
    config.write_text(text)
    async with FakeCluster(
        tmp_path / "cluster",
        crd_files=crd_files(),
        nodes=[Node("gpu-node", cpu=16, memory="64Gi", gpus=4)],
        nfs_exports={("127.0.0.1", str(nfs)): nfs},
    ) as cluster:
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
        exp = Experiment(config, control_socket=False)
        result = await exp.run()
        assert result.status == "DONE", result.message
        assert len(result.trials) == 3
        # The FrameworkController seed has the Medianstop assessor: it may stop a trial early.
        statuses = [t.status for t in result.trials]
        assert set(statuses) <= {TrialJobStatus.SUCCEEDED, TrialJobStatus.EARLY_STOPPED}, statuses
        assert TrialJobStatus.SUCCEEDED in statuses
        assert result.best is not None and result.best.final_value in (0.001, 0.01, 0.1, 1.0)
        # Everything the experiment created is garbage-collected with its anchor.
        plural = "tfjobs" if "kubeflow" in seed else "frameworks"
        await cluster.wait_for(lambda c: not c.list(plural) and not c.list("pods"), timeout=30)
