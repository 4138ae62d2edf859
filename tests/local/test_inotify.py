"""The local platform's inotify watcher: libc is looked up once per process, and its calls keep the GIL."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from pathlib import Path

import pytest

from nni_ts.platforms import _inotify
from nni_ts.platforms._inotify import DirWatcher


async def test_watchers_share_one_libc_whose_calls_keep_the_gil(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[str] = []
    real = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: lookups.append(name) or real(name))
    _inotify._libc.cache_clear()
    woken: list[str] = []
    changed = asyncio.Event()

    def on_change(key: str) -> None:
        woken.append(key)
        changed.set()

    watchers = [DirWatcher() for _ in range(3)]
    try:
        for w in watchers:
            w.start()
            assert w.uses_inotify
        assert lookups == ["c"]  # one `ldconfig -p` per process, not one per service start
        # A PyDLL keeps the GIL during a call (a CDLL gives it away and then waits to get it back).
        assert isinstance(_inotify._libc(), ctypes.PyDLL)
        watchers[0].watch("t1", str(tmp_path), on_change)
        (tmp_path / "metrics").write_bytes(b"x")
        await asyncio.wait_for(changed.wait(), 10)
        assert woken[0] == "t1"
        watchers[0].unwatch("t1")
    finally:
        for w in watchers:
            w.close()
