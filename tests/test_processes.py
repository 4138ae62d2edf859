"""nni_ts.processes: a process's start time, as a restarted manager checks it against pid reuse."""

from __future__ import annotations

import math
import subprocess
import time

import psutil
import pytest

from nni_ts import processes


def test_create_time_is_psutils_and_reads_the_boot_time_once_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[float] = []
    real = psutil._psplatform.boot_time

    def counted() -> float:
        value = float(real())
        reads.append(value)
        return value

    monkeypatch.setattr(psutil._psplatform, "boot_time", counted)
    monkeypatch.setattr(processes, "_boot_time", (-math.inf, 0.0))
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        ours = [processes.create_time(p.pid) for p in procs for _ in range(3)]
        assert len(reads) == 1  # not once per call (psutil reads /proc/stat every time)
        assert ours == [psutil.Process(p.pid).create_time() for p in procs for _ in range(3)]  # the very same value
        monkeypatch.setattr(processes, "_boot_time", (time.monotonic() - processes.BOOT_TIME_TTL, reads[0]))
        before = len(reads)
        assert processes.create_time(procs[0].pid) == ours[0]
        assert len(reads) == before + 1  # read again once the last reading is a minute old
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert processes.create_time(procs[0].pid) is None  # gone (reaped)
