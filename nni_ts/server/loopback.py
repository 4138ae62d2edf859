"""A reference platform: trials run on this machine under a trial keeper that reports over HTTP.

It is what a cluster platform (SSH, Kubeflow, FrameworkController) does, minus the cluster: write
``parameter.cfg``, start ``python -m trial_keeper`` with the server URL and the trial's token,
``server.register(trial_id, ServiceSink(service, trial_id))``, and on cancel set the sink's
``cancel_status`` then SIGTERM the keeper. When the keeper process ends without having reported its
exit (the manager could not be reached), the journal in the trial directory is read back and
delivered through the same de-duplication. The tests and benchmarks use it; it is also the shortest
complete example of the ClusterServer API (see docs/cluster-server.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any, ClassVar

import trial_keeper
from trial_keeper.journal import read_exit, recover_records

from ..config.local import LocalConfig
from ..models import TrialJobDetail, TrialJobStatus, now_ms
from ..training_service import TrainingService
from .app import ClusterServer
from .sink import ServiceSink

__all__ = ["LoopbackKeeperService"]


class LoopbackKeeperService(TrainingService[LocalConfig]):
    """Runs each trial as ``python -m trial_keeper`` on this machine, reporting to a ClusterServer.

    ``server``: a running ClusterServer to use; when None the service starts its own on 127.0.0.1.
    ``heartbeat``: the keepers' heartbeat interval in seconds.
    """

    platform_name: ClassVar[str] = "local"
    config_class: ClassVar[type[LocalConfig]] = LocalConfig

    def __init__(
        self,
        config: LocalConfig | dict[str, Any] | None = None,
        *,
        server: ClusterServer | None = None,
        heartbeat: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self._server = server
        self._own_server = server is None
        self.heartbeat = heartbeat
        self._keepers: dict[str, asyncio.subprocess.Process] = {}
        self._sinks: dict[str, ServiceSink] = {}
        self._waiters: dict[str, asyncio.Task[None]] = {}

    @property
    def server(self) -> ClusterServer:
        assert self._server is not None, "the service is not started"
        return self._server

    async def _start(self) -> None:
        if self._server is None:
            self._server = ClusterServer()
        if self._own_server:
            await self._server.start()

    async def _clean_up(self) -> None:
        # Every trial is terminal by now; its keeper is finishing (or was killed). Let it end.
        for proc in list(self._keepers.values()):
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        # The waiters are owned by self.tasks, which clean_up() stops after this.
        if self._own_server and self._server is not None:
            await self._server.close()

    async def _submit(self, detail: TrialJobDetail) -> None:
        cfg = self.config
        trial_dir = Path(detail.working_directory)
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "parameter.cfg").write_text(detail.form.hyper_parameters.value, encoding="utf-8")
        command = self.trial_command(detail)
        sink = ServiceSink(self, detail.id)
        self._sinks[detail.id] = sink
        self.server.register(detail.id, sink, attempt=1)
        env = dict(os.environ)
        env.update(detail.form.env)
        env["CUDA_VISIBLE_DEVICES"] = ""
        root = str(Path(trial_keeper.__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["NNI_TS_KEEPER_TOKEN"] = self.server.token_for(detail.id)
        argv = [
            sys.executable, "-m", "trial_keeper",
            "--trial-id", detail.id,
            "--trial-dir", str(trial_dir),
            "--code-dir", str(Path(cfg.trial_code_directory).expanduser().resolve()),
            "--server-url", self.server.url,
            "--experiment-id", self.experiment_id,
            "--sequence-id", str(detail.sequence_id),
            "--heartbeat", str(self.heartbeat),
            "--grace", str(cfg.cancel_grace_period),
            "--no-passthrough",
            "--", command,
        ]  # fmt: skip
        with open(trial_dir / "keeper.err", "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err
            )
        self._keepers[detail.id] = proc
        self.reporter.note(detail.id, host="localhost", platform_data={"keeper_pid": proc.pid})
        self._waiters[detail.id] = self.tasks.spawn(self._wait_keeper(detail, proc), name=f"wait-{detail.id}")

    async def _wait_keeper(self, detail: TrialJobDetail, proc: asyncio.subprocess.Process) -> None:
        try:
            await proc.wait()
            if detail.status.is_terminal or proc.returncode == -signal.SIGKILL:
                return  # a killed keeper is found out by its missing heartbeats
            # The keeper ended without its exit being delivered: the journal is the fallback.
            trial_dir = detail.working_directory
            channel = self.server.channel(detail.id)
            records = await asyncio.to_thread(recover_records, trial_dir, detail.id, 1)
            await channel.feed(records)
            ended = await asyncio.to_thread(read_exit, trial_dir, detail.id, 1)
            if ended is not None:
                await channel.finish(int(ended["exit_code"]), int(ended["end_time_ms"]), int(ended["record_count"]))
            elif not detail.status.is_terminal:
                await channel.finish(proc.returncode or 1, now_ms(), len(records))
        finally:
            self._waiters.pop(detail.id, None)
            self._keepers.pop(detail.id, None)
            if detail.status.is_terminal:
                self.server.unregister(detail.id)

    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        sink = self._sinks.get(detail.id)
        if sink is not None:
            sink.cancel_status = status
        proc = self._keepers.get(detail.id)
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.config.cancel_grace_period + 10):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        waiter = self._waiters.get(detail.id)
        if waiter is not None:
            await asyncio.wait([waiter])  # never raises: the caller's own cancellation still propagates
