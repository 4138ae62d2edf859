"""The fake cluster's apps/v1 Deployments: pods owned by the Deployment, replicas, template changes,
status and conditions, and kubectl on them."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from k8s_support import Kubectl, condition

from nni_ts.testing.k8s import FakeCluster

pytestmark = pytest.mark.timeout(90)

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    async with FakeCluster(tmp_path / "cluster", controllers=["deployment-controller"]) as c:
        yield c


def deployment(name: str, replicas: int, command: list[str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "x:1", "command": command}]},
            },
        },
    }


def live_pods(cluster: FakeCluster, name: str) -> list[dict[str, Any]]:
    return [p for p in cluster.list("pods", label_selector=f"app={name}") if not p["metadata"].get("deletionTimestamp")]


async def test_replicas_become_available_scale_and_roll(cluster: FakeCluster) -> None:
    cluster.create(deployment("web", 2, SLEEP))
    done = await cluster.wait_for_object("deployments", "web", lambda d: condition(d, "Available"), timeout=30)
    assert (done["status"]["readyReplicas"], done["status"]["availableReplicas"]) == (2, 2)
    progressing = [c for c in done["status"]["conditions"] if c["type"] == "Progressing"][0]
    assert progressing["reason"] == "NewReplicaSetAvailable"
    pods = live_pods(cluster, "web")
    assert len(pods) == 2 and all(p["metadata"]["ownerReferences"][0]["kind"] == "Deployment" for p in pods)
    cluster.patch("deployments", "web", {"spec": {"replicas": 1}})
    await cluster.wait_for(lambda c: len(live_pods(c, "web")) == 1, timeout=20, message="scaled to 1")
    old = live_pods(cluster, "web")[0]["metadata"]["labels"]["pod-template-hash"]
    template = {"metadata": {"labels": {"app": "web", "v": "2"}}}
    cluster.patch("deployments", "web", {"spec": {"template": template}})
    rolled = await cluster.wait_for(
        lambda c: [
            p
            for p in live_pods(c, "web")
            if p["metadata"]["labels"]["pod-template-hash"] != old and (p.get("status") or {}).get("phase") == "Running"
        ],
        timeout=30,
        message="the new template's pod running",
    )
    assert rolled[0]["metadata"]["labels"]["v"] == "2"
    await cluster.wait_for(lambda c: len(live_pods(c, "web")) == 1, timeout=20, message="the old pod gone")


async def test_a_pod_that_ends_is_replaced(cluster: FakeCluster) -> None:
    cluster.create(deployment("once", 1, SLEEP))
    first = await cluster.wait_for(
        lambda c: next((p for p in live_pods(c, "once") if p["status"].get("phase") == "Running"), None), timeout=20
    )
    cluster.delete("pods", first["metadata"]["name"])
    await cluster.wait_for(
        lambda c: [p for p in live_pods(c, "once") if p["metadata"]["uid"] != first["metadata"]["uid"]],
        timeout=20,
        message="a replacement pod",
    )


async def test_kubectl_get_and_refused_selector(cluster: FakeCluster, tmp_path: Path) -> None:
    assert shutil.which("kubectl"), "kubectl is installed by scripts/test"
    kubectl = Kubectl(cluster.kubeconfig, tmp_path / "cache")
    result = await kubectl("apply", "-f", "-", stdin=json.dumps(deployment("kd", 1, SLEEP)))
    assert result.code == 0, result.err
    result = await kubectl("wait", "--for=condition=Available", "deployment/kd", "--timeout=30s", timeout=40)
    assert result.code == 0, result.err
    rollout = await kubectl("rollout", "status", "deployment/kd", "--timeout=20s", timeout=30)
    assert rollout.code == 0 and "successfully rolled out" in rollout.out, rollout
    described = await kubectl("describe", "deployment", "kd")
    assert "MinimumReplicasAvailable" in described.out, described
    table = (await kubectl("get", "deploy")).out.splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], table
    assert table[1].split()[:4] == ["kd", "1/1", "1", "1"], table
    bad = deployment("bad", 1, SLEEP, labels={"app": "other"})
    result = await kubectl("apply", "-f", "-", stdin=json.dumps(bad))
    assert result.code != 0 and "spec.template.metadata.labels" in result.err and "selector" in result.err
