"""What reading a pod's log back for its metric frames costs: streamed (chunk by chunk, as the manager reads
it now) against the whole answer read at once (the former way, the baseline), in the same run.

A pod of the fake cluster prints ``--mib`` MiB of output with keeper frames among it (real frames, MAC'd
with a made-up token); both ways read it through ``pods/log`` with the manager's own client and parse the
frames with the same FrameReader. Measured: the peak of Python allocations during the read (tracemalloc,
which covers the in-process fake API server too) and the time (without tracemalloc), best of ``--repeat``.

    python bench/bench_podlog.py [--mib 64] [--repeat 3]

The last line holds the figures and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nni_ts.platforms.kubernetes.client import KubeClient, LineSplitter, load_client  # noqa: E402
from nni_ts.platforms.kubernetes.podstorage import MAX_LINE  # noqa: E402
from nni_ts.testing.k8s import FakeCluster  # noqa: E402
from trial_keeper.logframes import FrameReader, encode_record, frame_key  # noqa: E402

KEY = frame_key("bench-token")
PATH = "/api/v1/namespaces/default/pods/chatty/log"


def _script(mib: int, records: int) -> str:
    frames = [encode_record(KEY, "t", 1, seq, json.dumps({"seq": seq})) for seq in range(records)]
    step = max(1, mib // max(1, records))
    return (
        "import sys\n"
        f"frames = {frames!r}\n"
        f"block = ('.' * 99 + '\\n') * {(1 << 20) // 100}\n"
        f"for i in range({mib}):\n"
        "    sys.stdout.write(block)\n"
        f"    if i % {step} == 0 and frames:\n"
        "        sys.stdout.write('\\n'.join(frames.pop(0)) + '\\n')\n"
        "sys.stdout.write(''.join('\\n'.join(f) + '\\n' for f in frames))\n"
    )


async def whole(kube: KubeClient) -> int:
    reader = FrameReader(KEY, "t", None)
    return len(reader.feed(await kube.request_text("GET", PATH, timeout=600)))


async def streamed(kube: KubeClient) -> int:
    reader = FrameReader(KEY, "t", None)
    lines = LineSplitter(MAX_LINE)
    found = 0
    async for chunk in kube.stream_bytes(PATH, {}, read_timeout=600):
        block = lines.feed(chunk)
        if block:
            found += len(reader.feed(block.decode("utf-8", "replace")))
    return found + len(reader.feed(lines.rest().decode("utf-8", "replace")))


async def measure(
    read: Callable[[KubeClient], Awaitable[int]], kube: KubeClient, repeat: int
) -> tuple[int, float, int]:
    peaks, times, found = [], [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        await read(kube)
        times.append(time.perf_counter() - start)
        tracemalloc.start()
        found = await read(kube)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return min(peaks), min(times), found


async def main(mib: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeCluster(Path(tmp) / "cluster") as cluster:
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "chatty"},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "python", "command": ["python3", "-c", _script(mib, 8)]}],
                },
            }
            cluster.create(body)
            await cluster.wait_for_object(
                "pods", "chatty", lambda p: p["status"].get("phase") == "Succeeded", timeout=300
            )
            kube = await load_client(str(cluster.kubeconfig))
            try:
                base_peak, base_time, base_found = await measure(whole, kube, repeat)
                peak, took, found = await measure(streamed, kube, repeat)
            finally:
                await kube.close()
    assert found == base_found == 8, (found, base_found)
    print(
        f"log {mib} MiB, {found} records: whole read peak {base_peak / 2**20:.1f} MiB in {base_time:.2f} s; "
        f"streamed peak {peak / 2**20:.2f} MiB in {took:.2f} s; "
        f"memory ratio {peak / base_peak:.3f}, time ratio {took / base_time:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="MiB of output in the pod's log")
    parser.add_argument("--repeat", type=int, default=3, help="reads of each kind (the best counts)")
    args = parser.parse_args()
    asyncio.run(main(args.mib, args.repeat))
