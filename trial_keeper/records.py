"""NNI metric records: the two framings the trial SDK writes, parsed without losing a byte.

Standard library only, Python 3.8+.

* The metrics file (``NNI_PLATFORM=local``): ``b"ME"`` + six ASCII digits giving the payload length +
  the payload, which is the record's JSON text followed by ``"\\n"``, UTF-8.
* Standard output (any other platform): one line ``NNISDK_MEb'<json>'``. The JSON runs greedily to the
  last ``'`` of the line, so JSON holding ``'`` survives. Very old SDKs printed the repr of a bytes
  object instead (``b'...'`` or ``b"..."`` with escapes); those are decoded with ``ast.literal_eval``.

A record's text is returned without the trailing newline, exactly as the SDK produced it otherwise.
"""

import ast
import json

__all__ = [
    "MAX_RECORD_BYTES",
    "STDOUT_PREFIX",
    "FrameDecoder",
    "FramingError",
    "encode_frame",
    "encode_stdout_line",
    "parse_stdout_line",
]

MAX_RECORD_BYTES = 1000000
STDOUT_PREFIX = b"NNISDK_ME"
_FRAME_MAGIC = b"ME"
_HEADER = 8  # "ME" + six digits


class FramingError(ValueError):
    """The metrics file does not follow the ``ME`` framing."""


def encode_frame(record):
    # type: (bytes) -> bytes
    """Frame one record (its JSON bytes, without newline) as the SDK writes it to ``.nni/metrics``."""
    payload = record + b"\n"
    if len(payload) >= MAX_RECORD_BYTES:
        raise ValueError("A metric record must be under 1,000,000 bytes.")
    return b"ME%06d" % len(payload) + payload


def encode_stdout_line(record):
    # type: (str) -> str
    """The stdout line the SDK prints for one record (without the newline)."""
    return "NNISDK_MEb'" + record + "'"


class FrameDecoder(object):
    """Incremental decoder of the metrics file. Feed it bytes as they appear; it returns whole records.

    ``offset`` counts the bytes consumed by complete frames, so a reader can resume from there.
    """

    def __init__(self, offset=0):
        # type: (int) -> None
        self._buf = b""
        self.offset = offset

    def feed(self, data):
        # type: (bytes) -> list[bytes]
        self._buf += data
        out = []  # type: list[bytes]
        buf = self._buf
        pos = 0
        while len(buf) - pos >= _HEADER:
            if buf[pos : pos + 2] != _FRAME_MAGIC:
                raise FramingError("Expected b'ME' at offset %d of the metrics file." % (self.offset + pos))
            digits = buf[pos + 2 : pos + _HEADER]
            if not digits.isdigit():
                raise FramingError("Bad frame length %r at offset %d." % (digits, self.offset + pos))
            size = int(digits)
            end = pos + _HEADER + size
            if len(buf) < end:
                break
            payload = buf[pos + _HEADER : end]
            if payload.endswith(b"\n"):
                payload = payload[:-1]
            out.append(payload)
            pos = end
        self._buf = buf[pos:]
        self.offset += pos
        return out

    @property
    def pending(self):
        # type: () -> int
        """Bytes of an incomplete frame held back."""
        return len(self._buf)


def parse_stdout_line(line):
    # type: (bytes) -> bytes | None
    """The record bytes in one stdout line, or None if the line holds no record."""
    start = line.find(STDOUT_PREFIX)
    if start < 0:
        return None
    body = line[start + len(STDOUT_PREFIX) :].rstrip(b"\r\n \t")
    if len(body) < 3 or body[:1] != b"b" or body[1:2] not in (b"'", b'"') or body[-1:] != body[1:2]:
        return None
    raw = body[2:-1]
    if body[1:2] == b"'" and _is_json(raw):
        return raw
    # An old SDK printed repr(bytes): undo the Python escapes.
    try:
        value = ast.literal_eval(body.decode("ascii"))
    except (ValueError, SyntaxError, UnicodeDecodeError):
        return raw if _is_json(raw) else None
    if isinstance(value, bytes) and _is_json(value):
        return value
    return None


def _is_json(data):
    # type: (bytes) -> bool
    try:
        json.loads(data.decode("utf-8"))
    except ValueError:
        return False
    return True
