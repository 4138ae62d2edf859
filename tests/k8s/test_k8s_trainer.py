"""Kubeflow Trainer v2 in the fake cluster: TrainJob -> JobSet -> Jobs -> pods with status flowing back up,
the TrainJob CRD's CEL rules a client meets, and kubectl on all of it (real v2.3.0 / JobSet v0.12.0 CRDs)."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_support import TRAINER_CRDS, Kubectl, condition

from nni_ts.testing.k8s import FakeCluster
from nni_ts.testing.k8s.util import ApiError

pytestmark = pytest.mark.timeout(120)

CRDS = TRAINER_CRDS
PY = sys.executable

# As in Kubeflow's docs (the torch-distributed runtime and a TrainJob that references it), with host
# programs in place of the images' (the fake kubelet runs commands on this machine).
RUNTIME = """
apiVersion: trainer.kubeflow.org/v1alpha1
kind: ClusterTrainingRuntime
metadata:
  name: torch-distributed
  labels:
    trainer.kubeflow.org/framework: torch
spec:
  mlPolicy:
    numNodes: 1
    torch: {}
  template:
    spec:
      replicatedJobs:
        - name: node
          template:
            metadata:
              labels:
                trainer.kubeflow.org/trainjob-ancestor-step: trainer
            spec:
              template:
                spec:
                  containers:
                    - name: node
                      image: pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
                      command:
                        - /bin/bash
                        - -c
                        - echo "Torch Distributed Runtime"
"""


def trainjob(name: str, code: str, num_nodes: int = 2) -> str:
    return f"""
apiVersion: trainer.kubeflow.org/v1alpha1
kind: TrainJob
metadata:
  name: {name}
spec:
  runtimeRef:
    name: torch-distributed
  trainer:
    numNodes: {num_nodes}
    image: docker.io/kubeflow/pytorch-mnist:v1
    command: ["{PY}", "-c", {json.dumps(code)}]
    env:
      - name: EPOCHS
        value: "1"
    resourcesPerNode:
      requests:
        cpu: 100m
"""


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    assert all(p.is_file() for p in CRDS), f"the real CRDs are in {CRDS[0].parent}"
    async with FakeCluster(
        tmp_path / "cluster", crd_files=CRDS, controllers=["job-controller", "jobset-controller", "trainjob-controller"]
    ) as c:
        yield c


@pytest.fixture
def kubectl(cluster: FakeCluster, tmp_path: Path) -> Kubectl:
    assert shutil.which("kubectl"), "kubectl is installed by scripts/test"
    return Kubectl(cluster.kubeconfig, tmp_path / "kube-cache")


def finished(obj: dict[str, Any]) -> bool:
    return condition(obj, "Complete") or condition(obj, "Failed")


async def test_a_docs_style_trainjob_runs_to_complete_and_its_trainer_is_immutable(
    cluster: FakeCluster, kubectl: Kubectl
) -> None:
    code = "import os; print('rank', os.environ['PET_NODE_RANK'], 'of', os.environ['PET_NNODES'], os.environ['EPOCHS'])"
    result = await kubectl("apply", "-f", "-", stdin=RUNTIME + "---\n" + trainjob("pytorch-simple", code))
    assert result.code == 0, result.err
    result = await kubectl("wait", "--for=condition=Complete", "trainjob/pytorch-simple", "--timeout=60s", timeout=70)
    assert result.code == 0, (result.err, cluster.get("trainjobs", "pytorch-simple"))
    tj = cluster.get("trainjobs", "pytorch-simple")
    assert tj is not None
    types = [c["type"] for c in tj["status"]["conditions"]]
    assert "Complete" in types and "Running" not in types and "Failed" not in types
    assert tj["status"]["jobsStatus"] == [
        {"name": "node", "ready": 0, "succeeded": 1, "failed": 0, "active": 0, "suspended": 0}
    ]
    js = cluster.get("jobsets", "pytorch-simple")
    assert js is not None and condition(js, "Completed") and js["status"]["terminalState"] == "Completed"
    assert js["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    job = cluster.get("jobs", "pytorch-simple-node-0")
    assert job is not None and condition(job, "Complete") and job["spec"]["completions"] == 2
    pods = cluster.list("pods", label_selector="jobset.sigs.k8s.io/jobset-name=pytorch-simple")
    logs = sorted(cluster.pod_log(p["metadata"]["name"]).strip() for p in pods)
    assert logs == ["rank 0 of 2 1", "rank 1 of 2 1"]
    rank0 = cluster.list(
        "pods",
        label_selector="jobset.sigs.k8s.io/replicatedjob-name=node,batch.kubernetes.io/job-completion-index=0",
    )
    assert len(rank0) == 1  # how Katib and a client pick the rank-0 pod for logs
    assert pods[0]["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "100m"}}
    # kubectl get shows the CRD's State column (the last condition's type).
    table = (await kubectl("get", "trainjobs")).out
    assert "pytorch-simple" in table and "Complete" in table, table
    # A second apply that changes spec.trainer is refused by the CRD's CEL rule.
    result = await kubectl("apply", "-f", "-", stdin=trainjob("pytorch-simple", code, num_nodes=3))
    assert result.code != 0
    assert "spec.trainer" in result.err and "field is immutable" in result.err, result.err
    # Deleting the TrainJob takes its JobSet, Jobs and pods with it.
    result = await kubectl("delete", "trainjob", "pytorch-simple", "--wait=false")
    assert result.code == 0, result.err
    await cluster.wait_for(
        lambda c: (
            not c.list("pods", label_selector="jobset.sigs.k8s.io/jobset-name=pytorch-simple")
            and c.get("jobsets", "pytorch-simple") is None
        ),
        timeout=30,
        message="the JobSet and its pods garbage-collected",
    )


async def test_a_failing_trainer_fails_the_trainjob(cluster: FakeCluster) -> None:
    runtime = yaml.safe_load(RUNTIME)
    # The pods restart in place (JobSet's default restartPolicy OnFailure); each restart counts against the
    # Job's backoffLimit, 0 here so that the first failure fails the Job, the JobSet and the TrainJob.
    runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["backoffLimit"] = 0
    cluster.create(runtime)
    cluster.create(yaml.safe_load(trainjob("bad-exit", "import sys; sys.exit(3)", num_nodes=1)))
    done = await cluster.wait_for_object("trainjobs", "bad-exit", finished, timeout=90)
    failed = [c for c in done["status"]["conditions"] if c["type"] == "Failed"][0]
    assert failed["reason"] == "FailedJobs" and "Complete" not in [c["type"] for c in done["status"]["conditions"]]
    assert done["status"]["jobsStatus"][0]["failed"] == 1


async def test_suspend_is_passed_down_and_reported(cluster: FakeCluster) -> None:
    cluster.create(yaml.safe_load(RUNTIME))
    obj = yaml.safe_load(trainjob("held", "print('ran')", num_nodes=1))
    obj["spec"]["suspend"] = True
    cluster.create(obj)
    held = await cluster.wait_for_object("trainjobs", "held", lambda o: condition(o, "Suspended"), timeout=20)
    assert [c["reason"] for c in held["status"]["conditions"]] == ["Suspended"]
    job = await cluster.wait_for_object("jobs", "held-node-0", lambda j: condition(j, "Suspended"), timeout=20)
    assert job["spec"]["suspend"] is True and cluster.list("pods") == []
    cluster.patch("trainjobs", "held", {"spec": {"suspend": False}})
    done = await cluster.wait_for_object("trainjobs", "held", finished, timeout=60)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in done["status"]["conditions"]}
    assert conditions["Suspended"] == ("False", "Resumed") and conditions["Complete"][0] == "True"


@pytest.mark.parametrize(
    ("name", "runtime", "needle"),
    [
        ("1st-trial", "torch-distributed", "metadata.name must match RFC 1035 DNS label format"),
        ("t" * 64, "torch-distributed", "metadata.name must be no more than 63 characters"),
        ("no-runtime", "does-not-exist", "unsupported runtime"),
    ],
)
async def test_refused_trainjobs_name_the_field(
    cluster: FakeCluster, kubectl: Kubectl, name: str, runtime: str, needle: str
) -> None:
    cluster.create(yaml.safe_load(RUNTIME))
    body = trainjob(name, "pass").replace("name: torch-distributed", f"name: {runtime}")
    result = await kubectl("apply", "-f", "-", stdin=body)
    assert result.code != 0 and needle in result.err, result.err


def patched_trainjob(name: str, patch: dict[str, Any]) -> dict[str, Any]:
    obj = yaml.safe_load(trainjob(name, "print('patched')", num_nodes=1))
    obj["metadata"]["labels"] = {"owner": "trainjob-label"}
    obj["spec"]["runtimePatches"] = [patch]
    return obj


async def test_runtime_patches_reach_the_pods_and_the_trainjob_labels_do_not(cluster: FakeCluster) -> None:
    """As Trainer v2.2+ does: each runtimePatches entry is merged into the runtime's JobSet template
    (replicated jobs by name, containers and volumes by name), its template labels go on the JobSet, and the
    TrainJob's own labels stay on the TrainJob."""
    cluster.create(yaml.safe_load(RUNTIME))
    pod_patch = {
        "metadata": {"labels": {"trial": "t1"}, "annotations": {"note": "patched"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "fake-node-1"},
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "node", "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
        },
    }
    patch = {
        "manager": "example.com/hpo",
        "trainingRuntimeSpec": {
            "template": {
                "metadata": {"labels": {"experiment": "e1"}},
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "template": {"metadata": {"labels": {"job": "j1"}}, "spec": {"template": pod_patch}},
                        }
                    ]
                },
            }
        },
    }
    cluster.create(patched_trainjob("patched", patch))
    done = await cluster.wait_for_object("trainjobs", "patched", finished, timeout=60)
    assert condition(done, "Complete")
    js = cluster.get("jobsets", "patched")
    assert js is not None and js["metadata"]["labels"]["experiment"] == "e1"
    assert "owner" not in js["metadata"]["labels"]
    job = cluster.get("jobs", "patched-node-0")
    assert job is not None and job["metadata"]["labels"]["job"] == "j1"
    [pod] = cluster.list("pods", label_selector="trial=t1")
    assert "owner" not in pod["metadata"]["labels"]
    assert pod["metadata"]["annotations"]["note"] == "patched"
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "fake-node-1"}
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"scratch"}
    [node] = pod["spec"]["containers"]
    assert node["volumeMounts"][0]["mountPath"] == "/scratch"
    assert node["image"] == "docker.io/kubeflow/pytorch-mnist:v1"  # the trainer's, applied after the patch
    # A change of the patches while the TrainJob is not suspended is refused (the webhook's rule).
    changed = copy.deepcopy(done)
    changed["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["metadata"]["labels"]["x"] = "y"
    with pytest.raises(ApiError) as info:
        cluster.api.update(
            cluster.api.rtype("trainer.kubeflow.org", "v1alpha1", "trainjobs"), "default", "patched", changed
        )
    assert "RuntimePatches can only be modified when the TrainJob is suspended" in info.value.message


REFUSED_PATCHES: list[tuple[Any, str]] = [
    (lambda p: p.update(manager="hpo"), "must be a domain-prefixed path"),
    (
        lambda p: p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0].update(name="worker"),
        "must not have replicated job that doesn't exist in the runtime job template",
    ),
    (
        lambda p: p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"][
            "spec"
        ].update(containers=[{"name": "node", "env": [{"name": "A", "value": "1"}]}]),
        "must not have envs for the dataset-initializer, model-initializer, node containers",
    ),
    (
        lambda p: p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"][
            "spec"
        ].update(containers=[{"name": "sidecar"}]),
        "must not have container that doesn't exist in the runtime job node",
    ),
]


async def test_runtime_patches_that_do_not_fit_the_runtime_are_refused(cluster: FakeCluster) -> None:
    """As Trainer's webhook (v2.3 jobset plugin): the manager, the replicated jobs and containers a patch names,
    and no env for the node container (that goes through trainer.env)."""
    cluster.create(yaml.safe_load(RUNTIME))
    for change, needle in REFUSED_PATCHES:
        patch: dict[str, Any] = {
            "manager": "example.com/hpo",
            "trainingRuntimeSpec": {
                "template": {
                    "spec": {"replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": {}}}}}]}
                }
            },
        }
        change(patch)
        with pytest.raises(ApiError) as info:
            cluster.create(patched_trainjob("refused", patch))
        assert info.value.code == 422 and needle in info.value.message, (needle, info.value.message)
