"""The fake cluster's batch/v1 Job controller: pods, backoffLimit, podFailurePolicy, suspend, deadlines,
TTL, conditions in the order a real cluster writes them, and kubectl on all of it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import kubernetes_asyncio as k8s
import pytest
from k8s_support import Kubectl, condition

from nni_ts.testing.k8s import FakeCluster
from nni_ts.testing.k8s.controllers.job import match_pod_failure_policy

pytestmark = pytest.mark.timeout(90)

#: A trial launcher's policy: the trial's own non-zero exit fails the job at once; disruptions
#: (eviction, preemption) are ignored and the pod is replaced.
TRIAL_POLICY = {
    "rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "trial", "operator": "NotIn", "values": [0]}},
    ]
}


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    async with FakeCluster(tmp_path / "cluster", controllers=["job-controller"]) as c:
        yield c


def job(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "trial", "image": "python:3.12-slim", "command": command}],
                }
            },
            **spec,
        },
    }


def client_config(cluster: FakeCluster) -> k8s.client.Configuration:
    cfg = k8s.client.Configuration()
    cfg.host = cluster.url
    return cfg


def types(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["type"], c["status"]) for c in (obj.get("status") or {}).get("conditions") or []]


def finished(obj: dict[str, Any]) -> bool:
    return condition(obj, "Complete") or condition(obj, "Failed")


async def test_a_job_runs_its_pod_to_complete(cluster: FakeCluster) -> None:
    created = cluster.create(job("ok", ["sh", "-c", "echo hello"]))
    assert created["spec"]["backoffLimit"] == 6 and created["spec"]["completions"] == 1
    done = await cluster.wait_for_object("jobs", "ok", finished)
    assert types(done) == [("SuccessCriteriaMet", "True"), ("Complete", "True")]
    complete = [c for c in done["status"]["conditions"] if c["type"] == "Complete"][0]
    assert complete["reason"] == "CompletionsReached"
    assert done["status"]["succeeded"] == 1 and done["status"]["failed"] == 0 and done["status"]["active"] == 0
    pods = cluster.list("pods", label_selector="batch.kubernetes.io/job-name=ok")
    assert len(pods) == 1 and pods[0]["metadata"]["name"].startswith("ok-")
    assert pods[0]["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] == done["metadata"]["uid"]
    assert pods[0]["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert cluster.pod_log(pods[0]["metadata"]["name"]).strip() == "hello"


async def test_backoff_limit_then_failure_target_before_failed(cluster: FakeCluster) -> None:
    seen: list[list[tuple[str, str]]] = []
    cluster.store.subscribe(lambda e: seen.append(types(e.obj)) if e.obj.get("kind") == "Job" else None)
    cluster.create(job("flaky", ["sh", "-c", "exit 1"], backoffLimit=1))
    done = await cluster.wait_for_object("jobs", "flaky", finished, timeout=30)
    assert types(done) == [("FailureTarget", "True"), ("Failed", "True")]
    failed = [c for c in done["status"]["conditions"] if c["type"] == "Failed"][0]
    assert failed["reason"] == "BackoffLimitExceeded"
    assert done["status"]["failed"] == 2  # the first attempt and one retry
    assert len(cluster.list("pods", label_selector="job-name=flaky")) == 2
    # FailureTarget was written on its own before Failed (clients that wait for Failed see it first).
    assert [("FailureTarget", "True")] in seen


async def test_pod_failure_policy_fails_at_once_on_the_trial_exit_code(cluster: FakeCluster) -> None:
    cluster.create(job("user-error", ["sh", "-c", "exit 3"], backoffLimit=4, podFailurePolicy=TRIAL_POLICY))
    done = await cluster.wait_for_object("jobs", "user-error", finished, timeout=30)
    failed = [c for c in done["status"]["conditions"] if c["type"] == "Failed"][0]
    assert failed["reason"] == "PodFailurePolicy"
    assert "failed with exit code 3 matching FailJob rule at index 1" in failed["message"]
    assert done["status"]["failed"] == 1  # no retry burnt on the user's own error
    assert len(cluster.list("pods", label_selector="job-name=user-error")) == 1


async def test_eviction_is_ignored_by_the_policy_and_the_pod_replaced(cluster: FakeCluster, tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    script = f"echo x >> {marker}; if [ $(wc -l < {marker}) -lt 2 ]; then sleep 60; fi"
    cluster.create(job("evicted", ["sh", "-c", script], backoffLimit=0, podFailurePolicy=TRIAL_POLICY))
    first = await cluster.wait_for(
        lambda c: next(
            (p for p in c.list("pods", label_selector="job-name=evicted") if p["status"].get("phase") == "Running"),
            None,
        ),
        timeout=20,
    )
    await cluster.wait_for(lambda c: marker.exists(), timeout=20)
    async with k8s.client.ApiClient(client_config(cluster)) as api:
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": first["metadata"]["name"]}}
        await k8s.client.CoreV1Api(api).create_namespaced_pod_eviction(first["metadata"]["name"], "default", body)
    done = await cluster.wait_for_object("jobs", "evicted", finished, timeout=30)
    assert condition(done, "Complete"), types(done)
    assert done["status"]["failed"] == 0  # with backoffLimit 0 a counted failure would have failed the job
    assert marker.read_text().count("x") == 2


async def test_a_pod_deleted_by_hand_counts_as_failed_and_is_replaced(cluster: FakeCluster, tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    script = f"echo x >> {marker}; if [ $(wc -l < {marker}) -lt 2 ]; then sleep 60; fi"
    cluster.create(job("deleted", ["sh", "-c", script], backoffLimit=2))
    first = await cluster.wait_for(
        lambda c: next(
            (p for p in c.list("pods", label_selector="job-name=deleted") if p["status"].get("phase") == "Running"),
            None,
        ),
        timeout=20,
    )
    await cluster.wait_for(lambda c: marker.exists(), timeout=20)  # the first run has started
    cluster.delete("pods", first["metadata"]["name"])
    done = await cluster.wait_for_object("jobs", "deleted", finished, timeout=30)
    assert condition(done, "Complete") and done["status"]["failed"] == 1 and done["status"]["succeeded"] == 1


async def test_suspend_holds_the_pods_until_resumed(cluster: FakeCluster) -> None:
    cluster.create(job("held", ["sh", "-c", "true"], suspend=True))
    held = await cluster.wait_for_object("jobs", "held", lambda o: condition(o, "Suspended"))
    suspended = [c for c in held["status"]["conditions"] if c["type"] == "Suspended"][0]
    assert suspended["reason"] == "JobSuspended" and "startTime" not in held["status"]
    assert cluster.list("pods", label_selector="job-name=held") == []
    async with k8s.client.ApiClient(client_config(cluster)) as api:
        await k8s.client.BatchV1Api(api).patch_namespaced_job("held", "default", {"spec": {"suspend": False}})
    done = await cluster.wait_for_object("jobs", "held", finished, timeout=20)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in done["status"]["conditions"]}
    assert conditions["Suspended"] == ("False", "JobResumed") and conditions["Complete"][0] == "True"
    assert done["status"].get("startTime")


async def test_active_deadline_fails_the_job_and_stops_its_pod(cluster: FakeCluster) -> None:
    cluster.create(job("slow", [sys.executable, "-c", "import time; time.sleep(60)"], activeDeadlineSeconds=1))
    done = await cluster.wait_for_object("jobs", "slow", finished, timeout=30)
    failed = [c for c in done["status"]["conditions"] if c["type"] == "Failed"][0]
    assert failed["reason"] == "DeadlineExceeded"
    await cluster.wait_for(lambda c: not c.kubelet.runners, timeout=20, message="the pod's processes stopped")


async def test_ttl_after_finished_deletes_the_job_and_its_pods(cluster: FakeCluster) -> None:
    cluster.create(job("brief", ["true"], ttlSecondsAfterFinished=0))
    await cluster.wait_for(lambda c: c.get("jobs", "brief") is None, timeout=20, message="the job deleted")
    await cluster.wait_for(lambda c: not c.list("pods", label_selector="job-name=brief"), timeout=20)


async def test_invalid_jobs_are_refused_naming_the_field(cluster: FakeCluster, tmp_path: Path) -> None:
    import shutil

    assert shutil.which("kubectl"), "kubectl is installed by scripts/test"
    kubectl = Kubectl(cluster.kubeconfig, tmp_path / "cache")
    bad = job("always", ["true"])
    bad["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    result = await kubectl("apply", "-f", "-", stdin=json.dumps(bad))
    assert result.code != 0
    assert 'spec.template.spec.restartPolicy: Unsupported value: "Always"' in result.err
    policy = job(
        "policy", ["true"], podFailurePolicy={"rules": [{"action": "Explode", "onExitCodes": {"values": [1]}}]}
    )
    result = await kubectl("apply", "-f", "-", stdin=json.dumps(policy))
    assert result.code != 0 and "spec.podFailurePolicy.rules[0].action" in result.err
    long_name = job("x" * 64, ["true"])
    result = await kubectl("apply", "-f", "-", stdin=json.dumps(long_name))
    assert result.code != 0 and "must be no more than 63 characters" in result.err


async def test_kubectl_gets_waits_and_reads_logs(cluster: FakeCluster, tmp_path: Path) -> None:
    import shutil

    assert shutil.which("kubectl"), "kubectl is installed by scripts/test"
    kubectl = Kubectl(cluster.kubeconfig, tmp_path / "cache")
    result = await kubectl("apply", "-f", "-", stdin=json.dumps(job("kc", ["sh", "-c", "echo from-the-job"])))
    assert result.code == 0, result.err
    result = await kubectl("wait", "--for=condition=complete", "job/kc", "--timeout=30s", timeout=40)
    assert result.code == 0, result.err
    table = (await kubectl("get", "jobs")).out.splitlines()
    assert table[0].split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"], table
    assert table[1].split()[:3] == ["kc", "Complete", "1/1"], table
    listed = (await kubectl("get", "jobs", "-o", "json")).json()
    assert [j["metadata"]["name"] for j in listed["items"]] == ["kc"]
    pods = (await kubectl("get", "pods", "-l", "job-name=kc", "-o", "json")).json()["items"]
    logs = await kubectl("logs", pods[0]["metadata"]["name"])
    assert logs.out.strip() == "from-the-job"
    described = await kubectl("describe", "job", "kc")
    assert described.code == 0 and "Created pod: " in described.out and "Job completed" in described.out, described


def test_policy_matching_table() -> None:
    def pod(code: int | None, container: str = "trial", disrupted: bool = False) -> dict[str, Any]:
        statuses = [] if code is None else [{"name": container, "state": {"terminated": {"exitCode": code}}}]
        conditions = [{"type": "DisruptionTarget", "status": "True"}] if disrupted else []
        return {
            "metadata": {"namespace": "ns", "name": "p"},
            "status": {"phase": "Failed", "containerStatuses": statuses, "conditions": conditions},
        }

    cases = [
        (pod(3), "FailJob"),
        (pod(143, disrupted=True), "Ignore"),  # the first matching rule wins
        (pod(0, disrupted=False), None),
        (pod(3, container="sidecar"), None),  # the rule names the trial's container
        (pod(None, disrupted=True), "Ignore"),
        (pod(None), None),
    ]
    for p, want in cases:
        got = match_pod_failure_policy(TRIAL_POLICY, p)
        assert (got[0] if got else None) == want, (p, got)
    in_rule = {"rules": [{"action": "Count", "onExitCodes": {"operator": "In", "values": [42]}}]}
    assert match_pod_failure_policy(in_rule, pod(42)) is not None
    assert match_pod_failure_policy(in_rule, pod(41)) is None


async def test_node_pressure_eviction_is_a_disruption_too(cluster: FakeCluster, tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    script = f"echo x >> {marker}; if [ $(wc -l < {marker}) -lt 2 ]; then sleep 60; fi"
    cluster.create(job("pressure", ["sh", "-c", script], backoffLimit=0, podFailurePolicy=TRIAL_POLICY))
    await cluster.wait_for(lambda c: marker.exists(), timeout=20, message="the first run started")
    first = cluster.list("pods", label_selector="job-name=pressure")[0]
    await cluster.faults.evict_pod("default", first["metadata"]["name"])
    evicted = cluster.get("pods", first["metadata"]["name"])
    if evicted is not None:  # the kubelet marks the pod before it fails it
        disruption = [c for c in evicted["status"]["conditions"] if c["type"] == "DisruptionTarget"]
        assert disruption and disruption[0]["reason"] == "TerminationByKubelet"
    done = await cluster.wait_for_object("jobs", "pressure", finished, timeout=30)
    assert condition(done, "Complete") and done["status"]["failed"] == 0, types(done)


@pytest.mark.parametrize("policy", ["Failed", "TerminatingOrFailed"])
async def test_pod_replacement_policy_waits_for_the_evicted_pod_to_end(cluster: FakeCluster, policy: str) -> None:
    """With a podFailurePolicy the API server defaults podReplacementPolicy to Failed: the replacement of an
    evicted pod starts only once it has ended (two keepers of one trial never run at once). With
    TerminatingOrFailed (no podFailurePolicy) it starts while the old pod still terminates."""
    name = f"replace-{policy.lower()}"
    extra: dict[str, Any] = {"podFailurePolicy": TRIAL_POLICY} if policy == "Failed" else {}
    body = job(name, ["sh", "-c", "trap '' TERM; sleep 60"], backoffLimit=2, **extra)
    body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 2
    created = cluster.create(body)
    assert created["spec"]["podReplacementPolicy"] == policy
    first = await cluster.wait_for(
        lambda c: next(
            (p for p in c.list("pods", label_selector=f"job-name={name}") if p["status"].get("phase") == "Running"),
            None,
        ),
        timeout=20,
        message="the first pod runs",
    )
    first_name = first["metadata"]["name"]
    async with k8s.client.ApiClient(client_config(cluster)) as api:
        evict = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": first_name}}
        await k8s.client.CoreV1Api(api).create_namespaced_pod_eviction(first_name, "default", evict)
    together: list[int] = []

    def replaced(c: FakeCluster) -> bool:
        pods = c.list("pods", label_selector=f"job-name={name}")
        others = [p for p in pods if p["metadata"]["name"] != first_name]
        if others and any(p["metadata"]["name"] == first_name for p in pods):
            together.append(len(pods))
        return bool(others)

    await cluster.wait_for(replaced, timeout=20, message="a replacement pod")
    if policy == "Failed":
        assert together == [], "the replacement was created while the evicted pod still terminated"
    else:
        assert together, "TerminatingOrFailed replaces a terminating pod at once"
