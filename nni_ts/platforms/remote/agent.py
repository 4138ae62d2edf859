# ruff: noqa: UP006, UP035  (this file runs on the hosts, on Python 3.8: typing.Dict/List on purpose)
"""The host agent: one small process per SSH connection that starts keepers, polls and kills them.

Uploaded next to the ``trial_keeper`` package and run as ``python3 -u nni_ts_agent.py`` over one
long-lived exec channel. Standard library only, Python 3.8+, never imports nni_ts (it runs on the
host). It saves a login shell per trial and a Python start per keeper: keepers are forked from it
with ``trial_keeper`` already imported, each in its own session (``setsid``), stdin from /dev/null
and output to ``<trial dir>/.nni-ts/keeper.out``, so they outlive the agent and the connection.

Protocol: one JSON object per line on stdin, one answer per line on stdout, matched by ``rid``.
The first line out is ``{"ready": true, "pid": N}``.

* ``{"op": "launch", "rid", "dir", "files": {relpath: text}, "private": [relpath...], "argv": [...],
  "env": {...}}``: writes the files (private ones mode 0600), forks the keeper with ``argv`` ->
  ``{"pid", "start"}`` (``start``: field 22 of /proc/PID/stat, the start time, or null).
* ``{"op": "poll", "rid", "trials": [[id, pid, start, dir], ...]}`` -> ``{"status": {id: [exited,
  alive]}}``: whether the keeper recorded the trial's end, whether the keeper lives.
* ``{"op": "kill", "rid", "pid", "start", "dir"}`` -> ``{"how": "keeper" | "group"}``: SIGTERM to
  a live keeper, else SIGKILL to the trial's process group (its pid, from the keeper's log).
* ``{"op": "stop", "rid", "pid", "start"}`` or ``{"op": "stop", "rid", "keepers": [[pid, start]...]}``
  -> ``{"stopped": N}``: SIGKILL keepers whose trials' ends are delivered (they would go on retrying
  a report whose answer was lost).

An answer with ``"error"`` reports a failed request. End of input ends the agent.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import traceback
from typing import Any, Dict, List

_STARTED = re.compile(r" started: pid (\d+)\.")


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


def trial_pid(trial_dir: str) -> int | None:
    """The trial's process group: from the keeper's pid file, else from its log (older keepers)."""
    try:
        with open(os.path.join(trial_dir, ".nni-ts", "pid"), encoding="utf-8") as fh:
            return int(json.load(fh)["trial_pgid"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = None
    try:
        with open(os.path.join(trial_dir, ".nni-ts", "keeper.log"), errors="replace") as fh:
            for line in fh:
                m = _STARTED.search(line)
                if m:
                    found = int(m.group(1))
    except OSError:
        return None
    return found


def _write(path: str, text: str, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def launch(req: Dict[str, Any]) -> Dict[str, Any]:
    trial_dir = req["dir"]
    state = os.path.join(trial_dir, ".nni-ts")
    if not os.path.isdir(state):
        os.makedirs(state)
    private = set(req.get("private") or [])
    for rel, text in (req.get("files") or {}).items():
        _write(os.path.join(trial_dir, rel), text, rel in private)
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
            out = os.open(os.path.join(state, "keeper.out"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, 1)
            os.dup2(out, 2)
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
    return {"pid": pid, "start": start_time(pid)}


def poll(req: Dict[str, Any]) -> Dict[str, Any]:
    status: Dict[str, List[bool]] = {}
    for tid, pid, start, trial_dir in req.get("trials") or []:
        exited = os.path.exists(os.path.join(trial_dir, ".nni-ts", "exit"))
        status[tid] = [exited, alive(pid, start)]
    return {"status": status}


def kill(req: Dict[str, Any]) -> Dict[str, Any]:
    pid, start = req.get("pid"), req.get("start")
    if pid and alive(pid, start):
        os.kill(int(pid), signal.SIGTERM)
        return {"how": "keeper"}
    tpid = trial_pid(req["dir"])
    if tpid:
        try:
            os.killpg(tpid, signal.SIGKILL)
        except OSError:
            pass
    return {"how": "group"}


def stop(req: Dict[str, Any]) -> Dict[str, Any]:
    """SIGKILL keepers whose trials' ends are already delivered (they would go on retrying a report).

    ``pid`` and ``start`` name one keeper; ``keepers: [[pid, start], ...]`` several.
    """
    keepers = list(req.get("keepers") or [])
    if req.get("pid"):
        keepers.append([req.get("pid"), req.get("start")])
    stopped = 0
    for pid, start in keepers:
        if pid and alive(pid, start):
            try:
                os.kill(int(pid), signal.SIGKILL)
                stopped += 1
            except OSError:
                pass
    return {"stopped": stopped}


def main() -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # keepers are reaped by the kernel
    import trial_keeper.__main__  # noqa: F401 - imported once here, not in every keeper

    handlers: Dict[str, Any] = {"launch": launch, "poll": poll, "kill": kill, "stop": stop}
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
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
