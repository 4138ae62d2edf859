"""Process helpers shared by every platform and the fake kubelet (written once, here).

* :func:`killpg` signals a process group and ignores one that is already gone.
* :func:`group_alive` tells whether a process group still has a live (non-zombie) member.
* :func:`wait_pid` awaits a child's exit without blocking the event loop: through a pidfd where the
  kernel has them (no thread per child), else in a worker thread.
* :func:`create_time` and :func:`exit_message` describe a process and how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil

__all__ = ["create_time", "exit_message", "group_alive", "killpg", "wait_pid"]


def killpg(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group that is gone (or not ours) is ignored."""
    if pgid <= 0:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


#: Seconds a reading of the boot time is reused (psutil reads ``/proc/stat`` on every call).
BOOT_TIME_TTL = 60.0
_boot_time: tuple[float, float] = (-BOOT_TIME_TTL, 0.0)  # (monotonic time of the reading, boot time)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cached_boot_time() -> float:
    global _boot_time
    read_at, value = _boot_time
    now = time.monotonic()
    if now - read_at >= BOOT_TIME_TTL:
        value = float(psutil.boot_time())
        _boot_time = (now, value)
    return value


def create_time(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), or None if it is gone.

    The same value as ``psutil.Process(pid).create_time()`` (a restarted manager compares it with the
    one it stored, against pid reuse), from one read of ``/proc/<pid>/stat`` on Linux: the system's
    boot time, which psutil reads from ``/proc/stat`` on every call, is read once a minute at most.
    """
    if sys.platform != "linux":
        try:
            return float(psutil.Process(pid).create_time())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:  # gone (or hidden from us)
        return None
    # Field 22, starttime (clock ticks since boot), counted after the command name, which may hold
    # spaces and parentheses: it ends at the last ')'.
    try:
        ticks = stat[stat.rindex(b")") + 2 :].split()[19]
    except (ValueError, IndexError):
        return None
    return float(ticks) / _CLOCK_TICKS + _cached_boot_time()


async def wait_pid(popen: subprocess.Popen[bytes] | None, pid: int, *, poll: float = 0.1) -> int | None:
    """Wait for process ``pid`` to end and return its exit code (negative: killed by that signal).

    With ``popen`` (our own child) the code is reaped from it; without (a process adopted after a
    restart) the result is None, since only its parent can learn its code. Uses a pidfd where the
    kernel has them, else a worker thread (our child) or a poll every ``poll`` seconds (not ours).
    """
    loop = asyncio.get_running_loop()
    fd = -1
    with contextlib.suppress(AttributeError, OSError):
        fd = os.pidfd_open(pid)
    if fd >= 0:
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        if popen is None:
            return None
        code = popen.poll()
        return code if code is not None else await asyncio.to_thread(popen.wait)
    if popen is not None:
        return await asyncio.to_thread(popen.wait)
    while psutil.pid_exists(pid) and not _is_zombie(pid):
        await asyncio.sleep(poll)
    return None


def _is_zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True


def exit_message(code: int | None) -> str:
    """A sentence describing how a trial's command ended."""
    if code is None:
        return "The trial ended, but its exit status is unknown."
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"The trial was killed by {name}."
    if code > 128:
        try:
            name = signal.Signals(code - 128).name
            return f"The trial command exited with code {code} (its process was killed by {name})."
        except ValueError:
            pass
    return f"The trial command exited with code {code}."
