"""The real kubectl (1.32) against the fake cluster: get, apply -f with validation, delete, logs, get -w,
-o json, and a Kubeflow documentation-style TFJob applied with kubectl running to Succeeded."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from k8s_support import Kubectl, condition

from nni_ts.testing.k8s import FakeCluster

pytestmark = pytest.mark.timeout(90)

# The shape of Kubeflow's documentation example (a single Worker running a command).
TFJOB_YAML = """\
apiVersion: kubeflow.org/v1
kind: TFJob
metadata:
  name: tfjob-simple
  namespace: default
spec:
  tfReplicaSpecs:
    Worker:
      replicas: 1
      restartPolicy: OnFailure
      template:
        spec:
          containers:
            - name: tensorflow
              image: kubeflow/tf-mnist-with-summaries:latest
              command:
                - "python3"
                - "-c"
                - "import os; print('training on', os.environ['HOSTNAME']); print('TF_CONFIG', os.environ['TF_CONFIG'])"
"""


async def test_apply_tfjob_runs_to_succeeded(cluster: FakeCluster, kubectl: Kubectl, tmp_path: Path) -> None:
    manifest = tmp_path / "tfjob.yaml"
    manifest.write_text(TFJOB_YAML)
    result = await kubectl("apply", "-f", str(manifest))
    assert result.code == 0, result.err
    assert result.out.strip() == "tfjob.kubeflow.org/tfjob-simple created"
    waited = await kubectl("wait", "--for=condition=Succeeded", "tfjob/tfjob-simple", "--timeout=20s")
    assert waited.code == 0 and "condition met" in waited.out, waited.err
    assert condition(cluster.get("tfjobs", "tfjob-simple"), "Succeeded")
    table = await kubectl("get", "tfjobs")
    assert table.code == 0
    header, row = table.out.splitlines()[:2]
    assert header.split() == ["NAME", "STATE", "AGE"] and row.split()[:2] == ["tfjob-simple", "Succeeded"]
    job = (await kubectl("get", "tfjob", "tfjob-simple", "-o", "json")).json()
    assert job["status"]["replicaStatuses"]["Worker"]["succeeded"] == 1
    assert [c["type"] for c in job["status"]["conditions"] if c["status"] == "True"] == ["Created", "Succeeded"]
    pods = (await kubectl("get", "pods", "-l", "training.kubeflow.org/job-name=tfjob-simple", "-o", "json")).json()
    assert [p["metadata"]["name"] for p in pods["items"]] == ["tfjob-simple-worker-0"]
    logs = await kubectl("logs", "tfjob-simple-worker-0")
    assert "training on tfjob-simple-worker-0" in logs.out
    assert '"worker": ["tfjob-simple-worker-0.default.svc:2222"]' in logs.out
    again = await kubectl("apply", "-f", str(manifest))
    assert again.code == 0 and "unchanged" in again.out
    deleted = await kubectl("delete", "-f", str(manifest))
    assert deleted.code == 0 and 'tfjob.kubeflow.org "tfjob-simple" deleted' in deleted.out
    await cluster.wait_deleted("pods", "tfjob-simple-worker-0")


async def test_apply_rejects_invalid_objects(kubectl: Kubectl, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(TFJOB_YAML.replace("replicas: 1", "replicas: one"))
    result = await kubectl("apply", "-f", str(manifest))
    assert result.code != 0
    assert "spec.tfReplicaSpecs[Worker].replicas" in result.err and "must be of type integer" in result.err
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(TFJOB_YAML.replace("  tfReplicaSpecs:", "  notAField: 1\n  tfReplicaSpecs:"))
    result = await kubectl("apply", "-f", str(unknown))
    assert result.code != 0 and 'unknown field "spec.notAField"' in result.err
    result = await kubectl("apply", "--validate=false", "-f", str(unknown))
    assert result.code == 0, result.err


async def test_pod_lifecycle_with_kubectl(cluster: FakeCluster, kubectl: Kubectl, tmp_path: Path) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text("""\
apiVersion: v1
kind: Pod
metadata:
  name: sleeper
  labels: {app: demo}
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: busybox:1.36
      command: ["sh", "-c", "echo started; sleep 30"]
""")
    assert (await kubectl("apply", "-f", str(manifest))).code == 0
    await cluster.wait_for_object("pods", "sleeper", lambda p: p["status"]["phase"] == "Running")
    got = await kubectl("get", "pods")
    assert got.out.splitlines()[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert got.out.splitlines()[1].split()[:3] == ["sleeper", "1/1", "Running"]
    await cluster.wait_for(lambda c: "started" in c.pod_log("sleeper"))
    assert (await kubectl("logs", "sleeper")).out == "started\n"
    wide = await kubectl("get", "pod", "sleeper", "-o", "wide")
    assert "fake-node-1" in wide.out and "127.0.0.1" in wide.out
    name_only = await kubectl("get", "pods", "-o", "name")
    assert name_only.out.strip() == "pod/sleeper"
    patched = await kubectl("label", "pod", "sleeper", "tier=backend")
    assert patched.code == 0, patched.err
    assert (cluster.get("pods", "sleeper") or {})["metadata"]["labels"] == {"app": "demo", "tier": "backend"}
    deleted = await kubectl("delete", "pod", "sleeper", "--wait=true")
    assert deleted.code == 0 and 'pod "sleeper" deleted' in deleted.out
    assert cluster.get("pods", "sleeper") is None
    missing = await kubectl("get", "pod", "sleeper")
    assert missing.code != 0 and 'pods "sleeper" not found' in missing.err


def _sleeper(name: str, on_term: str, grace: int = 30) -> dict[str, Any]:
    """A pod whose Python process handles SIGTERM with ``on_term`` (``exit``: exit 143, ``ignore``)."""
    handler = "lambda *a: sys.exit(143)" if on_term == "exit" else "signal.SIG_IGN"
    code = f"import signal, sys, time; signal.signal(signal.SIGTERM, {handler}); print('up', flush=True); "
    code += "time.sleep(60)"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "main", "image": "python:3.11", "command": ["python3", "-c", code]}],
        },
    }


async def test_kubectl_delete_pod_ends_it_gracefully_with_a_final_status(
    cluster: FakeCluster, kubectl: Kubectl
) -> None:
    """As a real kubelet (1.27+) does with a pod deleted by hand: deletionTimestamp, SIGTERM, the grace
    period, then the containers' terminated state and the phase Failed (a watcher sees MODIFIED), and only
    then the object goes (DELETED). ``--grace-period=0 --force`` removes it at once, with no final status."""
    for pod in (_sleeper("trapped", "exit"), _sleeper("stubborn", "ignore", grace=1), _sleeper("forced", "exit")):
        cluster.create(pod)
    await cluster.wait_for(lambda c: all("up" in c.pod_log(n) for n in ("trapped", "stubborn", "forced")), timeout=20)
    watch = await asyncio.create_subprocess_exec(
        *kubectl.argv("get", "pods", "-w", "-o", "json", "--output-watch-events", "--request-timeout=30s"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert watch.stdout is not None
    try:
        await cluster.wait_for(lambda c: c.request_counts[("watch", "pods")] >= 1, timeout=20)
        for name in ("trapped", "stubborn"):
            deleted = await kubectl("delete", "pod", name, "--wait=true")
            assert deleted.code == 0 and f'pod "{name}" deleted' in deleted.out, deleted.err
        forced = await kubectl("delete", "pod", "forced", "--grace-period=0", "--force")
        assert forced.code == 0, forced.err
        events: list[tuple[str, str, dict[str, Any]]] = []
        decoder, buffer = json.JSONDecoder(), ""
        async with asyncio.timeout(20):
            while sum(1 for kind, _, _ in events if kind == "DELETED") < 3:
                chunk = (await watch.stdout.read(65536)).decode()
                assert chunk, "kubectl get -w ended early"
                buffer += chunk
                while buffer.strip():
                    try:
                        event, end = decoder.raw_decode(buffer.lstrip())
                    except json.JSONDecodeError:
                        break
                    buffer = buffer.lstrip()[end:]
                    events.append((event["type"], event["object"]["metadata"]["name"], event["object"]))
    finally:
        with contextlib.suppress(ProcessLookupError):
            watch.kill()
        await watch.wait()

    def seen(name: str) -> list[tuple[str, dict[str, Any]]]:
        return [(kind, obj) for kind, n, obj in events if n == name and kind != "ADDED"]

    for name, code in (("trapped", 143), ("stubborn", 137)):
        changes = seen(name)
        assert [kind for kind, _ in changes][-1] == "DELETED"
        assert changes[0][1]["metadata"].get("deletionTimestamp") and changes[0][1]["status"]["phase"] == "Running"
        final = changes[-2][1]  # the last MODIFIED, before the object goes
        assert final["status"]["phase"] == "Failed", final["status"]
        (status,) = final["status"]["containerStatuses"]
        assert status["state"]["terminated"]["exitCode"] == code and status["state"]["terminated"]["reason"] == "Error"
        assert not status["ready"] and changes[-1][1]["status"]["phase"] == "Failed"
    forced_changes = seen("forced")
    assert [kind for kind, _ in forced_changes] == ["DELETED"]
    assert forced_changes[0][1]["status"]["phase"] == "Running"
    assert not cluster.kubelet.runners and cluster.list("pods") == []


async def test_get_watch_shows_the_job_progress(cluster: FakeCluster, kubectl: Kubectl, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *kubectl.argv("get", "tfjobs", "-w", "--request-timeout=20s"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        await cluster.wait_for(lambda c: c.request_counts[("watch", "tfjobs")] >= 1, timeout=20)
        manifest = tmp_path / "tfjob.yaml"
        manifest.write_text(TFJOB_YAML)
        assert (await kubectl("apply", "-f", str(manifest))).code == 0
        states: list[str] = []
        async with asyncio.timeout(20):
            while "Succeeded" not in states:
                line = (await proc.stdout.readline()).decode()
                assert line, "kubectl get -w ended early"
                parts = line.split()
                if parts and parts[0] == "tfjob-simple":
                    states.append(parts[1] if len(parts) > 2 else "")
        assert states[-1] == "Succeeded"
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_get_json_of_core_objects_and_events(cluster: FakeCluster, kubectl: Kubectl) -> None:
    cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}})
    out = (await kubectl("get", "configmap", "c", "-o", "json")).json()
    assert out["data"] == {"a": "b"} and out["metadata"]["name"] == "c"
    nodes = (await kubectl("get", "nodes", "-o", "json")).json()
    assert nodes["items"][0]["status"]["capacity"]["cpu"] == "16"
    node_table = await kubectl("get", "nodes")
    assert node_table.out.splitlines()[1].split()[:3] == ["fake-node-1", "Ready", "<none>"]
    ns = await kubectl("get", "namespaces")
    assert "default" in ns.out and "Active" in ns.out
    crds = await kubectl("get", "crds")
    assert "tfjobs.kubeflow.org" in crds.out
    version = json.loads((await kubectl("version", "-o", "json")).out)
    assert version["serverVersion"]["minor"] == "32"


async def test_more_kubectl_commands(cluster: FakeCluster, kubectl: Kubectl, tmp_path: Path) -> None:
    objects = tmp_path / "objects.yaml"
    objects.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm1, namespace: team}\ndata: {a: b}\n"
    )
    created = await kubectl("create", "-f", str(objects))
    assert created.code == 0 and "namespace/team created" in created.out and "configmap/cm1 created" in created.out
    assert (await kubectl("patch", "cm", "cm1", "-n", "team", "--type=merge", "-p", '{"data":{"c":"d"}}')).code == 0
    assert (
        await kubectl("patch", "cm", "cm1", "-n", "team", "--type=json", "-p", '[{"op":"remove","path":"/data/a"}]')
    ).code == 0
    assert (await kubectl("get", "cm", "cm1", "-n", "team", "-o", "jsonpath={.data}")).out == '{"c":"d"}'
    imperative = await kubectl("create", "configmap", "cm2", "--from-literal=a=b")
    assert imperative.code != 0 and "does not decode application/vnd.kubernetes.protobuf" in imperative.err
    pod = tmp_path / "pod.yaml"
    pod.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: counter, namespace: team}\nspec:\n"
        "  restartPolicy: Never\n  containers:\n  - name: main\n    image: busybox\n"
        "    command: [sh, -c, 'for i in 1 2 3; do echo $i; sleep 0.1; done']\n"
    )
    applied = await kubectl("apply", "--server-side", "-f", str(pod))
    assert applied.code == 0 and "serverside-applied" in applied.out, applied.err
    followed = await kubectl("logs", "-f", "counter", "-n", "team")
    assert followed.out == "1\n2\n3\n"
    everywhere = await kubectl("get", "pods", "-A")
    assert everywhere.out.splitlines()[1].split()[:2] == ["team", "counter"]
    described = await kubectl("describe", "pod", "counter", "-n", "team")
    assert described.code == 0 and "Exit Code:    0" in described.out
    explained = await kubectl("explain", "tfjob.spec.tfReplicaSpecs")
    assert explained.code == 0 and "replicas\t<integer>" in explained.out
    deleted = await kubectl("delete", "namespace", "team", "--wait=true", "--timeout=20s")
    assert deleted.code == 0, deleted.err
    assert cluster.get("namespaces", "team", "") is None and cluster.get("pods", "counter", "team") is None


async def test_foreground_deletion_of_a_running_job(cluster: FakeCluster, kubectl: Kubectl, tmp_path: Path) -> None:
    manifest = tmp_path / "tfjob.yaml"
    command_start = TFJOB_YAML.index("              command:")
    manifest.write_text(TFJOB_YAML[:command_start] + '              command: ["sleep", "60"]\n')
    assert (await kubectl("apply", "-f", str(manifest))).code == 0
    await cluster.wait_for_object("pods", "tfjob-simple-worker-0", lambda p: p["status"].get("phase") == "Running")
    deleted = await kubectl("delete", "tfjob", "tfjob-simple", "--cascade=foreground", "--wait=true", "--timeout=20s")
    assert deleted.code == 0, deleted.err
    assert cluster.get("tfjobs", "tfjob-simple") is None and cluster.get("pods", "tfjob-simple-worker-0") is None
