"""The keeper itself: run the trial's command, journal its records, report them to the manager.

Standard library only, Python 3.8+. Threads, not asyncio: one reader per output stream, one reporter
that posts to the ClusterServer, and the main thread waiting for the command and handling signals.

Delivery: a record is written to the trial's stdout file, then to the journal (fsync'd), then queued
for the reporter. The reporter posts every record not yet acknowledged, in seq order, and forgets
them only when the server's ``next_seq`` passes them. After an error it retries with capped,
jittered back-off; if the server answers with a ``next_seq`` below what the keeper still holds (a
restarted server), the missing records are read back from the journal and sent again.
"""

import base64
import errno
import http.client as http_client
import json
import logging
import os
import random
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

try:
    import ctypes
except ImportError:  # a Python built without libffi: no subreaper, the marker scan instead
    ctypes = None  # type: ignore[assignment]

from . import LIGHT_NNI_PATH, __version__
from .journal import JOURNAL_NAME, MAX_LINE, STATE_DIR, Journal, read_journal, write_exit
from .logframes import encode_exit, encode_record, frame_key
from .records import parse_stdout_line

if TYPE_CHECKING:  # the annotations are type comments: nothing is imported at run time
    from typing import Any  # noqa: F401

__all__ = [
    "TRIAL_MARKER",
    "Keeper",
    "KeeperConfig",
    "Reporter",
    "build_env",
    "descendants",
    "kill_trial",
    "marked_pids",
]

log = logging.getLogger("trial_keeper")

#: Records and bytes in one report, at most.
BATCH_RECORDS = 2000
BATCH_BYTES = 2 * 1024 * 1024
#: Back-off after a failed report: from MIN to MAX seconds, doubling, with jitter.
BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0
LATE_SIGNAL_WAIT = 2.0  # seconds a SIGTERM after the trial ended leaves for the last acknowledgement
#: Seconds to wait for a connection or an answer.
HTTP_TIMEOUT = 30.0
#: Every process of a trial inherits this environment variable (a random value per attempt), so that
#: the processes that left the trial's process group (``setsid``, ``start_new_session``) are found
#: and killed with it, as a container runtime would. While the keeper lives it finds them faster: it
#: is a child subreaper (Linux), so every process the trial leaves behind stays its descendant.
TRIAL_MARKER = "NNI_TS_TRIAL_MARK"
_PR_SET_CHILD_SUBREAPER = 36


class KeeperError(Exception):
    """A mistake in the keeper's arguments or environment; the message says what to fix."""


class KeeperConfig(object):
    """What the keeper needs; see ``python -m trial_keeper --help`` for each field."""

    def __init__(
        self,
        trial_id,
        trial_dir,
        command,
        attempt=1,
        server_url=None,
        token=None,
        heartbeat=5.0,
        grace=10.0,
        report_timeout=300.0,
        platform="remote",
        experiment_id="",
        sequence_id=0,
        output_dir=None,
        code_dir=None,
        passthrough=True,
        quiet_start=False,
        ca_file=None,
        log_frames=False,
    ):
        # type: (str, str, str, int, str | None, str | None, float, float, float, str, str, int, str | None, str | None, bool, bool, str | None, bool) -> None
        self.trial_id = trial_id
        self.trial_dir = os.path.abspath(trial_dir)
        self.command = command
        self.attempt = attempt
        self.server_url = server_url or None
        self.token = token
        self.heartbeat = heartbeat
        self.grace = grace
        self.report_timeout = report_timeout
        self.platform = platform
        self.experiment_id = experiment_id
        self.sequence_id = sequence_id
        self.output_dir = os.path.abspath(output_dir) if output_dir else self.trial_dir
        self.code_dir = os.path.abspath(code_dir) if code_dir else os.getcwd()
        self.passthrough = passthrough
        self.quiet_start = quiet_start
        #: A PEM file of the CA(s) to verify an https:// server against (else the system's).
        self.ca_file = ca_file or None
        #: Also write every record and the exit to the keeper's stdout as MAC'd frames (logframes), for a
        #: platform that reads them back from the pod's log. Needs the token (the MAC key).
        self.log_frames = log_frames
        self.validate()

    def validate(self):
        # type: () -> None
        if not self.trial_id:
            raise KeeperError("The trial id is empty; pass --trial-id or set NNI_TS_KEEPER_TRIAL_ID.")
        if not self.command or not self.command.strip():
            raise KeeperError("The trial command is empty; pass it after '--' or set NNI_TS_KEEPER_COMMAND.")
        if self.platform == "local":
            raise KeeperError(
                "--platform local is not supported: with NNI_PLATFORM=local the trial SDK writes records to a "
                "file instead of stdout. Use the platform's own name (remote, kubeflow, frameworkcontroller)."
            )
        if self.attempt is not None and self.attempt < 0:
            raise KeeperError("--attempt must be 0 or more, not %d." % self.attempt)
        if not self.heartbeat > 0:
            raise KeeperError("--heartbeat must be a positive number of seconds, not %r." % self.heartbeat)
        if self.grace < 0:
            raise KeeperError("--grace must be 0 or more seconds, not %r." % self.grace)
        if self.server_url is not None:
            parts = urlsplit(self.server_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise KeeperError("--server-url must be an http:// or https:// URL, not %r." % self.server_url)
            if not self.token:
                raise KeeperError("A server URL was given without a token; pass --token or --token-file.")
            if self.ca_file is not None and parts.scheme != "https":
                raise KeeperError("--ca-file needs an https:// server URL, not %r." % self.server_url)
        if self.log_frames and not self.token:
            raise KeeperError("--log-frames needs the trial's token (--token or --token-file): it keys the frames.")
        if self.ca_file is not None and not os.path.isfile(self.ca_file):
            raise KeeperError("The CA file %r (--ca-file) does not exist." % self.ca_file)
        if not os.path.isdir(self.code_dir):
            raise KeeperError("The code directory %r does not exist." % self.code_dir)


def build_env(config, base=None):
    # type: (KeeperConfig, dict[str, str] | None) -> dict[str, str]
    """The trial's environment: NNI's variables, the light nni on PYTHONPATH, no keeper secrets."""
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name.startswith("NNI_TS_KEEPER_"):
            del env[name]
    env.pop("NNI_TRIAL_COMMAND_CHANNEL", None)
    env.update(
        {
            "NNI_PLATFORM": config.platform,
            "NNI_TRIAL_JOB_ID": config.trial_id,
            "NNI_EXP_ID": config.experiment_id,
            "NNI_SYS_DIR": config.trial_dir,
            "NNI_OUTPUT_DIR": config.output_dir,
            "NNI_TRIAL_SEQ_ID": str(config.sequence_id),
            "NNI_CODE_DIR": config.code_dir,
            "MULTI_PHASE": "false",
        }
    )
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = LIGHT_NNI_PATH + (os.pathsep + path if path else "")
    return env


class _Fatal(Exception):
    """The server refused the keeper for good (version mismatch, a malformed report)."""


class Reporter(threading.Thread):
    """Posts records, heartbeats and the exit to the ClusterServer; see the module docstring."""

    def __init__(self, config, started_ms, pid, journal_path, conn=None):
        # type: (KeeperConfig, int, int, str, http_client.HTTPConnection | None) -> None
        threading.Thread.__init__(self, name="nni-ts-keeper-reporter")
        self.daemon = True
        self.config = config
        self.journal_path = journal_path
        self._cond = threading.Condition()
        self._deadline_cap = None  # type: float | None
        self._unacked = []  # type: list[tuple[int, str]]  # [(seq, data)] in seq order
        self._next_seq = 0  # the server's acknowledgement
        self._exit = None  # type: dict[str, int] | None
        self._exit_accepted = False
        self._log_answer = None  # type: dict[str, str] | None
        self._done = False
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN
        # The first report goes at once, unless the platform knows the trial started (quiet start).
        self._last_ok = time.monotonic() if config.quiet_start else 0.0
        self.fatal = None  # type: str | None
        self.failures = 0
        self._conn = conn  # type: http_client.HTTPConnection | None
        parts = urlsplit(config.server_url or "http://127.0.0.1")
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path.rstrip("/") + "/api/v1/trials/%s/report" % quote(config.trial_id, safe="")
        self._identity = {
            "keeper_version": __version__,
            "attempt": config.attempt,
            "started_ms": started_ms,
            "host": socket.gethostname()[:255],
            "pid": pid,
        }

    # ---------------------------------------------------------------- called by the keeper

    def add(self, records):
        # type: (list[tuple[int, str]]) -> None
        with self._cond:
            self._unacked.extend(records)
            self._cond.notify()

    def cut_short(self, seconds):
        # type: (float) -> None
        """Give up waiting for the exit's acknowledgement ``seconds`` from now (a late SIGTERM)."""
        with self._cond:
            self._deadline_cap = time.monotonic() + seconds
            self._cond.notify_all()

    def set_exit(self, exit_code, end_time_ms, record_count):
        # type: (int, int, int) -> None
        with self._cond:
            self._exit = {"exit_code": exit_code, "end_time_ms": end_time_ms, "record_count": record_count}
            self._cond.notify()

    def finish(self, timeout):
        # type: (float) -> bool
        """Wait until the exit is acknowledged (True) or ``timeout`` passes (False); then stop."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._done and self.fatal is None:
                if self._deadline_cap is not None:
                    deadline = min(deadline, self._deadline_cap)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            ok = self._exit_accepted
            self._done = True
            self._cond.notify_all()
        return ok

    # ---------------------------------------------------------------- the loop

    def run(self):
        # type: () -> None
        try:
            while True:
                with self._cond:
                    body = self._next_body()
                    if body is None:
                        return
                try:
                    ack = self._post(body)
                except _Fatal as exc:
                    with self._cond:
                        self.fatal = str(exc)
                        self._cond.notify_all()
                    log.error("The server refused this keeper: %s The journal keeps every record.", exc)
                    return
                except Exception as exc:  # any network or server trouble: back off and retry
                    self._close_conn()
                    self.failures += 1
                    with self._cond:
                        self._retry_at = time.monotonic() + self._backoff * (0.5 + random.random() / 2)
                        self._backoff = min(BACKOFF_MAX, self._backoff * 2)
                    if self.failures == 1 or self.failures % 20 == 0:
                        log.warning("Reporting to %s failed (%s); retrying.", self.config.server_url, exc)
                    continue
                with self._cond:
                    self._backoff = BACKOFF_MIN
                    self._last_ok = time.monotonic()
                    self._acknowledge(ack, body)
        finally:
            self._close_conn()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _next_body(self):
        # type: () -> dict[str, Any] | None
        """Wait (holding the condition) until a report is due; None when finished."""
        while True:
            if self._done:
                return None
            now = time.monotonic()
            if now < self._retry_at:
                self._cond.wait(self._retry_at - now)
                continue
            urgent = bool(self._unacked) or self._log_answer is not None
            urgent = urgent or (self._exit is not None and not self._exit_accepted)
            due = self._last_ok + self.config.heartbeat
            if urgent or now >= due:
                break
            self._cond.wait(due - now)
        body = dict(self._identity)
        batch = []  # type: list[dict[str, Any]]
        size = 0
        for seq, data in self._unacked:
            if batch and (len(batch) >= BATCH_RECORDS or size + len(data) > BATCH_BYTES):
                break
            batch.append({"seq": seq, "data": data})
            size += len(data) + 32
        body["records"] = batch
        if self._exit is not None and len(batch) == len(self._unacked):
            body["exited"] = self._exit
        if self._log_answer is not None:
            body["log_tail"] = self._log_answer
        return body

    def _acknowledge(self, ack, body):
        # type: (dict[str, Any], dict[str, Any]) -> None
        if body.get("log_tail") is not None and self._log_answer is body["log_tail"]:
            self._log_answer = None
        next_seq = int(ack.get("next_seq", 0))
        held = self._unacked[0][0] if self._unacked else None
        if held is not None and next_seq < held:
            # The server lost what it had acknowledged (restarted): take the gap from the journal.
            missing = [
                r
                for r in read_journal(self.journal_path, self.config.trial_id, self.config.attempt)
                if next_seq <= r[0] < held
            ]
            self._unacked[0:0] = missing
        elif held is None and next_seq < self._next_seq:
            self._unacked = [
                r
                for r in read_journal(self.journal_path, self.config.trial_id, self.config.attempt)
                if r[0] >= next_seq
            ]
        self._next_seq = next_seq
        drop = 0
        while drop < len(self._unacked) and self._unacked[drop][0] < next_seq:
            drop += 1
        if drop:
            del self._unacked[:drop]
        if ack.get("exit_accepted"):
            self._exit_accepted = True
            self._done = True
            self._cond.notify_all()
        request = ack.get("log_request")
        if request and self._log_answer is None:
            self._log_answer = _log_tail(self.config.trial_dir, request)

    def _post(self, body):
        # type: (dict[str, Any]) -> dict[str, Any]
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "Authorization": "Bearer " + (self.config.token or ""),
        }
        reused = self._conn is not None and self._conn.sock is not None
        try:
            response, data = self._exchange(payload, headers)
        except (http_client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The server closed an idle kept-alive connection: once more on a new one (reports are idempotent).
            self._close_conn()
            response, data = self._exchange(payload, headers)
        if response.getheader("Connection", "").lower() == "close":
            self._close_conn()
        if response.status == 200:
            answer = json.loads(data.decode("utf-8"))  # type: dict[str, Any]
            return answer
        message = _error_text(data)
        if response.status in (400, 409, 413, 422):
            raise _Fatal("HTTP %d: %s" % (response.status, message))
        raise IOError("HTTP %d: %s" % (response.status, message))

    def _exchange(self, payload, headers):
        # type: (bytes, dict[str, str]) -> tuple[http_client.HTTPResponse, bytes]
        if self._conn is None:
            if self._https:
                context = ssl.create_default_context(cafile=self.config.ca_file)
                self._conn = http_client.HTTPSConnection(self._host, self._port, timeout=HTTP_TIMEOUT, context=context)
            else:
                self._conn = http_client.HTTPConnection(self._host, self._port, timeout=HTTP_TIMEOUT)
        self._conn.request("POST", self._path, body=payload, headers=headers)
        response = self._conn.getresponse()
        return response, response.read()

    def _close_conn(self):
        # type: () -> None
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None


def _preconnect(url):
    # type: (str) -> http_client.HTTPConnection | None
    """An HTTP connection to ``url``'s server, connected; None if it cannot be (the reporter retries)."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    cls = http_client.HTTPSConnection if https else http_client.HTTPConnection
    conn = cls(parts.hostname or "127.0.0.1", parts.port or (443 if https else 80), timeout=HTTP_TIMEOUT)
    try:
        conn.connect()
    except (IOError, OSError):
        conn.close()
        return None
    return conn


def _error_text(data):
    # type: (bytes) -> str
    try:
        return str(json.loads(data.decode("utf-8"))["error"])
    except Exception:
        return data[:500].decode("utf-8", "replace")


def _log_tail(trial_dir, request):
    # type: (str, dict[str, Any]) -> dict[str, str]
    name = "stderr" if request.get("file") == "stderr" else "stdout"
    tail = max(0, int(request.get("tail", 65536)))
    data = b""
    try:
        with open(os.path.join(trial_dir, name), "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - tail))
            data = fh.read(tail)
    except (IOError, OSError):
        pass
    return {"request_id": str(request.get("request_id", "")), "file": name, "data": base64.b64encode(data).decode()}


class Keeper(object):
    """Runs one trial. ``Keeper(config).run()`` returns the trial's exit code."""

    def __init__(self, config):
        # type: (KeeperConfig) -> None
        self.config = config
        self.state_dir = os.path.join(config.trial_dir, STATE_DIR)
        self.journal_path = os.path.join(config.trial_dir, JOURNAL_NAME)
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._journal = None  # type: Journal | None
        self._reporter = None  # type: Reporter | None
        self._popen = None  # type: subprocess.Popen[bytes] | None
        self._stop_requested = False
        self._kill_timer = None  # type: threading.Timer | None
        self.marker = base64.b32encode(os.urandom(15)).decode("ascii").lower()
        self._root = None  # type: int | None  # this keeper's pid once it is a subreaper
        self._out = _Stdout(_std_out(True))
        self._frame_key = frame_key(config.token) if config.log_frames and config.token else None

    # ---------------------------------------------------------------- main

    def run(self):
        # type: () -> int
        cfg = self.config
        if not os.path.isdir(cfg.trial_dir):
            os.makedirs(cfg.trial_dir)
        if not os.path.isdir(self.state_dir):
            os.makedirs(self.state_dir)
        _setup_logging(os.path.join(self.state_dir, "keeper.log"))
        cfg.attempt = _claim_attempt(self.state_dir, cfg)
        if not os.path.exists(os.path.join(cfg.trial_dir, "parameter.cfg")):
            log.warning("%s has no parameter.cfg; nni.get_next_parameter() will fail.", cfg.trial_dir)
        self._journal = Journal(self.journal_path, cfg.trial_id, cfg.attempt)
        out_file = open(os.path.join(cfg.trial_dir, "stdout"), "wb", buffering=0)
        err_file = open(os.path.join(cfg.trial_dir, "stderr"), "wb", buffering=0)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        try:
            if self._stop_requested:
                return 128 + signal.SIGTERM
            started_ms = int(time.time() * 1000)
            # The connection to the server is opened before the trial starts (through a tunnel, the
            # forwarded channel opens meanwhile): the first report does not wait for it.
            conn = _preconnect(cfg.server_url) if cfg.server_url else None
            env = build_env(cfg)
            env[TRIAL_MARKER] = self.marker
            if _become_subreaper():
                self._root = os.getpid()
            self._popen = subprocess.Popen(
                ["/bin/sh", "-c", cfg.command],
                cwd=cfg.code_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
            log.info("Trial %s attempt %d started: pid %d.", cfg.trial_id, cfg.attempt, self._popen.pid)
            _write_pid_file(self.state_dir, os.getpid(), self._popen.pid, started_ms, cfg.attempt, self.marker)
            if cfg.server_url:
                self._reporter = Reporter(cfg, started_ms, self._popen.pid, self.journal_path, conn)
                self._reporter.start()
            if self._stop_requested:  # a signal came while starting
                self._terminate()
            readers = [
                threading.Thread(
                    target=self._read_stream,
                    args=(self._popen.stdout, out_file, self._out if cfg.passthrough else None, True),
                    name="nni-ts-keeper-stdout",
                ),
                threading.Thread(
                    target=self._read_stream,
                    args=(self._popen.stderr, err_file, _std_err(cfg.passthrough), False),
                    name="nni-ts-keeper-stderr",
                ),
            ]
            for reader in readers:
                reader.daemon = True
                reader.start()
            returncode = self._popen.wait()
            end_ms = int(time.time() * 1000)
            # What is left of the trial goes with it: its group, and what left the group (setsid).
            kill_trial(self._popen.pid, self.marker, signal.SIGKILL, root=self._root)
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            for reader in readers:
                reader.join(10.0)
            exit_code = 128 - returncode if returncode < 0 else returncode
            with self._seq_lock:
                count = self._seq
            write_exit(self.state_dir, cfg.trial_id, cfg.attempt, exit_code, end_ms, count)
            if self._frame_key is not None:
                self._out.frames([encode_exit(self._frame_key, cfg.trial_id, cfg.attempt, exit_code, end_ms, count)])
            own, trial = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            log.info(
                "Trial %s ended with exit code %d after %d record(s) (CPU: keeper %.3f s, trial %.3f s).",
                cfg.trial_id,
                exit_code,
                count,
                own.ru_utime + own.ru_stime,
                trial.ru_utime + trial.ru_stime,
            )
            if self._reporter is not None:
                self._reporter.set_exit(exit_code, end_ms, count)
                timeout = cfg.report_timeout if not self._stop_requested else min(cfg.report_timeout, cfg.grace + 5)
                if not self._reporter.finish(timeout):
                    log.error(
                        "The exit of trial %s could not be reported to %s; the journal in %s has every record.",
                        cfg.trial_id,
                        cfg.server_url,
                        self.journal_path,
                    )
            return exit_code
        finally:
            if self._popen is not None and self._popen.poll() is None:
                kill_trial(self._popen.pid, self.marker, signal.SIGKILL, root=self._root)
            out_file.close()
            err_file.close()
            if self._journal is not None:
                self._journal.close()

    # ---------------------------------------------------------------- output

    def _read_stream(self, pipe, copy, passthrough, parse):
        # type: (object, object, object, bool) -> None
        """Copy one output stream to its file (and to the keeper's own, unless disabled).

        On stdout, complete lines holding a metric record are journaled and reported instead of
        being copied to the file; every other byte is copied as it is. A line is copied once its
        newline arrives (or at the end, or once it is longer than MAX_LINE, when it cannot hold a record).
        """
        fd = pipe.fileno()  # type: ignore[attr-defined]
        partial = b""
        skipping = False  # inside a line longer than MAX_LINE: not a record
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                chunk = b""
            if not parse:
                if chunk:
                    copy.write(chunk)  # type: ignore[attr-defined]
            else:
                found = []
                plain = []
                if chunk:
                    lines = (partial + chunk).split(b"\n")
                    partial = lines.pop()
                    lines = [line + b"\n" for line in lines]
                else:
                    lines = [partial] if partial else []
                    partial = b""
                for line in lines:
                    record = None
                    if skipping:
                        skipping = False
                    elif len(line) <= MAX_LINE + 1:
                        record = parse_stdout_line(line)
                    if record is None:
                        plain.append(line)
                    else:
                        found.append(record.decode("utf-8", "replace"))
                if len(partial) > MAX_LINE:
                    plain.append(partial)
                    partial = b""
                    skipping = True
                if found:
                    self._publish(found)
                if plain:
                    copy.write(b"".join(plain))  # type: ignore[attr-defined]
            if passthrough is not None and chunk:
                try:
                    passthrough.write(chunk)  # type: ignore[attr-defined]
                    passthrough.flush()  # type: ignore[attr-defined]
                except (IOError, OSError, ValueError):
                    passthrough = None
            if not chunk:
                break
        try:
            pipe.close()  # type: ignore[attr-defined]
        except (IOError, OSError):
            pass

    def _publish(self, texts):
        # type: (list[str]) -> None
        with self._seq_lock:
            records = []
            for text in texts:
                records.append((self._seq, text))
                self._seq += 1
            assert self._journal is not None
            self._journal.append(records)
            if self._frame_key is not None:
                cfg = self.config
                lines = []  # type: list[str]
                for seq, text in records:
                    lines.extend(encode_record(self._frame_key, cfg.trial_id, cfg.attempt, seq, text))
                self._out.frames(lines)
        if self._reporter is not None:
            self._reporter.add(records)

    # ---------------------------------------------------------------- stopping

    def _on_signal(self, signum, frame):
        # type: (int, object) -> None
        if self._stop_requested:
            return
        self._stop_requested = True
        if self._popen is not None and self._popen.returncode is not None:
            # The trial has ended; the keeper is waiting for its exit to be acknowledged. Stop soon:
            # the journal and the exit file hold everything for whoever reads them back.
            log.info("Signal %d after the trial ended: giving up reporting within %g s.", signum, LATE_SIGNAL_WAIT)
            if self._reporter is not None:
                self._reporter.cut_short(LATE_SIGNAL_WAIT)
            return
        log.info("Signal %d: stopping the trial (grace period %g s).", signum, self.config.grace)
        if self._popen is not None:
            self._terminate()

    def _terminate(self):
        # type: () -> None
        assert self._popen is not None
        kill_trial(self._popen.pid, self.marker, signal.SIGTERM, root=self._root)
        self._kill_timer = threading.Timer(
            self.config.grace, kill_trial, (self._popen.pid, self.marker, signal.SIGKILL), {"root": self._root}
        )
        self._kill_timer.daemon = True
        self._kill_timer.start()


def _claim_attempt(state_dir, cfg):
    # type: (str, KeeperConfig) -> int
    """Create the attempt's marker ``<state dir>/attempt-N`` (exclusively) and return N: the configured
    attempt, or with ``auto`` (None) the lowest number no keeper of the trial has used yet."""
    number = cfg.attempt if cfg.attempt is not None else 1
    while True:
        marker = os.path.join(state_dir, "attempt-%d" % number)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return number
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            if cfg.attempt is not None:
                raise KeeperError(
                    "Attempt %d of trial %s already ran in %s; a re-run needs a new --attempt number."
                    % (cfg.attempt, cfg.trial_id, cfg.trial_dir)
                ) from None
            number += 1


def _write_pid_file(state_dir, keeper_pid, trial_pgid, started_ms, attempt, marker):
    # type: (str, int, int, int, int, str) -> None
    """``<state dir>/pid``: the keeper's pid, the trial's process group, its attempt and marker, for
    platforms that must find them."""
    path = os.path.join(state_dir, "pid")
    tmp = path + ".tmp"
    data = {
        "keeper_pid": keeper_pid,
        "trial_pgid": trial_pgid,
        "start_time_ms": started_ms,
        "attempt": attempt,
        "marker": marker,
    }
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.rename(tmp, path)


def marked_pids(marker):
    # type: (str) -> list[int]
    """The processes whose environment holds ``TRIAL_MARKER=marker`` (read from /proc; only the
    processes of this user are readable, which are the only ones a trial can start)."""
    if not marker:
        return []
    needle = ("%s=%s" % (TRIAL_MARKER, marker)).encode("ascii")
    me = os.getpid()
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as fh:
                environ = fh.read()
        except (IOError, OSError):
            continue
        if needle in environ.split(b"\0"):
            found.append(int(name))
    return found


def _become_subreaper():
    # type: () -> bool
    """Make this process a child subreaper (Linux 3.4+): orphans below it are re-parented to it."""
    if not sys.platform.startswith("linux") or ctypes is None:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def descendants(pid):
    # type: (int) -> list[int]
    """Every descendant of process ``pid`` (from /proc/PID/task/TID/children), or [] if unknown."""
    found = []  # type: list[int]
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir("/proc/%d/task" % parent)
        except OSError:
            continue
        for task in tasks:
            try:
                with open("/proc/%d/task/%s/children" % (parent, task)) as fh:
                    children = [int(c) for c in fh.read().split()]
            except (IOError, OSError, ValueError):
                continue
            for child in children:
                if child not in found:
                    found.append(child)
                    todo.append(child)
    return found


def kill_trial(pgid, marker, signum, root=None):
    # type: (int | None, str | None, int, int | None) -> int
    """Send ``signum`` to the trial's process group and to every process that left it.

    With ``root`` (a keeper that is a child subreaper: every process the trial started is its
    descendant) those are ``root``'s descendants; else every process carrying the trial's marker
    (a scan of /proc/*/environ). Rounds repeat (at most 5) while processes are found, so that a
    process forked while the previous round ran is not missed. Returns how many were signalled.
    """
    if pgid:
        _killpg(pgid, signum)
    count = 0
    seen = set()  # type: set[int]
    for _ in range(5):
        found = descendants(root) if root else marked_pids(marker or "")
        pids = [p for p in found if (p not in seen or signum == signal.SIGKILL) and not _zombie(p)]
        if not pids:
            break
        for pid in pids:
            seen.add(pid)
            try:
                os.kill(pid, signum)
                count += 1
            except OSError:
                pass
        if signum != signal.SIGKILL:
            break
        time.sleep(0.01)
    return count


def _zombie(pid):
    # type: (int) -> bool
    """Whether ``pid`` is a zombie (dead, not yet reaped) or gone."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            stat = fh.read()
    except (IOError, OSError):
        return True
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] in ("Z", "X", "")


def _killpg(pgid, signum):
    # type: (int, int) -> None
    try:
        os.killpg(pgid, signum)
    except (OSError, ProcessLookupError):
        pass


class _Stdout(object):
    """The keeper's standard output: the trial's output passed through, and the frames. Each frame goes
    on a line of its own: a new line is started first if the output so far ends mid-line."""

    def __init__(self, stream):
        # type: (object) -> None
        self._stream = stream
        self._lock = threading.Lock()
        self._mid_line = False

    def write(self, data):
        # type: (bytes) -> None
        if not data or self._stream is None:
            return
        with self._lock:
            self._stream.write(data)  # type: ignore[attr-defined]
            self._mid_line = not data.endswith(b"\n")

    def flush(self):
        # type: () -> None
        if self._stream is not None:
            self._stream.flush()  # type: ignore[attr-defined]

    def frames(self, lines):
        # type: (list[str]) -> None
        if not lines or self._stream is None:
            return
        data = "".join(line + "\n" for line in lines).encode("ascii")
        with self._lock:
            try:
                self._stream.write((b"\n" if self._mid_line else b"") + data)  # type: ignore[attr-defined]
                self._stream.flush()  # type: ignore[attr-defined]
            except (IOError, OSError, ValueError):
                log.warning("Could not write metric frames to the keeper's stdout.")
            self._mid_line = False


def _std_out(passthrough):
    # type: (bool) -> object
    return getattr(sys.stdout, "buffer", None) if passthrough else None


def _std_err(passthrough):
    # type: (bool) -> object
    return getattr(sys.stderr, "buffer", None) if passthrough else None


def _setup_logging(path):
    # type: (str) -> None
    if log.handlers:
        return
    fmt = logging.Formatter("%(asctime)s [nni-ts keeper] %(levelname)s %(message)s")
    to_file = logging.FileHandler(path)
    to_file.setFormatter(fmt)
    log.addHandler(to_file)
    to_err = logging.StreamHandler(sys.stderr)
    to_err.setFormatter(fmt)
    to_err.setLevel(logging.WARNING)
    log.addHandler(to_err)
    log.setLevel(logging.INFO)
    log.propagate = False
