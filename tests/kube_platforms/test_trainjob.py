"""``platform: trainjob`` on the fake cluster with the real Kubeflow Trainer v2.3.0 and JobSet v0.12.0 CRDs:
what the TrainJob looks like and how the trial's labels, storage and pod settings reach the pods (through
``runtimePatches``), node 0 as the only reporting keeper, a failed trainer, and the clear errors of a bad
setup (an unknown runtime, a name too long, a runtime without a trainer step, an older Trainer)."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from nni_ts.config.trainjob import TrainJobConfig
from nni_ts.errors import ConfigError
from nni_ts.models import TrialJobMetric, TrialJobStatus
from nni_ts.platforms.kubernetes.names import LABEL_TRIAL, label_value
from nni_ts.platforms.kubernetes.trainjob import (
    MANAGER,
    TrainJobTrainingService,
    patch_fields,
    translate_pod_template,
)
from nni_ts.testing.conformance import form, wait_for_status
from nni_ts.testing.k8s import FakeCluster, Node
from nni_ts.testing.k8s.cluster import load_yaml_documents

from .conftest import (
    NFS_PATH,
    NFS_SERVER,
    REPO,
    TRAINER_CRDS,
    TRAINJOB_RUNTIME,
    crd_files,
    trainjob_config,
    trainjob_runtime,
)

# The conftest's cluster loads the Trainer and JobSet CRDs, and creates the runtime, for platform trainjob.
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("platform")]

TRIAL = (
    "import json, os, nni\n"
    "p = nni.get_next_parameter()\n"
    "nni.report_intermediate_result(0.5)\n"
    "env = {k: os.environ.get(k) for k in ('PET_NNODES', 'JOB_COMPLETION_INDEX', 'EPOCHS')}\n"
    "nni.report_final_result({'default': 1.0, 'host': os.environ.get('HOSTNAME'), 'env': env})\n"
)


@pytest.fixture
def platform() -> str:
    return "trainjob"


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(TRIAL)
    (code / "fail.py").write_text("import sys\nprint('giving up')\nsys.exit(3)\n")
    return code


def _pod_settings(service: TrainJobTrainingService) -> None:
    """Stand in for the pod settings of the configuration (the base's pod_template fills them in from
    the config; here they are added to its result): what a runtime patch can carry must reach the pods."""
    base = service.pod_template

    def pod_template(trial: Any, spec: Any, *, role: str | None = None) -> Any:
        template = base(trial, spec, role=role)
        template["metadata"].setdefault("annotations", {})["example.com/team"] = "vision"
        template["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "node-1"}
        template["spec"]["tolerations"] = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
        template["spec"]["volumes"].append({"name": "scratch", "emptyDir": {}})
        template["spec"]["containers"][0]["volumeMounts"].append({"name": "scratch", "mountPath": "/scratch"})
        return template

    service.pod_template = pod_template  # type: ignore[method-assign]


async def test_a_two_node_trial_runs_as_a_trainjob_and_node_0_reports(
    cluster: FakeCluster, nfs_dir: Path, code_dir: Path, tmp_path: Path
) -> None:
    config = trainjob_config(
        cluster,
        nfs_dir,
        code_dir,
        "python3 trial.py",
        role={"replicas": 2},
        trainer={"env": {"EPOCHS": "3"}, "args": ["--lr", "0.1 x"]},
    )
    svc = TrainJobTrainingService(config, experiment_dir=tmp_path / "exp")
    _pod_settings(svc)
    metrics: list[TrialJobMetric] = []
    svc.add_trial_job_metric_listener(metrics.append)
    async with svc:
        detail = await svc.submit_trial_job(form({"x": 1}))
        done = await wait_for_status(svc, detail.id, timeout=60)
        assert done.status is TrialJobStatus.SUCCEEDED, done.message
        name = done.platform_data["job"]
        assert name.startswith("nni-") and len(name) <= 40
        # Node 0 alone reports (one intermediate and one final result); node 1 journals in its own directory.
        assert [json.loads(m.data)["type"] for m in metrics] == ["PERIODICAL", "FINAL"]
        final = json.loads(json.loads(metrics[1].data)["value"])
        assert final["env"] == {"PET_NNODES": "2", "JOB_COMPLETION_INDEX": "0", "EPOCHS": "3"}
        primary = cluster.get("pods", final["host"])
        assert primary is not None
        assert primary["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "0"
        replicas = nfs_dir / "nni-ts" / svc.experiment_id / "trials" / detail.id / "replicas"
        await cluster.wait_for(lambda c: any(replicas.glob("*/.nni-ts/exit")), timeout=30)
        [replica] = [p.parent.parent.name for p in replicas.glob("*/.nni-ts/exit")]
        other = cluster.get("pods", replica)
        assert other is not None and replica != final["host"]
        assert other["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "1"

        tj = cluster.get("trainjobs", name)
        assert tj is not None
        spec = tj["spec"]
        assert spec["runtimeRef"] == {
            "apiGroup": "trainer.kubeflow.org",
            "kind": "ClusterTrainingRuntime",
            "name": TRAINJOB_RUNTIME,
        }
        trainer = spec["trainer"]
        assert trainer["image"] == "python:3.11" and trainer["numNodes"] == 2
        assert trainer["command"][:2] == ["/bin/sh", "-c"]
        assert trainer["resourcesPerNode"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
        env = {e["name"]: e for e in trainer["env"]}
        assert env["EPOCHS"]["value"] == "3"
        assert "--lr '0.1 x'" in env["NNI_TS_KEEPER_COMMAND"]["value"]
        assert env["NNI_TS_KEEPER_TOKEN"]["valueFrom"]["secretKeyRef"]["key"]  # the token is not in the spec
        [patch] = spec["runtimePatches"]
        assert patch["manager"] == MANAGER
        # The trial's labels and annotations are on the TrainJob, which Trainer does not propagate...
        assert tj["metadata"]["labels"][LABEL_TRIAL] == label_value(detail.id)
        # ...so the runtime patch labels the JobSet, its Jobs and the pods, and carries the pod settings.
        jobset = cluster.get("jobsets", name)
        assert jobset is not None and jobset["metadata"]["labels"][LABEL_TRIAL] == label_value(detail.id)
        pods = cluster.list("pods", label_selector=f"jobset.sigs.k8s.io/jobset-name={name}")
        assert len(pods) == 2
        for pod in pods:
            assert pod["metadata"]["labels"][LABEL_TRIAL] == label_value(detail.id)
            assert pod["metadata"]["labels"]["nni-ts.io/role"] == "node"
            assert pod["metadata"]["annotations"]["example.com/team"] == "vision"
            assert pod["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "node-1"}
            assert pod["spec"]["tolerations"][0]["key"] == "gpu"
            assert {v["name"] for v in pod["spec"]["volumes"]} >= {"nni-ts-storage", "scratch"}
            [node] = [c for c in pod["spec"]["containers"] if c["name"] == "node"]
            assert {m["mountPath"] for m in node["volumeMounts"]} >= {"/scratch"}
            assert pod["spec"]["restartPolicy"] == "Never"  # the runtime's: a trial is one run
        assert "kueue.x-k8s.io/queue-name" not in jobset["metadata"]["labels"]


async def test_failures_reach_the_trial_with_trainers_reasons(
    cluster: FakeCluster, nfs_dir: Path, code_dir: Path, tmp_path: Path
) -> None:
    """Three ways a trial fails, one cluster: its trainer exits non-zero (Failed, FailedJobs), it runs past
    maxTrialDuration (the TrainJob's activeDeadlineSeconds: Failed, DeadlineExceeded), and a quota refuses
    its pods (the FailedCreate event of the Job ``<trainjob>-node-0``, not of the TrainJob, fails it in
    seconds, long before pendingTimeout). None of them is an infrastructure failure (which would re-run it)."""
    (code_dir / "slow.py").write_text("import time, nni\nnni.get_next_parameter()\ntime.sleep(60)\n")
    plain = trainjob_config(cluster, nfs_dir, code_dir, "python3 fail.py", pendingTimeout=300)
    timed = trainjob_config(cluster, nfs_dir, code_dir, "python3 slow.py", maxTrialDuration="1.5s")
    async with (
        TrainJobTrainingService(plain, experiment_dir=tmp_path / "exp1") as svc,
        TrainJobTrainingService(timed, experiment_dir=tmp_path / "exp2") as timed_svc,
    ):
        failing = await svc.submit_trial_job(form({}))
        slow = await timed_svc.submit_trial_job(form({}))
        failed = await wait_for_status(svc, failing.id, timeout=60)
        late = await wait_for_status(timed_svc, slow.id, timeout=60)
        tj = cluster.get("trainjobs", late.platform_data["job"])
        assert tj is not None and tj["spec"]["activeDeadlineSeconds"] == 2  # rounded up
        assert "activeDeadlineSeconds" not in (cluster.get("trainjobs", failed.platform_data["job"]) or {})["spec"]
        cluster.faults.pod_quota(0)
        refused = await svc.submit_trial_job(form({}))
        loop = asyncio.get_running_loop()
        start = loop.time()
        quota = await wait_for_status(svc, refused.id, timeout=30)
        assert loop.time() - start < 20
    assert failed.status is TrialJobStatus.FAILED and failed.exit_code == 3
    assert "exited with code 3" in (failed.message or "")
    assert f"The TrainJob {failed.platform_data['job']} failed (FailedJobs)" in (failed.message or ""), failed.message
    assert late.status is TrialJobStatus.FAILED, late.message
    assert "(DeadlineExceeded): TrainJob exceeded its active deadline" in (late.message or ""), late.message
    assert quota.status is TrialJobStatus.FAILED
    assert f"The TrainJob {quota.platform_data['job']} cannot create its pods" in (quota.message or "")
    assert "exceeded quota: compute-quota" in (quota.message or ""), quota.message
    assert not (failed.infrastructure_failure or late.infrastructure_failure or quota.infrastructure_failure)


def test_max_trial_duration_is_inherited_from_the_experiment(tmp_path: Path) -> None:
    from nni_ts.config.experiment import ExperimentConfig

    ts = {
        "platform": "trainjob",
        "storage": {"storageType": "nfs", "server": NFS_SERVER, "path": NFS_PATH},
        "runtimeRef": {"name": TRAINJOB_RUNTIME},
        "trainer": {"image": "python:3.11", "resourcesPerNode": {"memorySize": "1g"}},
    }
    experiment = ExperimentConfig.model_validate(
        {
            "searchSpace": {"x": {"_type": "choice", "_value": [1]}},
            "trialCommand": "python3 trial.py",
            "trialConcurrency": 1,
            "maxTrialDuration": "30m",
            "trainingService": ts,
        }
    )
    assert isinstance(experiment.training_service, TrainJobConfig)
    assert experiment.training_service.active_deadline_seconds == 1800
    assert experiment.training_service.trial_command == "python3 trial.py"


async def _start_error(config: dict[str, Any], tmp_path: Path) -> ConfigError:
    svc = TrainJobTrainingService(config, experiment_dir=tmp_path / "exp")
    with pytest.raises(ConfigError) as info:
        async with svc:
            pass
    return info.value


async def test_an_unknown_runtime_or_one_without_a_trainer_step_is_refused_at_start(
    cluster: FakeCluster, nfs_dir: Path, code_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = trainjob_config(cluster, nfs_dir, code_dir, "python3 trial.py")
    config["runtimeRef"] = {"kind": "TrainingRuntime", "name": TRAINJOB_RUNTIME}  # only a Cluster one exists
    err = await _start_error(config, tmp_path)
    assert err.path == "trainingService.runtimeRef.name"
    assert f"TrainingRuntime {TRAINJOB_RUNTIME!r} named by trainingService.runtimeRef does not exist" in str(err)
    assert "in namespace default" in str(err)
    # Once the namespace has a TrainingRuntime of that name, the TrainJobs may name it.
    namespaced = trainjob_runtime(kind="TrainingRuntime")
    namespaced["metadata"]["namespace"] = "default"
    cluster.create(namespaced)
    async with TrainJobTrainingService(config, experiment_dir=tmp_path / "exp-ns") as svc:
        assert svc.trainer_step == "node"  # read from the runtime; the dry run accepted the TrainJob
    assert "retries a failed trainer" not in caplog.text
    # Kubeflow's stock runtimes retry failed pods (Kubernetes' default backoffLimit 6): said at start.
    retrying = trainjob_runtime("retrying")
    del retrying["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["backoffLimit"]
    cluster.create(retrying)
    config["runtimeRef"] = {"name": "retrying"}
    async with TrainJobTrainingService(config, experiment_dir=tmp_path / "exp-retrying"):
        pass
    assert "The ClusterTrainingRuntime 'retrying' retries a failed trainer (backoffLimit 6, restartPolicy Never)" in (
        caplog.text
    )
    # A runtime whose trainer step is named so long that the Jobs' names would pass 63 characters.
    runtime = trainjob_runtime("long-step")
    runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["name"] = "a-very-long-replicated-job"
    cluster.create(runtime)
    config["runtimeRef"] = {"name": "long-step"}
    err = await _start_error(config, tmp_path)
    assert err.path == "trainingService.runtimeRef.name" and "'a-very-long-replicated-job'" in str(err)
    assert "over Kubernetes' 63" in str(err)
    # A runtime without the trainer step label: Trainer would not put the image and command anywhere.
    runtime = trainjob_runtime("no-trainer")
    del runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["metadata"]
    cluster.create(runtime)
    config["runtimeRef"] = {"name": "no-trainer"}
    err = await _start_error(config, tmp_path)
    assert err.path == "trainingService.runtimeRef.name" and "has no trainer step" in str(err)


def test_a_runtime_name_too_long_is_refused_naming_the_key(tmp_path: Path) -> None:
    base = {
        "storage": {"storageType": "nfs", "server": NFS_SERVER, "path": NFS_PATH},
        "trialCommand": "python3 trial.py",
        "trainer": {"image": "python:3.11", "resourcesPerNode": {"memorySize": "1g"}},
    }
    with pytest.raises(pydantic.ValidationError) as info:
        TrainJobConfig.model_validate({**base, "runtimeRef": {"name": "r" * 254}})
    [problem] = info.value.errors()
    assert problem["loc"] == ("runtimeRef", "name") and "(254 characters)" in problem["msg"]
    with pytest.raises(pydantic.ValidationError) as info:
        TrainJobConfig.model_validate({**base, "runtimeRef": {"name": "Torch_Distributed"}})
    assert info.value.errors()[0]["loc"] == ("runtimeRef", "name")
    ok = TrainJobConfig.model_validate({**base, "runtimeRef": {"name": "torch-distributed"}})
    assert ok.runtime_ref.kind == "ClusterTrainingRuntime"
    with pytest.raises(pydantic.ValidationError) as info:
        TrainJobConfig.model_validate({**base, "trialCommand": None, "runtimeRef": {"name": "torch-distributed"}})
    assert "needs the trial's command: set trialCommand" in str(info.value)


def _older_trainjob_crd(field: str) -> dict[str, Any]:
    """The real v2.3.0 TrainJob CRD turned into an older release's: the v2.2+ fields deleted, ``field``
    (v2.0's podSpecOverrides or v2.1's podTemplateOverrides) put back in their place."""
    [crd] = load_yaml_documents(TRAINER_CRDS[1])
    for version in crd["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        props = spec["properties"]
        props[field] = {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
        del props["runtimePatches"], props["activeDeadlineSeconds"]
        spec["x-kubernetes-validations"] = [
            r for r in spec.get("x-kubernetes-validations") or [] if "activeDeadlineSeconds" not in r["rule"]
        ]
    return crd


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_the_trainer_release_is_read_from_the_trainjob_schema() -> None:
    [crd] = load_yaml_documents(TRAINER_CRDS[1])
    pod, container = patch_fields(_schema(crd))  # v2.3.0
    assert {"nodeSelector", "tolerations", "volumes", "terminationGracePeriodSeconds"} <= pod
    assert "priorityClassName" not in pod and container == {"name", "env", "volumeMounts", "securityContext"}
    # v2.2's runtime patch had no terminationGracePeriodSeconds: the runtime's grace period then holds.
    v22 = _schema(crd)
    path = ["spec", "runtimePatches", "[]", "trainingRuntimeSpec", "template", "spec", "replicatedJobs", "[]"]
    node: Any = v22
    for step in [*path, "template", "spec", "template", "spec"]:
        node = node["items"] if step == "[]" else node["properties"][step]
    del node["properties"]["terminationGracePeriodSeconds"]
    pod22, _ = patch_fields(v22)
    assert pod22 == pod - {"terminationGracePeriodSeconds"}
    for field, release in (("podSpecOverrides", "v2.0"), ("podTemplateOverrides", "v2.1")):
        with pytest.raises(ConfigError) as info:
            patch_fields(_schema(_older_trainjob_crd(field)))
        assert info.value.path == "trainingService.platform"
        assert f"has spec.{field} (Kubeflow Trainer {release}) and no spec.runtimePatches" in str(info.value)
        assert "needs Kubeflow Trainer v2.2 or later" in str(info.value)


async def test_an_older_trainer_is_refused_at_start_naming_the_field(
    nfs_dir: Path, code_dir: Path, tmp_path: Path
) -> None:
    """Trainer v2.1's CRD, as the cluster serves it (its OpenAPI document): the error names the field."""
    old_crd = tmp_path / "trainjobs-v2.1.json"  # JSON is YAML, and quick to write and parse
    old_crd.write_text(json.dumps(_older_trainjob_crd("podTemplateOverrides")))
    async with FakeCluster(
        tmp_path / "old",
        crd_files=[*crd_files(), TRAINER_CRDS[0], old_crd, *TRAINER_CRDS[2:]],
        nodes=[Node("node-1", cpu=8, memory="16Gi")],
        nfs_exports={(NFS_SERVER, NFS_PATH): nfs_dir},
    ) as old:
        old.create(trainjob_runtime())
        err = await _start_error(trainjob_config(old, nfs_dir, code_dir, "python3 trial.py"), tmp_path)
    assert err.path == "trainingService.platform"
    assert "has spec.podTemplateOverrides (Kubeflow Trainer v2.1) and no spec.runtimePatches" in str(err)


# ---------------------------------------------------------------------- the pod template's translation

TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"nni-ts.io/trial": "t1"}, "annotations": {"a": "b"}},
    "spec": {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 7,
        "serviceAccountName": "trials",
        "nodeSelector": {"pool": "gpu"},
        "affinity": {"nodeAffinity": {}},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "imagePullSecrets": [{"name": "registry"}],
        "volumes": [{"name": "nni-ts-storage", "nfs": {"server": "s", "path": "/p"}}],
        "containers": [
            {
                "name": "node",
                "image": "python:3.11",
                "command": ["/bin/sh", "-c", "x"],
                "env": [{"name": "A", "value": "1"}],
                "resources": {"limits": {"cpu": "1"}},
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [{"name": "nni-ts-storage", "mountPath": "/mnt/nni-ts"}],
            }
        ],
    },
}


def test_the_pod_template_splits_into_trainer_fields_and_one_runtime_patch() -> None:
    trainer, patch = translate_pod_template(copy.deepcopy(TEMPLATE), step="node", labels={"l": "v"})
    assert trainer == {
        "image": "python:3.11",
        "command": ["/bin/sh", "-c", "x"],
        "env": [{"name": "A", "value": "1"}],
        "resourcesPerNode": {"limits": {"cpu": "1"}},
    }
    template = patch["trainingRuntimeSpec"]["template"]
    assert template["metadata"] == {"labels": {"l": "v"}}
    [rjob] = template["spec"]["replicatedJobs"]
    assert rjob["name"] == "node" and rjob["template"]["metadata"] == {"labels": {"l": "v"}}
    pod = rjob["template"]["spec"]["template"]
    assert pod["metadata"] == TEMPLATE["metadata"]
    assert pod["spec"] == {
        "terminationGracePeriodSeconds": 7,
        "serviceAccountName": "trials",
        "nodeSelector": {"pool": "gpu"},
        "affinity": {"nodeAffinity": {}},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "imagePullSecrets": [{"name": "registry"}],
        "volumes": TEMPLATE["spec"]["volumes"],
        # env never goes into the patch: Trainer refuses env for the node container there.
        "containers": [{"name": "node", "volumeMounts": [{"name": "nni-ts-storage", "mountPath": "/mnt/nni-ts"}]}],
    }
    # Trainer v2.2's patch has no terminationGracePeriodSeconds: the runtime's then holds.
    v22 = frozenset(set(pod["spec"]) - {"terminationGracePeriodSeconds"})
    _, patch = translate_pod_template(copy.deepcopy(TEMPLATE), step="node", pod_fields=v22)
    pod_spec = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert "terminationGracePeriodSeconds" not in pod_spec["spec"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda t: t["spec"].update(priorityClassName="high"), "priorityClassName"),
        (lambda t: t["spec"]["containers"][0].update(imagePullPolicy="Always"), "the container's imagePullPolicy"),
        (lambda t: t["spec"]["containers"].append({"name": "sidecar"}), "containers ['sidecar']"),
        (lambda t: t["spec"].update(initContainers=[{"name": "init"}]), "initContainers"),
    ],
)
def test_a_pod_setting_a_runtime_patch_cannot_carry_is_named(change: Any, needle: str) -> None:
    template = copy.deepcopy(TEMPLATE)
    change(template)
    with pytest.raises(ConfigError) as info:
        translate_pod_template(template, step="node")
    assert f"the pod setting {needle} cannot be expressed on a TrainJob" in str(info.value)
    assert "Set it in the training runtime's template instead." in str(info.value)


def test_the_cli_and_the_service_find_the_platform() -> None:
    """``nni-ts create``/``resume`` load the platform from the config, ``nni-ts serve --platform trainjob``
    checks available_platforms(): both find trainjob, even where the installed package metadata predates it."""
    from nni_ts.config.experiment import platform_config_class
    from nni_ts.config.loader import load_experiment_config
    from nni_ts.registry import available_platforms, get_platform_class

    assert "trainjob" in available_platforms()
    assert get_platform_class("trainjob") is TrainJobTrainingService
    assert platform_config_class("trainjob") is TrainJobConfig
    config = load_experiment_config(REPO / "examples" / "trainjob" / "config.yml")
    ts = config.training_service
    assert isinstance(ts, TrainJobConfig)
    assert ts.trial_command == "python3 trial.py" and ts.runtime_ref.name == "nni-ts-python"
    assert ts.trainer.resources_per_node.memory_size == 1024
