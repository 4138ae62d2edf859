"""deploy/: the service's manifests are complete, least-privilege, apply to the fake cluster with kubectl,
and the Deployment's pod, run by the fake kubelet, serves the API (the seeds' launcher body included)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from service_support import Api

from nni_ts.registry import available_platforms

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# What the Kubernetes platforms (kubeflow, frameworkcontroller, trainjob, kubernetes) touch, and nothing else.
ALLOWED = {
    ("batch", "jobs"),
    ("kubeflow.org", "tfjobs"),
    ("kubeflow.org", "pytorchjobs"),
    ("frameworkcontroller.microsoft.com", "frameworks"),
    ("trainer.kubeflow.org", "trainjobs"),
    ("trainer.kubeflow.org", "trainingruntimes"),
    ("kueue.x-k8s.io", "localqueues"),  # read-only: the queue check and the Workload watch (queueName)
    ("kueue.x-k8s.io", "workloads"),
    ("", "pods"),
    ("", "pods/log"),
    ("", "secrets"),
    ("", "configmaps"),
    ("", "events"),
}


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, (kind, found)
    return found[0]


def test_manifests_are_complete_and_rbac_is_least_privilege() -> None:
    docs = _documents()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "Namespace",
            "Namespace",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
        ]
    )
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role, binding = _one(docs, "Role"), _one(docs, "RoleBinding")
    granted = set()
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        granted |= {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == ALLOWED
    deployment, service_account = _one(docs, "Deployment"), _one(docs, "ServiceAccount")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == service_account["metadata"]["name"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": service_account["metadata"]["name"],
            "namespace": deployment["metadata"]["namespace"],
        }
    ]
    # The Role lives where trials run: the namespace the service is told to use.
    args = pod["containers"][0]["args"]
    assert f"--namespace-template={role['metadata']['namespace']}" in args
    # No secret in the manifests: the database URL comes from a Secret the operator creates.
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["NNI_TS_SERVICE_DB"]["valueFrom"]["secretKeyRef"]["name"] == "nni-ts-db"
    assert not [d for d in docs if d["kind"] == "Secret"]
    # The Service selects the Deployment's pods and exposes its port.
    svc = _one(docs, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert svc["spec"]["ports"][0]["targetPort"] == pod["containers"][0]["ports"][0]["name"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _kubectl(kubeconfig: Path, cache: Path, *args: str) -> tuple[int, str, str]:
    exe = shutil.which("kubectl")
    assert exe is not None
    proc = await asyncio.create_subprocess_exec(
        exe,
        "--kubeconfig",
        str(kubeconfig),
        "--cache-dir",
        str(cache),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.slow
async def test_manifests_apply_and_the_deployment_pod_serves(tmp_path: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (scripts/test installs Debian's kubernetes-client).")
    from nni_ts.testing.k8s import FakeCluster

    async with FakeCluster(tmp_path / "cluster") as cluster:
        # The Deployment as an overlay (kustomize-style) adapts it to this machine before it is applied:
        # a free port on 127.0.0.1, the platform local when the Kubernetes platforms are not installed,
        # nni-ts from this checkout. The rest is the manifest's: its PersistentVolumeClaim, ConfigMap,
        # Secret reference and ServiceAccount; the fake Deployment controller creates its pod.
        port = _free_port()
        deployment = _one(_documents(), "Deployment")
        template = deployment["spec"]["template"]
        spec = template["spec"]
        container = spec["containers"][0]
        args = [a for a in container["args"] if not a.startswith(("--host=", "--port="))]
        args += ["--host=127.0.0.1", f"--port={port}"]
        if "kubeflow" not in available_platforms():
            args = [a for a in args if not a.startswith(("--platform=", "--platform-config="))]
        container["args"] = args
        if shutil.which(container["command"][0]) is None:
            container["command"] = [sys.executable, "-m", "nni_ts.cli", *container["command"][1:]]
        container["ports"] = [{"name": "http", "containerPort": port}]
        # The fake kubelet maps volumes by rewriting paths in the arguments; a volume mounted at /tmp
        # would also rewrite the host's own temporary paths (the other volumes' directories) again.
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["mountPath"] != "/tmp"]
        overlay = tmp_path / "50-deployment.yaml"
        overlay.write_text(yaml.safe_dump(deployment))
        cache = tmp_path / "kube-cache"
        for path in sorted(DEPLOY.glob("*.yaml")):
            applied = overlay if path.name == "50-deployment.yaml" else path
            code, out, err = await _kubectl(cluster.kubeconfig, cache, "apply", "-f", str(applied))
            assert code == 0, (path.name, out, err)
        assert cluster.get("roles", "nni-ts-trials", namespace="nni-exp") is not None
        assert cluster.get("rolebindings", "nni-ts-trials", namespace="nni-exp") is not None
        assert cluster.get("services", "nni-ts", namespace="nni-ts") is not None
        assert cluster.get("persistentvolumeclaims", "nni-ts-data", namespace="nni-ts") is not None
        code, out, err = await _kubectl(
            cluster.kubeconfig,
            cache,
            "wait",
            "-n",
            "nni-ts",
            "--for=condition=Available",
            "deployment/nni-ts-service",
            "--timeout=45s",
        )
        assert code == 0, (out, err, cluster.list("pods", namespace="nni-ts"))
        code, out, err = await _kubectl(cluster.kubeconfig, cache, "get", "deployment", "-n", "nni-ts", "-o", "json")
        assert code == 0, err
        status = json.loads(out)["items"][0]["status"]
        assert (status["readyReplicas"], status["availableReplicas"]) == (1, 1)
        pods = cluster.list("pods", namespace="nni-ts", label_selector="app.kubernetes.io/name=nni-ts-service")
        assert len(pods) == 1 and pods[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
        pod_name = pods[0]["metadata"]["name"]
        created = pods[0]
        data_volume = next(cluster.state_dir.glob(f"pods/nni-ts/{pod_name}-{created['metadata']['uid'][:8]}*"))
        home = data_volume / "volumes" / "data"
        added = subprocess.run(
            [sys.executable, "-m", "nni_ts.cli", "--json", "users", "add", "cuizihan"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, NNI_TS_HOME=str(home)),
        )
        assert added.returncode == 0, added.stderr
        token = json.loads(added.stdout)["token"]
        async with aiohttp.ClientSession() as session:
            api = Api(f"http://127.0.0.1:{port}", session)
            deadline = asyncio.get_running_loop().time() + 30
            while True:  # until the pod's process binds its port (bounded)
                try:
                    status, text = await api.call("GET", "/api/v1/nni-exp/hello")
                    break
                except aiohttp.ClientConnectionError:
                    pod = cluster.get("pods", pod_name, namespace="nni-ts") or {}
                    log = cluster.pod_log(pod_name, namespace="nni-ts")
                    assert asyncio.get_running_loop().time() < deadline, (pod.get("status"), log, container)
                    await asyncio.sleep(0.1)
            assert (status, text) == (200, "Hello world")
            health = await api.ok("GET", "/healthz")
            assert health["ok"] and health["replica"] == "nni-ts-service"
            assert (await api.ok("GET", "/me", token=token))["name"] == "cuizihan"  # one database for both
            if "kubeflow" not in available_platforms():
                body = {
                    "user": "cuizihan",
                    "workspace": "test",
                    "trailConcurrency": 1,
                    "num": 2,
                    "target": "maximize",
                    "command": "python3 -c \"import nni; nni.report_final_result(nni.get_next_parameter()['a'])\"",
                    "gpuNum": 0,
                    "search_space": {"a": {"_type": "choice", "_value": [1, 2]}},
                }
                created = await api.ok("POST", "/nni-exp", token=token, json=body)
                await api.wait_experiment(created["experimentId"], token)
                result = await api.ok("GET", "/nni-exp", token=token, json={"workspace": "test", "user": "cuizihan"})
                assert result["trialCounts"] == {"SUCCEEDED": 2}
        log = cluster.pod_log(pod_name, namespace="nni-ts")
        assert "listening on http://127.0.0.1" in log and token not in log
        cluster.delete("deployments", "nni-ts-service", namespace="nni-ts")
        await cluster.wait_deleted("pods", pod_name, namespace="nni-ts", timeout=30)  # garbage-collected
