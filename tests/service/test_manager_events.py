"""The experiment manager's event broadcast (engine thread -> API loop) without a running service."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nni_ts.service.manager import ExperimentManager, _Live


async def test_events_cross_to_the_api_loop_only_when_someone_streams_them(monkeypatch: pytest.MonkeyPatch) -> None:
    manager = ExperimentManager(None, "sqlite:///unused.db", replica="test")  # type: ignore[arg-type]
    try:
        loop = asyncio.get_running_loop()
        manager._api_loop = loop
        crossings: list[Any] = []
        real = loop.call_soon_threadsafe

        def counted(fn: Any, *args: Any) -> Any:
            crossings.append(fn)
            return real(fn, *args)

        monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
        live = _Live(id="e1", exp=None)  # type: ignore[arg-type]
        manager._broadcast(live, {"event": "trial", "trialId": "t1", "status": "RUNNING"})
        assert crossings == []  # nobody listens: the API loop is not woken (it was, four times a trial)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        live.subscribers.add(queue)
        manager._broadcast(live, {"event": "trial", "trialId": "t1", "status": "SUCCEEDED"})
        event = await asyncio.wait_for(queue.get(), 5)
        assert len(crossings) == 1
        assert event is not None and event["status"] == "SUCCEEDED" and event["experimentId"] == "e1"
    finally:
        manager._loop.close()
