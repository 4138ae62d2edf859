# ruff: noqa: UP006, UP035  (this file runs on the hosts, on Python 3.8: typing.Dict/List on purpose)
"""The host agent: one small process per SSH connection that starts keepers, polls and kills them.

Uploaded next to the ``trial_keeper`` package and run as ``python3 -u nni_ts_agent.py`` over one
long-lived exec channel. Standard library only, Python 3.8+, never imports nni_ts (it runs on the
host). It saves a login shell per trial and a Python start per keeper: keepers are forked from it
with ``trial_keeper`` already imported, each in its own session (``setsid``), stdin from /dev/null
and output to ``<trial dir>/.nni-ts/keeper.out``, so they outlive the agent and the connection.
Everything it and its keepers create is owner-only (umask 077).

Every launch is one attempt with its own directory. The directory is created exclusively, so that a
launch is idempotent (a launch sent again answers with the keeper the first one started) and can be
fenced (``probe`` with ``fence`` creates the directory of an attempt that never started, marked
revoked, so that a launch request delivered late never starts it). A launch carries ``not_after``
(seconds since the epoch on the host's clock): past it, the request is refused, so a request held up
by a network partition cannot start a trial the manager has given up on.

Protocol: one JSON object per line on stdin, one answer per line on stdout, matched by ``rid``.
The first line out is ``{"ready": true, "pid": N, "time": <host clock>}``.

* ``{"op": "ping"}`` -> ``{"time": <host clock>}``: the manager's liveness check.
* ``{"op": "launch", "dir", "attempt", "not_after", "files": {relpath: text}, "argv": [...],
  "env": {...}}``: creates the attempt's directory, writes the files (mode 0600), forks the keeper
  with ``argv`` -> ``{"pid", "start", "again"}`` (``start``: field 22 of /proc/PID/stat, the start
  time, or null; ``again``: this attempt had been launched before, its keeper is returned).
  Refused with ``"expired": true`` past ``not_after``, with ``"revoked": true`` if fenced.
* ``{"op": "probe", "dir", "fence"}`` -> ``{"state": "launched", "pid", "start"}`` or
  ``{"state": "absent"}`` (fenced if asked: that attempt can never start).
* ``{"op": "poll", "trials": [[id, pid, start, dir], ...]}`` -> ``{"status": {id: [exited,
  alive]}}``: whether the keeper recorded the trial's end, whether the keeper lives.
* ``{"op": "kill", "pid", "start", "dir", "hard"}`` -> ``{"how": "keeper" | "group"}``: SIGTERM to
  a live keeper, else SIGKILL to the trial's processes (its process group and every process carrying
  its marker, from the attempt's pid file: never a group another attempt owns). ``hard``: SIGKILL to
  the keeper and the trial's processes at once (an attempt the manager revoked).
* ``{"op": "stop", "keepers": [[pid, start]...]}`` -> ``{"stopped": N}``: SIGKILL keepers whose
  trials' ends are delivered (they would go on retrying a report whose answer was lost).

An answer with ``"error"`` reports a failed request. End of input ends the agent.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from typing import Any, Dict, List, Tuple

LAUNCHED = "launched"  # in <attempt dir>/.nni-ts: the keeper's pid and start time, written by the agent
REVOKED = "revoked"  # in <attempt dir>/.nni-ts: the attempt was fenced; it never starts
#: Seconds ``probe`` waits for a launch that is half-way (its directory exists, its keeper not yet).
HALF_LAUNCH_WAIT = 2.0


def start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().split(" ")
    except OSError:
        return None
    return fields[21] if len(fields) > 21 else None


def alive(pid: int | None, start: str | None) -> bool:
    if not pid:
        return False
    if start and os.path.exists(f"/proc/{pid}/stat"):
        return start_time(pid) == start
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _read_json(path: str) -> Dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _launched(state: str) -> Dict[str, Any] | None:
    return _read_json(os.path.join(state, LAUNCHED))


def _make_attempt_dir(trial_dir: str) -> bool:
    """Create the attempt's directory; False if it exists (launched, being launched, or fenced)."""
    parent = os.path.dirname(trial_dir.rstrip("/"))
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, 0o700, exist_ok=True)
    try:
        os.mkdir(trial_dir, 0o700)
    except FileExistsError:
        return False
    os.mkdir(os.path.join(trial_dir, ".nni-ts"), 0o700)
    return True


def _existing(state: str) -> Tuple[Dict[str, Any] | None, bool]:
    """(the launch record, revoked) of an attempt directory that exists; waits for a half-way launch."""
    deadline = time.monotonic() + HALF_LAUNCH_WAIT
    while True:
        record = _launched(state)
        if record is not None:
            return record, False
        if os.path.exists(os.path.join(state, REVOKED)):
            return None, True
        if time.monotonic() > deadline:
            return None, False
        time.sleep(0.02)


def launch(req: Dict[str, Any]) -> Dict[str, Any]:
    trial_dir = req["dir"]
    state = os.path.join(trial_dir, ".nni-ts")
    not_after = req.get("not_after")
    if not_after is not None and time.time() > float(not_after):
        return {"error": "the launch request arrived after its deadline; it was not started", "expired": True}
    if not _make_attempt_dir(trial_dir):
        record, revoked = _existing(state)
        if record is not None:
            return {"pid": record.get("pid"), "start": record.get("start"), "again": True}
        if revoked:
            return {"error": "this attempt was revoked by the manager; it was not started", "revoked": True}
        return {"error": f"the attempt directory {trial_dir} exists but holds no launched keeper"}
    for rel, text in (req.get("files") or {}).items():
        path = os.path.join(trial_dir, rel)
        if not os.path.isdir(os.path.dirname(path)):
            os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        _write(path, text)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the keeper
        code = 2
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            os.chdir(trial_dir)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            out = os.open(os.path.join(state, "keeper.out"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(out, 1)
            os.dup2(out, 2)
            if os.path.exists(os.path.join(state, REVOKED)):
                os._exit(0)
            os.environ.update(req.get("env") or {})
            from trial_keeper.__main__ import main

            code = main(list(req["argv"]))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 2)
    start = start_time(pid)
    _write(os.path.join(state, LAUNCHED), json.dumps({"pid": pid, "start": start}))
    return {"pid": pid, "start": start, "again": False}


def probe(req: Dict[str, Any]) -> Dict[str, Any]:
    """Whether an attempt was launched; with ``fence``, make sure one that was not never starts."""
    trial_dir = req["dir"]
    state = os.path.join(trial_dir, ".nni-ts")
    if req.get("fence") and _make_attempt_dir(trial_dir):
        _write(os.path.join(state, REVOKED), "")
        return {"state": "absent"}
    if not os.path.isdir(state):
        return {"state": "absent"}
    record, revoked = _existing(state)
    if record is not None:
        return {"state": "launched", "pid": record.get("pid"), "start": record.get("start")}
    if not revoked and req.get("fence"):
        _write(os.path.join(state, REVOKED), "")  # a launch that died half-way: never let it go on
    return {"state": "absent"}


def poll(req: Dict[str, Any]) -> Dict[str, Any]:
    status: Dict[str, List[bool]] = {}
    for tid, pid, start, trial_dir in req.get("trials") or []:
        exited = os.path.exists(os.path.join(trial_dir, ".nni-ts", "exit"))
        status[tid] = [exited, alive(pid, start)]
    return {"status": status}


def _trial_processes(trial_dir: str) -> Tuple[int | None, str | None]:
    """The trial's process group and marker, from the keeper's pid file in this attempt's directory."""
    data = _read_json(os.path.join(trial_dir, ".nni-ts", "pid")) or {}
    pgid = data.get("trial_pgid")
    marker = data.get("marker")
    return (int(pgid) if isinstance(pgid, int) else None), (str(marker) if marker else None)


def kill(req: Dict[str, Any]) -> Dict[str, Any]:
    pid, start = req.get("pid"), req.get("start")
    if pid and alive(pid, start):
        if not req.get("hard"):
            os.kill(int(pid), signal.SIGTERM)
            return {"how": "keeper"}
        os.kill(int(pid), signal.SIGKILL)
    pgid, marker = _trial_processes(req["dir"])
    if pgid or marker:
        from trial_keeper.keeper import kill_trial

        kill_trial(pgid, marker, signal.SIGKILL)
    return {"how": "group"}


def stop(req: Dict[str, Any]) -> Dict[str, Any]:
    """SIGKILL keepers whose trials' ends are already delivered (they would go on retrying a report)."""
    stopped = 0
    for pid, start in req.get("keepers") or []:
        if pid and alive(pid, start):
            try:
                os.kill(int(pid), signal.SIGKILL)
                stopped += 1
            except OSError:
                pass
    return {"stopped": stopped}


def ping(req: Dict[str, Any]) -> Dict[str, Any]:
    return {"time": time.time()}


def main() -> int:
    os.umask(0o077)  # parameter.cfg, tokens, journals and outputs: the owner's only
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # keepers are reaped by the kernel
    import trial_keeper.__main__

    # Imported once here, not in every keeper; building the parser once fills the regular expression
    # cache that argparse uses, which every forked keeper inherits (10 ms less per keeper start).
    trial_keeper.__main__.build_parser().parse_args(["--trial-id", "x", "--", "true"])

    handlers: Dict[str, Any] = {"launch": launch, "probe": probe, "poll": poll, "kill": kill, "stop": stop}
    handlers["ping"] = ping
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid(), "time": time.time()}) + "\n")
    out.flush()
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        rid = None
        try:
            req = json.loads(line.decode("utf-8"))
            rid = req.get("rid")
            answer = handlers[req["op"]](req)
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answer["rid"] = rid
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
