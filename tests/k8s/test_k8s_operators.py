"""The simulated tf-operator, pytorch-operator and FrameworkController."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import kubernetes_asyncio as k8s
import pytest
from k8s_support import condition, tfjob

from nni_ts.testing.k8s import FakeCluster
from nni_ts.testing.k8s.store import Event

pytestmark = pytest.mark.timeout(60)


def pytorchjob(name: str, master_cmd: list[str], worker_cmd: list[str], workers: int = 1) -> dict[str, Any]:
    def role(cmd: list[str], replicas: int) -> dict[str, Any]:
        return {
            "replicas": replicas,
            "restartPolicy": "Never",
            "template": {
                "spec": {"containers": [{"name": "pytorch", "image": "pytorch/pytorch:latest", "command": cmd}]}
            },
        }

    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": {"Master": role(master_cmd, 1), "Worker": role(worker_cmd, workers)}},
    }


def framework(name: str, roles: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "frameworkcontroller.microsoft.com/v1",
        "kind": "Framework",
        "metadata": {"name": name},
        "spec": {
            "executionType": "Start",
            "retryPolicy": {"fancyRetryPolicy": True, "maxRetryCount": 0},
            "taskRoles": roles,
            **spec,
        },
    }


def role(
    name: str,
    command: list[str],
    tasks: int = 1,
    min_failed: int = 1,
    min_succeeded: int = -1,
    retry: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "taskNumber": tasks,
        "frameworkAttemptCompletionPolicy": {"minFailedTaskCount": min_failed, "minSucceededTaskCount": min_succeeded},
        "task": {
            "retryPolicy": retry or {"fancyRetryPolicy": False, "maxRetryCount": 0},
            "pod": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "ubuntu:trusty", "command": command}],
                }
            },
        },
    }


#: A Framework's states in the order the controller goes through them (nni_ts/testing/k8s/controllers/framework.py).
FRAMEWORK_LIFECYCLE = [
    "AttemptCreationPending",
    "AttemptCreationRequested",
    "AttemptPreparing",
    "AttemptRunning",
    "AttemptDeletionPending",
    "AttemptDeletionRequested",
    "AttemptDeleting",
    "AttemptCompleted",
    "Completed",
]


def fw_done(obj: dict[str, Any]) -> bool:
    return bool((obj.get("status") or {}).get("state") == "Completed")


# ---------------------------------------------------------------- Kubeflow


async def test_tfjob_failure_marks_failed_with_replica_counts(cluster: FakeCluster) -> None:
    cluster.create(tfjob("fails", ["sh", "-c", "exit 3"], replicas=2))
    job = await cluster.wait_for_object("tfjobs", "fails", lambda o: condition(o, "Failed"))
    failed = [c for c in job["status"]["conditions"] if c["type"] == "Failed"][0]
    assert failed["reason"] == "TFJobFailed"
    assert failed["message"].startswith("TFJob default/fails has failed because")
    running = [c for c in job["status"]["conditions"] if c["type"] == "Running"]
    assert not running or running[0]["status"] == "False"
    assert job["status"]["replicaStatuses"]["Worker"]["failed"] >= 1
    assert job["status"]["completionTime"]
    pod = await cluster.wait_for_object("pods", "fails-worker-0", lambda p: p["status"].get("phase") == "Failed")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


async def test_tfjob_running_then_succeeded_conditions(cluster: FakeCluster, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    cluster.create(tfjob("slow", ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"]))
    job = await cluster.wait_for_object("tfjobs", "slow", lambda o: condition(o, "Running"))
    assert job["status"]["replicaStatuses"]["Worker"]["active"] == 1
    assert job["status"]["conditions"][-1]["reason"] == "TFJobRunning"
    gate.touch()
    job = await cluster.wait_for_object("tfjobs", "slow", lambda o: condition(o, "Succeeded"))
    types = {c["type"]: c["status"] for c in job["status"]["conditions"]}
    assert types == {"Created": "True", "Running": "False", "Succeeded": "True"}
    assert job["status"]["conditions"][-1]["type"] == "Succeeded"


async def test_tfjob_restart_policy_on_failure_restarts_the_process(cluster: FakeCluster, tmp_path: Path) -> None:
    marker = tmp_path / "attempts"
    script = f"echo x >> {marker}; [ $(wc -l < {marker}) -ge 3 ]"
    cluster.create(tfjob("retry", ["sh", "-c", script], restart="OnFailure"))
    await cluster.wait_for_object("tfjobs", "retry", lambda o: condition(o, "Succeeded"), timeout=20)
    pod = cluster.get("pods", "retry-worker-0")
    assert pod is not None and pod["spec"]["restartPolicy"] == "OnFailure"
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 2
    assert marker.read_text().count("x") == 3


async def test_tfjob_exit_code_policy_recreates_on_retryable_codes(cluster: FakeCluster, tmp_path: Path) -> None:
    marker = tmp_path / "n"
    script = f"echo x >> {marker}; if [ $(wc -l < {marker}) -lt 2 ]; then exit 137; fi; exit 1"
    cluster.create(tfjob("codes", ["sh", "-c", script], restart="ExitCode"))
    job = await cluster.wait_for_object("tfjobs", "codes", lambda o: condition(o, "Failed"), timeout=20)
    assert any(c["type"] == "Restarting" for c in job["status"]["conditions"])
    assert marker.read_text().count("x") == 2  # 137 is retryable (re-created), 1 is not


async def test_deleting_a_job_deletes_its_pods_and_kills_processes(cluster: FakeCluster, tmp_path: Path) -> None:
    cluster.create(tfjob("long", [sys.executable, "-c", "import time; time.sleep(60)"], replicas=2))
    await cluster.wait_for(lambda c: len([p for p in c.list("pods") if p["status"].get("phase") == "Running"]) == 2)
    runners = list(cluster.kubelet.runners.values())
    pids = [c.proc.pid for r in runners for c in r.containers.values() if c.proc is not None]
    assert len(pids) == 2
    cluster.delete("tfjobs", "long", propagation="Background")
    await cluster.wait_for(lambda c: not c.list("pods"), message="pods deleted with their job")
    import os

    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_clean_pod_policy_all(cluster: FakeCluster) -> None:
    cluster.create(tfjob("clean", ["true"], extra_spec={"runPolicy": {"cleanPodPolicy": "All"}}))
    await cluster.wait_for_object("tfjobs", "clean", lambda o: condition(o, "Succeeded"))
    await cluster.wait_deleted("pods", "clean-worker-0")


async def test_pytorchjob_master_and_worker(cluster: FakeCluster) -> None:
    show = ["sh", "-c", "echo $RANK/$WORLD_SIZE $MASTER_ADDR:$MASTER_PORT"]
    cluster.create(pytorchjob("pt", show, show, workers=2))
    job = await cluster.wait_for_object("pytorchjobs", "pt", lambda o: condition(o, "Succeeded"))
    assert job["status"]["conditions"][-1]["reason"] == "PyTorchJobSucceeded"
    assert set(job["status"]["replicaStatuses"]) == {"Master", "Worker"}
    assert cluster.pod_log("pt-master-0").strip() == "0/3 localhost:23456"
    # the job succeeds with its Master; a Worker may still be finishing
    await cluster.wait_for_object("pods", "pt-worker-1", lambda p: p["status"].get("phase") == "Succeeded")
    assert cluster.pod_log("pt-worker-1").strip() == "2/3 pt-master-0:23456"
    labels = (cluster.get("pods", "pt-master-0") or {})["metadata"]["labels"]
    assert labels["training.kubeflow.org/replica-type"] == "master"
    assert labels["training.kubeflow.org/job-role"] == "master"


async def test_pytorchjob_through_kubernetes_asyncio_with_nfs_volume(tmp_path: Path, crd_files: list[Path]) -> None:
    export = tmp_path / "export"
    (export / "exp1" / "trial1").mkdir(parents=True)
    (export / "exp1" / "trial1" / "run.py").write_text(
        "import os\nprint('cwd', os.getcwd())\nopen('out.txt', 'w').write(os.environ['NNI_X'])\n"
    )
    async with FakeCluster(
        tmp_path / "c", crd_files=crd_files, nfs_exports={("10.0.0.1", "/exports"): export}
    ) as cluster:
        body = pytorchjob("nfs", ["sh", "-c", "cd /mnt/nfs/exp1/trial1 && python3 run.py"], ["true"])
        master = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        master["containers"][0]["env"] = [{"name": "NNI_X", "value": "/mnt/nfs/exp1"}]
        master["containers"][0]["volumeMounts"] = [{"name": "nni-vol", "mountPath": "/mnt/nfs"}]
        master["volumes"] = [{"name": "nni-vol", "nfs": {"server": "10.0.0.1", "path": "/exports"}}]
        cfg = k8s.client.Configuration()
        cfg.host = cluster.url
        async with k8s.client.ApiClient(cfg) as client:
            custom = k8s.client.CustomObjectsApi(client)
            await custom.create_namespaced_custom_object("kubeflow.org", "v1", "default", "pytorchjobs", body)
        await cluster.wait_for_object("pytorchjobs", "nfs", lambda o: condition(o, "Succeeded"))
        assert (export / "exp1" / "trial1" / "out.txt").read_text() == str(export / "exp1")
        assert f"cwd {export / 'exp1' / 'trial1'}" in cluster.pod_log("nfs-master-0")


# ---------------------------------------------------------------- FrameworkController


async def test_framework_succeeds(cluster: FakeCluster) -> None:
    cluster.create(framework("fwok", [role("worker", ["sh", "-c", "echo $FC_TASKROLE_NAME $FC_TASK_INDEX"], tasks=2)]))
    fw = await cluster.wait_for_object("frameworks", "fwok", fw_done)
    comp = fw["status"]["attemptStatus"]["completionStatus"]
    assert (
        comp["code"] == 0 and comp["phrase"] == "Succeeded" and comp["type"] == {"name": "Succeeded", "attributes": []}
    )
    tasks = fw["status"]["attemptStatus"]["taskRoleStatuses"][0]["taskStatuses"]
    assert [t["state"] for t in tasks] == ["TaskCompleted", "TaskCompleted"]
    assert fw["status"]["completionTime"]


async def test_framework_permanent_failure_ends_completed(cluster: FakeCluster) -> None:
    states: list[str] = []  # every state the controller wrote, from the store's own change feed

    def on_change(event: Event) -> None:
        if event.obj.get("kind") == "Framework" and event.obj["metadata"]["name"] == "fwperm":
            state = (event.obj.get("status") or {}).get("state")
            if state and (not states or states[-1] != state):
                states.append(state)

    unsubscribe = cluster.store.subscribe(on_change)
    cluster.create(
        framework(
            "fwperm",
            [role("worker", ["sh", "-c", "exit 210"])],
            retryPolicy={"fancyRetryPolicy": True, "maxRetryCount": 3},
        )
    )
    fw = await cluster.wait_for_object("frameworks", "fwperm", fw_done)
    comp = fw["status"]["attemptStatus"]["completionStatus"]
    assert comp["code"] == 210 and comp["phrase"] == "ContainerPermanentFailed"
    assert comp["type"] == {"name": "Failed", "attributes": ["Permanent"]}
    assert comp["trigger"]["taskRoleName"] == "worker" and comp["trigger"]["taskIndex"] == 0
    assert fw["status"]["attemptStatus"]["id"] == 0  # permanent: no retry despite maxRetryCount
    unsubscribe()
    # Forward through the lifecycle only (a retry would go back to an attempt's creation), the attempt's
    # ConfigMap deleted before the end, and Completed once, last.
    order = [FRAMEWORK_LIFECYCLE.index(state) for state in states]
    assert order == sorted(set(order)), states
    assert "AttemptDeletionRequested" in states and states[-1] == "Completed", states
    assert cluster.get("configmaps", "fwperm-attempt") is None  # the attempt's ConfigMap (and pods) are gone
    await cluster.wait_deleted("pods", "fwperm-worker-0")


async def test_framework_unrecognized_exit_code_and_transient_retry(cluster: FakeCluster, tmp_path: Path) -> None:
    cluster.create(framework("fwone", [role("worker", ["sh", "-c", "exit 1"])]))
    fw = await cluster.wait_for_object("frameworks", "fwone", fw_done)
    comp = fw["status"]["attemptStatus"]["completionStatus"]
    assert (comp["code"], comp["phrase"], comp["type"]) == (
        1,
        "ContainerUnrecognizedFailed",
        {"name": "Failed", "attributes": []},
    )
    marker = tmp_path / "tries"
    script = f"echo x >> {marker}; [ $(wc -l < {marker}) -ge 2 ] || exit 200"
    cluster.create(
        framework(
            "fwtrans",
            [role("worker", ["sh", "-c", script])],
            retryPolicy={"fancyRetryPolicy": True, "maxRetryCount": 0},
        )
    )
    fw = await cluster.wait_for_object("frameworks", "fwtrans", fw_done, timeout=20)
    assert fw["status"]["attemptStatus"]["id"] == 1
    assert fw["status"]["retryPolicyStatus"]["totalRetriedCount"] == 1
    assert fw["status"]["retryPolicyStatus"]["accountableRetriedCount"] == 0
    assert fw["status"]["attemptStatus"]["completionStatus"]["code"] == 0


@pytest.mark.slow
async def test_framework_min_succeeded_task_count(cluster: FakeCluster) -> None:
    cluster.create(
        framework(
            "fwmin",
            [
                role("master", ["true"], min_succeeded=1),
                role("worker", [sys.executable, "-c", "import time; time.sleep(60)"], tasks=2),
            ],
        )
    )
    fw = await cluster.wait_for_object("frameworks", "fwmin", fw_done, timeout=20)
    comp = fw["status"]["attemptStatus"]["completionStatus"]
    assert comp["code"] == 0 and comp["trigger"]["taskRoleName"] == "master"
    worker = fw["status"]["attemptStatus"]["taskRoleStatuses"][1]["taskStatuses"][0]
    assert worker["attemptStatus"]["completionStatus"]["code"] == -220


async def test_framework_stop_by_json_patch(cluster: FakeCluster) -> None:
    cluster.create(framework("fwstop", [role("worker", [sys.executable, "-c", "import time; time.sleep(60)"])]))
    await cluster.wait_for_object(
        "frameworks", "fwstop", lambda o: o.get("status", {}).get("state") == "AttemptRunning"
    )
    cfg = k8s.client.Configuration()
    cfg.host = cluster.url
    async with k8s.client.ApiClient(cfg) as client:
        custom = k8s.client.CustomObjectsApi(client)
        await custom.patch_namespaced_custom_object(
            "frameworkcontroller.microsoft.com",
            "v1",
            "default",
            "frameworks",
            "fwstop",
            [{"op": "replace", "path": "/spec/executionType", "value": "Stop"}],
        )
    fw = await cluster.wait_for_object("frameworks", "fwstop", fw_done)
    comp = fw["status"]["attemptStatus"]["completionStatus"]
    assert (comp["code"], comp["phrase"], comp["type"]) == (
        -210,
        "StopFrameworkRequested",
        {"name": "Failed", "attributes": ["Permanent"]},
    )
    await cluster.wait_deleted("pods", "fwstop-worker-0")


async def test_framework_evicted_pod_is_failed_without_failed_container(cluster: FakeCluster) -> None:
    cluster.create(framework("fwev", [role("worker", [sys.executable, "-c", "import time; time.sleep(60)"])]))
    await cluster.wait_for_object("pods", "fwev-worker-0", lambda p: p["status"].get("phase") == "Running")
    await cluster.faults.evict_pod("default", "fwev-worker-0")
    fw = await cluster.wait_for_object("frameworks", "fwev", fw_done)
    comp = fw["status"]["attemptStatus"]["completionStatus"]
    assert comp["code"] in (-300, 137)
    assert comp["type"]["name"] == "Failed"


async def test_framework_pod_deleted_by_hand_is_pod_external_deleted(cluster: FakeCluster) -> None:
    """As FrameworkController does: a pod someone else deletes completes its task with -101 as soon as it has a
    deletionTimestamp, whatever terminal status the kubelet writes before the pod goes (143 here)."""
    command = "trap 'exit 143' TERM; sleep 60 & wait"
    no_retry = {"fancyRetryPolicy": False, "maxRetryCount": 0}  # -101 is Transient: fancyRetryPolicy retries it
    cluster.create(framework("fwdel", [role("worker", ["sh", "-c", command])], retryPolicy=no_retry))
    await cluster.wait_for_object("pods", "fwdel-worker-0", lambda p: p["status"].get("phase") == "Running")
    cluster.delete("pods", "fwdel-worker-0")
    fw = await cluster.wait_for_object("frameworks", "fwdel", fw_done)
    comp = fw["status"]["attemptStatus"]["completionStatus"]
    assert (comp["code"], comp["phrase"]) == (-101, "PodExternalDeleted"), comp
    assert comp["type"] == {"name": "Failed", "attributes": ["Transient"]}


async def test_framework_barrier_init_container_and_plain_init_container(cluster: FakeCluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    worker = role(
        "worker",
        [
            "sh",
            "-c",
            "if [ -f /mnt/frameworkbarrier/injector.sh ]; then "
            ". /mnt/frameworkbarrier/injector.sh; fi; "
            "echo $(cat /work/ready) ips=$FB_WORKER_IPS > /out/$FC_TASK_INDEX",
        ],
        tasks=2,
    )
    pod_spec = worker["task"]["pod"]["spec"]
    pod_spec["volumes"] = [
        {"name": "frameworkbarrier-volume", "emptyDir": {}},
        {"name": "work", "emptyDir": {}},
        {"name": "out", "hostPath": {"path": str(out)}},
    ]
    pod_spec["initContainers"] = [
        {
            "name": "frameworkbarrier",
            "image": "frameworkcontroller/frameworkbarrier",
            "volumeMounts": [{"name": "frameworkbarrier-volume", "mountPath": "/mnt/frameworkbarrier"}],
        },
        {
            "name": "prepare",
            "image": "busybox",
            "command": ["sh", "-c", "echo ready > /work/ready"],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
        },
    ]
    pod_spec["containers"][0]["volumeMounts"] = [
        {"name": "frameworkbarrier-volume", "mountPath": "/mnt/frameworkbarrier"},
        {"name": "work", "mountPath": "/work"},
        {"name": "out", "mountPath": "/out"},
    ]
    cluster.create(framework("fwbar", [worker]))
    fw = await cluster.wait_for_object("frameworks", "fwbar", fw_done)
    assert fw["status"]["attemptStatus"]["completionStatus"]["code"] == 0
    assert (out / "1").read_text() == "ready ips=127.0.0.1,127.0.0.1\n"


async def test_evicted_pod_of_an_on_failure_job_is_recreated(cluster: FakeCluster, tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    script = f"echo x >> {marker}; [ $(wc -l < {marker}) -ge 2 ] || sleep 60"
    cluster.create(tfjob("evicted", ["sh", "-c", script], restart="OnFailure"))
    first = await cluster.wait_for_object("pods", "evicted-worker-0", lambda p: p["status"].get("phase") == "Running")
    await cluster.wait_for(lambda c: marker.exists() and marker.read_text() == "x\n", message="first run started")
    await cluster.faults.evict_pod("default", "evicted-worker-0")
    job = await cluster.wait_for_object("tfjobs", "evicted", lambda o: condition(o, "Succeeded"), timeout=20)
    assert any(c["type"] == "Restarting" for c in job["status"]["conditions"])
    second = cluster.get("pods", "evicted-worker-0") or {}
    assert second["metadata"]["uid"] != first["metadata"]["uid"]


async def test_active_deadline_fails_the_job_and_stops_its_pods(cluster: FakeCluster) -> None:
    cluster.create(
        tfjob(
            "late",
            [sys.executable, "-c", "import time; time.sleep(60)"],
            extra_spec={"runPolicy": {"activeDeadlineSeconds": 1}},
        )
    )
    job = await cluster.wait_for_object("tfjobs", "late", lambda o: condition(o, "Failed"))
    assert job["status"]["conditions"][-1]["reason"] == "DeadlineExceeded"
    await cluster.wait_deleted("pods", "late-worker-0")


async def test_ttl_after_finished_deletes_the_job_and_its_pods(cluster: FakeCluster) -> None:
    cluster.create(tfjob("ttl", ["true"], extra_spec={"runPolicy": {"ttlSecondsAfterFinished": 0}}))
    await cluster.wait_deleted("tfjobs", "ttl")
    await cluster.wait_deleted("pods", "ttl-worker-0")


async def test_framework_retries_up_to_max_retry_count(cluster: FakeCluster) -> None:
    cluster.create(
        framework(
            "fwretry",
            [role("worker", ["sh", "-c", "exit 3"])],
            retryPolicy={"fancyRetryPolicy": False, "maxRetryCount": 1},
        )
    )
    fw = await cluster.wait_for_object("frameworks", "fwretry", fw_done, timeout=20)
    assert fw["status"]["attemptStatus"]["id"] == 1
    assert fw["status"]["retryPolicyStatus"] == {
        "totalRetriedCount": 1,
        "accountableRetriedCount": 1,
        "retryDelaySec": None,
    }
    assert fw["status"]["attemptStatus"]["completionStatus"]["code"] == 3
