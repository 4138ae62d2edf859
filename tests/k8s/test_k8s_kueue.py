"""The fake cluster's small Kueue: labelled objects suspended at creation, Workloads with QuotaReserved and
Admitted, admission in order within a ClusterQueue's CPU and GPU quota, preemption and requeue; with kubectl
and the kubernetes client (the real v0.19.2 Workload and LocalQueue CRDs)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import kubernetes_asyncio as k8s
import pytest
import yaml
from k8s_support import Kubectl, condition

from nni_ts.testing.k8s import FakeCluster, Node

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
NEXT = (REPO / ".." / "shared" / "crds" / "next").resolve()
CRDS = [NEXT / "kueue.x-k8s.io_workloads.yaml", NEXT / "kueue.x-k8s.io_localqueues.yaml"]
KUEUE = "kueue.x-k8s.io"


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    assert all(p.is_file() for p in CRDS), f"the real CRDs are in {NEXT}"
    async with FakeCluster(
        tmp_path / "cluster",
        crd_files=CRDS,
        nodes=[Node("node-1", cpu=64, memory="64Gi", gpus=4)],
        controllers=["job-controller", "kueue"],
    ) as c:
        yield c


def queues(cpu: str = "2", gpu: str = "1", **spec: Any) -> list[dict[str, Any]]:
    return [
        {"apiVersion": f"{KUEUE}/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "default-flavor"}},
        {
            "apiVersion": f"{KUEUE}/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": "cluster-queue"},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": "default-flavor",
                                "resources": [
                                    {"name": "cpu", "nominalQuota": cpu},
                                    {"name": "memory", "nominalQuota": "36Gi"},
                                    {"name": "nvidia.com/gpu", "nominalQuota": gpu},
                                ],
                            }
                        ],
                    }
                ],
                **spec,
            },
        },
        {
            "apiVersion": f"{KUEUE}/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "user-queue", "namespace": "default"},
            "spec": {"clusterQueue": "cluster-queue"},
        },
    ]


def waiter(flag: Path) -> list[str]:
    """A trial that runs until ``flag`` exists (bounded)."""
    code = (
        "import os, sys, time\n"
        "for _ in range(1200):\n"
        f"    if os.path.exists({str(flag)!r}): sys.exit(0)\n"
        "    time.sleep(0.05)\n"
        "sys.exit(9)\n"
    )
    return [sys.executable, "-c", code]


def job(
    name: str, command: list[str], cpu: str = "1", gpu: int = 0, queue: str = "user-queue", **labels: str
) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": "100Mi"}}
    if gpu:
        resources["limits"] = {"nvidia.com/gpu": str(gpu)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": queue, **labels}},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "trial", "image": "python:3.12", "command": command, "resources": resources}
                    ],
                }
            }
        },
    }


def workload_of(cluster: FakeCluster, job_name: str) -> dict[str, Any] | None:
    uid = (cluster.get("jobs", job_name) or {}).get("metadata", {}).get("uid")
    return next(
        (w for w in cluster.list("workloads") if w["metadata"]["labels"].get("kueue.x-k8s.io/job-uid") == uid), None
    )


def admitted(cluster: FakeCluster) -> set[str]:
    out = set()
    for w in cluster.list("workloads"):
        if condition(w, "Admitted") and not condition(w, "Finished"):
            out.add(w["metadata"]["ownerReferences"][0]["name"])
    return out


async def test_admission_in_order_within_cpu_quota(cluster: FakeCluster, tmp_path: Path) -> None:
    for obj in queues(cpu="2"):
        cluster.create(obj)
    # Created in an order that is not the names' (first come, first served, not alphabetical).
    flags = {n: tmp_path / f"go-{n}" for n in ("d", "b", "c", "a")}
    for n, flag in flags.items():
        created = cluster.create(job(n, waiter(flag)))
        assert created["spec"]["suspend"] is True  # Kueue's webhook, not the client, suspended it
    await cluster.wait_for(lambda c: admitted(c) == {"d", "b"}, timeout=20, message="the first two admitted")
    wl_c = await cluster.wait_for(
        lambda c: (w := workload_of(c, "c")) is not None and _reason(w, "QuotaReserved") == "Pending" and w,
        timeout=20,
    )
    quota = [x for x in wl_c["status"]["conditions"] if x["type"] == "QuotaReserved"][0]
    assert (
        quota["status"] == "False" and "insufficient unused quota for cpu in flavor default-flavor" in quota["message"]
    )
    assert cluster.list("pods", label_selector="job-name=c") == []
    assert (cluster.get("jobs", "c") or {})["spec"]["suspend"] is True
    wl_d = workload_of(cluster, "d")
    assert wl_d is not None and wl_d["status"]["admission"]["clusterQueue"] == "cluster-queue"
    assert wl_d["spec"]["podSets"][0]["count"] == 1 and wl_d["metadata"]["ownerReferences"][0]["kind"] == "Job"
    lq = cluster.get("localqueues", "user-queue")
    assert lq is not None and (lq["status"]["pendingWorkloads"], lq["status"]["admittedWorkloads"]) == (2, 2)
    flags["d"].touch()  # d ends: c (the oldest waiting) is admitted next, a still waits
    await cluster.wait_for(lambda c: admitted(c) == {"b", "c"}, timeout=30, message="c admitted after d ended")
    finished = await cluster.wait_for(
        lambda c: (w := workload_of(c, "d")) is not None and condition(w, "Finished") and w
    )
    assert _reason(finished, "Finished") == "Succeeded"
    for flag in flags.values():
        flag.touch()
    for n in flags:
        done = await cluster.wait_for_object("jobs", n, lambda j: condition(j, "Complete"), timeout=30)
        assert done["status"]["failed"] == 0


async def test_gpu_quota_holds_the_second_gpu_job(cluster: FakeCluster, tmp_path: Path) -> None:
    for obj in queues(cpu="8", gpu="1"):
        cluster.create(obj)
    cluster.create(job("g1", waiter(tmp_path / "g1"), gpu=1))
    cluster.create(job("g2", waiter(tmp_path / "g2"), gpu=1))
    cluster.create(job("cpu-only", waiter(tmp_path / "c"), cpu="2"))
    await cluster.wait_for(lambda c: admitted(c) == {"g1", "cpu-only"}, timeout=20, message="g2 held by the GPU quota")
    wl = workload_of(cluster, "g2")
    assert wl is not None and "insufficient unused quota for nvidia.com/gpu" in str(wl["status"]["conditions"])
    (tmp_path / "g1").touch()
    await cluster.wait_for(lambda c: "g2" in admitted(c), timeout=30, message="g2 admitted once g1 ended")


async def test_preemption_suspends_requeues_and_the_job_then_succeeds(cluster: FakeCluster, tmp_path: Path) -> None:
    for obj in queues(cpu="1"):
        cluster.create(obj)
    marker = tmp_path / "runs"
    script = f"echo x >> {marker}; if [ $(wc -l < {marker}) -lt 2 ]; then sleep 60; fi"
    cluster.create(job("victim", ["sh", "-c", script]))
    await cluster.wait_for(lambda c: marker.exists(), timeout=20, message="the first run started")
    wl = workload_of(cluster, "victim")
    assert wl is not None
    cluster.kueue.preempt("default", wl["metadata"]["name"])
    evicted = cluster.get("workloads", wl["metadata"]["name"])
    assert evicted is not None and condition(evicted, "Evicted")
    assert condition(evicted, "QuotaReserved")  # held until the job's pods are gone, then requeued
    done = await cluster.wait_for_object("jobs", "victim", lambda j: condition(j, "Complete"), timeout=40)
    assert done["status"]["failed"] == 0  # the preempted pod was removed by the suspension, not counted
    assert marker.read_text().count("x") == 2
    wl = await cluster.wait_for(
        lambda c: (w := workload_of(c, "victim")) is not None and condition(w, "Finished") and w, timeout=20
    )
    conds = {c["type"]: (c["status"], c["reason"]) for c in wl["status"]["conditions"]}
    assert conds["Requeued"] == ("True", "Preempted") and conds["Evicted"][0] == "False"
    assert conds["Admitted"][0] == "True" and conds["Finished"] == ("True", "Succeeded")
    assert wl["status"]["requeueState"]["count"] == 1
    job_obj = cluster.get("jobs", "victim")
    assert job_obj is not None
    reasons = [e["reason"] for e in cluster.list("events") if e["involvedObject"].get("name") == "victim"]
    assert reasons.count("Started") == 2 and "Preempted" in reasons and "CreatedWorkload" in reasons


async def test_a_higher_priority_workload_preempts_a_lower_one(cluster: FakeCluster, tmp_path: Path) -> None:
    for obj in queues(cpu="1", preemption={"withinClusterQueue": "LowerPriority"}):
        cluster.create(obj)
    cluster.create(
        {"apiVersion": f"{KUEUE}/v1beta2", "kind": "WorkloadPriorityClass", "metadata": {"name": "high"}, "value": 1000}
    )
    cluster.create(job("low", waiter(tmp_path / "low")))
    await cluster.wait_for(lambda c: admitted(c) == {"low"}, timeout=20)
    cluster.create(job("high", waiter(tmp_path / "high"), **{"kueue.x-k8s.io/priority-class": "high"}))
    await cluster.wait_for(lambda c: admitted(c) == {"high"}, timeout=20, message="high admitted, low evicted")
    low = workload_of(cluster, "low")
    assert low is not None
    conds = {c["type"]: c for c in low["status"]["conditions"]}
    assert conds["Evicted"]["status"] == "True" and conds["Evicted"]["reason"] == "Preempted"
    assert conds["Preempted"]["reason"] == "InClusterQueue" and "due to prioritization" in conds["Preempted"]["message"]
    assert (cluster.get("jobs", "low") or {})["spec"]["suspend"] is True
    (tmp_path / "high").touch()
    await cluster.wait_for(lambda c: "low" in admitted(c), timeout=30, message="low requeued and admitted again")


async def test_kubectl_and_the_client_see_queues_and_workloads(cluster: FakeCluster, tmp_path: Path) -> None:
    assert shutil.which("kubectl"), "kubectl is installed by scripts/test"
    kubectl = Kubectl(cluster.kubeconfig, tmp_path / "cache")
    items = [*queues(cpu="1"), job("kc", ["true"]), job("lost", ["true"], queue="nope")]
    body = yaml.safe_dump_all(items)
    result = await kubectl("apply", "-f", "-", stdin=body)
    assert result.code == 0, result.err
    result = await kubectl("wait", "--for=condition=complete", "job/kc", "--timeout=30s", timeout=40)
    assert result.code == 0, result.err
    listed = (await kubectl("get", "workloads", "-o", "json")).json()["items"]
    by_owner = {w["metadata"]["ownerReferences"][0]["name"]: w for w in listed}
    assert condition(by_owner["kc"], "Finished")
    lost = [c for c in by_owner["lost"]["status"]["conditions"] if c["type"] == "QuotaReserved"][0]
    assert (lost["status"], lost["reason"]) == ("False", "Inadmissible") and "LocalQueue nope doesn't exist" in lost[
        "message"
    ]
    described = await kubectl("describe", "workload", by_owner["lost"]["metadata"]["name"])
    assert described.code == 0 and "Inadmissible" in described.out, described
    cfg = k8s.client.Configuration()
    cfg.host = cluster.url
    async with k8s.client.ApiClient(cfg) as api:
        custom = k8s.client.CustomObjectsApi(api)
        wls = await custom.list_namespaced_custom_object(KUEUE, "v1beta2", "default", "workloads")
        assert {w["spec"]["queueName"] for w in wls["items"]} == {"user-queue", "nope"}
        cq = await custom.get_cluster_custom_object(KUEUE, "v1beta2", "clusterqueues", "cluster-queue")
        assert cq["status"]["pendingWorkloads"] == 0


def _reason(obj: dict[str, Any], type_: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return str(c.get("reason"))
    return None


async def test_a_queued_trainjob_waits_then_runs_to_complete(tmp_path: Path) -> None:
    trainer = [
        NEXT / f
        for f in (
            "jobset.x-k8s.io_jobsets.yaml",
            "trainer.kubeflow.org_trainjobs.yaml",
            "trainer.kubeflow.org_clustertrainingruntimes.yaml",
        )
    ]
    async with FakeCluster(
        tmp_path / "cluster",
        crd_files=[*CRDS, *trainer],
        controllers=["job-controller", "jobset-controller", "trainjob-controller", "kueue"],
    ) as cluster:
        for obj in queues(cpu="1"):
            cluster.create(obj)
        runtime = {
            "apiVersion": "trainer.kubeflow.org/v1alpha1",
            "kind": "ClusterTrainingRuntime",
            "metadata": {"name": "plain"},
            "spec": {
                "mlPolicy": {"numNodes": 1},
                "template": {
                    "spec": {
                        "replicatedJobs": [
                            {
                                "name": "node",
                                "template": {
                                    "spec": {"template": {"spec": {"containers": [{"name": "node", "image": "x"}]}}}
                                },
                            }
                        ]
                    }
                },
            },
        }
        cluster.create(runtime)
        flag = tmp_path / "go"

        def trainjob(name: str) -> dict[str, Any]:
            return {
                "apiVersion": "trainer.kubeflow.org/v1alpha1",
                "kind": "TrainJob",
                "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": "user-queue"}},
                "spec": {
                    "runtimeRef": {"name": "plain"},
                    "trainer": {"command": waiter(flag), "resourcesPerNode": {"requests": {"cpu": "1"}}},
                },
            }

        assert cluster.create(trainjob("first"))["spec"]["suspend"] is True
        assert cluster.create(trainjob("second"))["spec"]["suspend"] is True
        await cluster.wait_for(
            lambda c: [p for p in c.list("pods") if p["status"].get("phase") == "Running"],
            timeout=30,
            message="first runs",
        )
        second = await cluster.wait_for_object("trainjobs", "second", lambda o: condition(o, "Suspended"), timeout=20)
        assert (second.get("status") or {}).get("jobsStatus", [{}])[0].get("active", 0) == 0
        flag.touch()
        for name in ("first", "second"):
            done = await cluster.wait_for_object("trainjobs", name, lambda o: condition(o, "Complete"), timeout=40)
            assert [c["type"] for c in done["status"]["conditions"]] == ["Suspended", "Complete"]


async def test_a_queued_tfjob_is_suspended_through_run_policy_preempted_and_run_again(tmp_path: Path) -> None:
    """Kueue's kubeflow.org/tfjob integration (off by default since Kueue 0.19; the fake has it on):
    ``runPolicy.suspend``, which the fake tf-operator honours (no pods, Suspended, then resumed)."""
    tfjob_crd = (REPO / ".." / "shared" / "crds" / "kubeflow.org_tfjobs.yaml").resolve()
    async with FakeCluster(
        tmp_path / "cluster", crd_files=[*CRDS, tfjob_crd], controllers=["tf-operator", "kueue"]
    ) as cluster:
        for obj in queues(cpu="1"):
            cluster.create(obj)
        marker = tmp_path / "runs"
        script = f"echo x >> {marker}; if [ $(wc -l < {marker}) -lt 2 ]; then sleep 60; fi"

        def tfjob(name: str, command: list[str]) -> dict[str, Any]:
            container = {
                "name": "tensorflow",
                "image": "python:3.12",
                "command": command,
                "resources": {"requests": {"cpu": "1", "memory": "100Mi"}},
            }
            return {
                "apiVersion": "kubeflow.org/v1",
                "kind": "TFJob",
                "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": "user-queue"}},
                "spec": {
                    "runPolicy": {"cleanPodPolicy": "Running"},
                    "tfReplicaSpecs": {
                        "Worker": {
                            "replicas": 1,
                            "restartPolicy": "Never",
                            "template": {"spec": {"containers": [container]}},
                        }
                    },
                },
            }

        first = cluster.create(tfjob("victim", ["sh", "-c", script]))
        assert first["spec"]["runPolicy"]["suspend"] is True  # Kueue's webhook
        second = cluster.create(tfjob("next", ["true"]))
        assert second["spec"]["runPolicy"]["suspend"] is True
        await cluster.wait_for(lambda c: marker.exists(), timeout=20, message="the first run started")
        held = await cluster.wait_for_object("tfjobs", "next", lambda j: condition(j, "Suspended"), timeout=20)
        assert [c for c in held["status"]["conditions"] if c["type"] == "Suspended"][0]["reason"] == "TFJobSuspended"
        assert cluster.list("pods", label_selector="training.kubeflow.org/job-name=next") == []
        owners = {w["metadata"]["ownerReferences"][0]["name"]: w for w in cluster.list("workloads")}
        assert owners["victim"]["spec"]["podSets"][0]["name"] == "worker"
        assert owners["victim"]["metadata"]["ownerReferences"][0]["kind"] == "TFJob"
        cluster.kueue.preempt("default", owners["victim"]["metadata"]["name"])
        # The victim is suspended again (its pod deleted, not counted as failed); "next" takes the quota.
        suspended = await cluster.wait_for_object(
            "tfjobs", "victim", lambda j: condition(j, "Suspended") and not j["status"].get("startTime"), timeout=20
        )
        assert not condition(suspended, "Running") and not condition(suspended, "Failed")
        await cluster.wait_for_object("tfjobs", "next", lambda j: condition(j, "Succeeded"), timeout=30)
        done = await cluster.wait_for_object("tfjobs", "victim", lambda j: condition(j, "Succeeded"), timeout=40)
        resumed = [c for c in done["status"]["conditions"] if c["type"] == "Suspended"][0]
        assert (resumed["status"], resumed["reason"]) == ("False", "TFJobResumed")
        assert marker.read_text().count("x") == 2
        wl = cluster.get("workloads", owners["victim"]["metadata"]["name"])
        assert wl is not None and wl["status"]["requeueState"]["count"] == 1 and condition(wl, "Finished")
