"""A Kubernetes trial's phase, the transitions allowed between phases, the facts the platform gathers
about it, and the decision of its terminal status: a pure function of those facts.

The phases (:class:`Phase`)::

    ACTIVE ──► SETTLING ──► FINISHING ──► CONCLUDED
      │  │        │            │              ▲
      │  └────────┴──► STOPPING ────────────┤
      └──────────────────────────────────────┘
      ▲  │        │
      │  ▼        ▼
      REQUEUED ◄──┘   (Kueue preempted the trial; REQUEUED ──► STOPPING on a cancel)

* ``ACTIVE``: the job exists (or is being created); the trial waits or runs.
* ``SETTLING``: the keeper reported its exit; the platform waits (bounded) for the job's final state, so
  that a trial's slot is counted until its job has ended and an OOM kill or an eviction is not missed.
* ``FINISHING``: the job finished or vanished: what the keeper could not report is read back from the
  shared storage (its journal), then the trial is concluded.
* ``STOPPING``: the platform stops the job (a cancel, a failure it decided, a settle time-out) and waits
  until its pods are gone.
* ``CONCLUDED``: the terminal status was decided (:func:`decide`) and reported. Nothing happens after.
* ``REQUEUED``: Kueue evicted the trial (preemption) after admitting it: its object is suspended and its
  pods are being deleted. Their end (the keeper's SIGTERM exit, a deleted running pod) is not the trial's:
  the facts are reset, the trial is WAITING again, and once the old pods are gone it is ``ACTIVE`` again,
  waiting for Kueue to admit it and run it anew (:func:`kueue_step` decides).

Every change goes through :func:`check_transition` against :data:`TRANSITIONS`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ...models import TrialJobStatus
from .status import JobView, PodProblem

__all__ = [
    "TRANSITIONS",
    "Decision",
    "Facts",
    "Names",
    "Phase",
    "TransitionError",
    "check_transition",
    "KueueStep",
    "decide",
    "is_signal_exit",
    "kueue_step",
    "pending_timeout_applies",
    "running_signal_counts",
]


class Phase(enum.Enum):
    ACTIVE = "active"
    SETTLING = "settling"
    FINISHING = "finishing"
    STOPPING = "stopping"
    CONCLUDED = "concluded"
    REQUEUED = "requeued"


#: The phases each phase may move to.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.ACTIVE: frozenset({Phase.SETTLING, Phase.FINISHING, Phase.STOPPING, Phase.CONCLUDED, Phase.REQUEUED}),
    Phase.SETTLING: frozenset({Phase.FINISHING, Phase.STOPPING, Phase.CONCLUDED, Phase.REQUEUED}),
    Phase.REQUEUED: frozenset({Phase.ACTIVE, Phase.FINISHING, Phase.STOPPING, Phase.CONCLUDED}),
    Phase.FINISHING: frozenset({Phase.STOPPING, Phase.CONCLUDED}),
    Phase.STOPPING: frozenset({Phase.CONCLUDED}),
    Phase.CONCLUDED: frozenset(),
}


class TransitionError(RuntimeError):
    """A transition :data:`TRANSITIONS` does not allow: a bug in the platform."""


def check_transition(current: Phase, new: Phase) -> None:
    if new not in TRANSITIONS[current]:
        raise TransitionError(f"A Kubernetes trial cannot go from {current.name} to {new.name}.")


def is_signal_exit(code: int | None) -> bool:
    """An exit code that means the process was killed by a signal (SIGTERM, SIGKILL, SIGINT, SIGHUP): what a
    trial's keeper reports when its pod was deleted or evicted under it."""
    return code is not None and (code < 0 or code in (129, 130, 137, 143))


@dataclass
class Facts:
    """What the platform learnt about one trial, from the watches, the keeper and its own actions."""

    #: The keeper's exit code, reported or read back from its journal.
    keeper_exit: int | None = None
    #: The keeper's exit found in the pod's log but not deliverable, because records before it are in no log
    #: the manager could read (the kubelet rotated the log first): ``(exit code, first missing record)``.
    log_exit: tuple[int, int] | None = None
    #: The job's final state (finished), from the job watch.
    job_final: JobView | None = None
    #: The job was deleted by someone else before it finished.
    job_vanished: bool = False
    #: Why a pod does not run or died (the first problem; an eviction or an OOM kill wins).
    problem: PodProblem | None = None
    #: A running pod of the trial deleted by someone else (kubectl delete pod, a drain's eviction) before
    #: anything of the trial ended.
    pod_deleted: str | None = None
    #: The exit code of the reporting pod's container, from the pod watch.
    primary_exit: int | None = None
    #: Warning events of the job and its pods (FailedCreatePod, FailedScheduling...), latest last.
    warnings: list[str] = field(default_factory=list)
    #: The job cannot create its pods (FailedCreatePod and the like): the event's message.
    cannot_create: str | None = None
    #: A cancel asked for this status.
    cancel_status: TrialJobStatus | None = None
    #: A failure the platform decided (message, infrastructure): the pending time-out, the anchor lost...
    forced: tuple[str, bool] | None = None
    #: The last lines of the reporting pod's log, or the launcher's own error, on a failure without exit.
    log_tail: str = ""
    #: Kueue holds the trial (its object is suspended, its Workload not admitted): the WAITING reason.
    queued: str | None = None
    #: Kueue admitted the trial's Workload, or the trial ran (in this round: an eviction resets it).
    admitted: bool = False
    #: How many times Kueue evicted (preempted) the trial after admitting it.
    requeues: int = 0

    def requeue(self) -> None:
        """Forget what the evicted run left (its keeper's exit, its pods' problems): it was not the trial's
        end. What the platform or the user decided (a cancel, a forced failure) stays."""
        self.keeper_exit = None
        self.log_exit = None
        self.job_final = None
        self.problem = None
        self.pod_deleted = None
        self.primary_exit = None
        self.warnings = []
        self.cannot_create = None
        self.log_tail = ""
        self.admitted = False
        self.requeues += 1


@dataclass(frozen=True)
class Decision:
    status: TrialJobStatus
    message: str | None
    exit_code: int | None
    infrastructure: bool = False


@dataclass(frozen=True)
class Names:
    """What the messages name: the job's kind and name, the trial's directory, the reporting pod."""

    kind: str
    job: str
    working_directory: str | None = None
    primary_pod: str = ""
    #: Whether the pods share storage with the manager (NFS, Azure Files), or have none (storageType none).
    shared_storage: bool = True


class KueueStep(enum.Enum):
    """What a trial does about its Workload's news (:func:`kueue_step`)."""

    #: Kueue holds it: WAITING with the reason; running signals of pods do not count.
    HOLD = "hold"
    #: Kueue admitted it: its pods may run; the pending time-out starts now.
    ADMIT = "admit"
    #: Kueue evicted it after admitting it: back to WAITING (``REQUEUED`` until its old pods are gone).
    REQUEUE = "requeue"
    #: Nothing to do (finished, already ending, or the trial ended on its own before the eviction).
    IGNORE = "ignore"


def kueue_step(phase: Phase, f: Facts, state: str) -> KueueStep:
    """What a trial in ``phase`` with facts ``f`` does when its Workload is in ``state`` (``queued``,
    ``admitted``, ``evicted`` or ``finished``; see :func:`.kueue.admission`)."""
    if phase not in (Phase.ACTIVE, Phase.SETTLING, Phase.REQUEUED) or state == "finished":
        return KueueStep.IGNORE
    if state == "admitted":
        return KueueStep.ADMIT if phase is Phase.ACTIVE and not f.admitted else KueueStep.IGNORE
    if phase is Phase.REQUEUED:
        return KueueStep.HOLD
    if phase is Phase.SETTLING and f.keeper_exit is not None and not is_signal_exit(f.keeper_exit):
        return KueueStep.IGNORE  # the trial ended by itself just before the eviction: that is its end
    # Queued or evicted: a requeue if this round was admitted (or ran), else it still waits.
    return KueueStep.REQUEUE if f.admitted or phase is Phase.SETTLING else KueueStep.HOLD


def running_signal_counts(phase: Phase, f: Facts) -> bool:
    """Whether a pod Running (or the job running) makes the trial RUNNING: not while Kueue holds it (a
    stale event of an evicted run), nor while the evicted run's pods are being deleted."""
    return phase is not Phase.REQUEUED and f.queued is None


def pending_timeout_applies(phase: Phase, f: Facts) -> bool:
    """``pendingTimeout`` counts the time pods stay Pending, not the time Kueue queues the trial."""
    return phase is Phase.ACTIVE and f.queued is None


def _infrastructure_cause(f: Facts, n: Names) -> str | None:
    """The platform, not the trial, ended it: why (None when nothing says so)."""
    if f.problem is not None and f.problem.kind == "evicted":
        return f.problem.message
    if f.pod_deleted is not None:
        return (
            f"The pod {f.pod_deleted} was deleted outside nni-ts while the trial ran (kubectl delete pod, "
            "or an eviction by kubectl drain)."
        )
    if f.job_vanished and f.job_final is None:
        return f"The {n.kind} {n.job} was deleted outside nni-ts before the trial ended."
    if f.job_final is not None and f.job_final.infrastructure:
        return f.job_final.message
    return None


def decide(f: Facts, n: Names) -> Decision:
    """The trial's terminal status, message, exit code and whether the platform (not the trial) failed."""
    code = f.keeper_exit
    lost = ""
    if code is None and f.log_exit is not None:
        # The exit is known from the pod's log; the metrics after the gap are not (never with a hole).
        code = f.log_exit[0]
        lost = (
            f"Its metric records from #{f.log_exit[1]} on were lost: the kubelet rotated the pod's log before "
            "the manager could read them."
        )
    if f.forced is not None:
        message, infra = f.forced
        return Decision(TrialJobStatus.FAILED, message, code, infra)
    if f.cancel_status is not None:
        return Decision(f.cancel_status, "Cancelled.", code)
    if code == 0:
        return Decision(TrialJobStatus.SUCCEEDED, lost or None, 0)
    view, problem = f.job_final, f.problem
    cause = _infrastructure_cause(f, n)
    if cause is not None and (code is None or is_signal_exit(code)):
        exit_code = code if code is not None else view.exit_code if view is not None else f.primary_exit
        suffix = f" The trial command was stopped (exit code {code})." if code is not None else ""
        return Decision(TrialJobStatus.FAILED, cause + suffix, exit_code, True)
    if f.cannot_create is not None and code is None:
        return Decision(
            TrialJobStatus.FAILED,
            f"The {n.kind} {n.job} cannot create its pods: {f.cannot_create}",
            None,
        )
    if code is not None:
        job_failed = view is not None and view.phase == "failed" and bool(view.message)
        if is_signal_exit(code) and job_failed and (problem is None or problem.kind != "oom"):
            # The trial was stopped because something else failed (another replica): say what.
            assert view is not None and view.message is not None
            return Decision(
                TrialJobStatus.FAILED,
                f"{view.message} The reporting replica's command was stopped with it (exit code {code}).",
                code,
            )
        message = f"The trial command exited with code {code}." + (f" {lost}" if lost else "")
        if problem is not None and problem.kind == "oom":
            message += f" {problem.message}"
        elif job_failed:
            message += f" {view.message}"  # type: ignore[union-attr]
        return Decision(TrialJobStatus.FAILED, message, code)
    exit_code = view.exit_code if view is not None and view.exit_code is not None else f.primary_exit
    if view is not None and view.phase == "succeeded":
        if not n.shared_storage:
            return Decision(
                TrialJobStatus.FAILED,
                f"The {n.kind} {n.job} succeeded, but the trial keeper's exit reached neither the manager "
                f"nor the log of pod {n.primary_pod or '(unknown)'} (without shared storage the pod log is "
                "the only other record): the pod's log may have been rotated or removed before it was read.",
                exit_code,
            )
        return Decision(
            TrialJobStatus.FAILED,
            f"The {n.kind} {n.job} succeeded, but the trial keeper left no exit record in "
            f"{n.working_directory}: the pods may not see the storage the manager writes to "
            "(check trainingService.storage: server, path, localMountPath).",
            exit_code,
        )
    parts = [view.message if view is not None and view.message else f"The {n.kind} {n.job} failed."]
    if problem is not None:
        parts.append(problem.message)
    if f.warnings:
        parts.append(f"Events: {f.warnings[-1]}")
    parts.append("The trial keeper did not record an exit (it was killed with the trial, or never started).")
    if f.log_tail:
        parts.append(f"From pod {n.primary_pod}: {f.log_tail}")
    return Decision(TrialJobStatus.FAILED, " ".join(parts), exit_code)
