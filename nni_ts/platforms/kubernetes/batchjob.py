"""The ``kubernetes`` platform: each trial is a ``batch/v1`` Job with one pod, on any cluster (no operator).

The Job uses what Jobs offer for a trial (see docs/kubernetes.md, "platform: kubernetes"):

* ``podFailurePolicy``: first ``Ignore`` on the pod condition ``DisruptionTarget`` (an eviction, a
  preemption, a drained node: the Job replaces the pod without counting it), then ``FailJob`` on the
  trial container's non-zero exit code, so that the trial's own failure fails the Job at once;
* ``backoffLimit`` small (``trainingService.backoffLimit``, default 1): the retries left are for pods that
  failed without the trial's exit code (deleted by hand, their node lost);
* ``podReplacementPolicy: Failed`` (what a podFailurePolicy requires): a replacement pod starts only once
  the old one has ended, so two keepers of a trial never run at once;
* ``activeDeadlineSeconds`` from ``maxTrialDuration`` (the experiment's, inherited, or the platform's);
* the owner reference to the experiment's anchor (no ``ttlSecondsAfterFinished``: a finished Job stays until
  the experiment ends and its anchor is deleted, so that a resumed manager still reads its final state and
  reason).

A replaced pod runs the trial again. Each keeper takes its own attempt number (``auto``); the trial's
channel is registered again with the count of records already delivered, so the new run's records with
those sequence numbers are dropped as duplicates and every metric reaches the experiment once. While the
Job replaces the pod, the trial is WAITING (requeued, not failed), and pendingTimeout counts from the
replacement pod on.

The pod's name is the Job controller's (``<job>-<5 random>``): the pod is found by the trial's labels, and
the trial's primary pod is the newest pod of its Job.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from ...config.batchjob import KubernetesJobConfig
from . import manifest as mf
from .client import JSON
from .lifecycle import Phase, is_signal_exit
from .names import job_name
from .service import KubernetesTrainingService, _Event, _Sink, _Trial
from .status import JobView, batch_job_view, is_disrupted

__all__ = ["CONTAINER", "KubernetesJobTrainingService", "build_batch_job"]

#: The name of the trial's container (the podFailurePolicy's exit-code rule names it).
CONTAINER = "trial"
#: Failure reasons of a Job whose controller deletes the pods still running.
_CONTROLLER_DELETES = frozenset({"DeadlineExceeded", "BackoffLimitExceeded"})


class KubernetesJobTrainingService(KubernetesTrainingService[KubernetesJobConfig]):
    """Trials as ``batch/v1`` Jobs of one pod. See the module docstring."""

    platform_name: ClassVar[str] = "kubernetes"
    config_class: ClassVar[type[KubernetesJobConfig]] = KubernetesJobConfig
    group: ClassVar[str] = "batch"
    version: ClassVar[str] = "v1"
    pods_replaced: ClassVar[bool] = True

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        #: Per trial: the pods the cluster disrupted (the Job replaces them), and how many runs started.
        self._disrupted: dict[str, set[str]] = {}
        self._runs: dict[str, int] = {}

    @property
    def plural(self) -> str:
        return "jobs"

    @property
    def kind(self) -> str:
        return "Job"

    def _missing_crd_hint(self) -> str:
        return "every Kubernetes cluster serves batch/v1 Jobs: check kubeconfig and context (the API server's address)."

    def _job_name(self, trial_id: str) -> str:
        return job_name(self.experiment_id, trial_id)

    def _primary_pod(self, job: str) -> str:
        # The Job controller names the pod (<job>-<5 random>); the pod watch finds it by the trial's labels
        # and records its name (see _on_pod).
        return ""

    def _registry_auth_paths(self) -> list[str]:
        path = self.config.private_registry_auth_path
        return [path] if path else []

    def _build_job(self, trial: _Trial, keeper: mf.KeeperSpec) -> JSON:
        return build_batch_job(self, trial, keeper)

    def _job_view(self, obj: JSON) -> JobView:
        return batch_job_view(obj)

    async def _stop_job(self, trial: _Trial) -> bool:
        return await self._delete(self._collection(), trial.job, "Background")

    # ------------------------------------------------------------------ replaced pods

    async def _on_pod(self, trial: _Trial, kind: str, pod: JSON) -> None:
        name = pod["metadata"]["name"]
        disrupted = self._disrupted.setdefault(trial.id, set())
        why = is_disrupted(pod)
        if why is not None and trial.phase in (Phase.ACTIVE, Phase.SETTLING):
            # Evicted or preempted: the Job's podFailurePolicy ignores it and replaces the pod. Not the
            # trial's end, nor an infrastructure failure.
            if kind == "DELETED":
                trial.pods.pop(name, None)
            else:
                trial.pods[name] = pod
            if name not in disrupted:
                disrupted.add(name)
                if trial.primary_pod not in ("", name):
                    return  # an earlier pod, already replaced (a re-attach replays every pod)
                message = (
                    f"The pod {name} was disrupted ({why}); the Job replaces it and the trial runs again "
                    "(not a failure)."
                )
                if not self.reporter.requeued(trial.id, message):
                    self.reporter.note(trial.id, message=message)
                if trial.phase is Phase.ACTIVE:
                    # Until the Job has created the replacement (once this pod has ended: a grace period),
                    # no time-out applies; pendingTimeout counts again from the replacement on (_rerun).
                    trial.cancel_timers()
            return
        if kind != "DELETED" and name != trial.primary_pod and name not in disrupted:
            if trial.primary_pod and trial.phase is Phase.ACTIVE:
                await self._rerun(trial, name)
            trial.primary_pod = name
        await super()._on_pod(trial, kind, pod)

    def _mark_running(self, trial: _Trial, when: int | None = None) -> None:
        if trial.primary_pod in self._disrupted.get(trial.id, ()):
            return  # the Job still counts the disrupted pod ready for a moment; its replacement's start counts
        super()._mark_running(trial, when)

    async def _rerun(self, trial: _Trial, pod: str) -> None:
        """The Job created ``pod`` in place of the trial's previous pod: its keeper runs the trial again.
        What the previous run's keeper reported is forgotten but the records already delivered, which the
        new channel skips (``next_seq``)."""
        facts = trial.facts
        facts.keeper_exit = None
        facts.log_exit = None
        facts.primary_exit = None
        facts.problem = None
        facts.pod_deleted = None
        facts.log_tail = ""
        trial.end_ms = None
        try:
            delivered = self.server.channel(trial.id).next_seq
        except KeyError:
            return
        self._runs[trial.id] = self._runs.get(trial.id, 1) + 1
        self.server.register(trial.id, self._sink(trial), attempt=None, next_seq=delivered)
        message = f"The Job created the pod {pod} to run the trial again."
        if not self.reporter.requeued(trial.id, message):
            self.reporter.waiting(trial.id, message)
        trial.cancel_timers()
        self._after(trial, self.config.pending_timeout, "pending_timeout")

    def _sink(self, trial: _Trial) -> _Sink:
        return _RunSink(self, trial, self._runs.get(trial.id, 1))

    async def _handle(self, trial: _Trial, ev: _Event) -> None:
        facts = trial.facts
        if (
            ev.kind == "keeper_exited"
            and trial.phase is Phase.ACTIVE
            and facts.job_final is None
            and not trial.job_gone
            and (is_signal_exit(facts.keeper_exit) or trial.primary_pod in self._disrupted.get(trial.id, ()))
        ):
            # The keeper was stopped with its pod (an eviction, a preemption...): the Job either replaces the
            # pod, and the trial runs again, or fails. Wait (bounded) for which.
            self._arm_replace_timeout(trial)
            return
        if ev.kind == "replace_timeout":
            if (
                trial.phase is Phase.ACTIVE
                and ev.text == str(self._runs.get(trial.id, 1))
                and facts.keeper_exit is not None
                and facts.job_final is None
            ):
                if self._suspended(trial):
                    # Suspended (a queue such as Kueue took the pod back): the pod comes when it resumes.
                    self._arm_replace_timeout(trial)
                elif trial.primary_pod not in self._disrupted.get(trial.id, ()):
                    await self._stop(trial)
                # else: evicted, and the replacement waits to be scheduled: pendingTimeout decides.
            return
        await super()._handle(trial, ev)

    def _arm_replace_timeout(self, trial: _Trial) -> None:
        run = self._runs.get(trial.id, 1)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.settle_timeout, self._post, trial, _Event("replace_timeout", text=str(run)))
        trial.timers.append(timer)

    def _suspended(self, trial: _Trial) -> bool:
        """Whether the trial's Job is suspended, as the job watch last saw it."""
        job = self._job_watch.cache.get(trial.job) if self._job_watch is not None else None
        conditions = ((job or {}).get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Suspended" and c.get("status") == "True" for c in conditions)

    async def _conclude(self, trial: _Trial) -> None:
        final = trial.facts.job_final
        if final is not None and final.reason in _CONTROLLER_DELETES:
            # The Job controller itself deleted the running pod (past its deadline): not someone else.
            trial.facts.pod_deleted = None
        self._disrupted.pop(trial.id, None)
        self._runs.pop(trial.id, None)
        await super()._conclude(trial)


class _RunSink(_Sink):
    """The sink of one run of the trial (one pod's keeper). A report of an earlier run still in flight when
    the Job replaced its pod is refused: its records are the new run's to deliver (the same sequence
    numbers), and its exit is not the trial's."""

    def __init__(self, service: KubernetesJobTrainingService, trial: _Trial, run: int) -> None:
        super().__init__(service, trial)
        self.batch = service
        self.run = run

    def _stale(self) -> bool:
        return self.batch._runs.get(self.trial.id, 1) != self.run

    async def on_records(self, records: list[tuple[int, str]]) -> int:
        return 0 if self._stale() else await super().on_records(records)

    async def on_exited(self, exit_code: int, end_time_ms: int) -> None:
        if not self._stale():
            await super().on_exited(exit_code, end_time_ms)


def build_batch_job(service: KubernetesJobTrainingService, trial: _Trial, keeper: mf.KeeperSpec) -> JSON:
    """The ``batch/v1`` Job of one trial."""
    cfg = service.config
    detail = trial.detail
    base = detail.form.command or cfg.command or cfg.trial_command or ""
    gpus = detail.form.gpu_number if detail.form.gpu_number is not None else cfg.gpu_number
    if gpus is None:
        gpus = cfg.trial_gpu_number
    pod_spec: JSON = {
        "restartPolicy": "Never",  # what a podFailurePolicy requires; a retry is a new pod
        "terminationGracePeriodSeconds": int(cfg.cancel_grace_period) + 5,
        "containers": [
            mf.container(
                name=CONTAINER,
                image=cfg.docker_image,
                command=service._role_command(base, detail),
                keeper=keeper,
                primary_test="true",
                cpu=cfg.cpu_number,
                memory_mb=cfg.memory_size,
                gpus=gpus,
            )
        ],
        "volumes": [service.storage_volume()],
    }
    if cfg.private_registry_auth_path:
        pod_spec["imagePullSecrets"] = [{"name": service._registry_secrets[cfg.private_registry_auth_path]}]
    spec: JSON = {
        "backoffLimit": cfg.backoff_limit,
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]}},
            ]
        },
        "podReplacementPolicy": "Failed",
        "template": service.pod_template(trial, pod_spec, role=CONTAINER),
    }
    deadline = cfg.active_deadline_seconds
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": service.trial_metadata(trial),
        "spec": spec,
    }
