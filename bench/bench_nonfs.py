"""What running without shared storage costs: ``storage: {storageType: none}`` against NFS, in the same run.

The kubeflow platform runs the same trials on the fake cluster (real pods, real keepers) twice: with the
NFS export (the baseline: code, keeper and parameter.cfg staged on the share) and with no shared storage
(each pod fetches them from the cluster server). Measured: the time from submit to the trial's first metric
(which includes the pod's bootstrap), p50 and p99; Kubernetes API requests per trial; bytes the cluster
server sent per trial.

    python bench/bench_nonfs.py [--trials 20] [--code-kib 256]

The last line holds the figures and the ratios to the NFS baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nni_ts.platforms.kubernetes.kubeflow import KubeflowTrainingService  # noqa: E402
from nni_ts.testing.conformance import form, wait_for_status  # noqa: E402
from nni_ts.testing.k8s import FakeCluster, Node  # noqa: E402

NFS_SERVER, NFS_PATH = "10.0.0.1", "/exports/nni"
CRDS = sorted((Path(__file__).resolve().parents[2] / "shared" / "crds").glob("kubeflow.org_*.yaml"))
TRIAL = (
    "import nni\np = nni.get_next_parameter()\n"
    "for i in range(int(p.get('records', 1))):\n    nni.report_intermediate_result(i)\n"
    "nni.report_final_result(1.0)\n"
)


def _config(kubeconfig: Path, nfs: Path, code: Path, storage: str, report_timeout: float = 60) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "platform": "kubeflow",
        "operator": "tf-operator",
        "trialCodeDirectory": str(code),
        "kubeconfig": str(kubeconfig),
        "worker": {
            "replicas": 1,
            "command": "python3 trial.py",
            "cpuNumber": 0.1,
            "memorySize": "256m",
            "dockerImage": "python:3.11",
        },  # fmt: skip
        "cancelGracePeriod": 2,
        "reportTimeout": report_timeout,
    }
    if storage == "nfs":
        cfg["storage"] = {"storageType": "nfs", "server": NFS_SERVER, "path": NFS_PATH, "localMountPath": str(nfs)}
    else:
        cfg["storage"] = {"storageType": "none"}
    return cfg


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def _run(
    cluster: FakeCluster, base: Path, nfs: Path, code: Path, storage: str, trials: int, experiment: str
) -> dict[str, float]:
    svc = KubeflowTrainingService(
        _config(cluster.kubeconfig, nfs, code, storage),
        experiment_id=experiment,
        experiment_dir=base / experiment,
    )
    first: dict[str, float] = {}
    svc.add_trial_job_metric_listener(lambda m: first.setdefault(m.trial_job_id, time.monotonic()))
    served = 0
    async with svc:
        if storage == "none":
            stager: Any = svc.stager
            original = stager.trial_download

            async def counting(trial_id: str, name: str) -> bytes | None:
                nonlocal served
                data = await original(trial_id, name)
                served += len(data or b"")
                return data

            stager.trial_download = counting
        before = svc.request_count()
        start: dict[str, float] = {}
        details = []
        for i in range(trials):
            t = time.monotonic()
            d = await svc.submit_trial_job(form({"records": 1}, i))
            start[d.id] = t
            details.append(d)
        for d in details:
            await wait_for_status(svc, d.id, timeout=300)
        requests = svc.request_count() - before
    latency = [first[d.id] - start[d.id] for d in details if d.id in first]
    return {
        "p50_ms": 1000 * statistics.median(latency),
        "p99_ms": 1000 * _pct(latency, 0.99),
        "requests_per_trial": requests / trials,
        "served_kib_per_trial": served / 1024 / trials,
    }


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-nonfs-") as tmp:
        base = Path(tmp)
        nfs = base / "nfs"
        nfs.mkdir()
        code = base / "code"
        code.mkdir()
        (code / "trial.py").write_text(TRIAL)
        (code / "data.bin").write_bytes(os.urandom(args.code_kib * 1024))  # incompressible code payload
        async with FakeCluster(
            base / "cluster",
            crd_files=CRDS,
            nodes=[Node("node-1", cpu=256, memory="512Gi")],
            nfs_exports={(NFS_SERVER, NFS_PATH): nfs},
        ) as cluster:
            nfs_fig = await _run(cluster, base, nfs, code, "nfs", args.trials, "benchnfs")
            none_fig = await _run(cluster, base, nfs, code, "none", args.trials, "benchnone")
    print(json.dumps({"nfs": nfs_fig, "none": none_fig}, indent=1))
    print(
        f"none vs nfs ({args.trials} trials, {args.code_kib} KiB code): submit->first metric p50 "
        f"{none_fig['p50_ms']:.0f} ms vs {nfs_fig['p50_ms']:.0f} ms (x{none_fig['p50_ms'] / nfs_fig['p50_ms']:.2f}), "
        f"p99 {none_fig['p99_ms']:.0f} ms vs {nfs_fig['p99_ms']:.0f} ms; API requests/trial "
        f"{none_fig['requests_per_trial']:.2f} vs {nfs_fig['requests_per_trial']:.2f}; served "
        f"{none_fig['served_kib_per_trial']:.0f} KiB/trial"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--code-kib", type=int, default=256)
    asyncio.run(main(parser.parse_args()))
