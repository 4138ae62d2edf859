"""Throughput and memory of the fake Kubernetes cluster: create and watch 1,000 TFJobs to completion.

The cluster runs in its own process (``python -m nni_ts.testing.k8s serve``) with one node of ``--slots``
cpus; every TFJob has one Worker requesting one cpu and running ``true``, so at most ``--slots`` pods run at
once. A kubernetes_asyncio client creates the jobs (``--create-concurrency`` requests in flight) and follows
them with one watch until every job is Succeeded. The server's RSS is sampled throughout.

Baseline, measured in the same run: the same number of ``true`` processes spawned bare with the same
concurrency (``--slots``). The last line prints both throughputs and their ratio.

    python bench/bench_fake_k8s.py [--jobs 1000] [--slots 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import kubernetes_asyncio as k8s
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tfjob(i: int) -> dict[str, object]:
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": f"bench-{i:05d}"},
        "spec": {
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": 1,
                    "restartPolicy": "Never",
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "tensorflow",
                                    "image": "busybox",
                                    "command": ["true"],
                                    "resources": {"requests": {"cpu": "1"}},
                                }
                            ]
                        }
                    },
                }
            }
        },
    }


async def baseline(jobs: int, slots: int) -> float:
    """Seconds to run ``true`` ``jobs`` times, ``slots`` at a time, bare."""
    sem = asyncio.Semaphore(slots)

    async def one() -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec("true", start_new_session=True)
            await proc.wait()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(jobs)))
    return time.perf_counter() - start


async def ours(jobs: int, slots: int, create_concurrency: int, state: Path) -> tuple[float, float, float, int]:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nni_ts.testing.k8s",
        "serve",
        "--port",
        str(port),
        "--state-dir",
        str(state),
        "--node",
        f"bench:cpu={slots},memory=1Ti,pods={jobs + 10}",
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert server.stdout is not None
    peak = 0.0
    try:
        async with asyncio.timeout(30):
            await server.stdout.readline()
        proc = psutil.Process(server.pid)
        idle_rss = proc.memory_info().rss / 2**20

        async def sample() -> None:
            nonlocal peak
            while True:
                with contextlib.suppress(psutil.Error):
                    peak = max(peak, proc.memory_info().rss / 2**20)
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        cfg = k8s.client.Configuration()
        cfg.host = f"http://127.0.0.1:{port}"
        async with k8s.client.ApiClient(cfg) as client:
            custom = k8s.client.CustomObjectsApi(client)
            succeeded: set[str] = set()
            all_done = asyncio.Event()

            async def follow() -> None:
                watch = k8s.watch.Watch()
                async for event in watch.stream(
                    custom.list_namespaced_custom_object,
                    "kubeflow.org",
                    "v1",
                    "default",
                    "tfjobs",
                    timeout_seconds=3600,
                ):
                    obj = event["object"]
                    if any(
                        c.get("type") == "Succeeded" and c.get("status") == "True"
                        for c in (obj.get("status") or {}).get("conditions") or []
                    ):
                        succeeded.add(obj["metadata"]["name"])
                        if len(succeeded) == jobs:
                            all_done.set()
                            watch.stop()
                await watch.close()

            watcher = asyncio.create_task(follow())
            sem = asyncio.Semaphore(create_concurrency)

            async def create(i: int) -> None:
                async with sem:
                    await custom.create_namespaced_custom_object("kubeflow.org", "v1", "default", "tfjobs", tfjob(i))

            start = time.perf_counter()
            await asyncio.gather(*(create(i) for i in range(jobs)))
            async with asyncio.timeout(max(120, jobs)):
                await all_done.wait()
            elapsed = time.perf_counter() - start
            await watcher
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/fake/request-counts") as resp:
                counts = await resp.json()
        print("requests seen by the server: " + ", ".join(f"{c['verb']} {c['resource']}: {c['count']}" for c in counts))
        final_rss = proc.memory_info().rss / 2**20
        return elapsed, max(peak, final_rss), idle_rss, len(succeeded)
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                await server.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            await server.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=16, help="node cpus = pods running at once")
    parser.add_argument("--create-concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        elapsed, peak, idle, done = await ours(args.jobs, args.slots, args.create_concurrency, Path(tmp) / "state")
    bare = await baseline(args.jobs, args.slots)
    ours_rate, bare_rate = args.jobs / elapsed, args.jobs / bare
    print(
        f"fake cluster: {done}/{args.jobs} TFJobs created, watched and Succeeded in {elapsed:.1f} s "
        f"({ours_rate:.1f} jobs/s, {args.slots} pods at a time); server RSS idle {idle:.0f} MiB, peak {peak:.0f} MiB"
    )
    print(
        f"baseline: {args.jobs} bare `true` processes, {args.slots} at a time, in {bare:.2f} s "
        f"({bare_rate:.1f} processes/s)"
    )
    print(
        f"RESULT fake_k8s_jobs_per_s={ours_rate:.1f} bare_processes_per_s={bare_rate:.1f} "
        f"ratio={ours_rate / bare_rate:.3f} server_peak_rss_mib={peak:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
