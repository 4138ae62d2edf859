"""The objects the platforms create, checked against the REAL CRDs (../shared/crds): TFJob, PyTorchJob and
Framework bodies; labels, ownerReferences, resources (nvidia.com/gpu), imagePullSecrets, the NFS volume,
the frameworkbarrier init container, and names within Kubernetes' and FrameworkController's rules."""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from nni_ts.models import TrialJobDetail
from nni_ts.platforms.kubernetes import names
from nni_ts.platforms.kubernetes.frameworkcontroller import BARRIER_IMAGE, FrameworkControllerTrainingService
from nni_ts.platforms.kubernetes.kubeflow import KubeflowTrainingService
from nni_ts.platforms.kubernetes.service import _Trial
from nni_ts.platforms.kubernetes.staging import LocalStager
from nni_ts.server import ClusterServer
from nni_ts.testing.conformance import form
from nni_ts.testing.k8s.schema import validate

from .conftest import crd_files

EXP = "Exp1Mixed"
TRIAL = "aB3dE"


@functools.cache
def _crd(plural: str) -> dict[str, Any]:
    for path in crd_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("spec", {}).get("names", {}).get("plural") == plural:
                return dict(doc)
    raise AssertionError(f"no CRD for {plural}")


def _schema(plural: str) -> dict[str, Any]:
    return dict(_crd(plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def _pod_template_schema() -> dict[str, Any]:
    spec = _schema("tfjobs")["properties"]["spec"]["properties"]["tfReplicaSpecs"]
    return dict(spec["additionalProperties"]["properties"]["template"])


@pytest.mark.slow
def test_the_schema_check_catches_mistakes() -> None:
    schema = _schema("tfjobs")
    bad = {"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": "x"},
           "spec": {"tfReplicaSpecs": {"Worker": {"replicas": "two", "template": {"spec": {"containers": [
               {"name": "c", "image": "i", "resourcez": {}}]}}}}}}  # fmt: skip
    causes, pruned = validate(schema, bad, prune=True)
    assert causes and pruned


def _assert_valid(schema: dict[str, Any], obj: dict[str, Any]) -> None:
    causes, pruned = validate(schema, copy.deepcopy(obj), prune=True)
    assert causes == [], causes
    assert pruned == [], f"fields unknown to the CRD: {pruned}"


def _offline(service: Any, tmp_path: Path, registry: dict[str, str] | None = None) -> Any:
    """A service with what building a manifest needs, and no cluster."""
    service.stager = LocalStager(service.experiment_id, tmp_path)
    service._server = ClusterServer("127.0.0.1", 0)
    service._advertised = "10.1.2.3"
    service.anchor = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": names.anchor_name(service.experiment_id), "uid": "0b5e-anchor-uid"},
    }
    service._registry_secrets = dict(registry or {})
    return service


def _build(service: Any, trial_id: str = TRIAL, **form_changes: Any) -> dict[str, Any]:
    f = form({"lr": 0.1}, sequence_id=3)
    for key, value in form_changes.items():
        setattr(f, key, value)
    detail = TrialJobDetail(id=trial_id, form=f, sequence_id=3)
    trial = _Trial(detail=detail, job=service._job_name(trial_id))
    body: dict[str, Any] = service._build_job(trial, service._keeper_spec(trial))
    return body


STORAGE = {"storageType": "nfs", "server": "10.0.0.1", "path": "/exports/nni", "localMountPath": "/mnt/nni"}


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_tfjob_with_worker_and_ps(tmp_path: Path) -> None:
    config = {
        "operator": "tf-operator",
        "storage": STORAGE,
        "namespace": "nni",
        "worker": {
            "replicas": 2,
            "command": "python3 train.py --x 'it''s'",
            "gpuNumber": 1,
            "cpuNumber": 2,
            "memorySize": "8g",
            "dockerImage": "msranni/nni:latest",
            "privateRegistryAuthPath": "/tmp/auth.json",
        },
        "ps": {"replicas": 1, "command": "python3 ps.py", "cpuNumber": 0.5, "memorySize": 1024, "dockerImage": "ps:1"},
    }
    svc = _offline(KubeflowTrainingService(config, experiment_id=EXP), tmp_path, {"/tmp/auth.json": "reg-secret"})
    body = _build(svc)
    _assert_valid(_schema("tfjobs"), body)
    meta = body["metadata"]
    assert meta["labels"]["nni-ts.io/experiment"] == EXP and meta["labels"]["nni-ts.io/trial"] == TRIAL
    assert meta["annotations"]["nni-ts.io/trial-id"] == TRIAL
    assert meta["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": names.anchor_name(EXP), "uid": "0b5e-anchor-uid",
         "blockOwnerDeletion": False}
    ]  # fmt: skip
    assert meta["namespace"] == "nni" and names.is_dns_label(meta["name"]) and len(meta["name"]) <= 40
    specs = body["spec"]["tfReplicaSpecs"]
    assert set(specs) == {"Worker", "PS"}
    worker = specs["Worker"]
    assert worker["replicas"] == 2 and worker["restartPolicy"] == "Never"
    pod = worker["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "reg-secret"}]
    assert pod["volumes"] == [{"name": "nni-ts-storage", "nfs": {"server": "10.0.0.1", "path": "/exports/nni"}}]
    c = pod["containers"][0]
    assert c["name"] == "tensorflow" and c["image"] == "msranni/nni:latest"
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "8192Mi", "nvidia.com/gpu": "1"}
    assert c["resources"]["requests"] == c["resources"]["limits"]
    assert c["volumeMounts"] == [{"name": "nni-ts-storage", "mountPath": "/nni-ts-storage"}]
    env = _env(c)
    assert env["NNI_TS_KEEPER_COMMAND"] == "python3 train.py --x 'it''s'"
    assert env["NNI_TS_KEEPER_TRIAL_DIR"] == f"/nni-ts-storage/nni-ts/{EXP}/trials/{TRIAL}"
    assert env["NNI_TS_KEEPER_CODE_DIR"] == f"/nni-ts-storage/nni-ts/{EXP}/code"
    assert env["NNI_TS_KEEPER_SERVER_URL"] == "http://10.1.2.3:0"
    # The token is only referenced (issue 13 #6): reading the job does not give it away.
    assert "NNI_TS_KEEPER_TOKEN" not in env and svc.server.token_for(TRIAL) not in json.dumps(body)
    assert {
        "name": "NNI_TS_KEEPER_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": svc._token_secret_name(), "key": f"trial-{TRIAL}"}},
    } in c["env"]
    assert env["NNI_TS_KEEPER_PLATFORM"] == "kubeflow"
    assert "CUDA_VISIBLE_DEVICES" not in env  # the device plugin decides
    assert "*-worker-0) true" in c["command"][2]
    assert {"name": "NNI_TS_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    ps = specs["PS"]["template"]["spec"]["containers"][0]
    assert ps["resources"]["limits"] == {"cpu": "500m", "memory": "1024Mi"}
    assert _env(ps)["CUDA_VISIBLE_DEVICES"] == ""
    assert "if ! { false; }; then" in ps["command"][2]  # a parameter server never reports
    assert "imagePullSecrets" not in specs["PS"]["template"]["spec"]
    assert body["spec"]["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 0}


@pytest.mark.slow
def test_pytorchjob_master_reports(tmp_path: Path) -> None:
    role = {"replicas": 1, "command": "python3 main.py", "memorySize": "2g", "dockerImage": "pytorch:2"}
    config = {"operator": "pytorch-operator", "storage": STORAGE, "master": role, "worker": dict(role, replicas=3)}
    svc = _offline(KubeflowTrainingService(config, experiment_id=EXP), tmp_path)
    body = _build(svc, command="python3 other.py", gpu_number=2)
    _assert_valid(_schema("pytorchjobs"), body)
    specs = body["spec"]["pytorchReplicaSpecs"]
    assert list(specs) == ["Master", "Worker"]
    master = specs["Master"]["template"]["spec"]["containers"][0]
    assert master["name"] == "pytorch"
    assert _env(master)["NNI_TS_KEEPER_COMMAND"] == "python3 other.py"  # the form overrides the primary role
    assert master["resources"]["limits"]["nvidia.com/gpu"] == "2"
    worker = specs["Worker"]["template"]["spec"]["containers"][0]
    assert _env(worker)["NNI_TS_KEEPER_COMMAND"] == "python3 main.py"
    assert svc._primary_pod("job") == "job-master-0"


def test_framework_single_and_multi_role(tmp_path: Path) -> None:
    worker = {
        "name": "worker",
        "taskNumber": 2,
        "command": "python3 mnist.py",
        "gpuNumber": 1,
        "cpuNumber": 1,
        "memorySize": 8192,
        "dockerImage": "msranni/nni:latest",
        "frameworkAttemptCompletionPolicy": {"minFailedTaskCount": 1, "minSucceededTaskCount": 1},
    }
    config = {"storage": STORAGE, "serviceAccountName": "frameworkcontroller", "taskRoles": [worker]}
    svc = _offline(FrameworkControllerTrainingService(config, experiment_id=EXP), tmp_path)
    body = _build(svc)
    _assert_valid(_schema("frameworks"), body)
    assert names.is_framework_name(body["metadata"]["name"])
    role = body["spec"]["taskRoles"][0]
    assert role["taskNumber"] == 2
    assert role["frameworkAttemptCompletionPolicy"] == {"minFailedTaskCount": 1, "minSucceededTaskCount": 1}
    assert role["task"]["retryPolicy"] == {"fancyRetryPolicy": False, "maxRetryCount": 0}
    pod = role["task"]["pod"]
    _assert_valid(_pod_template_schema(), pod)
    assert "initContainers" not in pod["spec"]  # one role: no barrier needed
    assert pod["spec"]["serviceAccountName"] == "frameworkcontroller"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert body["spec"]["executionType"] == "Start"

    ps = dict(worker, name="ps", taskNumber=1, gpuNumber=0, command="python3 ps.py")
    multi = _offline(
        FrameworkControllerTrainingService(dict(config, taskRoles=[worker, ps]), experiment_id=EXP), tmp_path
    )
    body = _build(multi)
    _assert_valid(_schema("frameworks"), body)
    for role in body["spec"]["taskRoles"]:
        pod = role["task"]["pod"]
        _assert_valid(_pod_template_schema(), pod)
        (barrier,) = pod["spec"]["initContainers"]
        assert barrier["image"] == BARRIER_IMAGE
        assert {"name": "frameworkbarrier-volume", "emptyDir": {}} in pod["spec"]["volumes"]
        mounts = pod["spec"]["containers"][0]["volumeMounts"]
        assert {"name": "frameworkbarrier-volume", "mountPath": "/mnt/frameworkbarrier"} in mounts
        assert "injector.sh" in pod["spec"]["containers"][0]["command"][2]
    primary, other = (r["task"]["pod"]["spec"]["containers"][0]["command"][2] for r in body["spec"]["taskRoles"])
    assert '"${FC_TASKROLE_NAME:-}" = "worker"' in primary and "if ! { false; }; then" in other


def test_hyperparameters_as_arguments_and_prepare_command(tmp_path: Path) -> None:
    config = {
        "operator": "tf-operator",
        "storage": STORAGE,
        "worker": {"command": "python3 t.py", "memorySize": 512, "dockerImage": "python:3.11"},
        "hyperparametersAsArgs": True,
        "trialPrepareCommand": "source venv/bin/activate",
    }
    svc = _offline(KubeflowTrainingService(config, experiment_id=EXP), tmp_path)
    env = _env(_build(svc)["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0])
    assert env["NNI_TS_KEEPER_COMMAND"] == "source venv/bin/activate\npython3 t.py --lr=0.1"


# ---------------------------------------------------------------------- names

_DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@settings(max_examples=300, deadline=None)
@given(
    exp=st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]) | st.sampled_from("-_."), min_size=1,
                max_size=40),
    trial=st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]) | st.sampled_from("-_."), min_size=1,
                  max_size=128),
)  # fmt: skip
@pytest.mark.slow
def test_names_always_valid(exp: str, trial: str) -> None:
    job = names.job_name(exp, trial)
    assert _DNS.match(job) and len(job) <= 40
    assert len(f"{job}-worker-99") <= 63
    fw = names.framework_name(exp, trial)
    assert re.match(r"^[a-z0-9]{1,63}$", fw) and len(fw) <= 40
    tj = names.trainjob_name(exp, trial)  # the TrainJob CRD's rule: RFC 1035, starting with a letter
    assert re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", tj) and len(tj) <= names.TRAINJOB_NAME_MAX
    assert len(f"{tj}-node-0-0") <= 63  # its JobSet's Job and pod host names
    assert names.is_label_value(names.label_value(trial))
    assert names.is_dns_label(names.anchor_name(exp))
    assert names.is_dns_label(names.secret_name(exp, "registry", "/some/path"))


def test_names_do_not_collide_on_case() -> None:
    assert names.job_name("Exp", "aB1cD") != names.job_name("Exp", "Ab1Cd")
    assert names.framework_name("Exp", "aB1cD") != names.framework_name("Exp", "Ab1Cd")
    assert names.trainjob_name("Exp", "aB1cD") != names.trainjob_name("Exp", "Ab1Cd")
    assert names.trainjob_name("1st", "2nd").startswith("nni-1st-2nd-")  # a digit never comes first
    assert names.label_value("aB1cD") == "aB1cD"  # valid label values are kept exactly
    assert names.label_value("x" * 80) != names.label_value("x" * 81)


@pytest.mark.parametrize("bad", ["Default", "-ns", "a" * 64, "ns_1"])
def test_namespace_must_be_a_dns_label(bad: str) -> None:
    from nni_ts.errors import ConfigError

    with pytest.raises(ConfigError, match="DNS label"):
        worker = {"command": "x", "memorySize": 1, "dockerImage": "python:3.11"}
        KubeflowTrainingService({"operator": "tf-operator", "storage": STORAGE, "namespace": bad, "worker": worker})


# ---------------------------------------------------------------------- Azure file shares

AZURE = {
    "storageType": "azureStorage",
    "azureAccount": "acct",
    "azureShare": "share1",
    "keyVaultName": "vault",
    "keyVaultKey": "storage-key",
}


def test_azure_file_share_volume(tmp_path: Path) -> None:
    config = {
        "operator": "tf-operator",
        "storage": AZURE,
        "worker": {"command": "python3 t.py", "memorySize": 512, "dockerImage": "python:3.11"},
    }
    svc = _offline(KubeflowTrainingService(config, experiment_id=EXP), tmp_path)
    body = _build(svc)
    _assert_valid(_schema("tfjobs"), body)
    (volume,) = body["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"]
    assert volume == {
        "name": "nni-ts-storage",
        "azureFile": {"secretName": svc._azure_secret_name(), "shareName": "share1", "readOnly": False},
    }


def test_azure_key_goes_into_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from nni_ts.platforms.kubernetes import azure

    monkeypatch.setenv("NNI_TS_AZURE_STORAGE_KEY", "c2VjcmV0")
    storage = KubeflowTrainingService.config_class.model_validate(
        {
            "operator": "tf-operator",
            "storage": AZURE,
            "worker": {"command": "x", "memorySize": 1, "dockerImage": "python:3.11"},
        }
    ).storage
    stager = azure.AzureStager(EXP, storage)
    stager._share = object()  # the SDK's client is not needed to build the Secret
    stager._key = azure.storage_key("vault", "storage-key")
    secret = stager.secret("s", "default", {"kind": "ConfigMap", "name": "a", "uid": "u", "apiVersion": "v1"})
    import base64

    assert base64.b64decode(secret["data"]["azurestorageaccountkey"]) == b"c2VjcmV0"
    assert base64.b64decode(secret["data"]["azurestorageaccountname"]) == b"acct"


def test_azure_without_its_sdk_or_cli_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    from nni_ts.errors import ConfigError
    from nni_ts.platforms.kubernetes import azure

    monkeypatch.setitem(sys.modules, "azure.storage.fileshare", None)
    storage = KubeflowTrainingService.config_class.model_validate(
        {
            "operator": "tf-operator",
            "storage": AZURE,
            "worker": {"command": "x", "memorySize": 1, "dockerImage": "python:3.11"},
        }
    ).storage
    with pytest.raises(ConfigError, match=r"nni-ts\[azure\]"):
        azure.AzureStager(EXP, storage)._client()
    monkeypatch.delenv("NNI_TS_AZURE_STORAGE_KEY", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="Azure CLI"):
        azure.storage_key("vault", "key")
