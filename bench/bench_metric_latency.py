"""Metric latency on the local platform: from the trial's report call to the listener.

One trial reports 10,000 intermediate results, each carrying the wall-clock time of the call; the
listener subtracts. Baseline, same run: the same trial writing the same timestamps through a bare
pipe to this process (the cost of crossing a process boundary at all).

    python bench/bench_metric_latency.py [--reports 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, summary  # noqa: E402

from nni_ts.models import TrialJobMetric  # noqa: E402
from nni_ts.platforms.local import LocalTrainingService  # noqa: E402
from nni_ts.testing.conformance import form, wait_for_status  # noqa: E402

TRIAL = """\
import os, sys, time, nni
nni.get_next_parameter()
n = int(sys.argv[1])
pace = float(sys.argv[2])
for i in range(n):
    nni.report_intermediate_result(time.time())
    if pace:
        time.sleep(pace)
nni.report_final_result(0)
"""

PIPE_TRIAL = """\
import os, sys, time
fd = int(sys.argv[3])
n = int(sys.argv[1])
pace = float(sys.argv[2])
for i in range(n):
    os.write(fd, ("%r\\n" % time.time()).encode())
    if pace:
        time.sleep(pace)
os.close(fd)
"""


async def ours(code: Path, n: int, pace: float) -> list[float]:
    lat: list[float] = []

    def on_metric(m: TrialJobMetric) -> None:
        now = time.time()
        rec = json.loads(m.data)
        if rec["type"] == "PERIODICAL":
            lat.append((now - float(json.loads(rec["value"]))) * 1000)

    svc = LocalTrainingService(
        {"trialCommand": f"python3 trial.py {n} {pace}", "trialCodeDirectory": str(code)}, experiment_dir=code / "exp"
    )
    async with svc:
        svc.add_trial_job_metric_listener(on_metric)
        d = await svc.submit_trial_job(form({}))
        await wait_for_status(svc, d.id, timeout=600)
    return lat


async def baseline(code: Path, n: int, pace: float) -> list[float]:
    r, w = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "pipe_trial.py", str(n), str(pace), str(w), cwd=code, pass_fds=(w,)
    )
    os.close(w)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb"))
    lat = []
    while line := await reader.readline():
        lat.append((time.time() - float(line)) * 1000)
    await proc.wait()
    return lat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=10000)
    parser.add_argument("--pace", type=float, default=0.0005, help="seconds between reports (0 = as fast as possible)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp)
        (code / "trial.py").write_text(TRIAL)
        (code / "pipe_trial.py").write_text(PIPE_TRIAL)
        lat = asyncio.run(ours(code, args.reports, args.pace))
        base = asyncio.run(baseline(code, args.reports, args.pace))
    assert len(lat) == args.reports, len(lat)
    print(f"baseline (bare pipe) ms: {summary(base)}")
    print(f"nni-ts local ms: {summary(lat)}")
    print(
        f"metric latency over {args.reports} reports: p50 {percentile(lat, 50):.2f} ms, "
        f"p99 {percentile(lat, 99):.2f} ms (targets 5 / 20); bare pipe p50 {percentile(base, 50):.2f} ms, "
        f"p99 {percentile(base, 99):.2f} ms"
    )


if __name__ == "__main__":
    main()
