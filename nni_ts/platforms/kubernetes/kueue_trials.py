"""What a Kubernetes platform does with Kueue's news about its trials (functions of a
:class:`~.service.KubernetesTrainingService`; the decisions are :func:`.lifecycle.kueue_step`'s).

* At start (``queueName`` given): the LocalQueue must exist (:func:`.kueue.check_queue`), then one watch
  on the namespace's Workloads for the experiment; each is mapped to its trial by its ownerReference.
* A trial Kueue holds is WAITING with Kueue's reason (the Workload's QuotaReserved message), never
  RUNNING: its object is suspended, so it has no pods, and a stale running signal does not count.
* Admitted: the pods start; ``pendingTimeout`` counts from the admission, not from the submission.
* Evicted (preempted) after an admission: the trial goes back to WAITING (``reporter.requeued``), phase
  ``REQUEUED``: its keeper's registration is dropped (its SIGTERM exit, its late reports and its pods'
  deletion are not the trial's end), and once the evicted run's pods are gone the trial is ACTIVE again
  with a new registration that starts at the records already delivered. When Kueue admits it again, a
  new pod runs the trial anew: its keeper takes the next attempt number (``--attempt auto``) and the
  cluster server skips the records delivered before the eviction, so that every metric arrives once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ...models import TrialJobStatus
from . import kueue as kq
from .lifecycle import KueueStep, Phase, kueue_step
from .names import LABEL_TRIAL
from .status import pod_phase, pod_problem
from .watch import Watcher

if TYPE_CHECKING:
    from .client import JSON
    from .service import KubernetesTrainingService, _Trial

__all__ = [
    "attempt_of",
    "held_if_suspended",
    "on_evicted_pod",
    "on_workload",
    "reattached_while_evicted",
    "replay_workload",
    "start",
]

log = logging.getLogger(__name__)


async def start(service: KubernetesTrainingService[Any]) -> None:
    queue = str(service.config.queue_name)
    await kq.check_queue(service.kube, service.namespace, queue)
    watch = service._workload_watch = Watcher(
        service.kube,
        kq.workloads_path(service.namespace),
        "",  # Workloads do not carry the trial's labels: their ownerReference names the trial's object
        lambda kind, wl: on_workload_event(service, kind, wl),
        name="workloads",
        resync=service.resync,
        busy=service._busy,
    )
    service._watchers.append(watch)
    watch.start()
    await watch.wait_synced(60)


def on_workload_event(service: KubernetesTrainingService[Any], kind: str, wl: JSON) -> None:
    name = kq.workload_owner(wl, service.kind)
    trial = service._by_job.get(name) if name else None
    if trial is not None and kind != "DELETED":
        service._post_event(trial, "workload", wl)


def replay_workload(service: KubernetesTrainingService[Any], trial: _Trial) -> None:
    if service._workload_watch is None:
        return
    for wl in list(service._workload_watch.cache.values()):
        if kq.workload_owner(wl, service.kind) == trial.job:
            service._post_event(trial, "workload", wl)


def reattached_while_evicted(service: KubernetesTrainingService[Any], trial: _Trial) -> bool:
    """On a re-attach (a resumed manager): whether the trial's object is suspended (Kueue holds it) while pods
    of the trial are still there. Those are the pods of a run Kueue evicted, still terminating: their keeper may
    still report (its SIGTERM exit, retried until its grace period ends) to the cluster server, which the new
    manager serves on the same port. The trial is then ``REQUEUED``, as after an eviction this manager saw: its
    channel is registered only once those pods are gone (:func:`requeue_done_if_gone`), and it is WAITING.

    Either way the trial's facts carry over what the earlier manager knew: how many times Kueue requeued it, and
    whether it ran (RUNNING or UNKNOWN: Kueue had admitted it, so an evicted or queued Workload now is a requeue,
    not a trial that still waits for its first admission)."""
    trial.facts.requeues = int((trial.detail.platform_data or {}).get("requeues") or 0)
    trial.facts.admitted = trial.detail.status in (TrialJobStatus.RUNNING, TrialJobStatus.UNKNOWN)
    jobs, pods = service._job_watch, service._pod_watch
    if not service.config.queue_name or jobs is None or pods is None:
        return False
    obj = jobs.cache.get(trial.job)
    left = [p for p in pods.cache.values() if (p["metadata"].get("labels") or {}).get(LABEL_TRIAL) == trial.label]
    if obj is None or not kq.is_suspended(obj) or not left:
        return False
    trial.move(Phase.REQUEUED)
    trial.evicted_pods = {p["metadata"]["uid"] for p in left}
    trial.facts.requeues += 1  # an earlier manager records an eviction only once its pods are gone
    message = kq.held_message(str(service.config.queue_name))
    if service._workload_watch is not None:
        for wl in service._workload_watch.cache.values():
            if kq.workload_owner(wl, service.kind) == trial.job:
                message = kq.admission(wl).message
    trial.facts.queued = message
    service.reporter.requeued(trial.id, message)  # RUNNING when the manager died: WAITING now (not a failure)
    log.info("Trial %s: re-attached while the pods of its evicted run end: %s", trial.id, message)
    return True


def held_if_suspended(service: KubernetesTrainingService[Any], trial: _Trial, obj: JSON) -> None:
    """The trial's object came back suspended (Kueue's webhook) before its Workload: Kueue holds it."""
    facts = trial.facts
    if (
        service.config.queue_name
        and trial.phase is Phase.ACTIVE
        and trial.workload is None
        and not facts.admitted
        and facts.queued is None
        and kq.is_suspended(obj)
    ):
        facts.queued = kq.held_message(str(service.config.queue_name))
        service.reporter.waiting(trial.id, facts.queued)


async def on_workload(service: KubernetesTrainingService[Any], trial: _Trial, wl: JSON) -> None:
    trial.workload = wl
    news = kq.admission(wl)
    facts = trial.facts
    step = kueue_step(trial.phase, facts, news.state)
    if step is KueueStep.HOLD:
        facts.queued = news.message
        service.reporter.waiting(trial.id, news.message)
    elif step is KueueStep.ADMIT:
        facts.queued, facts.admitted = None, True
        cq = str(((wl.get("status") or {}).get("admission") or {}).get("clusterQueue") or "")
        service.reporter.waiting(
            trial.id, f"Admitted by Kueue{' in ClusterQueue ' + repr(cq) if cq else ''}; the pods are starting."
        )
        # The pending time-out counts from the admission: the time in Kueue's queue is not a stuck pod.
        trial.cancel_timers()
        service._after(trial, service.config.pending_timeout, "pending_timeout")
        for pod in list(trial.pods.values()):  # a pod's Running may have come before the admission
            if pod_phase(pod) == "Running" and pod_problem(pod) is None:
                service._mark_running(trial)
    elif step is KueueStep.REQUEUE:
        await requeue(service, trial, news.message)


async def requeue(service: KubernetesTrainingService[Any], trial: _Trial, message: str) -> None:
    """Kueue evicted the trial's run: WAITING again; the run's end is not the trial's (REQUEUED)."""
    trial.move(Phase.REQUEUED)
    trial.cancel_timers()
    trial.facts.requeue()
    trial.facts.queued = message
    if trial.sink is not None:
        trial.sink.retired = True
    service.server.unregister(trial.id)
    trial.evicted_pods = {p["metadata"]["uid"] for p in trial.pods.values()}
    if not service.reporter.requeued(trial.id, message):
        service.reporter.waiting(trial.id, message)
    log.info("Trial %s: %s", trial.id, message)
    await requeue_done_if_gone(service, trial)


async def on_evicted_pod(service: KubernetesTrainingService[Any], trial: _Trial, kind: str, pod: JSON) -> None:
    """A pod event while REQUEUED: cached; the trial is ACTIVE again once the evicted run's pods are gone."""
    name = pod["metadata"]["name"]
    if kind == "DELETED":
        if trial.pods.get(name, {}).get("metadata", {}).get("uid") == pod["metadata"].get("uid"):
            trial.pods.pop(name, None)
    else:
        trial.pods[name] = pod
    await requeue_done_if_gone(service, trial)


async def requeue_done_if_gone(service: KubernetesTrainingService[Any], trial: _Trial) -> None:
    live = {p["metadata"]["uid"] for p in trial.pods.values()}
    if trial.phase is not Phase.REQUEUED or trial.evicted_pods & live:
        return
    trial.evicted_pods = set()
    trial.move(Phase.ACTIVE)
    # The next run's keeper reports from the records already delivered (they are skipped).
    service._register(trial, attempt=None, next_seq=service.reporter.delivered(trial.id))
    data = dict(service.reporter.detail(trial.id).platform_data or {})
    data.update(requeues=trial.facts.requeues)
    service.reporter.note(trial.id, platform_data=data)
    if trial.workload is not None:
        await on_workload(service, trial, trial.workload)  # admitted again already, or still queued


def attempt_of(service: KubernetesTrainingService[Any], trial: _Trial) -> int | None:
    """The attempt whose journal and exit record are the trial's: the one its keeper reported with, else
    (a trial that may run again, ``auto``) None, the latest that recorded an exit."""
    try:
        attempt = service.server.channel(trial.id).attempt
    except KeyError:
        attempt = None
    if attempt is not None:
        return attempt
    return None if service._reruns else trial.attempt
