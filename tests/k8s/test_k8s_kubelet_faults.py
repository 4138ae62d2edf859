"""Scheduler and kubelet (capacity, images, OOM, logs) and the fault switches."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_asyncio as k8s
import psutil
import pytest

from nni_ts.testing.k8s import FakeCluster, Node

pytestmark = pytest.mark.timeout(60)

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def pod(
    name: str,
    command: list[str],
    *,
    image: str = "busybox",
    resources: dict[str, Any] | None = None,
    restart: str = "Never",
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "command": command}
    if resources:
        container["resources"] = resources
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": restart, "containers": [container]},
    }


def phase(p: dict[str, Any] | None) -> str:
    return str(((p or {}).get("status") or {}).get("phase", ""))


async def test_pending_on_capacity_until_room_frees(tmp_path: Path) -> None:
    async with FakeCluster(tmp_path / "c", nodes=[Node("small", cpu=2, memory="1Gi", gpus=1)]) as cluster:
        cluster.create(pod("gpu1", SLEEP, resources={"limits": {"nvidia.com/gpu": 1}}))
        await cluster.wait_for_object("pods", "gpu1", lambda p: phase(p) == "Running")
        cluster.create(pod("gpu2", ["true"], resources={"limits": {"nvidia.com/gpu": 1}}))
        cluster.create(pod("huge", ["true"], resources={"requests": {"cpu": "4", "memory": "512Mi"}}))
        gpu2 = await cluster.wait_for_object("pods", "gpu2", lambda p: bool(p["status"].get("conditions")))
        cond = gpu2["status"]["conditions"][0]
        assert (cond["type"], cond["status"], cond["reason"]) == ("PodScheduled", "False", "Unschedulable")
        assert cond["message"] == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
        huge = await cluster.wait_for_object("pods", "huge", lambda p: bool(p["status"].get("conditions")))
        assert "Insufficient cpu" in huge["status"]["conditions"][0]["message"]
        events = [e for e in cluster.list("events") if e["reason"] == "FailedScheduling"]
        assert {e["involvedObject"]["name"] for e in events} == {"gpu2", "huge"}
        assert phase(cluster.get("pods", "gpu2")) == "Pending"
        env_gpu = cluster.kubelet.gpu_assignment[(cluster.get("pods", "gpu1") or {})["metadata"]["uid"]]
        assert env_gpu == [0]
        cluster.delete("pods", "gpu1")
        await cluster.wait_for_object("pods", "gpu2", lambda p: phase(p) == "Succeeded")
        assert phase(cluster.get("pods", "huge")) == "Pending"


async def test_missing_image_stays_pending_with_pull_errors(tmp_path: Path) -> None:
    async with FakeCluster(tmp_path / "c", missing_images=["private/listed:1"], image_backoff=0.05) as cluster:
        cluster.create(pod("nopull", ["true"], image="registry.example.com/doesnotexist:1"))
        cluster.faults.missing_image("other/img:2")
        cluster.create(pod("listed", ["true"], image="other/img:2"))
        for name in ("nopull", "listed"):
            got = await cluster.wait_for_object(
                "pods", name, lambda p: "ImagePullBackOff" in str(p["status"].get("containerStatuses"))
            )
            assert phase(got) == "Pending"
        reasons = {e["reason"] for e in cluster.list("events") if e["involvedObject"]["name"] == "nopull"}
        assert {"Failed", "BackOff"} <= reasons
        cfg = k8s.client.Configuration()
        cfg.host = cluster.url
        async with k8s.client.ApiClient(cfg) as client:
            with pytest.raises(k8s.client.ApiException) as info:
                await k8s.client.CoreV1Api(client).read_namespaced_pod_log("nopull", "default")
        assert info.value.status == 400 and "is waiting to start: trying and failing to pull image" in info.value.body


async def test_oom_by_memory_limit_and_by_switch(cluster: FakeCluster) -> None:
    hog = [sys.executable, "-c", "import time; x = bytearray(200 * 1024 * 1024); time.sleep(30)"]
    cluster.create(pod("hog", hog, resources={"limits": {"memory": "64Mi"}}))
    got = await cluster.wait_for_object("pods", "hog", lambda p: phase(p) == "Failed", timeout=20)
    term = got["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (137, "OOMKilled")
    cluster.create(pod("victim", SLEEP))
    await cluster.wait_for_object("pods", "victim", lambda p: phase(p) == "Running")
    cluster.faults.oom_kill("default", "victim")
    got = await cluster.wait_for_object("pods", "victim", lambda p: phase(p) == "Failed")
    assert got["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"


async def test_eviction_and_node_loss(tmp_path: Path) -> None:
    async with FakeCluster(tmp_path / "c", nodes=[Node("n1"), Node("n2", labels={"zone": "b"})]) as cluster:
        cluster.create(pod("ev", SLEEP))
        await cluster.wait_for_object("pods", "ev", lambda p: phase(p) == "Running")
        pid = next(iter(cluster.kubelet.runners.values())).containers["main"].proc.pid  # type: ignore[union-attr]
        await cluster.faults.evict_pod("default", "ev")
        got = await cluster.wait_for_object("pods", "ev", lambda p: phase(p) == "Failed")
        assert got["status"]["reason"] == "Evicted"
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        body = pod("lost", SLEEP)
        body["spec"]["nodeSelector"] = {"zone": "b"}
        cluster.create(body)
        await cluster.wait_for_object("pods", "lost", lambda p: phase(p) == "Running")
        await cluster.faults.lose_node("n2")
        got = await cluster.wait_for_object("pods", "lost", lambda p: phase(p) == "Failed")
        assert got["status"]["reason"] == "NodeLost"
        node = cluster.get("nodes", "n2", "") or {}
        assert [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"] == ["Unknown"]
        cluster.create(dict(body, metadata={"name": "lost2"}))
        got = await cluster.wait_for_object("pods", "lost2", lambda p: bool(p["status"].get("conditions")))
        assert "untolerated taint" in got["status"]["conditions"][0]["message"]
        cluster.faults.restore_node("n2")
        await cluster.wait_for_object("pods", "lost2", lambda p: phase(p) == "Running")


async def test_log_follow_and_previous(cluster: FakeCluster) -> None:
    script = "import sys, time\nfor i in range(3):\n    print(i, flush=True); time.sleep(0.1)\nsys.exit(1)"
    cluster.create(pod("counter", [sys.executable, "-c", script], restart="OnFailure"))
    await cluster.wait_for_object("pods", "counter", lambda p: phase(p) == "Running")
    async with aiohttp.ClientSession() as session, asyncio.timeout(10):
        async with session.get(
            f"{cluster.url}/api/v1/namespaces/default/pods/counter/log", params={"follow": "true"}
        ) as resp:
            text = await resp.text()
    assert text == "0\n1\n2\n"
    await cluster.wait_for_object("pods", "counter", lambda p: p["status"]["containerStatuses"][0]["restartCount"] >= 1)
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{cluster.url}/api/v1/namespaces/default/pods/counter/log", params={"previous": "true", "tailLines": "1"}
        ) as resp:
            assert await resp.text() == "2\n"


async def test_error_bursts_and_slowness(cluster: FakeCluster) -> None:
    cfg = k8s.client.Configuration()
    cfg.host = cluster.url
    async with k8s.client.ApiClient(cfg) as client:
        core = k8s.client.CoreV1Api(client)
        cluster.faults.error_burst(429, 2, verbs=["list"])
        for _ in range(2):
            with pytest.raises(k8s.client.ApiException) as info:
                await core.list_namespaced_pod("default")
            assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"
        await core.list_namespaced_pod("default")
        await core.read_namespace("default")
        cluster.faults.error_burst(500, 1, resource="pods")
        await core.read_namespace("default")  # other resources are not affected
        with pytest.raises(k8s.client.ApiException) as info:
            await core.list_namespaced_pod("default")
        assert info.value.status == 500 and "InternalError" in info.value.body
        cluster.faults.slow(0.3)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await core.list_namespaced_pod("default")
        assert loop.time() - start >= 0.3
        cluster.faults.clear()


SYNC_CLIENT = """
import sys
import kubernetes
cfg = kubernetes.client.Configuration()
cfg.host = sys.argv[1]
with kubernetes.client.ApiClient(cfg) as client:
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_config_map("default", {"metadata": {"name": "sync"}, "data": {"a": "1"}})
    custom = kubernetes.client.CustomObjectsApi(client)
    custom.create_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", {
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": "sync"},
        "spec": {"tfReplicaSpecs": {"Worker": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "tensorflow", "image": "x", "command": ["true"]}]}}}}}})
    seen = []
    watch = kubernetes.watch.Watch()
    for event in watch.stream(custom.list_namespaced_custom_object, "kubeflow.org", "v1", "default",
                              "tfjobs", timeout_seconds=10):
        states = [c["type"] for c in event["object"].get("status", {}).get("conditions", [])
                  if c["status"] == "True"]
        seen.append(event["type"])
        if "Succeeded" in states:
            watch.stop()
    seen += [i.metadata.name for i in core.list_namespaced_config_map("default").items]
    try:
        core.read_namespaced_config_map("nope", "default")
    except kubernetes.client.ApiException as exc:
        seen.append(str(exc.status))
    print(" ".join(seen))
"""


@pytest.mark.slow
async def test_sync_official_client_in_a_subprocess(cluster: FakeCluster, tmp_path: Path) -> None:
    # A subprocess: the official client blocks, and the in-process server must keep serving.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SYNC_CLIENT,
        cluster.url,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    words = out.decode().split()
    assert words[0] == "ADDED" and words[-2:] == ["sync", "404"]


async def test_crash_loop_back_off(tmp_path: Path) -> None:
    async with FakeCluster(tmp_path / "c", restart_backoff=0.3) as cluster:
        cluster.create(pod("crash", ["sh", "-c", "exit 2"], restart="Always"))
        got = await cluster.wait_for_object(
            "pods", "crash", lambda p: "CrashLoopBackOff" in str(p["status"].get("containerStatuses"))
        )
        status = got["status"]["containerStatuses"][0]
        assert status["lastState"]["terminated"]["exitCode"] == 2
        await cluster.wait_for_object(
            "pods", "crash", lambda p: p["status"]["containerStatuses"][0]["restartCount"] >= 2
        )
        assert phase(cluster.get("pods", "crash")) == "Running"


async def test_eviction_api_deletes_the_pod(cluster: FakeCluster) -> None:
    cluster.create(pod("drained", SLEEP))
    await cluster.wait_for_object("pods", "drained", lambda p: phase(p) == "Running")
    cfg = k8s.client.Configuration()
    cfg.host = cluster.url
    async with k8s.client.ApiClient(cfg) as client:
        await k8s.client.CoreV1Api(client).create_namespaced_pod_eviction(
            "drained", "default", {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "drained"}}
        )
    await cluster.wait_deleted("pods", "drained")


async def test_bind_mount_volume_mode(tmp_path: Path) -> None:
    from nni_ts.testing.k8s.kubelet import _can_bind_mount

    if not _can_bind_mount():
        pytest.skip("bind-mounted volumes need root and `unshare --mount` (the rewrite mode is tested elsewhere).")
    export = tmp_path / "export"
    (export / "exp").mkdir(parents=True)
    mount_path = f"/tmp/nni-ts-fake-bind-{os.getpid()}"
    script = (
        "import os; d = os.path.join(os.sep + 'tmp', os.path.basename(os.environ['MP'])); "
        "open(os.path.join(d, 'exp', 'out'), 'w').write(os.getcwd())"
    )
    async with FakeCluster(
        tmp_path / "c", nfs_exports={("10.0.0.1", "/exports"): export}, volume_mode="bind"
    ) as cluster:
        assert cluster.kubelet.bind_mounts
        body = pod("bind", [sys.executable, "-c", script])
        spec = body["spec"]
        spec["containers"][0]["workingDir"] = f"{mount_path}/exp"
        spec["containers"][0]["env"] = [{"name": "MP", "value": mount_path}]
        spec["containers"][0]["volumeMounts"] = [{"name": "nfs", "mountPath": mount_path}]
        spec["volumes"] = [{"name": "nfs", "nfs": {"server": "10.0.0.1", "path": "/exports"}}]
        cluster.create(body)
        got = await cluster.wait_for_object("pods", "bind", lambda p: phase(p) in ("Succeeded", "Failed"))
        assert phase(got) == "Succeeded", cluster.pod_log("bind")
    # The path was built at run time, so only a real mount could map it; the process saw the mount path.
    assert (export / "exp" / "out").read_text() == f"{mount_path}/exp"
    with contextlib.suppress(OSError):
        os.rmdir(mount_path)


async def test_stopping_a_container_kills_every_process_it_started(cluster: FakeCluster, tmp_path: Path) -> None:
    # Like a container runtime: a process that left the container's process group (its own session,
    # as the trial keeper starts trials) still dies with the pod, and so does an orphan of an ended container.
    pids = tmp_path / "pids"
    pids.mkdir()
    escape = (
        f"import os, subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
        f"time.sleep(120)'], start_new_session=True); open({str(pids)!r} + '/' + sys.argv[1], 'w')"
        f".write(str(p.pid)); time.sleep(float(sys.argv[2]))"
    )
    cluster.create(pod("stopped", [sys.executable, "-c", escape, "stopped", "120"]))
    cluster.create(pod("ended", [sys.executable, "-c", escape, "ended", "0"]))
    await cluster.wait_for(lambda c: (pids / "stopped").exists() and (pids / "ended").exists(), timeout=30)
    await cluster.wait_for_object("pods", "ended", lambda p: phase(p) == "Succeeded")
    cluster.delete("pods", "stopped")
    await cluster.wait_deleted("pods", "stopped")
    for name in ("stopped", "ended"):
        try:
            child = psutil.Process(int((pids / name).read_text()))
        except psutil.NoSuchProcess:
            continue  # already gone
        try:
            child.wait(timeout=10)
        except psutil.TimeoutExpired:
            child.kill()
            pytest.fail(f"a process started by the {name!r} pod outlived its container")


async def test_a_cancelled_pod_reaps_the_processes_it_killed(tmp_path: Path) -> None:
    """The cluster stopping cancels a pod's runner (or its stop) while it waits for its containers: it
    kills them, and must also reap them, or each Popen warns "subprocess N is still running" when it is
    collected: an error (filterwarnings = error) in whichever test then runs on that worker."""
    async with FakeCluster(tmp_path / "c") as cluster:
        cluster.create(pod("sleeper", SLEEP))
        await cluster.wait_for_object("pods", "sleeper", lambda p: phase(p) == "Running")
        (runner,) = cluster.kubelet.runners.values()
        procs = [c.proc for c in runner.containers.values() if c.proc is not None]
        assert procs and runner.task is not None
        runner.task.cancel()
        await asyncio.wait([runner.task])
        for proc in procs:
            assert proc._popen.returncode is not None, proc.pid  # noqa: SLF001 - what Popen.__del__ checks


async def test_log_rotation_and_log_options(tmp_path: Path) -> None:
    """containerLogMaxSize: the kubelet rotates a container's log once it is over the size, and pods/log
    then serves only the current file (as a real kubelet does), while a follower started before reads on
    across the rotations; tailLines and limitBytes (which cuts the answer) apply to the current file."""
    gate = tmp_path / "gate"
    script = (
        "import os, time\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
        "for i in range(20000):\n    print(f'line {i:05d}')\n"
    )
    async with FakeCluster(tmp_path / "c", container_log_max_size=4096) as cluster:
        cluster.create(pod("chatty", [sys.executable, "-c", script]))
        await cluster.wait_for_object("pods", "chatty", lambda p: phase(p) == "Running")
        url = f"{cluster.url}/api/v1/namespaces/default/pods/chatty/log"
        async with aiohttp.ClientSession() as session, asyncio.timeout(20):
            async with session.get(url, params={"follow": "true"}) as resp:
                gate.touch()
                followed = await resp.text()
            await cluster.wait_for_object("pods", "chatty", lambda p: phase(p) == "Succeeded")

            async def read(**params: str) -> tuple[int, str]:
                async with session.get(url, params=params) as resp:
                    return resp.status, await resp.text()

            _, current = await read()
            _, tail = await read(tailLines="2")
            _, head = await read(limitBytes="5")
            _, both = await read(tailLines="3", limitBytes="8")
            status, refused = await read(limitBytes="0")
        queries = [q for _ns, name, q in cluster.server.log_queries if name == "chatty"]
        (path,) = (tmp_path / "c").glob("pods/default/chatty-*/main-0.log")
    assert followed == "".join(f"line {i:05d}\n" for i in range(20000))
    assert followed.endswith(current) and 0 < len(current) <= 64 * 1024 < len(followed)
    rotated = [path.with_name(f"main-0.log.{n}") for n in range(1, cluster.kubelet.log_generations[path] + 1)]
    assert current == path.read_text() and "".join(p.read_text() for p in rotated) + current == followed
    lines = current.splitlines(keepends=True)
    assert tail == "".join(lines[-2:]) and tail.endswith("line 19999\n")
    assert head == current[:5] and both == "".join(lines[-3:])[:8]
    assert status == 422 and "limitBytes: Invalid value: 0: must be greater than 0" in refused
    assert queries[-2:] == [{"tailLines": "3", "limitBytes": "8"}, {"limitBytes": "0"}]
