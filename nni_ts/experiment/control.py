"""The manager's control socket: how ``nni-ts stop``, ``trial kill`` and ``trial log`` reach a running manager.

A Unix socket in a directory only the user can enter (mode 0700), one JSON request per connection,
one JSON answer. Requests: ``{"op": "stop"}``, ``{"op": "kill", "trial": ID}``,
``{"op": "log", "trial": ID, "file": "stdout", "tail": N}``, ``{"op": "progress"}``,
``{"op": "update", "trialConcurrency": N, "maxTrialNumber": N, "maxExperimentDuration": D, "searchSpace": {...}}``
(any of the four keys; ``nni-ts update``),
``{"op": "import", "offset": N}`` (feed the tuner the imported results written from byte N on).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NniTsError, UserError

if TYPE_CHECKING:
    from .experiment import Experiment

__all__ = ["ControlServer", "request", "socket_path"]

log = logging.getLogger(__name__)

_MAX_REQUEST = 64 * 1024


def socket_path(experiment_id: str) -> Path:
    """Where the manager of ``experiment_id`` listens (short enough for AF_UNIX, private to the user)."""
    from ..paths import home

    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"nni-ts-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    os.chmod(base, 0o700)
    digest = hashlib.sha256(f"{home().resolve()}\0{experiment_id}".encode()).hexdigest()[:20]
    return base / f"{digest}.sock"


class ControlServer:
    """Serves control requests for one experiment while its loop runs."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.path = socket_path(experiment.id)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = b""
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=10)
            if len(line) > _MAX_REQUEST:
                answer: dict[str, Any] = {"ok": False, "error": "request too large"}
            else:
                answer = await self._answer(json.loads(line))
        except (ValueError, TimeoutError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        except NniTsError as exc:
            answer = {"ok": False, "error": str(exc)}
        try:
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            # The client gave up waiting (its time-out) and closed: the request was carried out anyway.
            log.info("A control client left before its answer (%s); it was: %s.", req_summary(line), answer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, req: dict[str, Any]) -> dict[str, Any]:
        exp = self.experiment
        op = req.get("op")
        if op == "stop":
            exp.stop(str(req.get("reason") or "Stopped by the user (nni-ts stop)."))
            return {"ok": True}
        if op == "import":
            from .experiment import IMPORTED_FILE, read_imported

            entries = read_imported(exp.working_directory / IMPORTED_FILE, int(req.get("offset", 0)))
            exp.import_results(entries)
            return {"ok": True, "imported": len(entries)}
        if op == "progress":
            return {"ok": True, "progress": dataclasses.asdict(exp.progress())}
        if op == "update":
            changed = await exp.update(
                trial_concurrency=req.get("trialConcurrency"),
                max_trial_number=req.get("maxTrialNumber"),
                max_experiment_duration=req.get("maxExperimentDuration"),
                search_space=req.get("searchSpace"),
            )
            return {"ok": True, "updated": changed}
        service = exp.service
        if service is None:
            return {"ok": False, "error": "the experiment is not running yet"}
        trial = str(req.get("trial", ""))
        if op == "kill":
            await exp.kill_trial(trial)
            return {"ok": True}
        if op == "log":
            data = await service.get_trial_file(trial, str(req.get("file", "stdout")), tail=req.get("tail"))
            return {"ok": True, "data": base64.b64encode(data).decode()}
        return {"ok": False, "error": f"unknown operation {op!r}"}


def req_summary(line: bytes) -> str:
    """A control request, shortened for a log line."""
    return line[:200].decode("utf-8", "replace").strip() or "an empty request"


def request(experiment_id: str, req: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to the manager of ``experiment_id``. Raises UserError if nobody listens."""
    path = socket_path(experiment_id)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps(req).encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise UserError(f"The manager of experiment {experiment_id} is not running.") from exc
    except TimeoutError as exc:
        raise UserError(
            f"The manager of experiment {experiment_id} did not answer within {timeout:g} s; it may still carry "
            "out the request (a machine it must reach may be unreachable). Check with 'nni-ts trial ls'."
        ) from exc
    except OSError as exc:
        raise UserError(f"Could not reach the manager of experiment {experiment_id}: {exc}.") from exc
    finally:
        sock.close()
    answer: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    if not answer.get("ok"):
        raise UserError(f"The manager of experiment {experiment_id} refused: {answer.get('error', 'no answer')}.")
    return answer
