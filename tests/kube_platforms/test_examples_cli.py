"""Done means: ``nni-ts create -c examples/<platform>/config.yml``, pointed by KUBECONFIG at the fake
cluster served by ``python -m nni_ts.testing.k8s serve``, completes its experiment, and kubectl shows the
jobs while they run. Everything runs as subprocesses, bounded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO, TRAINER_CRDS, serve_fake_cluster

pytestmark = pytest.mark.slow  # seconds per test: scripts/test --fast leaves it out

NFS = Path("/tmp/nni-ts-nfs")  # the examples' NFS export: this machine stands in for the NFS server


@pytest.fixture
def served_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    NFS.mkdir(parents=True, exist_ok=True)
    callspec = getattr(request.node, "callspec", None)
    trainer = callspec is not None and callspec.params.get("example") == "trainjob"
    with serve_fake_cluster(tmp_path, NFS, extra_crds=TRAINER_CRDS if trainer else None) as kubeconfig:
        yield kubeconfig


@pytest.mark.parametrize(
    ("example", "plural"),
    [
        ("kubeflow", "tfjobs"),
        ("frameworkcontroller", "frameworks"),
        ("trainjob", "trainjobs"),
        ("kubernetes-job", "jobs"),
    ],
)
def test_example_runs_on_the_served_fake_cluster(served_cluster: Path, example: str, plural: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian: kubernetes-client)")
    env = dict(os.environ, KUBECONFIG=str(served_cluster))
    runtime = REPO / "examples" / example / "runtime.yaml"
    if runtime.exists():  # the example's training runtime, applied as its README says
        applied = subprocess.run(
            [kubectl, "apply", "-f", str(runtime)], env=env, capture_output=True, text=True, timeout=30
        )
        assert applied.returncode == 0, applied.stderr
    before = set(NFS.joinpath("nni-ts").glob("*")) if NFS.joinpath("nni-ts").exists() else set()
    create = subprocess.Popen(
        ["nni-ts", "create", "-c", str(REPO / "examples" / example / "config.yml"), "--quiet", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not seen and create.poll() is None and time.monotonic() < deadline:
            out = subprocess.run(
                [kubectl, "get", plural, "-l", "app.kubernetes.io/managed-by=nni-ts", "-o", "json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == 0, out.stderr
            seen = [item["metadata"]["name"] for item in json.loads(out.stdout)["items"]]
        table = subprocess.run([kubectl, "get", plural], env=env, capture_output=True, text=True, timeout=30)
        stdout, stderr = create.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if create.poll() is None:
            create.kill()
            create.wait()
        for path in set(NFS.joinpath("nni-ts").glob("*")) - before:
            shutil.rmtree(path, ignore_errors=True)
    assert create.returncode == 0, (stdout, stderr)
    assert seen, f"kubectl never showed a {plural} of the experiment while it ran"
    assert table.returncode == 0
    result = json.loads(stdout)
    assert result["status"] == "DONE" and result["trials"] == 6, result
    assert result["best"]["status"] == "SUCCEEDED", result["best"]


@pytest.mark.parametrize("example", ["kubeflow", "frameworkcontroller", "trainjob", "kubernetes-job"])
def test_example_would_run_on_a_real_cluster(example: str) -> None:
    """Issue 13 #8: the trial imports only what its image has (python:3.11-slim: the standard library; nni
    is the keeper's light module), and the pods do not run as the controller's service account."""
    import ast
    import sys

    import yaml

    config = yaml.safe_load((REPO / "examples" / example / "config.yml").read_text())
    ts = config["trainingService"]
    code = (REPO / "examples" / example / config["trialCodeDirectory"]).resolve()
    tree = ast.parse((code / "trial.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - set(sys.stdlib_module_names) == {"nni"}
    if "trainer" in ts:
        roles = [{"dockerImage": ts["trainer"]["image"]}]
    else:
        roles = ts.get("taskRoles") or ([ts["worker"]] if "worker" in ts else [ts])
    assert all(r["dockerImage"] == "python:3.11-slim" for r in roles)
    assert ts.get("serviceAccountName") in (None, "nni-ts-trial")
