"""The keeper's journal: every metric record, written and fsync'd before it is sent.

Standard library only, Python 3.8+. One JSON line per record::

    {"trial": "Ab3dE", "attempt": 1, "seq": 0, "data": "<the record text, byte for byte>"}

A record's ``seq`` is its position among the records in the trial's stdout, counted from 0: the
same whoever computes it, the keeper or a platform reading the files back over NFS or SSH
(``recover_records``). That is what makes delivery idempotent end to end. The keeper keeps record
lines out of its ``stdout`` copy (users see their own output there), so after a keeper's death the
journal is what holds the records; ``records_in_stdout`` reads a raw capture made without a keeper.
"""

import json
import os
from typing import TYPE_CHECKING

from .records import parse_stdout_line

if TYPE_CHECKING:  # the annotations are type comments: nothing is imported at run time
    from typing import Any  # noqa: F401

__all__ = [
    "JOURNAL_NAME",
    "MAX_LINE",
    "STATE_DIR",
    "Journal",
    "read_attempt",
    "read_exit",
    "read_journal",
    "recover_records",
    "records_in_stdout",
    "write_exit",
]

#: The keeper's own files live here, inside the trial directory.
STATE_DIR = ".nni-ts"
JOURNAL_NAME = os.path.join(STATE_DIR, "journal")
EXIT_NAME = "exit"
#: A stdout line longer than this holds no record (a record is under 1,000,000 bytes).
MAX_LINE = 2 * 1024 * 1024


class Journal(object):
    """Append-only, fsync'd. Not thread-safe: one writer (the keeper's reader loop)."""

    def __init__(self, path, trial_id, attempt):
        # type: (str, str, int) -> None
        self.path = path
        self.trial_id = trial_id
        self.attempt = attempt
        directory = os.path.dirname(path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory)
        self._fh = open(path, "ab")

    def append(self, records):
        # type: (list[tuple[int, str]]) -> None
        """Write ``[(seq, data), ...]`` and fsync once for the batch."""
        if not records:
            return
        lines = []
        for seq, data in records:
            entry = {"trial": self.trial_id, "attempt": self.attempt, "seq": seq, "data": data}
            lines.append(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
        self._fh.write(b"".join(lines))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self):
        # type: () -> None
        self._fh.close()


def read_journal(path, trial_id=None, attempt=None):
    # type: (str, str | None, int | None) -> list[tuple[int, str]]
    """``[(seq, data), ...]`` from a journal, in seq order, without duplicates.

    A torn last line (the keeper died mid-write) is ignored; so are entries of another trial or
    attempt when those are given. A missing journal is empty.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except (IOError, OSError):
        return []
    found = {}  # type: dict[int, str]
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            entry = json.loads(line.decode("utf-8"))
            seq = int(entry["seq"])
            data = entry["data"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            continue  # a torn line
        if trial_id is not None and entry.get("trial") != trial_id:
            continue
        if attempt is not None and entry.get("attempt") != attempt:
            continue
        if isinstance(data, str):
            found.setdefault(seq, data)
    return sorted(found.items())


def records_in_stdout(data, complete_only=True):
    # type: (bytes, bool) -> list[tuple[int, str]]
    """Every record in a stdout capture, ``[(seq, text), ...]`` numbered from 0.

    With ``complete_only`` a last line without its newline is left out (it may still be growing).
    """
    lines = data.split(b"\n")
    if complete_only:
        lines = lines[:-1]
    out = []  # type: list[tuple[int, str]]
    for line in lines:
        if len(line) > MAX_LINE:
            continue
        record = parse_stdout_line(line)
        if record is not None:
            out.append((len(out), record.decode("utf-8", "replace")))
    return out


def recover_records(trial_dir, trial_id=None, attempt=None, stdout_name="stdout"):
    # type: (str, str | None, int | None, str) -> list[tuple[int, str]]
    """Everything a trial reported, from its directory alone: the journal, completed by record lines
    found in the stdout file (there are none when the keeper wrote it; a raw capture has them)."""
    found = dict(read_journal(os.path.join(trial_dir, JOURNAL_NAME), trial_id, attempt))
    try:
        with open(os.path.join(trial_dir, stdout_name), "rb") as fh:
            captured = fh.read()
    except (IOError, OSError):
        captured = b""
    for seq, text in records_in_stdout(captured, complete_only=False):
        found.setdefault(seq, text)
    return sorted(found.items())


def read_attempt(trial_dir, trial_id=None, attempt=None):
    # type: (str, str | None, int | None) -> tuple[list[tuple[int, str]], dict[str, Any] | None]
    """The records and the exit (:func:`recover_records`, :func:`read_exit`) of one attempt. With
    ``attempt`` None, the latest attempt that recorded an exit (several keepers ran the trial one after
    the other: a Job replaced a disrupted pod), or every attempt's records when none did."""
    ended = read_exit(trial_dir, trial_id, attempt)
    if attempt is None and ended is not None and isinstance(ended.get("attempt"), int):
        attempt = ended["attempt"]
    return recover_records(trial_dir, trial_id, attempt), ended


def write_exit(state_dir, trial_id, attempt, exit_code, end_time_ms, record_count):
    # type: (str, str, int, int, int, int) -> None
    """Record the trial's end durably in ``<trial dir>/.nni-ts/exit`` (atomically replaced)."""
    entry = {
        "trial": trial_id,
        "attempt": attempt,
        "exit_code": exit_code,
        "end_time_ms": end_time_ms,
        "record_count": record_count,
    }
    path = os.path.join(state_dir, EXIT_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(entry, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)


def read_exit(trial_dir, trial_id=None, attempt=None):
    # type: (str, str | None, int | None) -> dict[str, Any] | None
    """The exit the keeper recorded (``exit_code``, ``end_time_ms``, ``record_count``...), or None if
    the trial has not ended (or ended without its keeper: killed with it)."""
    try:
        with open(os.path.join(trial_dir, STATE_DIR, EXIT_NAME), "r") as fh:
            entry = json.load(fh)
    except (IOError, OSError, ValueError):
        return None
    if not isinstance(entry, dict):
        return None
    if trial_id is not None and entry.get("trial") != trial_id:
        return None
    if attempt is not None and entry.get("attempt") != attempt:
        return None
    return entry
