"""The manager's control socket when a client gives up waiting (e.g. ``trial kill`` while a host is cut off)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from nni_ts.errors import UserError
from nni_ts.experiment.control import ControlServer, request


class _SlowExperiment:
    """Just what the control server uses of an Experiment; its kill takes until ``release`` is set."""

    def __init__(self) -> None:
        self.id = "ctl-test"
        self.service = object()
        self.release = asyncio.Event()
        self.killed: list[str] = []

    async def kill_trial(self, trial_id: str) -> None:
        await self.release.wait()
        self.killed.append(trial_id)


async def test_a_client_that_gave_up_is_no_traceback_in_the_manager(caplog: pytest.LogCaptureFixture) -> None:
    exp: Any = _SlowExperiment()
    server = ControlServer(exp)
    await server.start()
    try:
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(UserError) as info:
                await asyncio.to_thread(request, exp.id, {"op": "kill", "trial": "abc"}, timeout=0.3)
            assert "did not answer within 0.3 s" in str(info.value)
            assert "Could not reach" not in str(info.value)
            exp.release.set()
            async with asyncio.timeout(10):
                while not exp.killed:
                    await asyncio.sleep(0.01)
                while not any("left before its answer" in r.getMessage() for r in caplog.records):
                    await asyncio.sleep(0.01)
    finally:
        await server.close()
    assert exp.killed == ["abc"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert not any(r.exc_info for r in caplog.records)
