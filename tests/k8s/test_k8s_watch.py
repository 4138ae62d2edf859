"""Watch semantics: initial ADDED, resume from a resourceVersion, 410 Gone, timeoutSeconds, selectors, and a
watch broken by an API server restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_asyncio as k8s
import pytest

from nni_ts.testing.k8s import FakeCluster

pytestmark = pytest.mark.timeout(60)


async def raw_watch(
    cluster: FakeCluster,
    path: str,
    params: dict[str, str],
    limit: int | None = None,
    timeout: float = 10.0,
    established: asyncio.Event | None = None,
) -> list[dict[str, Any]]:
    """The events of one watch request, read line by line until the stream ends (or ``limit`` events).

    ``established`` is set once the response has started: the server subscribes to changes and takes its
    initial list before it answers, so every change made after that is an event of this watch.
    """
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, asyncio.timeout(timeout):
        async with session.get(f"{cluster.url}{path}", params=params) as resp:
            assert resp.status == 200
            if established is not None:
                established.set()
            async for line in resp.content:
                if line.strip():
                    events.append(json.loads(line))
                    if limit is not None and len(events) >= limit:
                        break
    return events


def cm(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}}}


async def test_initial_added_then_changes_and_timeout(cluster: FakeCluster) -> None:
    cluster.create(cm("a"))
    cluster.create(cm("b"))
    established = asyncio.Event()
    watch = asyncio.create_task(
        raw_watch(
            cluster,
            "/api/v1/namespaces/default/configmaps",
            {"watch": "true", "timeoutSeconds": "1"},
            established=established,
        )
    )
    async with asyncio.timeout(10):
        await established.wait()
    cluster.create(cm("c"))
    cluster.delete("configmaps", "a")
    events = await watch  # ends by itself after timeoutSeconds
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("ADDED", "c"),
        ("DELETED", "a"),
    ]


async def test_resume_from_resource_version_and_watch_capital_true(cluster: FakeCluster) -> None:
    first = cluster.create(cm("one"))
    rv = first["metadata"]["resourceVersion"]
    cluster.create(cm("two"))
    obj = dict(cluster.get("configmaps", "two") or {})
    obj["data"] = {"k": "v"}
    cluster.api.update(cluster.resource("configmaps"), "default", "two", obj)
    events = await raw_watch(
        cluster,
        "/api/v1/namespaces/default/configmaps",
        {"watch": "True", "resourceVersion": rv, "timeoutSeconds": "1"},
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "two"), ("MODIFIED", "two")]
    assert int(events[-1]["object"]["metadata"]["resourceVersion"]) > int(rv)


async def test_too_old_resource_version_gets_410(cluster: FakeCluster) -> None:
    first = cluster.create(cm("old"))
    cluster.create(cm("newer"))
    cluster.faults.compact()
    events = await raw_watch(
        cluster,
        "/api/v1/namespaces/default/configmaps",
        {"watch": "true", "resourceVersion": first["metadata"]["resourceVersion"]},
    )
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"
    # the switch: the next watch fails even from the current version
    cluster.faults.gone_next_watches(1)
    events = await raw_watch(cluster, "/api/v1/namespaces/default/configmaps", {"watch": "true"})
    assert events[0]["object"]["code"] == 410
    events = await raw_watch(cluster, "/api/v1/namespaces/default/configmaps", {"watch": "true", "timeoutSeconds": "1"})
    assert [e["type"] for e in events] == ["ADDED", "ADDED"]


async def test_a_resource_version_the_server_never_issued_gets_410(cluster: FakeCluster) -> None:
    """A client resuming after the API server came back with a fresh store (its resourceVersions started
    over) must be told to list again, not be left on a silent watch (issue 13 #4)."""
    cluster.create(cm("only"))
    future = str(cluster.api.store.rv + 1000)
    events = await raw_watch(
        cluster, "/api/v1/namespaces/default/configmaps", {"watch": "true", "resourceVersion": future}
    )
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410


async def test_kubernetes_asyncio_watch_raises_410(cluster: FakeCluster) -> None:
    cfg = k8s.client.Configuration()
    cfg.host = cluster.url
    first = cluster.create(cm("x"))
    cluster.create(cm("y"))
    cluster.faults.compact()
    async with k8s.client.ApiClient(cfg) as client:
        core = k8s.client.CoreV1Api(client)
        watch = k8s.watch.Watch()
        with pytest.raises(k8s.client.ApiException) as info:
            async for _ in watch.stream(
                core.list_namespaced_config_map,
                "default",
                resource_version=first["metadata"]["resourceVersion"],
                timeout_seconds=5,
            ):
                pass
        assert info.value.status == 410


async def test_label_selector_turns_changes_into_added_and_deleted(cluster: FakeCluster) -> None:
    cluster.create(cm("s", {"role": "a"}))
    established = asyncio.Event()
    watch = asyncio.create_task(
        raw_watch(
            cluster,
            "/api/v1/namespaces/default/configmaps",
            {"watch": "1", "labelSelector": "role=b", "timeoutSeconds": "1"},
            established=established,
        )
    )
    async with asyncio.timeout(10):
        await established.wait()
    rtype = cluster.resource("configmaps")
    cluster.api.patch(rtype, "default", "s", {"metadata": {"labels": {"role": "b"}}}, "application/merge-patch+json")
    cluster.api.patch(rtype, "default", "s", {"metadata": {"labels": {"role": "c"}}}, "application/merge-patch+json")
    events = await watch
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]


async def test_kubernetes_asyncio_watch_of_custom_objects(cluster: FakeCluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    cfg = k8s.client.Configuration()
    cfg.host = cluster.url
    async with k8s.client.ApiClient(cfg) as client:
        custom = k8s.client.CustomObjectsApi(client)
        body = {
            "apiVersion": "kubeflow.org/v1",
            "kind": "TFJob",
            "metadata": {"name": "w"},
            "spec": {
                "tfReplicaSpecs": {
                    "Worker": {
                        "replicas": 1,
                        "template": {
                            "spec": {
                                "containers": [
                                    {
                                        "name": "tensorflow",
                                        "image": "x",
                                        "command": ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done"],
                                    }
                                ]
                            }
                        },
                    }
                }
            },
        }
        await custom.create_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", body)
        seen: list[str] = []
        watch = k8s.watch.Watch()
        async for event in watch.stream(
            custom.list_namespaced_custom_object, "kubeflow.org", "v1", "default", "tfjobs", timeout_seconds=10
        ):
            conditions = [
                c["type"] for c in event["object"].get("status", {}).get("conditions", []) if c["status"] == "True"
            ]
            seen.append(event["type"])
            gate.touch()
            if "Succeeded" in conditions:
                watch.stop()
        assert seen[0] == "ADDED" and "MODIFIED" in seen
        await watch.close()


async def test_api_restart_breaks_watches_and_keeps_state(cluster: FakeCluster) -> None:
    cluster.create(cm("kept"))

    established = asyncio.Event()

    async def watch_until_end() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{cluster.url}/api/v1/namespaces/default/configmaps", params={"watch": "true"}
            ) as resp:
                established.set()  # the server is streaming: the restart below breaks an open watch
                try:
                    async for line in resp.content:
                        events.append(json.loads(line))
                except aiohttp.ClientPayloadError:
                    events.append({"type": "BROKEN"})
        return events

    task = asyncio.create_task(watch_until_end())
    async with asyncio.timeout(10):
        await established.wait()
    await cluster.faults.restart_api(downtime=0.2)
    async with asyncio.timeout(10):
        events = await task
    assert events[0]["type"] == "ADDED"  # the stream ended (broken) instead of hanging
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{cluster.url}/api/v1/namespaces/default/configmaps/kept") as resp:
            assert resp.status == 200


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_watch_as_table(cluster: FakeCluster, session: aiohttp.ClientSession) -> None:
    cluster.create(cm("t"))
    headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    async with session.get(
        f"{cluster.url}/api/v1/namespaces/default/configmaps",
        params={"watch": "true", "timeoutSeconds": "1"},
        headers=headers,
    ) as resp:
        lines = [json.loads(x) for x in (await resp.text()).splitlines() if x.strip()]
    assert lines[0]["object"]["kind"] == "Table"
    assert lines[0]["object"]["rows"][0]["cells"][0] == "t"


async def test_bookmarks_and_initial_events_end(cluster: FakeCluster) -> None:
    cluster.server.bookmark_interval = 0.2
    cluster.create(cm("b1"))
    events = await raw_watch(
        cluster,
        "/api/v1/namespaces/default/configmaps",
        {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "sendInitialEvents": "true",
            "resourceVersionMatch": "NotOlderThan",
            "timeoutSeconds": "1",
        },
    )
    assert events[0]["type"] == "ADDED"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert sum(1 for e in events if e["type"] == "BOOKMARK") >= 3
    assert all(e["object"]["kind"] == "ConfigMap" for e in events)
