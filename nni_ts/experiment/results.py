"""What an experiment's results mean: its optimisation direction and its best trial.

The one place that decides both, used by the experiment loop, the ``nni-ts`` command and the service
(which asks the same question in SQL through :func:`best_trial_sql`). The best trial is chosen among
trials that SUCCEEDED: a trial that reported a final result and then failed, or was cancelled, is not
a result to trust.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar

from ..errors import NniTsError
from ..models import TrialJobStatus

__all__ = ["best_trial", "best_trial_sql", "is_better", "optimize_mode"]


def optimize_mode(config: Any) -> str:
    """``"maximize"`` or ``"minimize"``, from the tuner's (or advisor's) ``classArgs.optimize_mode``.

    ``config`` is an :class:`~nni_ts.config.experiment.ExperimentConfig` or the stored camelCase dict.
    NNI's default is maximize; anything starting with "min" is minimize.
    """
    if isinstance(config, Mapping):
        algo = config.get("tuner") or config.get("advisor") or {}
        args = algo.get("classArgs") or algo.get("class_args") or {} if isinstance(algo, Mapping) else {}
    else:
        algo = getattr(config, "tuner", None) or getattr(config, "advisor", None)
        args = (getattr(algo, "class_args", None) or {}) if algo is not None else {}
    mode = str(args.get("optimize_mode", "maximize"))
    return "minimize" if mode.lower().startswith("min") else "maximize"


def is_better(value: float, than: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``than`` (None: nothing yet) in direction ``mode``."""
    if than is None:
        return True
    return value < than if mode == "minimize" else value > than


class _Scored(Protocol):
    @property
    def status(self) -> TrialJobStatus: ...

    @property
    def final_value(self) -> float | None: ...


T = TypeVar("T", bound=_Scored)


def best_trial(trials: Iterable[T], mode: str) -> T | None:
    """The SUCCEEDED trial with the best final value; the earliest one on a tie. None if there is none."""
    best: T | None = None
    for t in trials:
        if t.status is not TrialJobStatus.SUCCEEDED or t.final_value is None:
            continue
        if best is None or is_better(t.final_value, best.final_value, mode):
            best = t
    return best


def best_trial_sql(mode: str) -> tuple[str, str]:
    """The same choice in SQL: a WHERE condition and an ORDER BY direction for ``final_value``."""
    where = f"status = '{TrialJobStatus.SUCCEEDED.value}' AND final_value IS NOT NULL"
    return where, "ASC" if mode == "minimize" else "DESC"


async def no_success_summary(experiment_id: str, trials: list[Any], service: Any, *, lines: int = 5) -> str | None:
    """A sentence for an experiment in which trials ended and none succeeded, else None.

    It names the first trial that failed and quotes the end of its stderr (read through ``service``,
    whatever the platform), and says how to see the rest.
    """
    ended = [t for t in trials if t.status.is_terminal]
    if not ended or any(t.status is TrialJobStatus.SUCCEEDED for t in ended):
        return None
    counts: dict[str, int] = {}
    for t in ended:
        counts[t.status.value.lower()] = counts.get(t.status.value.lower(), 0) + 1
    head = "No trial succeeded (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")."
    failed = [t for t in ended if t.status is TrialJobStatus.FAILED] or ended
    first = min(failed, key=lambda t: t.sequence_id)
    why = f" Trial {first.id} ended {first.status.value}"
    why += f" with exit code {first.exit_code}" if first.exit_code is not None else ""
    why += f" ({first.message})" if first.message else ""
    tail = b""
    try:
        tail = await service.get_trial_file(first.id, "stderr", tail=8192)
    except (NniTsError, OSError, ValueError):  # best effort: the platform may have lost the file
        tail = b""
    text = "\n".join(tail.decode("utf-8", "replace").splitlines()[-lines:]).strip()
    why += (":\n    " + text.replace("\n", "\n    ")) if text else "; its stderr is empty."
    return f"{head}{why}\nSee why with `nni-ts trial log {experiment_id} {first.id} --stderr`."
