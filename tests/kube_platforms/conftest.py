"""Fixtures for the Kubernetes platforms: a fake cluster (nni_ts.testing.k8s) with the real CRDs, an NFS
export mapped to a local directory, and factories for both platforms' services."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nni_ts.models import TrialJobStatus
from nni_ts.platforms.kubernetes.batchjob import KubernetesJobTrainingService
from nni_ts.platforms.kubernetes.frameworkcontroller import FrameworkControllerTrainingService
from nni_ts.platforms.kubernetes.kubeflow import KubeflowTrainingService
from nni_ts.platforms.kubernetes.trainjob import TrainJobTrainingService
from nni_ts.storage import open_store
from nni_ts.testing.k8s import FakeCluster, Node, trainer_crds

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = (REPO / ".." / "shared" / "crds").resolve()
NFS_SERVER = "10.0.0.1"
NFS_PATH = "/exports/nni"


#: Kubeflow Trainer v2.3.0's and JobSet v0.12.0's CRDs (``platform: trainjob``); large, so only clusters of
#: that platform load them (parsed once per session: ``load_yaml_documents`` caches).
TRAINER_CRDS = trainer_crds(CRD_DIR)
#: The ClusterTrainingRuntime the trainjob tests name: one trainer step ``node``, no retries (a trial is one
#: run: the Job's backoffLimit 0, its pods restartPolicy Never).
TRAINJOB_RUNTIME = "nni-ts-python"


def trainjob_runtime(name: str = TRAINJOB_RUNTIME, kind: str = "ClusterTrainingRuntime") -> dict[str, Any]:
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "labels": {"trainer.kubeflow.org/framework": "torch"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "template": {
                                "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                "spec": {
                                    "backoffLimit": 0,
                                    "template": {
                                        "spec": {
                                            "restartPolicy": "Never",
                                            "containers": [{"name": "node", "image": "python:3.11"}],
                                        }
                                    },
                                },
                            },
                        }
                    ]
                }
            },
        },
    }


def crd_files() -> list[Path]:
    if not CRD_DIR.is_dir():
        # tests/conftest.py turns this skip into a failure under CI=true (issue 13 #9).
        pytest.skip(
            f"the real training-operator and FrameworkController CRDs are missing: the Kubernetes platform "
            f"tests need them in {CRD_DIR} (../shared/crds beside the repository; see "
            "../shared/crds/PROVENANCE.md for where they come from)"
        )
    return sorted(CRD_DIR.glob("*.yaml"))


@pytest.fixture
def nfs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "nfs-export"
    d.mkdir()
    return d


@pytest.fixture
async def cluster(request: pytest.FixtureRequest, tmp_path: Path, nfs_dir: Path) -> AsyncIterator[FakeCluster]:
    trainer = "platform" in request.fixturenames and request.getfixturevalue("platform") == "trainjob"
    async with FakeCluster(
        tmp_path / "cluster",
        crd_files=crd_files() + (TRAINER_CRDS if trainer else []),
        nodes=[Node("node-1", cpu=256, memory="512Gi", gpus=2)],
        nfs_exports={(NFS_SERVER, NFS_PATH): nfs_dir},
    ) as c:
        if trainer:
            c.create(trainjob_runtime())
        yield c


def storage(nfs_dir: Path) -> dict[str, Any]:
    return {"storageType": "nfs", "server": NFS_SERVER, "path": NFS_PATH, "localMountPath": str(nfs_dir)}


def kubeflow_config(
    cluster: FakeCluster, nfs_dir: Path, code_dir: Path, command: str, **overrides: Any
) -> dict[str, Any]:
    role = {"replicas": 1, "command": command, "cpuNumber": 0.5, "memorySize": "512m", "dockerImage": "python:3.11"}
    role.update(overrides.pop("role", {}))
    config: dict[str, Any] = {
        "platform": "kubeflow",
        "operator": "tf-operator",
        "trialCodeDirectory": str(code_dir),
        "kubeconfig": str(cluster.kubeconfig),
        "storage": storage(nfs_dir),
        "worker": role,
        "cancelGracePeriod": 2,
        "keeperHeartbeat": 0.5,
    }
    config.update(overrides)
    return config


def fc_config(cluster: FakeCluster, nfs_dir: Path, code_dir: Path, command: str, **overrides: Any) -> dict[str, Any]:
    role = {
        "name": "worker",
        "taskNumber": 1,
        "command": command,
        "cpuNumber": 0.5,
        "memorySize": "512m",
        "dockerImage": "python:3.11",
        "frameworkAttemptCompletionPolicy": {"minFailedTaskCount": 1, "minSucceededTaskCount": 1},
    }
    role.update(overrides.pop("role", {}))
    config: dict[str, Any] = {
        "platform": "frameworkcontroller",
        "trialCodeDirectory": str(code_dir),
        "kubeconfig": str(cluster.kubeconfig),
        "storage": storage(nfs_dir),
        "taskRoles": [role, *overrides.pop("extra_roles", [])],
        "cancelGracePeriod": 2,
        "keeperHeartbeat": 0.5,
    }
    config.update(overrides)
    return config


def job_config(cluster: FakeCluster, nfs_dir: Path, code_dir: Path, command: str, **overrides: Any) -> dict[str, Any]:
    """``platform: kubernetes`` (a batch/v1 Job per trial). ``role={...}`` overrides go to the top level,
    as this platform has no roles."""
    config: dict[str, Any] = {
        "platform": "kubernetes",
        "trialCodeDirectory": str(code_dir),
        "kubeconfig": str(cluster.kubeconfig),
        "storage": storage(nfs_dir),
        "command": command,
        "cpuNumber": 0.5,
        "memorySize": "512m",
        "dockerImage": "python:3.11",
        "cancelGracePeriod": 2,
        "keeperHeartbeat": 0.5,
    }
    config.update(overrides.pop("role", {}))
    config.update(overrides)
    return config


def trainjob_config(
    cluster: FakeCluster, nfs_dir: Path, code_dir: Path, command: str, **overrides: Any
) -> dict[str, Any]:
    """``platform: trainjob``; ``role={...}`` takes the other platforms' role keys (dockerImage, replicas,
    cpuNumber, memorySize, gpuNumber, privateRegistryAuthPath, command) and maps them onto ``trainer``."""
    role = overrides.pop("role", {})
    trainer: dict[str, Any] = {
        "image": role.get("dockerImage", "python:3.11"),
        "numNodes": role.get("replicas", 1),
        "resourcesPerNode": {
            "cpuNumber": role.get("cpuNumber", 0.5),
            "memorySize": role.get("memorySize", "512m"),
            "gpuNumber": role.get("gpuNumber", 0),
        },
    }
    if "privateRegistryAuthPath" in role:
        trainer["privateRegistryAuthPath"] = role["privateRegistryAuthPath"]
    trainer.update(overrides.pop("trainer", {}))
    config: dict[str, Any] = {
        "platform": "trainjob",
        "trialCommand": role.get("command", command),
        "trialCodeDirectory": str(code_dir),
        "kubeconfig": str(cluster.kubeconfig),
        "storage": storage(nfs_dir),
        "runtimeRef": {"kind": "ClusterTrainingRuntime", "name": TRAINJOB_RUNTIME},
        "trainer": trainer,
        "cancelGracePeriod": 2,
        "keeperHeartbeat": 0.5,
    }
    config.update(overrides)
    return config


Factory = Callable[..., Any]

#: ``platform name -> (config builder, service class)`` for every Kubernetes platform. The builders take
#: ``(cluster, nfs_dir, code_dir, command, **overrides)``; a new platform adds its entry here.
PLATFORMS: dict[str, tuple[Callable[..., dict[str, Any]], type[Any]]] = {
    "kubeflow": (kubeflow_config, KubeflowTrainingService),
    "frameworkcontroller": (fc_config, FrameworkControllerTrainingService),
    "kubernetes": (job_config, KubernetesJobTrainingService),
    "trainjob": (trainjob_config, TrainJobTrainingService),
}
#: What the default ``platform`` fixture runs on (the suite's time grows with each entry). A module that
#: must hold on every Kubernetes platform overrides the fixture with ``params=ALL_PLATFORMS``.
DEFAULT_PLATFORMS = ["kubeflow", "frameworkcontroller"]
ALL_PLATFORMS = list(PLATFORMS)


def config_for(
    platform: str, cluster: FakeCluster, nfs_dir: Path, code_dir: Path, command: str, **overrides: Any
) -> dict[str, Any]:
    """The test configuration of ``platform`` (a key of PLATFORMS)."""
    return PLATFORMS[platform][0](cluster, nfs_dir, code_dir, command, **overrides)


@pytest.fixture(params=DEFAULT_PLATFORMS)
def platform(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_service(cluster: FakeCluster, nfs_dir: Path, tmp_path: Path, platform: str) -> Factory:
    """``make(code_dir, command, **config_overrides, service_kwargs={...})`` for the parametrized platform."""

    def make(code_dir: Path, command: str, **overrides: Any) -> Any:
        kwargs = overrides.pop("service_kwargs", {})
        kwargs.setdefault("experiment_dir", tmp_path / "exp")
        # One experiment per test: a second service of the same test (a restarted manager) re-attaches
        # to the first one's jobs, as a resumed experiment does.
        kwargs.setdefault("experiment_id", "K8s" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:8])
        builder, cls = PLATFORMS[platform]
        return cls(builder(cluster, nfs_dir, code_dir, command, **overrides), **kwargs)

    return make


@contextlib.contextmanager
def serve_fake_cluster(tmp_path: Path, nfs: Path, extra_crds: list[Path] | None = None) -> Iterator[Path]:
    """``python -m nni_ts.testing.k8s serve`` in another process, with ``127.0.0.1:<nfs>`` exported from
    ``nfs`` itself (this machine is the NFS server); yields its kubeconfig."""
    args = [sys.executable, "-m", "nni_ts.testing.k8s", "serve", "--port", "0", "--state-dir", str(tmp_path / "k8s")]
    args += ["--nfs", f"127.0.0.1:{nfs}={nfs}"]
    for crd in crd_files() + list(extra_crds or []):
        args += ["--crd", str(crd)]
    err = tmp_path / "serve.err"
    with err.open("w") as log:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "kubeconfig:" in line, (line, err.read_text())
            yield Path(line.rsplit("kubeconfig:", 1)[1].strip())
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


def kubectl(cluster: FakeCluster, *args: str) -> str:
    """The real kubectl against the fake cluster (bounded); its stdout, the test failing on an error."""
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.1 s (bounded) from a synchronous test driving the CLI."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running_with_metrics(exp: str) -> list[Any]:
    """The experiment's RUNNING trials with a job and at least one stored metric (read from the store)."""
    try:
        with open_store(readonly=True) as s:
            return [t for t in s.list_trials(exp, with_detail=True)
                    if t.status is TrialJobStatus.RUNNING and t.detail and t.detail.platform_data.get("job")
                    and s.metrics(exp, t.id)]  # fmt: skip
    except Exception:
        return []
