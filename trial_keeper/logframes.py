"""Metric records framed into the keeper's own standard output (the pod's log), and read back from it.

Standard library only, Python 3.8+. Used when the trial has no shared file system with the manager
(Kubernetes ``storage: {storageType: none}``): if the keeper cannot reach the manager, the platform reads
the pod's log and takes the records from these lines. Two kinds of line::

    @nni-ts:m1 <trial> <attempt> <seq> <part>/<parts> <base64 chunk> <mac>
    @nni-ts:x1 <trial> <attempt> <exit code> <end time ms> <record count> <mac>

``mac`` is the first 32 hex digits of HMAC-SHA256, keyed by :func:`frame_key` of the trial's token,
over the line's text before it. A record's bytes (UTF-8) are base64-encoded and cut into chunks of at most
:data:`CHUNK` characters, one line each, so that no line is longer than a container runtime keeps whole
(16 KiB). Why the trial's own output cannot forge or corrupt a record:

* the trial does not know the key (the keeper removes the token from the trial's environment), so a line
  it prints (or copies from somewhere) fails the MAC and is ignored;
* the MAC covers the trial id, the attempt and the seq: a valid line of another trial or attempt, or
  moved to another seq, is ignored, and a line repeated is the same record again (de-duplicated by seq);
* the keeper writes every frame on a line of its own (it starts a new line if the trial left one
  unfinished), and the reader looks for frames anywhere in a line, so text glued before a frame by
  another stream does not hide it; a frame cut short or run into other text fails its check (that line
  is lost, never wrong).
"""

import base64
import binascii
import hashlib
import hmac
import re

__all__ = [
    "CHUNK",
    "FrameReader",
    "EXIT_TAG",
    "RECORD_TAG",
    "encode_exit",
    "encode_record",
    "frame_key",
    "parse_frames",
]

RECORD_TAG = "@nni-ts:m1"
EXIT_TAG = "@nni-ts:x1"
#: Base64 characters of a record in one line, at most.
CHUNK = 8000
_MAC_HEX = 32
_ID = r"[A-Za-z0-9_.-]{1,128}"
_RECORD = re.compile(
    r"@nni-ts:m1 (%s) (\d{1,10}) (\d{1,16}) (\d{1,7})/(\d{1,7}) ([A-Za-z0-9+/=]{0,%d}) ([0-9a-f]{%d})(?![0-9a-f])"
    % (_ID, CHUNK, _MAC_HEX)
)
_EXIT = re.compile(
    r"@nni-ts:x1 (%s) (\d{1,10}) (-?\d{1,11}) (\d{1,16}) (\d{1,16}) ([0-9a-f]{%d})(?![0-9a-f])" % (_ID, _MAC_HEX)
)


def frame_key(token):
    # type: (str) -> bytes
    """The MAC key of a trial's frames, derived from its token (the manager derives the same)."""
    return hmac.new(token.encode("utf-8"), b"nni-ts pod log frames v1", hashlib.sha256).digest()


def _mac(key, text):
    # type: (bytes, str) -> str
    return hmac.new(key, text.encode("ascii"), hashlib.sha256).hexdigest()[:_MAC_HEX]


def encode_record(key, trial_id, attempt, seq, data):
    # type: (bytes, str, int, int, str) -> list[str]
    """The lines (without newlines) that carry one record."""
    encoded = base64.b64encode(data.encode("utf-8")).decode("ascii")
    chunks = [encoded[i : i + CHUNK] for i in range(0, len(encoded), CHUNK)] or [""]
    lines = []
    for index, chunk in enumerate(chunks):
        head = "%s %s %d %d %d/%d %s" % (RECORD_TAG, trial_id, attempt, seq, index, len(chunks), chunk)
        lines.append("%s %s" % (head, _mac(key, head)))
    return lines


def encode_exit(key, trial_id, attempt, exit_code, end_time_ms, record_count):
    # type: (bytes, str, int, int, int, int) -> str
    """The line (without newline) that carries the trial's exit."""
    head = "%s %s %d %d %d %d" % (EXIT_TAG, trial_id, attempt, exit_code, end_time_ms, record_count)
    return "%s %s" % (head, _mac(key, head))


def _valid(key, match):
    # type: (bytes, re.Match[str]) -> bool
    text = match.group(0)
    head, mac = text[: -_MAC_HEX - 1], text[-_MAC_HEX:]
    return hmac.compare_digest(_mac(key, head), mac)


class FrameReader(object):
    """Reads frames from a log, line by line (in as many calls as it takes): only lines whose MAC checks
    with ``key`` and that name ``trial_id`` and ``attempt`` (None: any; one pod's log holds one keeper's)
    count, and a record counts once all its parts are in. ``rejected`` counts the frame-like text that did
    not check."""

    def __init__(self, key, trial_id, attempt):
        # type: (bytes, str, int | None) -> None
        self.key = key
        self.trial_id = trial_id
        self.attempt = attempt
        self.rejected = 0
        self.ended = None  # type: dict[str, int] | None
        self._parts = {}  # type: dict[int, tuple[int, dict[int, str]]]
        self._done = set()  # type: set[int]

    def _ours(self, match):
        # type: (re.Match[str]) -> bool
        if (
            _valid(self.key, match)
            and match.group(1) == self.trial_id
            and (self.attempt is None or int(match.group(2)) == self.attempt)
        ):
            return True
        self.rejected += 1
        return False

    def feed(self, text):
        # type: (str) -> list[tuple[int, str]]
        """Complete lines of the log; returns the records they completed, ``[(seq, data), ...]`` by seq."""
        out = []  # type: list[tuple[int, str]]
        for line in text.splitlines():
            if "@nni-ts:" not in line:
                continue
            matched = 0
            for match in _RECORD.finditer(line):
                matched += 1
                if not self._ours(match):
                    continue
                seq, part, total = int(match.group(3)), int(match.group(4)), int(match.group(5))
                if seq in self._done or not 0 <= part < total:
                    continue
                known_total, chunks = self._parts.setdefault(seq, (total, {}))
                if known_total != total:
                    continue
                chunks.setdefault(part, match.group(6))
                if len(chunks) == total:
                    del self._parts[seq]
                    try:
                        data = base64.b64decode("".join(chunks[i] for i in range(total)), validate=True)
                        out.append((seq, data.decode("utf-8")))
                    except (binascii.Error, ValueError):
                        continue
                    self._done.add(seq)
            for match in _EXIT.finditer(line):
                matched += 1
                if self._ours(match):
                    self.ended = {
                        "exit_code": int(match.group(3)),
                        "end_time_ms": int(match.group(4)),
                        "record_count": int(match.group(5)),
                    }
            self.rejected += max(0, line.count("@nni-ts:") - matched)
        out.sort()
        return out


def parse_frames(text, key, trial_id, attempt):
    # type: (str, bytes, str, int | None) -> tuple[list[tuple[int, str]], dict[str, int] | None, int]
    """The records ``[(seq, data), ...]`` (sorted, each once), the exit (``exit_code``, ``end_time_ms``,
    ``record_count``) or None, and how many frame-like pieces were rejected, from a whole log's text."""
    reader = FrameReader(key, trial_id, attempt)
    records = reader.feed(text)
    return records, reader.ended, reader.rejected
