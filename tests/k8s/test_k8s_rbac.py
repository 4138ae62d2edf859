"""RBAC in the fake cluster: service-account tokens are allowed only what their Roles grant, and the Roles
in deploy/ and docs/kubernetes.md are enough for whole experiments on the Kubernetes platforms (kubeflow,
frameworkcontroller and kubernetes)."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_asyncio as k8s
import pytest
import yaml
from k8s_support import TRAINER_CRDS, Kubectl

from nni_ts.models import TrialJobMetric, TrialJobStatus
from nni_ts.testing.conformance import form, wait_for_status
from nni_ts.testing.k8s import FakeCluster, Node
from nni_ts.testing.k8s.rbac import rule_allows

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = (REPO / ".." / "shared" / "crds").resolve()
NFS = ("10.0.0.1", "/exports/nni")


def client(cluster: FakeCluster, token: str | None) -> k8s.client.ApiClient:
    cfg = k8s.client.Configuration()
    cfg.host = cluster.url
    if token:
        cfg.api_key = {"BearerToken": f"Bearer {token}"}
    return k8s.client.ApiClient(cfg)


def role(name: str, namespace: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rules,
    }


def binding(name: str, namespace: str, role_kind: str, role_name: str, sa: tuple[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding" if namespace else "ClusterRoleBinding",
        "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "namespace": sa[0], "name": sa[1]}],
    }


async def test_a_service_account_token_is_allowed_only_what_its_roles_grant(tmp_path: Path) -> None:
    async with FakeCluster(tmp_path / "c", controllers=[], namespaces=["team", "other"]) as cluster:
        token = cluster.service_account_token("team", "runner")
        async with client(cluster, token) as api:
            core = k8s.client.CoreV1Api(api)
            with pytest.raises(k8s.client.ApiException) as refused:
                await core.list_namespaced_pod("team")
            assert refused.value.status == 403
            assert (
                'User "system:serviceaccount:team:runner" cannot list resource "pods"'
                in json.loads(refused.value.body)["message"]
            )
            cluster.create(
                role(
                    "pods",
                    "team",
                    [
                        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["one"]},
                    ],
                )
            )
            cluster.create(binding("pods", "team", "Role", "pods", ("team", "runner")))
            assert (await core.list_namespaced_pod("team")).items == []
            for call in (
                core.list_namespaced_pod("other"),  # the Role binds in its own namespace only
                core.create_namespaced_pod("team", {"metadata": {"name": "p"}}),  # no create verb
                core.read_namespaced_pod_log("p", "team"),  # pods/log is a resource of its own
                core.read_namespaced_config_map("two", "team"),  # resourceNames
                core.list_namespace(),  # cluster scope
            ):
                with pytest.raises(k8s.client.ApiException) as refused:
                    await call
                assert refused.value.status == 403, call
            with pytest.raises(k8s.client.ApiException) as missing:
                await core.read_namespaced_config_map("one", "team")
            assert missing.value.status == 404  # allowed, and not there
            # A ClusterRole bound cluster-wide reaches every namespace and the cluster scope.
            cluster.create(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": "ns-reader"},
                    "rules": [{"apiGroups": ["*"], "resources": ["namespaces", "pods"], "verbs": ["list"]}],
                }
            )
            cluster.create(binding("ns-reader", "", "ClusterRole", "ns-reader", ("team", "runner")))
            assert {n.metadata.name for n in (await core.list_namespace()).items} >= {"team", "other"}
            assert (await core.list_namespaced_pod("other")).items == []
        # The cluster's own credentials (no token here) keep their access to everything.
        async with client(cluster, None) as admin:
            await k8s.client.CoreV1Api(admin).list_namespace()
        # A token of a deleted ServiceAccount no longer authenticates.
        cluster.delete("serviceaccounts", "runner", namespace="team")
        async with client(cluster, token) as api:
            with pytest.raises(k8s.client.ApiException) as gone:
                await k8s.client.CoreV1Api(api).list_namespaced_pod("team")
            assert gone.value.status == 401


async def test_kubectl_creates_a_token_and_refuses_bad_bindings(tmp_path: Path) -> None:
    assert shutil.which("kubectl"), "kubectl is installed by scripts/test"
    async with FakeCluster(tmp_path / "c", controllers=[]) as cluster:
        kubectl = Kubectl(cluster.kubeconfig, tmp_path / "cache")
        result = await kubectl(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bot"}}),
        )
        assert result.code == 0, result.err
        result = await kubectl("create", "token", "bot")
        assert result.code == 0, result.err
        token = result.out.strip()
        async with client(cluster, token) as api:
            with pytest.raises(k8s.client.ApiException) as refused:
                await k8s.client.CoreV1Api(api).list_namespaced_secret("default")
            assert refused.value.status == 403
        bad = binding("b", "default", "Group", "x", ("default", "bot"))
        result = await kubectl("apply", "-f", "-", stdin=json.dumps(bad))
        assert result.code != 0 and "roleRef.kind" in result.err
        result = await kubectl("get", "rolebindings,roles,clusterroles,clusterrolebindings")
        assert result.code == 0, result.err


def test_rule_matching() -> None:
    rule = {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"]}
    assert rule_allows(rule, "get", "", "pods/log", "p")
    assert not rule_allows(rule, "get", "", "pods/exec", "p")
    assert not rule_allows(rule, "get", "apps", "pods", "p")
    assert rule_allows({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, "delete", "x.io", "things/status", "")
    assert rule_allows({"apiGroups": [""], "resources": ["*/log"], "verbs": ["get"]}, "get", "", "pods/log", "")


# ---------------------------------------------------------------- the documented Roles, proven sufficient


def deploy_rbac() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / "deploy" / "20-rbac.yaml").read_text()) if d]


#: Kubeflow Trainer v2.3.0's ``manifests/overlays/kubeflow-platform/kubeflow-trainer-roles.yaml``: every
#: authenticated user may read the ClusterTrainingRuntimes.
KUBEFLOW_VIEW_CLUSTER_RUNTIMES: list[dict[str, Any]] = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "kubeflow-trainer-view-cluster-runtimes"},
        "rules": [
            {
                "apiGroups": ["trainer.kubeflow.org"],
                "resources": ["clustertrainingruntimes"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "kubeflow-trainer-view-cluster-runtimes"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "kubeflow-trainer-view-cluster-runtimes",
        },
        "subjects": [{"kind": "Group", "name": "system:authenticated", "apiGroup": "rbac.authorization.k8s.io"}],
    },
]


def docs_role() -> dict[str, Any]:
    text = (REPO / "docs" / "kubernetes.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    roles = [yaml.safe_load(b) for b in blocks if "kind: Role" in b]
    assert len(roles) == 1, "docs/kubernetes.md shows one Role"
    return roles[0]


def platform_config(platform: str, kubeconfig: Path, namespace: str, nfs: Path, code: Path) -> dict[str, Any]:
    storage = {"storageType": "nfs", "server": NFS[0], "path": NFS[1], "localMountPath": str(nfs)}
    role = {"command": "python3 trial.py", "cpuNumber": 0.5, "memorySize": "256m", "dockerImage": "python:3.11"}
    common = {
        "trialCodeDirectory": str(code),
        "kubeconfig": str(kubeconfig),
        "namespace": namespace,
        "storage": storage,
        "cancelGracePeriod": 2,
        "keeperHeartbeat": 0.5,
    }
    if platform == "kubeflow":
        return {"platform": "kubeflow", "operator": "tf-operator", "worker": {"replicas": 1, **role}, **common}
    if platform == "kubernetes":
        return {"platform": "kubernetes", **role, **common}
    if platform == "trainjob":
        trainer = {"image": "python:3.11", "resourcesPerNode": {"cpuNumber": 0.5, "memorySize": "256m"}}
        runtime = {"name": "nni-ts-python"}
        return {
            "platform": "trainjob",
            "trialCommand": role["command"],
            "runtimeRef": runtime,
            "trainer": trainer,
            **common,
        }
    fc_role = {
        "name": "worker",
        "taskNumber": 1,
        **role,
        "frameworkAttemptCompletionPolicy": {"minFailedTaskCount": 1, "minSucceededTaskCount": 1},
    }
    return {"platform": "frameworkcontroller", "taskRoles": [fc_role], **common}


@pytest.mark.slow  # whole experiments through the fake cluster and its operators
@pytest.mark.parametrize("source", ["deploy", "docs"])
@pytest.mark.parametrize("platform", ["kubeflow", "frameworkcontroller", "kubernetes", "trainjob"])
async def test_the_documented_role_runs_an_experiment(tmp_path: Path, source: str, platform: str) -> None:
    from nni_ts.registry import get_platform_class

    nfs, code = tmp_path / "nfs", tmp_path / "code"
    nfs.mkdir()
    code.mkdir()
    (code / "trial.py").write_text(
        "import time, nni\np = nni.get_next_parameter()\ntime.sleep(p['sleep'])\n"
        "nni.report_intermediate_result(1)\nnni.report_final_result(2)\n"
    )
    if source == "deploy":
        objects, namespace, sa = deploy_rbac(), "nni-exp", ("nni-ts", "nni-ts-service")
    else:
        docs = docs_role()
        namespace = docs["metadata"]["namespace"]
        sa = ("default", "manager")
        objects = [docs, binding("nni-ts", namespace, "Role", docs["metadata"]["name"], sa)]
    async with FakeCluster(
        tmp_path / "cluster",
        crd_files=sorted(CRD_DIR.glob("*.yaml")) + (TRAINER_CRDS if platform == "trainjob" else []),
        nodes=[Node("node-1", cpu=64, memory="64Gi")],
        nfs_exports={NFS: nfs},
        namespaces=sorted({namespace, sa[0]}),
    ) as cluster:
        for obj in objects:
            cluster.create(obj)
        if platform == "trainjob":
            cluster.create(yaml.safe_load((REPO / "examples" / "trainjob" / "runtime.yaml").read_text()))
            # What Kubeflow's platform manifests grant every authenticated user (nni-ts's Role is namespaced).
            for obj in KUBEFLOW_VIEW_CLUSTER_RUNTIMES:
                cluster.create(copy.deepcopy(obj))
        kubeconfig = cluster.write_kubeconfig(tmp_path / "sa.kubeconfig", token=cluster.service_account_token(*sa))
        config = platform_config(platform, kubeconfig, namespace, nfs, code)
        cls: Any = get_platform_class(platform)
        svc = cls(config, experiment_dir=tmp_path / "exp")
        metrics: list[TrialJobMetric] = []
        svc.add_trial_job_metric_listener(metrics.append)
        async with svc:
            done = await svc.submit_trial_job(form({"sleep": 0}))
            finished = await wait_for_status(svc, done.id, timeout=60)
            assert finished.status is TrialJobStatus.SUCCEEDED, finished.message
            assert len(metrics) == 2
            # Cancelling a running trial (delete) is allowed too.
            slow = await svc.submit_trial_job(form({"sleep": 60}))
            await wait_for_status(svc, slow.id, terminal=False, status=TrialJobStatus.RUNNING, timeout=60)
            await svc.cancel_trial_job(slow.id)
            cancelled = await wait_for_status(svc, slow.id, timeout=60)
            assert cancelled.status is TrialJobStatus.USER_CANCELED, cancelled.message
        # Nothing the platform tried was refused (not even a request whose failure it tolerates).
        assert cluster.server.forbidden == []
        assert cluster.server.account_requests[sa] > 5  # the platform did use the service account's token


async def test_a_role_without_the_platforms_objects_is_a_clear_error(tmp_path: Path) -> None:
    """Credentials that may not list batch jobs: the kubernetes platform says which right is missing and
    where the Role is documented (a ConfigError naming the key: the CLI exits 2), no traceback."""
    from nni_ts.errors import ConfigError
    from nni_ts.registry import get_platform_class

    nfs, code = tmp_path / "nfs", tmp_path / "code"
    nfs.mkdir()
    code.mkdir()
    docs = docs_role()
    namespace = docs["metadata"]["namespace"]
    docs["rules"] = [r for r in docs["rules"] if "batch" not in r["apiGroups"]]
    async with FakeCluster(tmp_path / "cluster", controllers=[], nfs_exports={NFS: nfs}) as cluster:
        cluster.create(docs)
        cluster.create(binding("nni-ts", namespace, "Role", docs["metadata"]["name"], ("default", "manager")))
        kubeconfig = cluster.write_kubeconfig(
            tmp_path / "sa.kubeconfig", token=cluster.service_account_token("default", "manager")
        )
        svc = get_platform_class("kubernetes")(
            platform_config("kubernetes", kubeconfig, namespace, nfs, code), experiment_dir=tmp_path / "exp"
        )
        with pytest.raises(ConfigError) as info:
            await svc.start()
    message = str(info.value)
    assert "trainingService.kubeconfig" in message and 'cannot list resource "jobs"' in message, message
    assert "docs/kubernetes.md" in message and f"namespace {namespace}" in message


async def test_trainjob_checks_a_cluster_runtime_it_may_not_read_by_a_dry_run(tmp_path: Path) -> None:
    """nni-ts's Role is namespaced: without Kubeflow's grant to read ClusterTrainingRuntimes, the runtime is
    checked by a dry-run create of a TrainJob (Trainer's webhook refuses an unknown runtime)."""
    from nni_ts.errors import ConfigError
    from nni_ts.platforms.kubernetes.trainjob import TrainJobTrainingService

    nfs, code = tmp_path / "nfs", tmp_path / "code"
    nfs.mkdir()
    code.mkdir()
    objects, namespace, sa = deploy_rbac(), "nni-exp", ("nni-ts", "nni-ts-service")
    async with FakeCluster(
        tmp_path / "cluster",
        crd_files=sorted(CRD_DIR.glob("*.yaml")) + TRAINER_CRDS,
        nfs_exports={NFS: nfs},
        namespaces=[namespace, sa[0]],
    ) as cluster:
        for obj in objects:
            cluster.create(obj)
        cluster.create(yaml.safe_load((REPO / "examples" / "trainjob" / "runtime.yaml").read_text()))
        kubeconfig = cluster.write_kubeconfig(tmp_path / "sa.kubeconfig", token=cluster.service_account_token(*sa))
        config = platform_config("trainjob", kubeconfig, namespace, nfs, code)
        config["runtimeRef"] = {"name": "not-installed"}
        with pytest.raises(ConfigError) as info:
            async with TrainJobTrainingService(config, experiment_dir=tmp_path / "exp1"):
                pass
        assert info.value.path == "trainingService.runtimeRef.name"
        assert "ClusterTrainingRuntime 'not-installed'" in str(info.value)
        assert "unsupported runtime" in str(info.value)
        config["runtimeRef"] = {"name": "nni-ts-python"}
        async with TrainJobTrainingService(config, experiment_dir=tmp_path / "exp2"):
            pass  # it starts: the dry run accepted its TrainJob
        # The only refusals: reading the ClusterTrainingRuntime (tolerated), once per start.
        assert len(cluster.server.forbidden) == 2, cluster.server.forbidden
        assert all(
            'cannot get resource "clustertrainingruntimes"' in f and "at the cluster scope" in f
            for f in cluster.server.forbidden
        ), cluster.server.forbidden
