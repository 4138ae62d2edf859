"""A training service whose trials run inside the process, as asyncio tasks: no process is spawned.

For tests and benchmarks of what is around the trials (the experiment loop, the tuner, the store):
a trial reads its parameters and, after ``duration`` seconds, reports ``objective(parameters)`` as its
final result and succeeds. ``objective`` defaults to the parameter ``x`` (or 0).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from ..config import TrainingServiceConfig
from ..models import TrialJobDetail, TrialJobStatus
from ..training_service import TrainingService

__all__ = ["InMemoryConfig", "InMemoryTrainingService"]


class InMemoryConfig(TrainingServiceConfig):
    platform: Literal["inmemory"] = Field("inmemory", description="Always 'inmemory'.")


class InMemoryTrainingService(TrainingService[InMemoryConfig]):
    """Trials as asyncio tasks that report one final result after ``duration`` seconds."""

    platform_name = "inmemory"
    config_class = InMemoryConfig

    def __init__(
        self,
        *,
        duration: float = 0.0,
        objective: Callable[[dict[str, Any]], float] | None = None,
        experiment_id: str | None = None,
    ) -> None:
        super().__init__({"platform": "inmemory"}, experiment_id=experiment_id)
        self.duration = duration
        self.objective = objective or (lambda p: float(p.get("x", 0.0)))
        self._cancelled: dict[str, TrialJobStatus] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}

    async def _submit(self, detail: TrialJobDetail) -> None:
        params = json.loads(detail.form.hyper_parameters.value)
        self.reporter.running(detail.id)
        self._runs[detail.id] = self.tasks.spawn(self._run(detail.id, params), name=f"trial-{detail.id}")

    async def _run(self, trial_id: str, params: dict[str, Any]) -> None:
        await asyncio.sleep(self.duration)
        if trial_id in self._cancelled:
            await self.reporter.ended(trial_id, self._cancelled[trial_id], message="Cancelled.")
            return
        value = self.objective(params.get("parameters", {}))
        record = {
            "parameter_id": params.get("parameter_id"),
            "trial_job_id": trial_id,
            "type": "FINAL",
            "sequence": 0,
            "value": json.dumps(value),
        }
        await self.reporter.metric(trial_id, json.dumps(record))
        await self.reporter.ended(trial_id, TrialJobStatus.SUCCEEDED, exit_code=0)

    async def _cancel(self, detail: TrialJobDetail, status: TrialJobStatus) -> None:
        self._cancelled[detail.id] = status
        run = self._runs.get(detail.id)
        if run is not None:
            await asyncio.wait([run])

    async def _clean_up(self) -> None:
        pass  # clean_up() cancelled every live trial first, and stops self.tasks after this
