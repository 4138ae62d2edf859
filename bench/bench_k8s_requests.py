"""Kubernetes API requests per trial, and the manager's cost of tracking 500 concurrent trials.

Part 1 (``requests``): each platform (kubeflow, kubernetes, trainjob; and kubernetes and trainjob behind a
Kueue LocalQueue that admits a few trials at a time) runs trials of two durations on the fake cluster (real
pods, real keepers); every request the fake API server sees is counted, experiment-level ones (list, watch,
the anchor ConfigMap, the token Secret) included, and the time from submit to the trial being RUNNING (its
pod running, as the manager sees it) is measured, p50 and p99. Baseline, measured in the same run: NNI's
way, one GET per trial every 3 s while it runs (a poller does exactly that against the same server, for the
same trials; its GETs are not counted as ours).

Part 2 (``watch500``): 500 TFJobs at once, tracked by the manager's one job watch and one pod watch. The
fake cluster runs in another process with a stand-in operator (no pods: it marks the jobs Running, holds
them, writes each trial's journal on the shared export as a keeper that could not reach the manager would,
then marks them Succeeded). The manager's CPU time and resident memory are measured over the whole
run, against the same measures for NNI's way of tracking them (a GET per trial every 3 s) in this process.

    python bench/bench_k8s_requests.py [--trials 30] [--durations 1,6] [--platforms kubeflow,kubernetes+kueue]
                                       [--kueue-cpu 0.4] [--watch-trials 500] [--hold 20]

The last line holds the figures and the baselines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nni_ts.models import TrialJobStatus  # noqa: E402
from nni_ts.platforms.kubernetes.client import load_client  # noqa: E402
from nni_ts.platforms.kubernetes.kubeflow import KubeflowTrainingService  # noqa: E402
from nni_ts.registry import get_platform_class  # noqa: E402
from nni_ts.testing.conformance import form, wait_for_status  # noqa: E402
from nni_ts.testing.k8s import FakeCluster, Node, trainer_crds  # noqa: E402
from nni_ts.testing.k8s.cluster import CONTROLLERS  # noqa: E402

NFS_SERVER, NFS_PATH = "10.0.0.1", "/exports/nni"
TRIAL = "import nni, sys, time\np = nni.get_next_parameter()\nnni.report_intermediate_result(0.5)\n" \
        "time.sleep(float(p['seconds']))\nnni.report_final_result(1.0)\n"  # fmt: skip


def _config(kubeconfig: Path, nfs: Path, code: Path) -> dict[str, Any]:
    return {
        "platform": "kubeflow",
        "operator": "tf-operator",
        "trialCodeDirectory": str(code),
        "kubeconfig": str(kubeconfig),
        "storage": {"storageType": "nfs", "server": NFS_SERVER, "path": NFS_PATH, "localMountPath": str(nfs)},
        "worker": {
            "replicas": 1,
            "command": "python3 trial.py",
            "cpuNumber": 0.1,
            "memorySize": "256m",
            "dockerImage": "python:3.11",
        },  # fmt: skip
        "cancelGracePeriod": 2,
    }


CRD_DIR = Path(__file__).resolve().parents[2] / "shared" / "crds"
TRAINER_CRDS = trainer_crds(CRD_DIR)
KUEUE_CRDS = [CRD_DIR / "next" / "kueue.x-k8s.io_workloads.yaml", CRD_DIR / "next" / "kueue.x-k8s.io_localqueues.yaml"]
RUNTIME = "bench-python"


def _platform_config(platform: str, kubeconfig: Path, nfs: Path, code: Path, queue: str | None) -> dict[str, Any]:
    """The configuration of ``platform`` (kubeflow, kubernetes, trainjob), queued by Kueue when ``queue``."""
    common = {
        "trialCodeDirectory": str(code),
        "kubeconfig": str(kubeconfig),
        "storage": {"storageType": "nfs", "server": NFS_SERVER, "path": NFS_PATH, "localMountPath": str(nfs)},
        "cancelGracePeriod": 2,
    }
    if platform == "kubeflow":
        cfg = _config(kubeconfig, nfs, code)
    elif platform == "kubernetes":
        cfg = {"platform": "kubernetes", **common, "command": "python3 trial.py", "cpuNumber": 0.1,
               "memorySize": "256m", "dockerImage": "python:3.11"}  # fmt: skip
    else:
        cfg = {"platform": "trainjob", **common, "trialCommand": "python3 trial.py",
               "runtimeRef": {"kind": "ClusterTrainingRuntime", "name": RUNTIME},
               "trainer": {"image": "python:3.11",
                           "resourcesPerNode": {"cpuNumber": 0.1, "memorySize": "256m"}}}  # fmt: skip
    if queue is not None:
        cfg["queueName"] = queue
    return cfg


def _runtime() -> dict[str, Any]:
    job = {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
           "containers": [{"name": "node", "image": "python:3.11"}]}}}  # fmt: skip
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": RUNTIME, "labels": {"trainer.kubeflow.org/framework": "torch"}},
        "spec": {"mlPolicy": {"numNodes": 1, "torch": {}}, "template": {"spec": {"replicatedJobs": [
            {"name": "node", "template": {"metadata": {"labels": {
                "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}}, "spec": job}}]}}},
    }  # fmt: skip


def _queues(cpu: str) -> list[dict[str, Any]]:
    """A ClusterQueue admitting ``cpu`` CPUs of trials, and the LocalQueue ``bench`` in front of it."""
    k = "kueue.x-k8s.io/v1beta2"
    quota = [{"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": "1000Gi"},
             {"name": "nvidia.com/gpu", "nominalQuota": "0"}]  # fmt: skip
    return [
        {"apiVersion": k, "kind": "ResourceFlavor", "metadata": {"name": "default-flavor"}},
        {
            "apiVersion": k,
            "kind": "ClusterQueue",
            "metadata": {"name": "bench-cq"},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [{"name": "default-flavor", "resources": quota}],
                    }
                ],
            },
        },  # fmt: skip
        {
            "apiVersion": k,
            "kind": "LocalQueue",
            "metadata": {"name": "bench", "namespace": "default"},
            "spec": {"clusterQueue": "bench-cq"},
        },  # fmt: skip
    ]


def _finished(obj: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
    return any(conds.get(t) == "True" for t in ("Succeeded", "Complete", "Failed", "Completed"))


async def _nni_poller(kubeconfig: Path, path: str, stop: asyncio.Event, count: list[int]) -> None:
    """NNI's status tracking: GET the job every 3 s until it is finished (or the trial is over)."""
    client = await load_client(str(kubeconfig))
    try:
        while not stop.is_set():
            try:
                count[0] += 1
                if _finished(await client.request("GET", path)):
                    return
            except Exception:  # noqa: BLE001 - the job may be gone: NNI would keep polling until its end
                return
            try:
                await asyncio.wait_for(stop.wait(), 3.0)
            except TimeoutError:
                pass
    finally:
        await client.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def requests_per_trial(
    trials: int, seconds: float, concurrency: int, platform: str = "kubeflow", kueue_cpu: str | None = None
) -> dict[str, Any]:
    """One platform's run: requests per trial (ours, and NNI's polling baseline for the same trials), the
    requests by verb and resource, the time from submit to RUNNING (p50, p99) and the mean lifetime.
    With ``kueue_cpu``, the trials go through a Kueue LocalQueue whose ClusterQueue admits that many CPUs."""
    with tempfile.TemporaryDirectory(prefix="bench-k8s-") as tmp:
        root = Path(tmp)
        nfs, code = root / "nfs", root / "code"
        nfs.mkdir()
        code.mkdir()
        (code / "trial.py").write_text(TRIAL)
        crds = sorted(CRD_DIR.glob("*.yaml")) + (TRAINER_CRDS if platform == "trainjob" else [])
        crds += KUEUE_CRDS if kueue_cpu else []
        controllers = [*CONTROLLERS, "kueue"] if kueue_cpu else list(CONTROLLERS)
        async with FakeCluster(
            root / "cluster", crd_files=crds, controllers=controllers,
            nodes=[Node("n1", cpu=64, memory="256Gi")], nfs_exports={(NFS_SERVER, NFS_PATH): nfs},
        ) as cluster:  # fmt: skip
            if platform == "trainjob":
                cluster.create(_runtime())
            for obj in _queues(kueue_cpu) if kueue_cpu else []:
                cluster.create(obj)
            before = sum(cluster.request_counts.values())
            before_counts = dict(cluster.request_counts)
            cfg = _platform_config(platform, cluster.kubeconfig, nfs, code, "bench" if kueue_cpu else None)
            svc = get_platform_class(platform)(cfg, experiment_dir=root / "exp")
            lifetimes: list[float] = []
            to_running: list[float] = []
            submitted: dict[str, float] = {}
            running_at: dict[str, float] = {}
            polls = [0]
            pollers: list[asyncio.Task[None]] = []

            def on_status(d: Any) -> None:
                if d.status is TrialJobStatus.RUNNING and d.id not in running_at:
                    running_at[d.id] = time.monotonic()

            svc.events.on("trial_status", on_status)
            async with svc:
                sem = asyncio.Semaphore(concurrency)

                async def one(i: int) -> None:
                    async with sem:
                        start = time.monotonic()
                        d = await svc.submit_trial_job(form({"seconds": seconds}, i))
                        submitted[d.id] = start
                        stop = asyncio.Event()
                        path = f"{svc._collection()}/{d.platform_data['job']}"
                        pollers.append(asyncio.create_task(_nni_poller(cluster.kubeconfig, path, stop, polls)))
                        done = await wait_for_status(svc, d.id, timeout=600)
                        stop.set()
                        lifetimes.append(time.monotonic() - start)
                        assert done.status is TrialJobStatus.SUCCEEDED, done.message
                        to_running.append(running_at[d.id] - start)

                await asyncio.gather(*(one(i) for i in range(trials)))
                await asyncio.gather(*pollers)
            counts = {k: v - before_counts.get(k, 0) for k, v in cluster.request_counts.items()}
            counts = {k: v for k, v in counts.items() if v}
            total = sum(cluster.request_counts.values()) - before
            ours = total - polls[0]
            # The experiment's own requests, whatever its number of trials: lists, watches, the anchor, the
            # token Secret's creation, the start-up checks (OpenAPI, the runtime, the LocalQueue).
            fixed = sum(
                n
                for (verb, res), n in counts.items()
                if verb in ("list", "watch")
                or res in ("configmaps", "openapi", "clustertrainingruntimes", "localqueues")
                or (verb, res) == ("create", "secrets")
            )
            return {
                "ours": ours / trials,
                "per_trial": (ours - fixed) / trials,
                "fixed": fixed,
                "nni": (trials + polls[0]) / trials,  # NNI creates the job once per trial, then polls it
                "counts": counts,
                "polls": polls[0],
                "p50": _pct(to_running, 0.5),
                "p99": _pct(to_running, 0.99),
                "life": sum(lifetimes) / len(lifetimes),
            }


# ---------------------------------------------------------------------- part 2: 500 trials, one watch


def _cluster_process(state: str, nfs: str, hold: float, ready: Any, stop: Any) -> None:
    logging.getLogger("nni_ts.testing.k8s").setLevel(logging.CRITICAL)
    asyncio.run(_cluster_main(Path(state), Path(nfs), hold, ready, stop))


async def _cluster_main(state: Path, nfs: Path, hold: float, ready: Any, stop: Any) -> None:
    async with FakeCluster(state, controllers=(), nfs_exports={(NFS_SERVER, NFS_PATH): nfs}, history_size=200000) as c:
        ready.put(str(c.kubeconfig))
        rtype = c.resource("tfjobs")
        seen: dict[str, float] = {}
        done: set[str] = set()
        while not stop.is_set():
            now = time.monotonic()
            for job in c.list("tfjobs"):
                name = job["metadata"]["name"]
                if name in done:
                    continue
                if name not in seen:
                    seen[name] = now
                    cond = [{"type": "Created", "status": "True", "reason": "TFJobCreated"},
                            {"type": "Running", "status": "True", "reason": "TFJobRunning"}]  # fmt: skip
                    c.api.update_status(rtype, "default", name, {"conditions": cond})
                elif now - seen[name] >= hold:
                    pod = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
                    env = {e["name"]: e.get("value", "") for e in pod["containers"][0]["env"]}
                    trial, exp = env["NNI_TS_KEEPER_TRIAL_ID"], env["NNI_TS_KEEPER_EXPERIMENT_ID"]
                    d = nfs / "nni-ts" / exp / "trials" / trial / ".nni-ts"
                    d.mkdir(parents=True, exist_ok=True)
                    rec = {"parameter_id": 0, "trial_job_id": trial, "type": "FINAL", "sequence": 0, "value": "1.0"}
                    (d / "journal").write_text(json.dumps({"trial": trial, "attempt": 1, "seq": 0,
                                                           "data": json.dumps(rec)}) + "\n")  # fmt: skip
                    (d / "exit").write_text(json.dumps({"trial": trial, "attempt": 1, "exit_code": 0,
                                                        "end_time_ms": 0, "record_count": 1}))  # fmt: skip
                    cond = [{"type": "Created", "status": "True", "reason": "TFJobCreated"},
                            {"type": "Running", "status": "False", "reason": "TFJobSucceeded"},
                            {"type": "Succeeded", "status": "True", "reason": "TFJobSucceeded"}]  # fmt: skip
                    c.api.update_status(rtype, "default", name, {"conditions": cond})
                    done.add(name)
            await asyncio.sleep(0.5)


def _usage() -> tuple[float, int]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, psutil.Process().memory_info().rss


async def watch_500(trials: int, hold: float) -> tuple[float, float, float, float, float]:
    """(tracking CPU s, manager peak RSS MiB, tracking seconds, NNI-style CPU s over as long, submit CPU s).

    Tracking is from the last submission to the last trial's end: what the watches, the journal
    read-back and the status decisions cost while 500 trials are live."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-k8s500-") as tmp:
        root = Path(tmp)
        nfs, code = root / "nfs", root / "code"
        nfs.mkdir()
        code.mkdir()
        (code / "trial.py").write_text(TRIAL)
        ready, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=_cluster_process, args=(str(root / "cluster"), str(nfs), hold, ready, stop))
        proc.start()
        try:
            kubeconfig = Path(ready.get(timeout=60))
            cfg = _config(kubeconfig, nfs, code)
            cfg["pendingTimeout"] = 3600
            svc = KubeflowTrainingService(cfg, experiment_dir=root / "exp")
            peak = 0
            async with svc:
                cpu_submit, _ = _usage()
                details = [await svc.submit_trial_job(form({"seconds": 0}, i)) for i in range(trials)]
                cpu0, _ = _usage()
                submit_cpu = cpu0 - cpu_submit
                t0 = time.monotonic()

                async def sample() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, psutil.Process().memory_info().rss)
                        await asyncio.sleep(0.5)

                sampler = asyncio.create_task(sample())
                done = await asyncio.gather(*(wait_for_status(svc, d.id, timeout=hold + 600) for d in details))
                sampler.cancel()
                bad = [d.message for d in done if d.status is not TrialJobStatus.SUCCEEDED]
                assert not bad, bad[:3]
                elapsed = time.monotonic() - t0
                cpu1, _ = _usage()
                ours_cpu = cpu1 - cpu0

            # NNI's way for the same trials and the same time: one GET per trial every 3 s.
            client = await load_client(str(kubeconfig))
            cpu2, _ = _usage()
            names = [d.platform_data["job"] for d in details]
            end = time.monotonic() + elapsed
            path = "/apis/kubeflow.org/v1/namespaces/default/tfjobs/"
            while time.monotonic() < end:
                tick = time.monotonic()
                await asyncio.gather(*(client.request("GET", path + n) for n in names), return_exceptions=True)
                await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - tick)))
            cpu3, _ = _usage()
            await client.close()
            return ours_cpu, peak / 2**20, elapsed, cpu3 - cpu2, submit_cpu
        finally:
            stop.set()
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--durations", default="1,6", help="trial durations in seconds, comma-separated")
    parser.add_argument("--platforms", default="kubeflow,kubernetes,trainjob,kubernetes+kueue,trainjob+kueue",
                        help="platforms of part 1; '+kueue' queues the trials through a Kueue LocalQueue")  # fmt: skip
    parser.add_argument("--kueue-cpu", default="0.4", help="CPUs the Kueue ClusterQueue admits (trials ask 0.1)")
    parser.add_argument("--watch-trials", type=int, default=500, help="0 skips part 2")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the 500 trials run at once")
    args = parser.parse_args()
    os.environ.setdefault("NNI_TS_HOME", tempfile.mkdtemp(prefix="bench-k8s-home-"))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("nni_ts.testing.k8s").setLevel(logging.CRITICAL)  # closed watch streams are expected
    parts = []
    for platform in [p for p in args.platforms.split(",") if p]:
        name, _, queued = platform.partition("+")
        for seconds in [float(s) for s in args.durations.split(",") if s]:
            r = asyncio.run(
                requests_per_trial(args.trials, seconds, args.concurrency, name, args.kueue_cpu if queued else None)
            )
            label = f"{name}{' + Kueue (' + args.kueue_cpu + ' CPUs admitted)' if queued else ''}"
            by = ", ".join(f"{verb} {res} {n}" for (verb, res), n in sorted(r["counts"].items()) if n)
            print(f"{label}, trials of {seconds:g} s (lifetime {r['life']:.1f} s): {r['ours']:.2f} API requests "
                  f"per trial (baseline NNI, GET every 3 s: {r['nni']:.2f}; ratio {r['ours'] / r['nni']:.2f}), of "
                  f"which {r['per_trial']:.2f} per trial and {r['fixed']} for the experiment (watches, lists, "
                  "start-up); "
                  f"submit -> RUNNING p50 {r['p50']:.2f} s, p99 {r['p99']:.2f} s; all requests (polls "
                  f"{r['polls']} excluded from ours): {by}", flush=True)  # fmt: skip
            parts.append(f"{label} {seconds:g}s: {r['ours']:.2f} req/trial = {r['per_trial']:.2f} + "
                         f"{r['fixed']} per experiment (NNI {r['nni']:.2f}), "
                         f"to RUNNING p50/p99 {r['p50']:.2f}/{r['p99']:.2f} s")  # fmt: skip
    if args.watch_trials <= 0:
        print("; ".join(parts))
        return
    cpu, rss, elapsed, nni_cpu, submit_cpu = asyncio.run(watch_500(args.watch_trials, args.hold))
    print(f"{args.watch_trials} concurrent trials held {args.hold:g} s: submitting them took {submit_cpu:.2f} s "
          "of CPU; "
          f"tracking them took {cpu:.2f} s of CPU over {elapsed:.1f} s ({100 * cpu / elapsed:.1f}% of a core), "
          f"peak RSS {rss:.0f} MiB; baseline NNI-style polling of the same jobs for the same time: CPU "
          f"{nni_cpu:.2f} s ({100 * nni_cpu / elapsed:.1f}% of a core)", flush=True)  # fmt: skip
    parts.append(
        f"{args.watch_trials} trials on one watch: manager CPU {100 * cpu / elapsed:.1f}% of a core, peak RSS "
        f"{rss:.0f} MiB (baseline GET-every-3s polling: {100 * nni_cpu / elapsed:.1f}% of a core)"
    )
    print("; ".join(parts))


if __name__ == "__main__":
    main()
