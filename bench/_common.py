"""Helpers shared by the benchmarks: percentiles, a trivial NNI trial and the bare `xargs -P` baseline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

TRIVIAL_TRIAL = "import nni\np = nni.get_next_parameter()\nnni.report_final_result(p.get('x', 0))\n"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary(values: list[float]) -> str:
    return (
        f"p50={percentile(values, 50):.2f} p99={percentile(values, 99):.2f} "
        f"mean={statistics.fmean(values):.2f} max={max(values):.2f}"
    )


def bare_xargs(code: Path, trials: int, concurrency: int, script: str = "trial.py") -> float:
    """Seconds for ``xargs -P<concurrency>`` to run ``python3 <script>`` ``trials`` times in ``code``.

    The baseline of the turnover benchmarks: the same trial, with NNI's environment and the light
    ``nni`` module, and nothing of ours around it.
    """
    import trial_keeper

    sys_dir = code / "bare-sys"
    (sys_dir / ".nni").mkdir(parents=True, exist_ok=True)
    (sys_dir / "parameter.cfg").write_text(json.dumps({"parameter_id": 0, "parameters": {"x": 1}}))
    env = dict(
        os.environ,
        NNI_PLATFORM="local",
        NNI_SYS_DIR=str(sys_dir),
        NNI_OUTPUT_DIR=str(sys_dir),
        NNI_TRIAL_JOB_ID="bare",
        NNI_EXP_ID="bare",
        NNI_TRIAL_SEQ_ID="0",
        PYTHONPATH=trial_keeper.LIGHT_NNI_PATH,
    )
    start = time.perf_counter()
    subprocess.run(
        ["xargs", f"-P{concurrency}", "-I{}", "python3", script],
        input="\n".join(str(i) for i in range(trials)) + "\n",
        text=True,
        cwd=code,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


async def service_turnover(svc: Any, trials: int, concurrency: int, *, warmup: bool = False) -> float:
    """Seconds for ``svc`` (a TrainingService, not started) to run ``trials`` trivial trials, keeping
    ``concurrency`` of them in flight: each end submits the next. Checks one metric per trial and that
    every trial succeeded. ``warmup`` runs one trial first, untimed (code upload, first connections).
    """
    from nni_ts.models import TrialJobDetail, TrialJobStatus
    from nni_ts.testing.conformance import form

    done = asyncio.Event()
    finished = submitted = metrics = 0
    pending: set[asyncio.Task[None]] = set()

    def on_metric(_m: object) -> None:
        nonlocal metrics
        metrics += 1

    async def submit_next() -> None:
        nonlocal submitted
        if submitted < trials:
            submitted += 1
            await svc.submit_trial_job(form({"x": submitted}, submitted))

    def on_status(d: TrialJobDetail) -> None:
        nonlocal finished
        if d.status.is_terminal:
            finished += 1
            if finished == trials:
                done.set()
            else:
                t = asyncio.get_running_loop().create_task(submit_next())
                pending.add(t)
                t.add_done_callback(pending.discard)

    async with svc:
        if warmup:
            warm = await svc.submit_trial_job(form({"x": 0}, 0))
            while not (await svc.get_trial_job(warm.id)).status.is_terminal:
                await asyncio.sleep(0.05)
        svc.add_trial_job_metric_listener(on_metric)
        svc.events.on("trial_status", on_status)
        start = time.perf_counter()
        for _ in range(concurrency):
            await submit_next()
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - start
    assert metrics == trials, f"{metrics} metrics for {trials} trials"
    failed = [t for t in await svc.list_trial_jobs() if t.status is not TrialJobStatus.SUCCEEDED]
    assert not failed, failed[0].message
    return elapsed


def _runqueue_wait_ms() -> float:
    """How long this thread has waited for a CPU so far (Linux schedstat), in ms; 0 where unknown."""
    import threading

    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return 0.0


class LoopLag:
    """The event loop's stalls: a task sleeps 1 ms again and again and records how late it wakes (ms).

    ``lags`` is the lateness as measured; ``own`` is the same less the time the loop's thread waited
    for a CPU meanwhile (other processes had it: scheduling noise of a shared machine, not a stall of
    ours). ``async with LoopLag() as lag: ...`` then ``lag.summary()``. :func:`install_loop_lag` does
    the same for every loop a process runs (the benchmarks put it in the ``nni-ts serve`` they start).
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self.own: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start, waited = loop.time(), _runqueue_wait_ms()
            await asyncio.sleep(self.interval)
            late = (loop.time() - start - self.interval) * 1000
            self.lags.append(late)
            self.own.append(max(0.0, late - (_runqueue_wait_ms() - waited)))

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="bench-loop-lag")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def summary(self) -> str:
        if not self.lags:
            return "loop stall: no samples"
        text = f"loop stall max {max(self.lags):.1f} ms p99 {percentile(self.lags, 99):.2f} ms"
        if self.own:
            text += f" (less CPU waits: max {max(self.own):.1f} ms p99 {percentile(self.own, 99):.2f} ms)"
        return f"{text}, {len(self.lags)} samples"


def install_loop_lag(out: str, interval: float = 0.005) -> None:
    """Measure every event loop this process runs from now on; write ``{thread: [lags, own]}`` as JSON
    to ``out`` twice a second and at exit (a process that is terminated keeps what was written), and
    under ``"_cpu"`` the CPU seconds each thread has used, by thread name.

    The probe wakes each loop every ``interval`` seconds (5 ms: a 1 ms probe in a busy service is
    itself a load, a thousand wake-ups a second competing for the GIL)."""
    import atexit
    import threading

    probes: dict[str, LoopLag] = {}
    real_run_forever = asyncio.base_events.BaseEventLoop.run_forever

    def run_forever(self: asyncio.base_events.BaseEventLoop) -> None:
        probe = LoopLag(interval)
        probes[f"{threading.current_thread().name}-{len(probes)}"] = probe
        self.call_soon(lambda: self.create_task(probe.run(), name="bench-loop-lag"))
        real_run_forever(self)

    cpu: dict[str, float] = {}

    def dump() -> None:
        for thread in threading.enumerate():
            with contextlib.suppress(OSError, TypeError, ValueError):  # a thread that just ended
                cpu[thread.name] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident or 0))
        data: dict[str, Any] = {name: [list(p.lags), list(p.own)] for name, p in list(probes.items())}
        data["_cpu"] = cpu
        tmp = out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, out)

    def dumper() -> None:
        while True:
            time.sleep(0.5)
            dump()

    asyncio.base_events.BaseEventLoop.run_forever = run_forever  # type: ignore[method-assign]
    threading.Thread(target=dumper, name="bench-loop-lag-dump", daemon=True).start()
    atexit.register(dump)


def loop_lag_report(path: str) -> str:
    """One line per loop from what :func:`install_loop_lag` wrote (loops with under 50 samples are left out)."""
    with open(path) as fh:
        data: dict[str, Any] = json.load(fh)
    data.pop("_cpu", None)
    lines = []
    for name, (lags, own) in data.items():
        if len(lags) < 50:
            continue
        probe = LoopLag()
        probe.lags, probe.own = lags, own
        lines.append(f"{name}: {probe.summary()}")
    return "; ".join(lines) or "no loop ran long enough to be measured"


def thread_cpu(path: str) -> dict[str, float]:
    """CPU seconds by thread name, from what :func:`install_loop_lag` wrote last."""
    with open(path) as fh:
        return dict(json.load(fh).get("_cpu", {}))


_IDLE_PROBE = """
import asyncio, json, sys, threading
lags, own = [], []
def waited():
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return 0.0
async def main():
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(done.set)), daemon=True).start()
    print("ready", flush=True)
    while not done.is_set():
        start, w = loop.time(), waited()
        await asyncio.sleep(0.001)
        late = (loop.time() - start - 0.001) * 1000
        lags.append(late)
        own.append(max(0.0, late - (waited() - w)))
asyncio.run(main())
print(json.dumps([lags, own]))
"""


class IdleLoopLag:
    """The baseline of :class:`LoopLag`: the same probe in an idle event loop in another process,
    over the same window. What it shows is the machine's scheduling noise (other processes taking
    the CPU), which no code of ours can remove; the difference is the loop's own stalls."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.own: list[float] = []
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> IdleLoopLag:
        import sys

        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _IDLE_PROBE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert self._proc.stdout is not None
        await self._proc.stdout.readline()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        out, _ = await self._proc.communicate(b"")
        self.lags, self.own = json.loads(out)

    def summary(self) -> str:
        probe = LoopLag()
        probe.lags, probe.own = self.lags, self.own
        return probe.summary()
