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
  or the trial is stopped, :meth:`PodStager.read_back` reads the log once (the service then feeds what it
  returns), completed by what earlier reads found (the pod may be gone by then).

Both stream the log and parse it chunk by chunk (:class:`~.client.LineSplitter`): only the records found
are kept, never the log. The trial's ``stdout`` is the log without the frame lines; a tail of it asks the
API server for the last lines only (``tailLines``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

import trial_keeper
from trial_keeper.logframes import FrameReader, frame_key

from ...errors import ConfigError, TemporaryError, TrialNotFoundError
from .client import KubeApiError, LineSplitter
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
#: Bytes of one log line the frame reader holds at most: a frame line is shorter than 16 KiB and ends its
#: line, so of a longer line (the trial's output glued before a frame) the end is enough.
MAX_LINE = 64 * 1024
#: The longest line that can be a frame (the rest of an ``@nni-ts:`` line is the trial's text).
MAX_FRAME_LINE = 16 * 1024
#: Requests a tail read of ``stdout`` makes at most (each asks for more lines than the one before).
TAIL_TRIES = 4
_FRAME_TAGS = (b"@nni-ts:m1 ", b"@nni-ts:x1 ")


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
        #: The gaps warned about, ``(trial, first missing record)``: each is logged once.
        self._gaps: set[tuple[str, int]] = set()

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
                self._gaps = {gap for gap in self._gaps if gap[0] != trial_id}
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
        """The records and the exit framed in the pod's log, with what earlier reads found. The log is
        streamed and parsed chunk by chunk: only the records found are kept, never the log."""
        if pod:
            reader = self._reader(trial_id, attempt)
            try:
                async for found in self._log_frames(pod, {}, reader, read_timeout=LOG_TIMEOUT):
                    self._keep(trial_id, pod, found, reader.ended)
            except (KubeApiError, TemporaryError, TimeoutError, aiohttp.ClientError) as exc:
                log.info("Trial %s: could not read pod %s's log for its metrics: %s", trial_id, pod, exc)
            finally:
                self._warn_forged(trial_id, pod, reader)
        records, ended = self._read.get((trial_id, pod or ""), ({}, None))
        self._warn_gap(trial_id, records, ended)
        return sorted(records.items()), ended

    def _log_path(self, pod: str) -> str:
        return f"/api/v1/namespaces/{self.service.namespace}/pods/{pod}/log"

    async def _log_frames(
        self, pod: str, query: Mapping[str, Any], reader: FrameReader, *, read_timeout: float | None
    ) -> AsyncIterator[list[tuple[int, str]]]:
        """Stream the pod's log into ``reader``, chunk by chunk (at most :data:`MAX_LINE` bytes of a line
        held): yield the records each chunk completed, whenever it completed some or brought the exit."""
        lines = LineSplitter(MAX_LINE)
        ended = reader.ended
        async for chunk in self.service.kube.stream_bytes(self._log_path(pod), query, read_timeout=read_timeout):
            block = lines.feed(chunk)
            found = reader.feed(block.decode("utf-8", "replace")) if block else []
            if found or reader.ended is not ended:
                ended = reader.ended
                yield found
        found = reader.feed(lines.rest().decode("utf-8", "replace"))
        if found or reader.ended is not ended:
            yield found

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
        for _ in range(FOLLOW_TRIES):
            reader = self._reader(trial_id, attempt)  # a reconnection reads the log from its start again
            try:
                async for found in self._log_frames(pod, {"follow": "true"}, reader, read_timeout=None):
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
        if missing and (trial_id, missing[0]) not in self._gaps:
            self._gaps.add((trial_id, missing[0]))
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
        keeper's frames; everything else is in the pod only (empty here). With ``tail``, only the log's
        last lines are asked for (``tailLines``, more in a next request while they hold fewer than ``tail``
        bytes of text) and at most about ``2 * tail`` bytes are held while they stream in."""
        if name != "stdout" or not pod or (tail is not None and tail <= 0):
            return b""
        lines = max(100, tail // 16) if tail is not None else None
        for _ in range(TAIL_TRIES):
            text = _LogText(tail)
            try:
                query = {"tailLines": lines} if lines is not None else {}
                async for chunk in self.service.kube.stream_bytes(self._log_path(pod), query, read_timeout=LOG_TIMEOUT):
                    text.feed(chunk)
            except (KubeApiError, TemporaryError, TimeoutError, aiohttp.ClientError) as exc:
                log.info("Trial %s: no log from pod %s: %s", trial_id, pod, exc)
                return b""
            text.end()
            if lines is None or tail is None or text.size >= tail or text.lines < lines:
                break  # enough text, or the whole log
            lines *= 8
        return text.value()

    def _read_file(self, trial_id: str, name: str, tail: int | None) -> bytes:
        raise AssertionError("PodStager.read_file is asynchronous")  # pragma: no cover

    def _remove_experiment(self) -> None:
        self._files.clear()
        self._read.clear()


class _LogText:
    """A pod's log without the keeper's frame lines, fed in chunks as they stream in; with ``tail``, only
    its last ``tail`` bytes are kept (at most about twice that is held). A line is held back only while it
    may still be a frame (it starts with a frame's tag and is shorter than :data:`MAX_FRAME_LINE`)."""

    def __init__(self, tail: int | None) -> None:
        self.tail = tail
        self.lines = 0  # lines seen, frames included
        self.size = 0  # bytes of text kept (at most tail)
        self._out = bytearray()
        self._line = bytearray()  # the start of a line that may be a frame
        self._text = False  # the current line is text: it goes out as it comes

    def feed(self, chunk: bytes) -> None:
        start = 0
        while start < len(chunk):
            newline = chunk.find(b"\n", start)
            end = len(chunk) if newline < 0 else newline + 1
            piece = chunk[start:end]
            start = end
            if self._text:
                self._emit(piece)
            else:
                self._line += piece
                head = bytes(self._line[:11])
                if not any(tag.startswith(head) for tag in _FRAME_TAGS) or len(self._line) > MAX_FRAME_LINE:
                    self._text = True  # not a frame: text
                    self._emit(self._line)
                    self._line = bytearray()
                elif newline >= 0:
                    self._line = bytearray()  # a frame line: left out
            if newline >= 0:
                self.lines += 1
                self._text = False

    def end(self) -> None:
        """The log ended: an unfinished line counts, and one that looked like a frame's start is text."""
        if self._text or self._line:
            self.lines += 1
        self._emit(self._line)
        self._line = bytearray()

    def _emit(self, data: bytes | bytearray) -> None:
        self._out += data
        if self.tail is not None and len(self._out) > 2 * self.tail:
            del self._out[: len(self._out) - self.tail]
        self.size = len(self._out) if self.tail is None else min(len(self._out), self.tail)

    def value(self) -> bytes:
        return bytes(self._out if self.tail is None else self._out[-self.tail :])
