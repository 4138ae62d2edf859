"""Kubernetes trials without a shared file system (``storage: {storageType: none}``).

Each pod mounts an ``emptyDir`` at :data:`~.staging.MOUNT_PATH` instead of NFS or an Azure share. Its
launcher first runs the bootstrap (:mod:`trial_keeper.bootstrap`, passed inline through the pod's
environment) which fetches, with the trial's token, from the manager's cluster server:

* ``keeper.tar.gz``: the trial_keeper package (standard library only);
* ``code.tar.gz``: the trial code directory (unless ``codeInImage`` says the image has it), archived once
  and again whenever a file changes, at most :data:`CODE_ARCHIVE_LIMIT` bytes compressed;
* ``parameter.cfg``: the trial's parameters.

The keeper then reports as usual; it also writes every record and its exit to its stdout as frames
(:mod:`trial_keeper.logframes`, MAC'd with a key derived from the trial's token). When the keeper cannot
reach the manager, the frames come from the reporting pod's log (``GET .../pods/NAME/log``), through the
same de-duplicating :class:`~nni_ts.server.TrialChannel` as live reports:

* once the keeper is reported lost (no report for the heartbeat time-out) while its pod runs,
  :meth:`PodStager.keeper_lost` follows the pod's log (``follow=true``, one streaming request) until the
  container ends, delivering records and the exit as they appear: the keeper keeps trying to report for
  ``reportTimeout`` after its trial ended, so the pod lives on meanwhile, and a controller that deletes
  finished pods at once (FrameworkController) cannot take the log away first;
* when the reporting container ended without the keeper's exit reaching the manager, or the job finished,
  or the trial is stopped, :meth:`PodStager.read_back` reads the whole log once (the service then feeds
  what it returns), completed by what earlier reads found (the pod may be gone by then).
"""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

import trial_keeper
from trial_keeper.logframes import FrameReader, frame_key

from ...errors import ConfigError, TemporaryError, TrialNotFoundError
from .client import KubeApiError
from .staging import Stager, _code_files, keeper_source_files

if TYPE_CHECKING:
    from ...server import ClusterServer
    from .service import KubernetesTrainingService

__all__ = ["BOOTSTRAP_SOURCE", "CODE_ARCHIVE_LIMIT", "PodStager", "archive"]

log = logging.getLogger(__name__)

#: The largest code archive (gzip-compressed) sent to the pods; beyond it the code belongs in the image.
CODE_ARCHIVE_LIMIT = 64 * 1024 * 1024
#: The pod's bootstrap, run as ``python3 -c "$NNI_TS_KEEPER_BOOTSTRAP"``.
BOOTSTRAP_SOURCE = (Path(trial_keeper.__file__).resolve().parent / "bootstrap.py").read_text(encoding="utf-8")
#: Seconds a read of a pod's log may take.
LOG_TIMEOUT = 120.0
#: Connections a log follower makes at most (it reconnects when the stream breaks before the pod ended).
FOLLOW_TRIES = 5


def archive(files: list[tuple[Path, str]]) -> bytes:
    """A tar.gz of ``(local path, name in the archive)``. Symbolic links are stored as links, never
    followed: nothing outside the listed files leaves the manager."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for path, name in files:
            try:
                info = tar.gettarinfo(str(path), arcname=name)
            except OSError:
                continue  # vanished meanwhile
            if info.isfile():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            elif info.issym():
                tar.addfile(info)
    return buffer.getvalue()


class PodStager(Stager):
    """The "stager" of the no-shared-storage mode: it serves the files the pods fetch (through the cluster
    server, :meth:`trial_download`) and reads the metric frames back from the pods' logs."""

    reads_pod_logs = True

    def __init__(self, service: KubernetesTrainingService[Any], storage: Any) -> None:
        super().__init__(service.experiment_id)
        self.service = service
        self.code_in_image: str | None = storage.code_in_image
        self.code_archive_limit = CODE_ARCHIVE_LIMIT
        self._code_dir: Path | None = None
        self._code: bytes | None = None
        self._keeper = b""
        self._files: dict[str, dict[str, bytes]] = {}
        #: What each pod's log gave so far, by ``(trial, pod)``: records by seq and the exit (the pod may be
        #: gone at the next read; a replaced pod's log is another run's and is kept apart).
        self._read: dict[tuple[str, str], tuple[dict[int, str], dict[str, Any] | None]] = {}
        self._followers: dict[tuple[str, str], asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ paths and environment

    def pod_code_dir(self) -> str:
        return self.code_in_image or super().pod_code_dir()

    def trial_location(self, trial_id: str) -> str:
        return f"pod:{self.pod_trial_dir(trial_id)}"

    def pod_env(self, trial_id: str) -> dict[str, str]:
        fetch = ["keeper", "parameter.cfg"] if self.code_in_image else ["keeper", "code", "parameter.cfg"]
        env = {
            "NNI_TS_KEEPER_BOOTSTRAP": BOOTSTRAP_SOURCE,
            "NNI_TS_KEEPER_FETCH": " ".join(fetch),
            "NNI_TS_KEEPER_FETCH_LIMIT": str(max(self.code_archive_limit, 16 * 1024 * 1024)),
            "NNI_TS_KEEPER_LOG_FRAMES": "1",
        }
        ca = self._files.get(trial_id, {}).get("cluster-server-ca.pem")
        if ca is not None:
            env["NNI_TS_KEEPER_CA_PEM"] = ca.decode("ascii", "replace")
        return env

    def serve(self, server: ClusterServer) -> None:
        server.serve_downloads(self)

    # ------------------------------------------------------------------ what the pods fetch

    async def prepare(self, code_dir: Path) -> bool:
        if self.code_in_image:
            self._keeper = await asyncio.to_thread(archive, keeper_source_files())
            return True
        return await super().prepare(code_dir)

    def _prepare(self, code_dir: Path) -> bool:
        self._keeper = archive(keeper_source_files())
        self._code_dir = code_dir
        self._changed(code_dir)
        self._code = self._archive_code(code_dir)
        return True

    def _archive_code(self, code_dir: Path) -> bytes:
        data = archive(_code_files(code_dir))
        if len(data) > self.code_archive_limit:
            raise ConfigError(
                f"the trial code directory {code_dir} makes a {len(data) / 2**20:.1f} MiB archive, more than the "
                f"{self.code_archive_limit / 2**20:g} MiB that storageType none sends to each pod. Put the large "
                "files in the image (storage.codeInImage), or use NFS.",
                path="trialCodeDirectory",
            )
        return data

    async def refresh(self, code_dir: Path) -> int:
        if self.code_in_image:
            return 0
        return await super().refresh(code_dir)

    def _upload_code(self, files: list[tuple[Path, str]]) -> None:
        if self._code_dir is not None:
            self._code = self._archive_code(self._code_dir)

    async def write_trial(self, trial_id: str, files: dict[str, bytes]) -> None:
        self._prune()
        self._files.setdefault(trial_id, {}).update(files)

    def _write_trial(self, trial_id: str, files: dict[str, bytes]) -> None:
        raise AssertionError("PodStager.write_trial keeps the files in memory")  # pragma: no cover

    def _prune(self) -> None:
        """Forget the files and read-backs of the trials that ended (their pods fetch nothing more; their
        read-back is done)."""
        for trial_id in list(self._files):
            try:
                ended = self.service.reporter.status(trial_id).is_terminal
            except TrialNotFoundError:
                ended = True
            if ended:
                self._files.pop(trial_id, None)
                for key in [k for k in self._read if k[0] == trial_id]:
                    del self._read[key]
                for key in [k for k, task in self._followers.items() if k[0] == trial_id and task.done()]:
                    del self._followers[key]

    async def trial_download(self, trial_id: str, name: str) -> bytes | None:
        """A file the trial's pod fetches (the cluster server's ``GET .../files/{name}``)."""
        if name == "keeper.tar.gz":
            return self._keeper
        if name == "code.tar.gz":
            return None if self.code_in_image else self._code
        if name == "parameter.cfg":
            data = self._files.get(trial_id, {}).get(name)
            if data is None:  # a manager restarted since the trial was submitted (a pod queued meanwhile)
                try:
                    data = self.service.reporter.detail(trial_id).form.hyper_parameters.value.encode()
                except TrialNotFoundError:
                    return None
            return data
        return None

    # ------------------------------------------------------------------ reading back

    async def read_back(
        self, trial_id: str, attempt: int | None, pod: str | None = None
    ) -> tuple[list[tuple[int, str]], dict[str, Any] | None]:
        """The records and the exit framed in the pod's log, with what earlier reads found."""
        if pod:
            path = f"/api/v1/namespaces/{self.service.namespace}/pods/{pod}/log"
            try:
                text = await self.service.kube.request_text("GET", path, timeout=LOG_TIMEOUT)
            except (KubeApiError, TemporaryError, TimeoutError, aiohttp.ClientError) as exc:
                log.info("Trial %s: could not read pod %s's log for its metrics: %s", trial_id, pod, exc)
            else:
                reader = self._reader(trial_id, attempt)
                self._keep(trial_id, pod, reader.feed(text), reader.ended)
                self._warn_forged(trial_id, pod, reader)
        records, ended = self._read.get((trial_id, pod or ""), ({}, None))
        self._warn_gap(trial_id, records, ended)
        return sorted(records.items()), ended

    def _reader(self, trial_id: str, attempt: int | None) -> FrameReader:
        return FrameReader(frame_key(self.service.server.token_for(trial_id)), trial_id, attempt)

    def _keep(self, trial_id: str, pod: str, found: list[tuple[int, str]], ended: dict[str, Any] | None) -> None:
        records, known = self._read.setdefault((trial_id, pod), ({}, None))
        for seq, data in found:
            records.setdefault(seq, data)
        self._read[(trial_id, pod)] = (records, ended or known)

    @staticmethod
    def _warn_forged(trial_id: str, pod: str, reader: FrameReader) -> None:
        if reader.rejected:
            log.warning(
                "Trial %s: %d frame(s) in pod %s's log are not its keeper's (forged or damaged); ignored.",
                trial_id,
                reader.rejected,
                pod,
            )

    def keeper_lost(self, trial_id: str, attempt: int | None, pod: str) -> None:
        """The trial's keeper stopped reporting while its pod may still run: follow the pod's log."""
        task = self._followers.get((trial_id, pod))
        if pod and (task is None or task.done()):
            self._followers[(trial_id, pod)] = self.service.tasks.spawn(
                self._follow(trial_id, attempt, pod), name=f"nni-ts-pod-log-{trial_id}"
            )

    async def _follow(self, trial_id: str, attempt: int | None, pod: str) -> None:
        path = f"/api/v1/namespaces/{self.service.namespace}/pods/{pod}/log"
        for _ in range(FOLLOW_TRIES):
            reader = self._reader(trial_id, attempt)  # a reconnection reads the log from its start again
            try:
                async for line in self.service.kube.stream_lines(path, {"follow": "true"}):
                    found = reader.feed(line)
                    if found or reader.ended is not None:
                        self._keep(trial_id, pod, found, reader.ended)
                        if not await self._deliver(trial_id, found, reader.ended):
                            return
                return  # the container ended
            except (KubeApiError, TemporaryError, TimeoutError, aiohttp.ClientError) as exc:
                log.info("Trial %s: following pod %s's log failed: %s", trial_id, pod, exc)
            finally:
                self._warn_forged(trial_id, pod, reader)
            await asyncio.sleep(1.0)

    async def _deliver(self, trial_id: str, records: list[tuple[int, str]], ended: dict[str, Any] | None) -> bool:
        """Feed the trial's channel (the de-duplicating path of live reports); False once it is over."""
        try:
            channel = self.service.server.channel(trial_id)
        except KeyError:
            return False
        if records:
            await channel.feed(records)
        if ended is not None:
            await channel.finish(int(ended["exit_code"]), int(ended["end_time_ms"]), int(ended["record_count"]))
        return not channel.exited

    def _warn_gap(self, trial_id: str, records: dict[int, str], ended: dict[str, Any] | None) -> None:
        try:
            delivered = self.service.reporter.delivered(trial_id)
        except TrialNotFoundError:
            return
        end = int(ended["record_count"]) if ended else (max(records) + 1 if records else 0)
        missing = [seq for seq in range(delivered, end) if seq not in records]
        if missing:
            log.warning(
                "Trial %s: %d metric record(s) from #%d on are neither delivered nor in its pod's log (the kubelet "
                "rotated the log, or the pod is gone); the records after them are not delivered either.",
                trial_id,
                len(missing),
                missing[0],
            )

    def _read_back(self, trial_id: str, attempt: int | None) -> tuple[list[tuple[int, str]], dict[str, Any] | None]:
        raise AssertionError("PodStager.read_back is asynchronous")  # pragma: no cover

    async def read_file(self, trial_id: str, name: str, tail: int | None, pod: str | None = None) -> bytes:
        """``stdout``: the reporting pod's log (stdout and stderr as the kubelet merges them), without the
        keeper's frames; everything else is in the pod only (empty here)."""
        if name != "stdout" or not pod:
            return b""
        path = f"/api/v1/namespaces/{self.service.namespace}/pods/{pod}/log"
        query = {"tailLines": max(100, tail // 16)} if tail is not None else {}
        try:
            text = await self.service.kube.request_text("GET", path, query=query, timeout=LOG_TIMEOUT)
        except (KubeApiError, TemporaryError, TimeoutError, aiohttp.ClientError) as exc:
            log.info("Trial %s: no log from pod %s: %s", trial_id, pod, exc)
            return b""
        lines = text.splitlines(keepends=True)
        data = "".join(line for line in lines if not line.startswith(("@nni-ts:m1 ", "@nni-ts:x1 "))).encode()
        return data[-tail:] if tail is not None and tail >= 0 else data

    def _read_file(self, trial_id: str, name: str, tail: int | None) -> bytes:
        raise AssertionError("PodStager.read_file is asynchronous")  # pragma: no cover

    def _remove_experiment(self) -> None:
        self._files.clear()
        self._read.clear()
