"""The API server through kubernetes_asyncio: CRUD, selectors, errors, patches, status, finalizers, GC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kubernetes_asyncio as k8s
import pytest
from k8s_support import tfjob

from nni_ts.testing.k8s import FakeCluster

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def client(cluster: FakeCluster) -> AsyncIterator[k8s.client.ApiClient]:
    cfg = k8s.client.Configuration()
    cfg.host = cluster.url
    async with k8s.client.ApiClient(cfg) as api_client:
        yield api_client


def pod(name: str, command: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "demo"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": command or ["true"]}],
            **spec,
        },
    }


async def test_discovery_and_version(cluster: FakeCluster, client: k8s.client.ApiClient) -> None:
    version = await k8s.client.VersionApi(client).get_code()
    assert version.major == "1" and version.minor == "32"
    groups = await k8s.client.ApisApi(client).get_api_versions()
    names = {g.name for g in groups.groups}
    assert {"kubeflow.org", "frameworkcontroller.microsoft.com", "apiextensions.k8s.io"} <= names
    core = await k8s.client.CoreV1Api(client).get_api_resources()
    assert {"pods", "pods/log", "pods/status", "secrets", "configmaps", "namespaces", "events"} <= {
        r.name for r in core.resources
    }
    async with aiohttp.ClientSession() as session:
        headers = {"Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"}
        async with session.get(f"{cluster.url}/apis", headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 200 and body["kind"] == "APIGroupList"
            assert resp.headers["Content-Type"].startswith("application/json")


async def test_custom_object_crud_and_errors(client: k8s.client.ApiClient) -> None:
    custom = k8s.client.CustomObjectsApi(client)
    created = await custom.create_namespaced_custom_object(
        "kubeflow.org", "v1", "default", "tfjobs", tfjob("a", ["true"])
    )
    assert created["metadata"]["uid"] and created["metadata"]["generation"] == 1
    with pytest.raises(k8s.client.ApiException) as info:
        await custom.create_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", tfjob("a", ["true"]))
    assert info.value.status == 409 and '"reason":"AlreadyExists"' in info.value.body.replace(" ", "")
    with pytest.raises(k8s.client.ApiException) as info:
        await custom.get_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", "missing")
    assert info.value.status == 404 and 'tfjobs.kubeflow.org \\"missing\\" not found' in info.value.body
    # update with a stale resourceVersion: 409 Conflict
    stale = dict(created)
    # kubernetes_asyncio sends custom-object patches as JSON patch unless told otherwise, as a real server expects
    await custom.patch_namespaced_custom_object(
        "kubeflow.org",
        "v1",
        "default",
        "tfjobs",
        "a",
        {"metadata": {"labels": {"x": "1"}}},
        _content_type="application/merge-patch+json",
    )
    with pytest.raises(k8s.client.ApiException) as info:
        await custom.replace_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", "a", stale)
    assert info.value.status == 409 and "Conflict" in info.value.body
    current = await custom.get_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", "a")
    assert current["metadata"]["labels"] == {"x": "1"}
    current["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = 2
    replaced = await custom.replace_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", "a", current)
    assert replaced["metadata"]["generation"] == 2
    listed = await custom.list_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", label_selector="x=1")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
    listed = await custom.list_namespaced_custom_object(
        "kubeflow.org", "v1", "default", "tfjobs", label_selector="x notin (1)"
    )
    assert listed["items"] == []


async def test_invalid_custom_object_is_422_naming_the_field(client: k8s.client.ApiClient) -> None:
    custom = k8s.client.CustomObjectsApi(client)
    bad = tfjob("bad", ["true"])
    bad["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "two"
    with pytest.raises(k8s.client.ApiException) as info:
        await custom.create_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", bad)
    assert info.value.status == 422
    import json

    status = json.loads(info.value.body)
    assert status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "spec.tfReplicaSpecs[Worker].replicas"
    missing = {"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": "nospec"}, "spec": {}}
    with pytest.raises(k8s.client.ApiException) as info:
        await custom.create_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", missing)
    assert info.value.status == 422 and "spec.tfReplicaSpecs: Required value" in info.value.body
    framework = {
        "apiVersion": "frameworkcontroller.microsoft.com/v1",
        "kind": "Framework",
        "metadata": {"name": "Bad-Name"},
        "spec": {"executionType": "Run", "taskRoles": []},
    }
    with pytest.raises(k8s.client.ApiException) as info:
        await custom.create_namespaced_custom_object(
            "frameworkcontroller.microsoft.com", "v1", "default", "frameworks", framework
        )
    status = json.loads(info.value.body)
    fields = {c["field"] for c in status["details"]["causes"]}
    assert {"metadata.name", "spec.executionType"} <= fields
    assert info.value.status == 422


async def test_generate_name_field_selectors_and_pagination(client: k8s.client.ApiClient) -> None:
    core = k8s.client.CoreV1Api(client)
    names = []
    for _ in range(5):
        cm = await core.create_namespaced_config_map(
            "default", {"metadata": {"generateName": "cfg-"}, "data": {"k": "v"}}
        )
        assert cm.metadata.name.startswith("cfg-") and len(cm.metadata.name) == 9
        names.append(cm.metadata.name)
    page = await core.list_namespaced_config_map("default", limit=2)
    seen = [i.metadata.name for i in page.items]
    while page.metadata._continue:
        page = await core.list_namespaced_config_map("default", limit=2, _continue=page.metadata._continue)
        seen += [i.metadata.name for i in page.items]
    assert sorted(seen) == sorted(names)
    one = await core.list_namespaced_config_map("default", field_selector=f"metadata.name={names[0]}")
    assert [i.metadata.name for i in one.items] == [names[0]]
    with pytest.raises(k8s.client.ApiException) as info:
        await core.list_namespaced_config_map("default", field_selector="data.k=v")
    assert info.value.status == 400 and "field label not supported" in info.value.body


async def test_pods_phase_field_selector_and_logs(cluster: FakeCluster, client: k8s.client.ApiClient) -> None:
    core = k8s.client.CoreV1Api(client)
    await core.create_namespaced_pod("default", pod("hello", ["sh", "-c", "echo out; echo err >&2"]))
    await cluster.wait_for_object("pods", "hello", lambda p: p["status"]["phase"] == "Succeeded")
    done = await core.list_namespaced_pod("default", field_selector="status.phase=Succeeded")
    assert [p.metadata.name for p in done.items] == ["hello"]
    running = await core.list_namespaced_pod("default", field_selector="status.phase=Running")
    assert running.items == []
    log = await core.read_namespaced_pod_log("hello", "default")
    assert "out" in log and "err" in log
    state = done.items[0].status.container_statuses[0].state
    assert state.terminated.exit_code == 0 and state.terminated.reason == "Completed"


async def test_secrets_env_and_field_refs_reach_the_process(cluster: FakeCluster, client: k8s.client.ApiClient) -> None:
    core = k8s.client.CoreV1Api(client)
    await core.create_namespaced_secret("default", {"metadata": {"name": "s"}, "stringData": {"token": "t0p"}})
    secret = await core.read_namespaced_secret("s", "default")
    assert secret.data == {"token": "dDBw"}
    body = pod("env", ["sh", "-c", "echo $PLAIN $SECRET $MYNAME $MYNS $REF"])
    body["spec"]["containers"][0]["env"] = [
        {"name": "PLAIN", "value": "p"},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
        {"name": "MYNAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MYNS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "REF", "value": "x-$(PLAIN)"},
    ]
    await core.create_namespaced_pod("default", body)
    await cluster.wait_for_object("pods", "env", lambda p: p["status"]["phase"] == "Succeeded")
    assert cluster.pod_log("env").strip() == "p t0p env default x-p"


async def test_patches(client: k8s.client.ApiClient) -> None:
    core = k8s.client.CoreV1Api(client)
    custom = k8s.client.CustomObjectsApi(client)
    await core.create_namespaced_config_map(
        "default", {"metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}}
    )
    # merge patch (the default of the client for dicts is strategic merge for core kinds)
    out = await core.patch_namespaced_config_map("c", "default", {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert out.metadata.labels == {"b": "2", "c": "3"}
    # JSON patch
    out = await core.patch_namespaced_config_map(
        "c",
        "default",
        [{"op": "replace", "path": "/data/x", "value": "9"}, {"op": "add", "path": "/data/y", "value": "2"}],
        _content_type="application/json-patch+json",
    )
    assert out.data == {"x": "9", "y": "2"}
    # strategic merge of containers by name
    await core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "p"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {"name": "a", "image": "i", "command": ["sleep", "30"]},
                    {"name": "b", "image": "i", "command": ["sleep", "30"]},
                ],
            },
        },
    )
    out = await core.patch_namespaced_pod("p", "default", {"spec": {"containers": [{"name": "b", "image": "j"}]}})
    assert [(c.name, c.image) for c in out.spec.containers] == [("a", "i"), ("b", "j")]
    # Framework stop: JSON patch of /spec/executionType on a custom object
    await custom.create_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", tfjob("j", ["true"]))
    out = await custom.patch_namespaced_custom_object(
        "kubeflow.org",
        "v1",
        "default",
        "tfjobs",
        "j",
        [{"op": "add", "path": "/spec/runPolicy", "value": {"cleanPodPolicy": "All"}}],
    )
    assert out["spec"]["runPolicy"]["cleanPodPolicy"] == "All"
    await core.delete_namespaced_pod("p", "default", grace_period_seconds=0)


async def test_status_subresource(cluster: FakeCluster, client: k8s.client.ApiClient) -> None:
    custom = k8s.client.CustomObjectsApi(client)
    body = tfjob("s", ["sleep", "30"])
    body["status"] = {"conditions": [{"type": "Succeeded", "status": "True"}]}
    created = await custom.create_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", body)
    assert "Succeeded" not in str(created.get("status"))  # status is dropped on create
    await cluster.wait_for_object("tfjobs", "s", lambda o: bool(o.get("status", {}).get("conditions")))
    current = await custom.get_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", "s")
    current["status"]["startTime"] = "2000-01-01T00:00:00Z"
    current["spec"]["successPolicy"] = "AllWorkers"
    out = await custom.replace_namespaced_custom_object_status("kubeflow.org", "v1", "default", "tfjobs", "s", current)
    assert out["status"]["startTime"] == "2000-01-01T00:00:00Z" and "successPolicy" not in out["spec"]
    current = await custom.get_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", "s")
    current["status"]["startTime"] = "1999-01-01T00:00:00Z"
    out = await custom.replace_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", "s", current)
    assert out["status"]["startTime"] == "2000-01-01T00:00:00Z"


async def test_finalizers_keep_the_object_until_removed(cluster: FakeCluster, client: k8s.client.ApiClient) -> None:
    core = k8s.client.CoreV1Api(client)
    await core.create_namespaced_config_map("default", {"metadata": {"name": "f", "finalizers": ["example.com/x"]}})
    await core.delete_namespaced_config_map("f", "default")
    kept = await core.read_namespaced_config_map("f", "default")
    assert kept.metadata.deletion_timestamp is not None
    with pytest.raises(k8s.client.ApiException) as info:
        await core.patch_namespaced_config_map(
            "f", "default", {"metadata": {"finalizers": ["example.com/x", "example.com/y"]}}
        )
    assert info.value.status == 422
    await core.patch_namespaced_config_map("f", "default", {"metadata": {"finalizers": None}})
    assert cluster.get("configmaps", "f") is None


async def test_garbage_collection_by_owner_references(cluster: FakeCluster, client: k8s.client.ApiClient) -> None:
    core = k8s.client.CoreV1Api(client)
    owner = await core.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    for name in ("dep1", "dep2"):
        await core.create_namespaced_config_map("default", {"metadata": {"name": name, "ownerReferences": [ref]}})
    await core.create_namespaced_config_map(
        "default",
        {
            "metadata": {
                "name": "grandchild",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "dep1",
                        "uid": cluster.get("configmaps", "dep1")["metadata"]["uid"],
                    }
                ],
            }
        },
    )
    await core.delete_namespaced_config_map("owner", "default")
    await cluster.wait_for(
        lambda c: not {"dep1", "dep2", "grandchild"} & {o["metadata"]["name"] for o in c.list("configmaps")},
        message="dependents collected",
    )
    # Orphan keeps dependents and drops their ownerReferences
    owner = await core.create_namespaced_config_map("default", {"metadata": {"name": "owner2"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner.metadata.uid}
    await core.create_namespaced_config_map("default", {"metadata": {"name": "kept", "ownerReferences": [ref]}})
    await core.delete_namespaced_config_map("owner2", "default", propagation_policy="Orphan")
    await cluster.wait_deleted("configmaps", "owner2")
    kept = cluster.get("configmaps", "kept")
    assert kept is not None and not kept["metadata"].get("ownerReferences")
    # Foreground: the owner stays (with deletionTimestamp) until its dependents are gone
    owner = await core.create_namespaced_config_map("default", {"metadata": {"name": "owner3"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner3", "uid": owner.metadata.uid}
    await core.create_namespaced_config_map(
        "default", {"metadata": {"name": "blocker", "ownerReferences": [ref], "finalizers": ["example.com/hold"]}}
    )
    await core.delete_namespaced_config_map("owner3", "default", propagation_policy="Foreground")
    await cluster.wait_for_object("configmaps", "blocker", lambda o: bool(o["metadata"].get("deletionTimestamp")))
    assert cluster.get("configmaps", "owner3") is not None
    await core.patch_namespaced_config_map("blocker", "default", {"metadata": {"finalizers": None}})
    await cluster.wait_deleted("configmaps", "owner3")
    # a dependent whose owner never existed is collected
    await core.create_namespaced_config_map(
        "default",
        {
            "metadata": {
                "name": "stray",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "ghost",
                        "uid": "00000000-0000-0000-0000-000000000000",
                    }
                ],
            }
        },
    )
    await cluster.wait_deleted("configmaps", "stray")


async def test_namespace_deletion_and_missing_namespace(cluster: FakeCluster, client: k8s.client.ApiClient) -> None:
    core = k8s.client.CoreV1Api(client)
    with pytest.raises(k8s.client.ApiException) as info:
        await core.create_namespaced_config_map("nowhere", {"metadata": {"name": "x"}})
    assert info.value.status == 404
    await core.create_namespace({"metadata": {"name": "team"}})
    await core.create_namespaced_config_map("team", {"metadata": {"name": "x"}})
    await core.delete_namespace("team")
    await cluster.wait_for(lambda c: c.get("namespaces", "team", "") is None, message="namespace gone")
    assert cluster.get("configmaps", "x", "team") is None


async def test_crd_created_through_the_api_is_served(cluster: FakeCluster, client: k8s.client.ApiClient) -> None:
    ext = k8s.client.ApiextensionsV1Api(client)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "singular": "widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "maximum": 10}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    out = await ext.create_custom_resource_definition(crd)
    assert any(c.type == "Established" and c.status == "True" for c in out.status.conditions)
    custom = k8s.client.CustomObjectsApi(client)
    await custom.create_namespaced_custom_object(
        "example.com",
        "v1",
        "default",
        "widgets",
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3, "x": 1}},
    )
    stored = await custom.get_namespaced_custom_object("example.com", "v1", "default", "widgets", "w")
    assert stored["spec"] == {"size": 3}  # unknown fields are pruned
    with pytest.raises(k8s.client.ApiException) as info:
        await custom.create_namespaced_custom_object(
            "example.com",
            "v1",
            "default",
            "widgets",
            {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "big"}, "spec": {"size": 11}},
        )
    assert info.value.status == 422 and "less than or equal to 10" in info.value.body
    await ext.delete_custom_resource_definition("widgets.example.com")
    with pytest.raises(k8s.client.ApiException) as info:
        await custom.list_namespaced_custom_object("example.com", "v1", "default", "widgets")
    assert info.value.status == 404


async def test_bearer_token_and_namespace_access(tmp_path: Any) -> None:
    async with FakeCluster(
        tmp_path / "c", token="admin-token", tokens={"team-token": ["team"]}, namespaces=["team"]
    ) as cluster:
        for token, ns, expected in (
            ("", "default", 401),
            ("wrong", "default", 401),
            ("team-token", "default", 403),
            ("team-token", "team", 200),
            ("admin-token", "default", 200),
        ):
            cfg = k8s.client.Configuration()
            cfg.host = cluster.url
            if token:
                cfg.api_key = {"BearerToken": token}
                cfg.api_key_prefix = {"BearerToken": "Bearer"}
            async with k8s.client.ApiClient(cfg) as api_client:
                core = k8s.client.CoreV1Api(api_client)
                try:
                    await core.list_namespaced_config_map(ns)
                    status = 200
                except k8s.client.ApiException as exc:
                    status = exc.status
            assert status == expected, (token, ns)
        assert "token: admin-token" in cluster.kubeconfig.read_text()
        await asyncio.sleep(0)


async def test_tls_kubeconfig_with_token_for_kubernetes_asyncio(tmp_path: Any) -> None:
    async with FakeCluster(tmp_path / "c", token="tok", tls=True) as cluster:
        assert cluster.url.startswith("https://")
        api_client = await k8s.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        async with api_client:
            names = [n.metadata.name for n in (await k8s.client.CoreV1Api(api_client).list_namespace()).items]
        assert "default" in names
