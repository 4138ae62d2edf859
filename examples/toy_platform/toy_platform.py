"""A small but complete platform: the walk-through of docs/new-platform.md. It passes the conformance kit.

Trials run as local shell commands in their own process group; metrics are read from the trial's
metrics file once the trial ends (a real platform streams them, see nni_ts/platforms/local.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, Literal

from pydantic import Field

from nni_ts import MetricRefused, TrainingService, TrialJobDetail, TrialJobStatus
from nni_ts.config import TrainingServiceConfig
from nni_ts.platforms.local import build_trial_env
from nni_ts.processes import group_alive, killpg
from trial_keeper.records import FrameDecoder


class ToyConfig(TrainingServiceConfig):
    platform: Literal["toy"] = Field("toy", description="Always 'toy'.")


class ToyTrainingService(TrainingService[ToyConfig]):
    platform_name = "toy"
    config_class = ToyConfig

    async def _start(self) -> None:
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._waiters: dict[str, asyncio.Task[None]] = {}
        self._cancelled: dict[str, TrialJobStatus] = {}

    async def _submit(self, detail: TrialJobDetail) -> None:
        trial_dir = detail.working_directory
        os.makedirs(os.path.join(trial_dir, ".nni"), exist_ok=True)
        with open(os.path.join(trial_dir, "parameter.cfg"), "w", encoding="utf-8") as fh:
            fh.write(detail.form.hyper_parameters.value)
        code_dir = os.path.abspath(self.config.trial_code_directory)
        env = build_trial_env(
            dict(os.environ),
            platform="local",
            trial_id=detail.id,
            experiment_id=self.experiment_id,
            sequence_id=detail.sequence_id,
            sys_dir=trial_dir,
            output_dir=trial_dir,
            code_dir=code_dir,
            gpus=[],
        )
        with open(os.path.join(trial_dir, "stdout"), "wb") as out, open(os.path.join(trial_dir, "stderr"), "wb") as err:
            proc = await asyncio.create_subprocess_shell(
                self.trial_command(detail), cwd=code_dir, env=env, stdout=out, stderr=err, start_new_session=True
            )
        self._procs[detail.id] = proc
        self.reporter.running(detail.id)
        # Every background task belongs to the service's supervisor: named, logged, stopped at clean-up.
        self._waiters[detail.id] = self.tasks.spawn(self._wait(detail.id, proc), name=f"wait-{detail.id}")

    async def _wait(self, trial_id: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        killpg(proc.pid, signal.SIGKILL)  # whatever the trial left behind
        # Every record goes to the listeners BEFORE the terminal status: the contract's guarantee.
        # reporter.metric returns once every listener stored the record; a refused record (a failing
        # store) is not counted and must be delivered again, so retry it until it is accepted.
        path = os.path.join(self.trial_dir(trial_id), ".nni", "metrics")
        if os.path.exists(path):
            with open(path, "rb") as fh:
                for record in FrameDecoder().feed(fh.read()):
                    while True:
                        try:
                            await self.reporter.metric(trial_id, record.decode())
                            break
                        except MetricRefused:
                            await asyncio.sleep(0.1)
        if trial_id in self._cancelled:
            await self.reporter.ended(trial_id, self._cancelled[trial_id], message="Cancelled.")
        elif code == 0:
            await self.reporter.ended(trial_id, TrialJobStatus.SUCCEEDED, exit_code=0)
        else:
            await self.reporter.ended(trial_id, TrialJobStatus.FAILED, exit_code=code, message=f"Exit code {code}.")

    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        proc = self._procs[detail.id]
        self._cancelled[detail.id] = status  # so that _wait ends it with this status
        killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait([self._waiters[detail.id]])
        async with asyncio.timeout(10):  # SIGKILL is delivered, not instantly obeyed
            while group_alive(proc.pid):
                await asyncio.sleep(0.01)

    async def _clean_up(self) -> None:
        pass  # clean_up() cancelled every live trial first, and stops self.tasks after this

    def __repr__(self) -> str:
        return f"ToyTrainingService({self.experiment_id!r})"


__all__: list[Any] = ["ToyConfig", "ToyTrainingService"]
