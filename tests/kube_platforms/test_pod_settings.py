"""Pod settings (nodeSelector, tolerations, affinity, priorityClassName, serviceAccountName,
imagePullPolicy, env, volumes and mounts, labels, annotations, podTemplatePatch) on every Kubernetes
platform: they reach the pods the fake cluster's controllers create (through the real CRDs' schemas,
which prune what they do not know), the parameters annotation is on each trial object, the role's
settings combine with the platform's as documented, and bad settings are config errors naming the key."""

from __future__ import annotations

import copy
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nni_ts.config.frameworkcontroller import FrameworkControllerConfig
from nni_ts.config.kubeflow import KubeflowConfig
from nni_ts.config.loader import config_from_dict
from nni_ts.errors import ConfigError
from nni_ts.models import TrialJobMetric, TrialJobStatus
from nni_ts.platforms.kubernetes import podsettings as ps
from nni_ts.platforms.kubernetes.frameworkcontroller import FrameworkControllerTrainingService
from nni_ts.platforms.kubernetes.kubeflow import KubeflowTrainingService
from nni_ts.platforms.kubernetes.names import label_value
from nni_ts.testing.conformance import form, wait_for_status
from nni_ts.testing.k8s import FakeCluster, Node

from .conftest import ALL_PLATFORMS, NFS_PATH, NFS_SERVER, TRAINER_CRDS, Factory, crd_files, trainjob_runtime
from .test_manifests import STORAGE, _assert_valid, _build, _offline, _schema

TIMEOUT = 60.0

TRIAL = textwrap.dedent(
    """
    import os, time, nni
    params = nni.get_next_parameter()
    deadline = time.monotonic() + 30
    while not os.path.exists(params["release"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    nni.report_final_result({"default": 1.0, "setting": os.environ.get("MY_SETTING"),
                             "namespace": os.environ.get("MY_POD_NAMESPACE")})
    """
)

SETTINGS: dict[str, Any] = {
    "nodeSelector": {"pool": "trials"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "nni", "effect": "NoSchedule"},
        {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
    ],
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 1,
                    "preference": {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["trials"]}]},
                }
            ]
        }
    },
    "priorityClassName": "research-low",
    "serviceAccountName": "trainer",
    "imagePullPolicy": "IfNotPresent",
    "env": {
        "MY_SETTING": "forty-two",
        "MY_POD_NAMESPACE": {"valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    },
    "volumes": [{"name": "scratch", "emptyDir": {}}],
    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    "labels": {"team": "vision", "example.com/cost-center": "c42"},
    "annotations": {"example.com/owner": "alice"},
    "podTemplatePatch": {
        "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
        "spec": {
            "securityContext": {"fsGroup": 2000},
            "containers": [{"securityContext": {"allowPrivilegeEscalation": False}}],
        },
    },
}


@pytest.fixture(params=ALL_PLATFORMS)
def platform(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def cluster(tmp_path: Path, nfs_dir: Path, platform: str) -> AsyncIterator[FakeCluster]:
    """Two nodes: only the labelled one matches the nodeSelector."""
    trainer = platform == "trainjob"
    async with FakeCluster(
        tmp_path / "cluster",
        crd_files=crd_files() + (TRAINER_CRDS if trainer else []),
        nodes=[Node("node-1", cpu=256, memory="512Gi", gpus=2), Node("pool-node", cpu=64, labels={"pool": "trials"})],
        nfs_exports={(NFS_SERVER, NFS_PATH): nfs_dir},
    ) as c:
        if trainer:
            c.create(trainjob_runtime())
        yield c


#: What a TrainJob cannot carry (Kubeflow Trainer's runtimePatches have no field for them): the trainjob
#: platform refuses them at start, naming them (the runtime's template must set them).
NOT_ON_TRAINJOB = ("priorityClassName", "imagePullPolicy")


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(TRIAL, encoding="utf-8")
    return code


def _trial_container(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = [c for c in pod["spec"]["containers"] if any(e["name"] == "NNI_TS_KEEPER_TRIAL_ID" for e in c["env"])]
    return c


async def test_settings_reach_the_pods(
    cluster: FakeCluster, make_service: Factory, code_dir: Path, tmp_path: Path, platform: str
) -> None:
    settings = copy.deepcopy(SETTINGS)
    if platform == "trainjob":
        for key in NOT_ON_TRAINJOB:
            del settings[key]
        for key in NOT_ON_TRAINJOB:
            refused = make_service(code_dir, "python3 trial.py", **{**settings, key: SETTINGS[key]})
            with pytest.raises(ConfigError, match=key):
                await refused.start()
    svc = make_service(code_dir, "python3 trial.py", **settings)
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    release = tmp_path / "release"
    async with svc:
        parameters = {"lr": 0.5, "layers": [1, 2], "release": str(release)}
        detail = await svc.submit_trial_job(form(parameters, sequence_id=7, parameter_id=4))
        await wait_for_status(svc, detail.id, timeout=TIMEOUT, status=TrialJobStatus.RUNNING)
        _check_objects(cluster, svc.plural, detail, settings)
        release.touch()
        done = await wait_for_status(svc, detail.id, timeout=TIMEOUT)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        final = json.loads(json.loads(metrics[-1].data)["value"])
        # The env reached the trial's process, the downward API included.
        assert final == {"default": 1.0, "setting": "forty-two", "namespace": "default"}


def _check_objects(cluster: FakeCluster, plural: str, detail: Any, settings: dict[str, Any]) -> None:
    obj = cluster.get(plural, detail.platform_data["job"])
    assert obj is not None
    meta = obj["metadata"]
    assert meta["labels"]["team"] == "vision" and meta["labels"]["example.com/cost-center"] == "c42"
    assert meta["labels"]["nni-ts.io/trial"] == label_value(detail.id)
    assert meta["annotations"]["example.com/owner"] == "alice"
    assert meta["annotations"]["nni-ts.io/sequence-id"] == "7"
    parameters = json.loads(meta["annotations"][ps.ANNOTATION_PARAMETERS])
    assert parameters["parameter_id"] == 4 and parameters["parameters"]["layers"] == [1, 2]

    pods = cluster.list("pods", label_selector=f"nni-ts.io/trial={label_value(detail.id)}")
    assert pods
    for pod in pods:
        spec = pod["spec"]
        assert spec["nodeName"] == "pool-node"  # the scheduler honoured the nodeSelector
        assert spec["nodeSelector"] == {"pool": "trials"}
        for toleration in SETTINGS["tolerations"]:
            assert toleration in spec["tolerations"], spec.get("tolerations")
        assert spec["affinity"] == SETTINGS["affinity"]
        assert spec.get("priorityClassName") == settings.get("priorityClassName")
        assert spec["serviceAccountName"] == "trainer"
        assert {"name": "scratch", "emptyDir": {}} in spec["volumes"]
        assert any(v["name"] == "nni-ts-storage" for v in spec["volumes"])
        assert spec["securityContext"]["fsGroup"] == 2000
        assert spec["restartPolicy"] == "Never"
        c = _trial_container(pod)
        if "imagePullPolicy" in settings:
            assert c["imagePullPolicy"] == "IfNotPresent"
        assert c["securityContext"] == {"allowPrivilegeEscalation": False}
        assert {"name": "scratch", "mountPath": "/scratch"} in c["volumeMounts"]
        assert c["command"][:2] == ["/bin/sh", "-c"]  # still the keeper's launcher
        env = {e["name"]: e for e in c["env"]}
        assert env["MY_SETTING"]["value"] == "forty-two"
        assert "NNI_TS_KEEPER_SERVER_URL" in env
        labels, annotations = pod["metadata"]["labels"], pod["metadata"].get("annotations") or {}
        assert labels["team"] == "vision" and labels["nni-ts.io/trial"] == label_value(detail.id)
        assert annotations["example.com/owner"] == "alice"
        assert annotations["sidecar.istio.io/inject"] == "false"


# ------------------------------------------------------------------ how the settings combine (no cluster)

ROLE = {"command": "python3 t.py", "memorySize": "1g", "dockerImage": "python:3.11"}


def _kubeflow(**settings: Any) -> KubeflowConfig:
    role = {**ROLE, **settings.pop("role", {})}
    operator = settings.pop("operator", "tf-operator")
    other = {"ps": ROLE} if operator == "tf-operator" else {"master": ROLE}
    return KubeflowConfig.model_validate(
        {"operator": operator, "storage": STORAGE, "worker": role, **other, **settings}
    )


def test_role_settings_combine_with_the_platforms() -> None:
    config = _kubeflow(
        nodeSelector={"pool": "trials", "zone": "a"},
        tolerations=[{"key": "a", "operator": "Exists"}],
        priorityClassName="low",
        env={"A": "platform", "B": "platform"},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        volumeMounts=[{"name": "data", "mountPath": "/data"}],
        podTemplatePatch={"spec": {"dnsPolicy": "None", "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["a"]}]}},
        role={
            "nodeSelector": {"zone": "b"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "high",
            "imagePullPolicy": "Always",
            "env": {"B": "role"},
            "volumes": [{"name": "cache", "emptyDir": {"medium": "Memory"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data2", "readOnly": True}],
            "podTemplatePatch": {"spec": {"dnsPolicy": "Default"}},
        },
    )
    keeper_env = [{"name": "NNI_TS_KEEPER_TRIAL_ID", "value": "t"}, {"name": "B", "value": "nni-ts"}]
    container = {"name": "tensorflow", "image": "i", "command": ["/bin/sh"], "env": keeper_env, "volumeMounts": []}
    template = {
        "metadata": {"labels": {"nni-ts.io/trial": "t"}},
        "spec": {"containers": [container], "volumes": [{"name": "nni-ts-storage", "emptyDir": {}}]},
    }
    worker = ps.apply_pod_settings(config, template, "worker")
    spec = worker["spec"]
    assert spec["nodeSelector"] == {"pool": "trials", "zone": "b"}  # maps merge, the role's keys win
    assert [t["key"] for t in spec["tolerations"]] == ["a", "gpu"]  # lists add up, the platform's first
    assert spec["priorityClassName"] == "high"  # single values: the role's
    assert [v["name"] for v in spec["volumes"]] == ["nni-ts-storage", "data", "cache"]
    assert spec["dnsPolicy"] == "Default"  # the platform's patch, then the role's
    assert spec["hostAliases"] == [{"ip": "10.0.0.1", "hostnames": ["a"]}]
    c = spec["containers"][0]
    assert c["imagePullPolicy"] == "Always"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {"NNI_TS_KEEPER_TRIAL_ID": "t", "A": "platform", "B": "role"}
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/data", "/data2"]
    # The ps role has no settings of its own: the platform's only.
    ps_spec = ps.apply_pod_settings(config, template, "ps")["spec"]
    assert ps_spec["nodeSelector"] == {"pool": "trials", "zone": "a"} and ps_spec["priorityClassName"] == "low"
    assert ps_spec["dnsPolicy"] == "None" and "imagePullPolicy" not in ps_spec["containers"][0]
    assert template["spec"]["containers"][0]["env"] == keeper_env  # the builder's template is not changed


def test_patch_semantics() -> None:
    target = {
        "metadata": {"labels": {"a": "1"}},
        "spec": {
            "containers": [{"name": "main", "image": "i", "env": [{"name": "X", "value": "1"}]}],
            "tolerations": [{"key": "old", "operator": "Exists"}],
            "dnsPolicy": "ClusterFirst",
        },
    }
    patch = {
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "env": [{"name": "Y", "value": "2"}],
                    "resources": {"limits": {"ephemeral-storage": "1Gi"}},
                },
                {"name": "proxy", "image": "envoy:1", "command": ["envoy"]},
            ],
            "tolerations": [{"key": "new", "operator": "Exists"}],
            "dnsPolicy": None,
        }
    }
    out = ps.strategic_merge(target, patch, own_containers=["main"])
    main, proxy = out["spec"]["containers"]
    assert main["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]  # merged on name
    assert main["resources"] == {"limits": {"ephemeral-storage": "1Gi"}} and main["image"] == "i"
    assert proxy == {"name": "proxy", "image": "envoy:1", "command": ["envoy"]}  # a sidecar is added
    assert out["spec"]["tolerations"] == [{"key": "new", "operator": "Exists"}]  # other lists are replaced
    assert "dnsPolicy" not in out["spec"]  # null deletes
    with pytest.raises(ConfigError, match=r"podTemplatePatch\.spec\.containers\[0\]\.command"):
        ps.strategic_merge(
            target,
            {"spec": {"containers": [{"name": "main", "image": "other", "command": ["x"]}]}},
            own_containers=["main"],
            where="trainingService.podTemplatePatch",
        )


def test_a_patch_replacing_the_trial_containers_image_names_the_role_key() -> None:
    """A named container item with an image is a sidecar, unless it names nni-ts's own container: then it is
    refused when the pod template is built (the config cannot know the platform's container names)."""
    fc = FrameworkControllerConfig.model_validate(
        {
            "storage": STORAGE,
            "taskRoles": [
                {"name": "ps", **ROLE},
                {
                    "name": "worker",
                    **ROLE,
                    "podTemplatePatch": {"spec": {"containers": [{"name": "worker", "image": "x"}]}},
                },
            ],
        }
    )
    template = {"metadata": {}, "spec": {"containers": [{"name": "worker", "image": "python:3.11"}]}}
    with pytest.raises(ConfigError) as info:
        ps.apply_pod_settings(fc, template, "worker")
    assert info.value.path == "trainingService.taskRoles[1].podTemplatePatch.spec.containers[0].image"
    assert "dockerImage" not in str(info.value) and "sidecar another name" in str(info.value)
    assert ps.apply_pod_settings(fc, template, "ps")["spec"]["containers"][0]["image"] == "python:3.11"


def test_settings_keep_the_objects_valid_for_the_real_crds(tmp_path: Path) -> None:
    """The real TFJob and PyTorchJob CRDs type every pod template field and prune unknown ones: nothing the
    settings add is refused or pruned (the Framework CRD keeps its pods as they are: the API server checks
    them when FrameworkController creates them)."""
    settings = copy.deepcopy(SETTINGS)
    settings["role"] = {"tolerations": [{"key": "gpu", "operator": "Exists"}], "env": {"ROLE_ONLY": "1"}}
    config = _kubeflow(**settings)
    svc = _offline(KubeflowTrainingService(config, experiment_id="ExpCrd"), tmp_path)
    body = _build(svc)
    _assert_valid(_schema("tfjobs"), body)
    template = body["spec"]["tfReplicaSpecs"]["Worker"]["template"]
    assert template["spec"]["priorityClassName"] == "research-low"
    assert template["metadata"]["annotations"]["example.com/owner"] == "alice"
    assert ps.ANNOTATION_PARAMETERS in body["metadata"]["annotations"]
    pytorch = _kubeflow(**{**copy.deepcopy(SETTINGS), "operator": "pytorch-operator"})
    body = _build(_offline(KubeflowTrainingService(pytorch, experiment_id="ExpCrd"), tmp_path))
    _assert_valid(_schema("pytorchjobs"), body)
    fc = FrameworkControllerConfig.model_validate(
        {"storage": STORAGE, "taskRoles": [{"name": "worker", **ROLE}], **copy.deepcopy(SETTINGS)}
    )
    body = _build(_offline(FrameworkControllerTrainingService(fc, experiment_id="ExpCrd"), tmp_path))
    _assert_valid(_schema("frameworks"), body)
    pod = body["spec"]["taskRoles"][0]["task"]["pod"]
    assert pod["spec"]["serviceAccountName"] == "trainer" and pod["metadata"]["labels"]["team"] == "vision"


def test_large_parameters_are_left_off_the_object(tmp_path: Path) -> None:
    svc = _offline(KubeflowTrainingService(_kubeflow(), experiment_id="ExpBig"), tmp_path)
    body = _build(svc, hyper_parameters=form({"blob": "x" * (ps.MAX_PARAMETERS_BYTES + 1)}).hyper_parameters)
    annotations = body["metadata"]["annotations"]
    assert ps.ANNOTATION_PARAMETERS not in annotations
    assert int(annotations[ps.ANNOTATION_PARAMETERS_OMITTED]) > ps.MAX_PARAMETERS_BYTES


def test_the_old_frameworkcontroller_key_still_works(tmp_path: Path) -> None:
    fc = FrameworkControllerConfig.model_validate(
        {"storage": STORAGE, "serviceAccountName": "frameworkcontroller", "taskRoles": [{"name": "worker", **ROLE}]}
    )
    body = _build(_offline(FrameworkControllerTrainingService(fc, experiment_id="ExpOld"), tmp_path))
    assert body["spec"]["taskRoles"][0]["task"]["pod"]["spec"]["serviceAccountName"] == "frameworkcontroller"


# ------------------------------------------------------------------ config errors name the key


def _error(**training_service: Any) -> str:
    ts = {
        "platform": "kubeflow",
        "operator": "tf-operator",
        "storage": STORAGE,
        "worker": dict(ROLE),
        **training_service,
    }
    data = {
        "searchSpace": {"x": {"_type": "choice", "_value": [1]}},
        "trialConcurrency": 1,
        "tuner": {"name": "Random"},
        "trainingService": ts,
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return str(info.value)


@pytest.mark.parametrize(
    ("settings", "where", "what"),
    [
        (
            {"tolerations": [{"key": "gpu", "effect": "NoScheduled"}]},
            "trainingService.tolerations[0].effect",
            "NoSchedule",
        ),
        (
            {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]},
            "trainingService.tolerations[0]",
            "no value",
        ),
        ({"tolerations": [{"effect": "NoSchedule"}]}, "trainingService.tolerations[0]", "operator: Exists"),
        ({"labels": {"version": 1}}, "trainingService.labels.version", "quote it"),
        ({"labels": {"bad key!": "x"}}, "trainingService.labels", "'bad key!' is not valid"),
        ({"labels": {"team": "not valid!"}}, "trainingService.labels", "team='not valid!'"),
        ({"labels": {"nni-ts.io/trial": "x"}}, "trainingService.labels", "nni-ts's own"),
        ({"annotations": {"note": 3}}, "trainingService.annotations.note", "quote it"),
        ({"nodeSelector": {"pool": True}}, "trainingService.nodeSelector.pool", "quote it"),
        ({"env": {"NNI_TS_KEEPER_HOME": "/x"}}, "trainingService.env", "the trial keeper's"),
        ({"env": {"N": 5}}, "trainingService.env", "env N"),
        ({"imagePullPolicy": "Sometimes"}, "trainingService.imagePullPolicy", "IfNotPresent"),
        ({"priorityClassName": "Low_Prio"}, "trainingService.priorityClassName", "DNS subdomain"),
        ({"affinity": {"nodeAfinity": {}}}, "trainingService.affinity", "nodeAfinity"),
        ({"volumes": [{"name": "nni-ts-storage", "emptyDir": {}}]}, "trainingService.volumes", "nni-ts's own volume"),
        ({"volumes": [{"name": "v"}]}, "trainingService.volumes", "exactly one source"),
        ({"volumeMounts": [{"name": "v", "mountPath": "/v"}]}, "trainingService", "not one of volumes"),
        (
            {
                "volumes": [{"name": "v", "emptyDir": {}}],
                "volumeMounts": [{"name": "v", "mountPath": "/nni-ts-storage"}],
            },
            "trainingService.volumeMounts[0].mountPath",
            "where nni-ts mounts",
        ),
        (
            {"podTemplatePatch": {"spec": {"containers": [{"command": ["python", "x.py"]}]}}},
            "trainingService.podTemplatePatch",
            "spec.containers[0].command",
        ),
        (
            {"podTemplatePatch": {"spec": {"containers": [{"env": [{"name": "NNI_TS_KEEPER_TOKEN", "value": "x"}]}]}}},
            "trainingService.podTemplatePatch",
            "spec.containers[0].env[0].name",
        ),
        (
            {"podTemplatePatch": {"spec": {"volumes": [{"name": "nni-ts-storage", "emptyDir": {}}]}}},
            "trainingService.podTemplatePatch",
            "spec.volumes[0].name",
        ),
        (
            {"podTemplatePatch": {"spec": {"restartPolicy": "Always"}}},
            "trainingService.podTemplatePatch",
            "spec.restartPolicy",
        ),
        ({"podTemplatePatch": {"containers": []}}, "trainingService.podTemplatePatch", "only metadata and spec"),
        ({"podTemplatePatch": {"metadata": {"name": "x"}}}, "trainingService.podTemplatePatch", "metadata.name"),
        ({"podTemplatePatch": ["spec"]}, "trainingService.podTemplatePatch", "expected a mapping"),
        (
            {"worker": {**ROLE, "tolerations": [{"key": "gpu", "effect": "NoExecut"}]}},
            "trainingService.worker.tolerations[0].effect",
            "NoExecute",
        ),
        (
            {"worker": {**ROLE, "volumeMounts": [{"name": "nope", "mountPath": "/nope"}]}},
            "trainingService",
            "worker.volumeMounts[0] mounts 'nope'",
        ),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(settings: dict[str, Any], where: str, what: str) -> None:
    message = _error(**settings)
    assert f"at {where}:" in message, message
    assert what in message, message
