"""Distributed jobs on the fake cluster: a TFJob with workers and a parameter server, a Framework with two
task roles behind the frameworkbarrier, registry credentials as an imagePullSecret, and the anchor
ConfigMap whose deletion garbage-collects the experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nni_ts.errors import ConfigError
from nni_ts.models import TrialJobMetric, TrialJobStatus
from nni_ts.platforms.kubernetes.frameworkcontroller import FrameworkControllerTrainingService
from nni_ts.platforms.kubernetes.kubeflow import KubeflowTrainingService
from nni_ts.testing.conformance import form, wait_for_status
from nni_ts.testing.k8s import FakeCluster

from .conftest import fc_config, kubeflow_config

TRIAL = (
    "import json, os, nni\n"
    "p = nni.get_next_parameter()\n"
    "env = {k: v for k, v in os.environ.items() if k.startswith(('FB_', 'TF_CONFIG', 'FC_TASKROLE'))}\n"
    "nni.report_final_result({'default': 1.0, 'host': os.environ.get('HOSTNAME'), 'env': env})\n"
)


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(TRIAL)
    (code / "ps.py").write_text("import time\ntime.sleep(120)\n")
    return code


async def test_tfjob_workers_and_parameter_server(
    cluster: FakeCluster, nfs_dir: Path, code_dir: Path, tmp_path: Path
) -> None:
    config = kubeflow_config(cluster, nfs_dir, code_dir, "python3 trial.py", role={"replicas": 2})
    config["ps"] = {
        "replicas": 1,
        "command": "python3 ps.py",
        "memorySize": "256m",
        "cpuNumber": 0.5,
        "dockerImage": "python:3.11",
    }
    svc = KubeflowTrainingService(config, experiment_dir=tmp_path / "exp")
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        detail = await svc.submit_trial_job(form({}))
        done = await wait_for_status(svc, detail.id, timeout=60)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        # Only the first worker reports; the second ran under a journal-only keeper in its own directory.
        assert len(metrics) == 1
        value = json.loads(json.loads(metrics[0].data)["value"])
        assert value["host"].endswith("-worker-0") and "TF_CONFIG" in value["env"]
        replicas = nfs_dir / "nni-ts" / svc.experiment_id / "trials" / detail.id / "replicas"
        await cluster.wait_for(lambda c: any(replicas.glob("*-worker-1/.nni-ts/exit")), timeout=30)
        # The parameter server never ends by itself: cleanPodPolicy Running stops it with the job.
        job = (await svc.get_trial_job(detail.id)).platform_data["job"]
        await cluster.wait_for(
            lambda c: not [p for p in c.list("pods", label_selector=f"training.kubeflow.org/job-name={job}")
                           if p["status"].get("phase") == "Running"],
            timeout=30,
        )  # fmt: skip


async def test_framework_with_two_roles_and_the_barrier(
    cluster: FakeCluster, nfs_dir: Path, code_dir: Path, tmp_path: Path
) -> None:
    ps = {"name": "ps", "taskNumber": 1, "command": "python3 ps.py", "memorySize": "256m", "cpuNumber": 0.5,
          "dockerImage": "python:3.11",
          "frameworkAttemptCompletionPolicy": {"minFailedTaskCount": 1, "minSucceededTaskCount": -1}}  # fmt: skip
    config = fc_config(cluster, nfs_dir, code_dir, "python3 trial.py", extra_roles=[ps])
    svc = FrameworkControllerTrainingService(config, experiment_dir=tmp_path / "exp")
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        detail = await svc.submit_trial_job(form({}))
        done = await wait_for_status(svc, detail.id, timeout=60)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        value = json.loads(json.loads(metrics[0].data)["value"])
        assert value["env"]["FC_TASKROLE_NAME"] == "worker"
        assert any(k.startswith("FB_") for k in value["env"]), value["env"]  # the barrier's injector.sh ran


async def test_registry_credentials_become_an_image_pull_secret(
    cluster: FakeCluster, nfs_dir: Path, code_dir: Path, tmp_path: Path
) -> None:
    auth = tmp_path / "config.json"
    auth.write_text(json.dumps({"auths": {"registry.example": {"auth": "dXNlcjpwYXNz"}}}))
    config = kubeflow_config(
        cluster, nfs_dir, code_dir, "python3 trial.py", role={"privateRegistryAuthPath": str(auth)}
    )
    svc = KubeflowTrainingService(config, experiment_dir=tmp_path / "exp")
    async with svc:
        detail = await svc.submit_trial_job(form({}))
        done = await wait_for_status(svc, detail.id, timeout=60)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        secrets = cluster.list("secrets", label_selector=f"nni-ts.io/experiment={svc.experiment_id}")
        (secret,) = [s for s in secrets if s["type"] == "kubernetes.io/dockerconfigjson"]
        assert secret["type"] == "kubernetes.io/dockerconfigjson"
        assert secret["metadata"]["ownerReferences"][0]["kind"] == "ConfigMap"
        job = cluster.get("tfjobs", done.platform_data["job"])
        assert job is not None
        pod_spec = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
        assert pod_spec["imagePullSecrets"] == [{"name": secret["metadata"]["name"]}]
    # The experiment is over: its anchor is deleted and everything it owned is collected.
    await cluster.wait_for(lambda c: not c.list("secrets", label_selector=f"nni-ts.io/experiment={svc.experiment_id}")
                           and not c.list("tfjobs"), timeout=30)  # fmt: skip


async def test_bad_registry_file_is_a_config_error(
    cluster: FakeCluster, nfs_dir: Path, code_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "auth.txt"
    bad.write_text("not json")
    config = kubeflow_config(cluster, nfs_dir, code_dir, "python3 trial.py", role={"privateRegistryAuthPath": str(bad)})
    with pytest.raises(ConfigError, match="docker config.json"):
        async with KubeflowTrainingService(config, experiment_dir=tmp_path / "exp"):
            pass


async def test_missing_crd_and_missing_cluster_say_what_to_do(
    tmp_path: Path, nfs_dir: Path, code_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    async with FakeCluster(tmp_path / "bare", builtin_crds=False) as bare:
        config = kubeflow_config(bare, nfs_dir, code_dir, "python3 trial.py")
        with pytest.raises(ConfigError, match="training operator"):  # the user's setup: the CLI exits 2
            async with KubeflowTrainingService(config, experiment_dir=tmp_path / "exp"):
                pass
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = kubeflow_config(bare, nfs_dir, code_dir, "python3 trial.py")
    del config["kubeconfig"]
    with pytest.raises(ConfigError, match="KUBECONFIG"):
        async with KubeflowTrainingService(config, experiment_dir=tmp_path / "exp2"):
            pass


async def test_pytorchjob_in_its_own_namespace(tmp_path: Path, nfs_dir: Path, code_dir: Path) -> None:
    from nni_ts.testing.k8s import Node

    from .conftest import NFS_PATH, NFS_SERVER, crd_files

    async with FakeCluster(
        tmp_path / "cluster",
        crd_files=crd_files(),
        nodes=[Node("n1", cpu=16, memory="64Gi")],
        nfs_exports={(NFS_SERVER, NFS_PATH): nfs_dir},
        namespaces=["nni-exp"],
    ) as cluster:
        config = kubeflow_config(cluster, nfs_dir, code_dir, "python3 trial.py", operator="pytorch-operator",
                                 namespace="nni-exp")  # fmt: skip
        config["master"] = dict(config["worker"])
        svc = KubeflowTrainingService(config, experiment_dir=tmp_path / "exp")
        metrics: list[TrialJobMetric] = []
        svc.add_trial_job_metric_listener(metrics.append)
        async with svc:
            detail = await svc.submit_trial_job(form({}))
            done = await wait_for_status(svc, detail.id, timeout=60)
            assert done.status is TrialJobStatus.SUCCEEDED, done.message
            assert cluster.get("pytorchjobs", done.platform_data["job"], namespace="nni-exp") is not None
            assert cluster.list("pytorchjobs", namespace="default") == []
        value = json.loads(json.loads(metrics[0].data)["value"])
        assert value["host"].endswith("-master-0")
