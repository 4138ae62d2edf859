"""Helpers for the fake cluster's tests (kubectl runner, object builders)."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nni_ts.testing.k8s import trainer_crds

REPO = Path(__file__).resolve().parents[2]
#: Kubeflow Trainer v2.3.0's and JobSet v0.12.0's CRDs (real, large: FakeCluster parses each file once per
#: session).
TRAINER_CRDS = trainer_crds((REPO / ".." / "shared" / "crds").resolve())


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Kubectl:
    """Runs the real kubectl against a cluster's kubeconfig, bounded in time."""

    def __init__(self, kubeconfig: Path, cache_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.cache_dir = cache_dir

    def argv(self, *args: str) -> list[str]:
        exe = shutil.which("kubectl")
        assert exe is not None
        return [exe, "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache_dir), *args]

    async def __call__(self, *args: str, timeout: float = 30.0, stdin: str | None = None) -> Result:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*args),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return Result(proc.returncode or 0, out.decode(), err.decode())


def tfjob(
    name: str,
    command: list[str],
    *,
    replicas: int = 1,
    restart: str = "Never",
    extra_spec: dict[str, Any] | None = None,
    image: str = "busybox:1.36",
) -> dict[str, Any]:
    """A TFJob with a single Worker role, as Kubeflow's documentation shows."""
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": name},
        "spec": {
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": replicas,
                    "restartPolicy": restart,
                    "template": {"spec": {"containers": [{"name": "tensorflow", "image": image, "command": command}]}},
                }
            },
            **(extra_spec or {}),
        },
    }


def condition(obj: dict[str, Any] | None, type_: str) -> bool:
    for c in (obj or {}).get("status", {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return True
    return False
