"""A small but complete platform: the walk-through of docs/new-platform.md. It passes the conformance kit.

Trials run as local shell commands in their own process group; metrics are read from the trial's
metrics file once the trial ends (a real platform streams them, see nni_ts/platforms/local.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any, Literal

import psutil
from pydantic import Field

from nni_ts import TrainingService, TrialJobDetail, TrialJobStatus
from nni_ts.config import TrainingServiceConfig
from nni_ts.platforms.local import build_trial_env, parameters_as_args
from trial_keeper.records import FrameDecoder


class ToyConfig(TrainingServiceConfig):
    platform: Literal["toy"] = Field("toy", description="Always 'toy'.")


class ToyTrainingService(TrainingService[ToyConfig]):
    platform_name = "toy"
    config_class = ToyConfig

    async def _start(self) -> None:
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._waiters: dict[str, asyncio.Task[None]] = {}

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
        command = detail.form.command or self.config.trial_command or ""
        if self.config.hyperparameters_as_args:
            command += " " + parameters_as_args(detail.form.parameters())
        with open(os.path.join(trial_dir, "stdout"), "wb") as out, open(os.path.join(trial_dir, "stderr"), "wb") as err:
            proc = await asyncio.create_subprocess_shell(
                command, cwd=code_dir, env=env, stdout=out, stderr=err, start_new_session=True
            )
        self._procs[detail.id] = proc
        self._set_status(detail.id, TrialJobStatus.RUNNING)
        self._waiters[detail.id] = asyncio.get_running_loop().create_task(
            self._wait(detail, proc), name=f"toy-wait-{detail.id}"
        )

    async def _wait(self, detail: TrialJobDetail, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the trial left behind
        # Every record goes to the listeners BEFORE the terminal status: the contract's guarantee.
        path = os.path.join(detail.working_directory, ".nni", "metrics")
        if os.path.exists(path) and not detail.status.is_terminal:
            with open(path, "rb") as fh:
                for record in FrameDecoder().feed(fh.read()):
                    self._deliver_metric(detail.id, record.decode())
        status = TrialJobStatus.SUCCEEDED if code == 0 else TrialJobStatus.FAILED
        self._set_status(detail.id, status, exit_code=code, message=None if code == 0 else f"Exit code {code}.")

    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        proc = self._procs[detail.id]
        self._set_status(detail.id, status)  # first, so that _wait does not report FAILED
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await self._waiters[detail.id]
        await _group_gone(proc.pid)

    async def _clean_up(self) -> None:
        for task in getattr(self, "_waiters", {}).values():
            await task

    def __repr__(self) -> str:
        return f"ToyTrainingService({self.experiment_id!r})"


async def _group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no live process is left in the group (SIGKILL is delivered, not instantly obeyed)."""
    async with asyncio.timeout(timeout):
        while any(
            p.info["status"] != psutil.STATUS_ZOMBIE and _pgid(p.pid) == pgid for p in psutil.process_iter(["status"])
        ):
            await asyncio.sleep(0.01)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


__all__: list[Any] = ["ToyConfig", "ToyTrainingService"]
