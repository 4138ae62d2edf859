"""An in-memory platform whose trials are scripted: for testing what sits above a TrainingService.

The experiment loop, a tuner, the service: they need trials that report metrics, fail, time out, get
lost, but not processes. :class:`FakeTrainingService` runs no command; a *script* (a function of the
trial) says what each trial does, and the trial does it on a :class:`~nni_ts.testing.FakeClock`, so a
trial of an hour takes no time at all::

    clock = FakeClock()
    service = FakeTrainingService(
        script=lambda trial: ScriptedTrial(intermediate=[0.1, 0.2], final=trial.parameters["x"], duration=600),
        clock=clock,
    )
    experiment = Experiment(config, service=service, clock=clock)
    result = await clock.run(experiment.run())

It passes the conformance kit (``tests/test_fake_platform.py``) with :func:`kit_script`, except for what
needs a real process (its trials have no environment and leave no process behind by construction).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..config.base import TrainingServiceConfig
from ..errors import MetricRefused
from ..models import TrialJobDetail, TrialJobStatus
from ..training_service import TrainingService
from .clock import FakeClock

__all__ = ["NO_FINAL", "FakeConfig", "FakeTrainingService", "FakeTrial", "ScriptedTrial", "record"]

#: ``ScriptedTrial.final`` for a trial that reports no final result.
NO_FINAL: Any = type("NoFinal", (), {"__repr__": lambda self: "NO_FINAL"})()

log = logging.getLogger(__name__)

#: Times a record is offered again to listeners that refuse it before the fake trial gives up.
MAX_REFUSALS = 1000


@dataclass(frozen=True)
class FakeTrial:
    """What a script sees of a trial: its id, its hyper-parameters and its command line."""

    id: str
    parameters: dict[str, Any]
    parameter_id: int | None
    sequence_id: int
    argv: list[str]


@dataclass
class ScriptedTrial:
    """What a fake trial does, in this order, on the fake clock.

    It waits ``queue`` seconds as WAITING, then runs: the ``intermediate`` results are reported one
    by one, evenly spread over ``duration`` seconds, then ``final`` (unless it is :data:`NO_FINAL`),
    then the trial exits with ``exit_code`` (0 is SUCCEEDED, anything else FAILED). With ``lost_after``
    the platform instead loses sight of it that many seconds after it started (UNKNOWN, never back).
    ``stdout`` and ``stderr`` are the trial's files.
    """

    intermediate: list[Any] = field(default_factory=list)
    final: Any = NO_FINAL
    duration: float = 0.0
    exit_code: int = 0
    queue: float = 0.0
    lost_after: float | None = None
    stdout: str = ""
    stderr: str = ""


Script = Callable[[FakeTrial], ScriptedTrial]


def record(trial_id: str, parameter_id: int | None, kind: str, sequence: int, value: Any) -> str:
    """A metric record exactly as NNI's trial SDK writes it (``value`` is itself JSON text)."""
    return json.dumps(
        {
            "parameter_id": parameter_id,
            "trial_job_id": trial_id,
            "type": kind,
            "sequence": sequence,
            "value": json.dumps(value),  # NaN and Infinity as NNI writes them
        }
    )


class FakeConfig(TrainingServiceConfig):
    platform: Literal["fake"] = Field("fake", description="Always 'fake'.")


def _default_script(trial: FakeTrial) -> ScriptedTrial:
    """Without a script, a trial succeeds at once with its parameter ``x`` (or 0) as its final result."""
    return ScriptedTrial(final=trial.parameters.get("x", 0))


class FakeTrainingService(TrainingService[FakeConfig]):
    """An in-memory platform: each trial follows ``script(trial)`` on ``clock`` (a new FakeClock by default)."""

    platform_name = "fake"
    config_class = FakeConfig

    def __init__(
        self,
        config: FakeConfig | Mapping[str, Any] | None = None,
        *,
        script: Script | None = None,
        clock: FakeClock | None = None,
        experiment_id: str | None = None,
        experiment_dir: str | Path | None = None,
    ) -> None:
        if isinstance(config, Mapping):
            config = {"platform": "fake", **{k: v for k, v in config.items() if k != "platform"}}
        super().__init__(config, experiment_id=experiment_id, experiment_dir=experiment_dir)
        self.script: Script = script or _default_script
        self.clock: FakeClock = clock or FakeClock()
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._files: dict[str, dict[str, bytes]] = {}

    # ------------------------------------------------------------------ the trial

    def _trial(self, detail: TrialJobDetail) -> FakeTrial:
        try:
            parameter_id = json.loads(detail.form.hyper_parameters.value).get("parameter_id")
        except (ValueError, AttributeError):
            parameter_id = None
        argv = shlex.split(self.trial_command(detail))
        return FakeTrial(detail.id, detail.form.parameters(), parameter_id, detail.sequence_id, argv)

    async def _run(self, detail: TrialJobDetail) -> None:
        trial = self._trial(detail)
        try:
            plan = self.script(trial)
        except Exception as exc:  # the script's own failure is the trial's, as a crashing command would be
            self._files[trial.id]["stderr"] = f"The fake trial's script raised: {exc!r}\n".encode()
            await self.reporter.ended(trial.id, TrialJobStatus.FAILED, exit_code=1, message=f"Exit code 1: {exc}")
            return
        try:
            await self._play(trial, plan)
        except Exception:  # a bug of the fake (or an always-refusing listener): never a trial left running
            log.exception("The fake trial %s broke.", trial.id)
            await self.reporter.ended(
                trial.id, TrialJobStatus.FAILED, message="The fake platform broke.", infrastructure_failure=True
            )

    async def _deliver(self, trial_id: str, data: str) -> None:
        """Deliver one record as a platform must: again (at once) while a listener refuses it."""
        for _ in range(MAX_REFUSALS):
            try:
                await self.reporter.metric(trial_id, data)
                return
            except MetricRefused:
                await asyncio.sleep(0)
        raise MetricRefused(trial_id, f"The listeners refused a record of trial {trial_id} {MAX_REFUSALS} times.")

    async def _play(self, trial: FakeTrial, plan: ScriptedTrial) -> None:
        files = self._files[trial.id]
        files["stdout"] = plan.stdout.encode()
        files["stderr"] = plan.stderr.encode()
        if plan.queue:
            await self.clock.sleep(plan.queue)
        self.reporter.running(trial.id)
        started = self.clock.time()
        steps = [("PERIODICAL", i, v) for i, v in enumerate(plan.intermediate)]
        if plan.final is not NO_FINAL:
            steps.append(("FINAL", 0, plan.final))
        for n, (kind, seq, value) in enumerate(steps):
            at = plan.duration * (n + 1) / (len(steps) + 1) if kind == "PERIODICAL" else plan.duration
            if plan.lost_after is not None and at >= plan.lost_after:
                break
            await self.clock.sleep(max(0.0, started + at - self.clock.time()))
            await self._deliver(trial.id, record(trial.id, trial.parameter_id, kind, seq, value))
        end = plan.duration if plan.lost_after is None else plan.lost_after
        await self.clock.sleep(max(0.0, started + end - self.clock.time()))
        if plan.lost_after is not None:
            self.reporter.unknown(trial.id, "The fake platform lost sight of the trial.")
            return
        code = plan.exit_code
        await self.reporter.ended(
            trial.id,
            TrialJobStatus.SUCCEEDED if code == 0 else TrialJobStatus.FAILED,
            exit_code=code,
            message=None if code == 0 else f"Exit code {code}.",
        )

    # ------------------------------------------------------------------ the hooks

    async def _submit(self, detail: TrialJobDetail) -> None:
        self._files[detail.id] = {}
        self._runs[detail.id] = self.tasks.spawn(self._run(detail), name=f"fake-trial-{detail.id}")

    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        task = self._runs.pop(detail.id, None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        await self.reporter.ended(detail.id, status, message="Cancelled.")

    async def _clean_up(self) -> None:
        self._runs.clear()  # the trials' tasks belong to self.tasks, which the base stops next

    async def _read_trial_file(self, detail: TrialJobDetail, name: str, tail: int | None) -> bytes:
        data = self._files.get(detail.id, {}).get(name, b"")
        return data if tail is None else data[-tail:] if tail else b""
