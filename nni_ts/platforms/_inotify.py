"""A minimal asyncio wrapper of Linux inotify (through ctypes), with a polling fallback elsewhere.

Used to learn within a millisecond that a trial appended to its metrics file, without polling.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import functools
import os
import struct
import sys
from collections.abc import Callable

__all__ = ["DirWatcher"]

_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
_EVENT = struct.Struct("iIII")


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc, for the inotify calls: found once per process (``find_library`` runs ``ldconfig -p``).

    Loaded as a ``PyDLL``, which keeps the GIL during a call: these calls are short, non-blocking system
    calls, and a call that released the GIL would then wait for it to come back (several milliseconds
    on a busy service, where another thread holds it), on the event loop's thread."""
    return ctypes.PyDLL(ctypes.util.find_library("c") or None, use_errno=True)


class DirWatcher:
    """Calls ``callback(key)`` soon after a file in a watched directory changes.

    On Linux it uses one inotify descriptor for all directories. Elsewhere (or if inotify cannot be
    set up) it calls every callback every ``poll_interval`` seconds.
    """

    def __init__(self, poll_interval: float = 0.05) -> None:
        self._poll_interval = poll_interval
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        self._by_wd: dict[int, str] = {}
        self._wd_by_key: dict[str, int] = {}
        self._callbacks: dict[str, Callable[[str], None]] = {}
        self._poll_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if sys.platform.startswith("linux"):
            try:
                libc = _libc()
                fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
                if fd >= 0:
                    self._libc, self._fd = libc, fd
                    self._loop.add_reader(fd, self._on_readable)
                    return
            except (OSError, AttributeError):
                pass
        self._poll_task = self._loop.create_task(self._poll(), name="nni-ts-local-metrics-poll")

    @property
    def uses_inotify(self) -> bool:
        return self._fd >= 0

    def watch(self, key: str, directory: str, callback: Callable[[str], None]) -> None:
        self._callbacks[key] = callback
        if self._fd >= 0 and self._libc is not None:
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK)
            if wd < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"inotify_add_watch({directory}) failed: {os.strerror(err)}")
            self._by_wd[wd] = key
            self._wd_by_key[key] = wd

    def unwatch(self, key: str) -> None:
        self._callbacks.pop(key, None)
        wd = self._wd_by_key.pop(key, None)
        if wd is not None:
            self._by_wd.pop(wd, None)
            if self._fd >= 0 and self._libc is not None:
                self._libc.inotify_rm_watch(self._fd, wd)  # fails harmlessly if the dir is gone

    def close(self) -> None:
        if self._fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None
        self._callbacks.clear()
        self._by_wd.clear()
        self._wd_by_key.clear()

    def _on_readable(self) -> None:
        keys: list[str] = []
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not data:
                break
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, _mask, _cookie, length = _EVENT.unpack_from(data, pos)
                pos += _EVENT.size + length
                key = self._by_wd.get(wd)
                if key is not None and key not in keys:
                    keys.append(key)
        for key in keys:
            callback = self._callbacks.get(key)
            if callback is not None:
                callback(key)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            for key, callback in list(self._callbacks.items()):
                callback(key)
