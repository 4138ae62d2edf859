"""The NNI record codec: both framings, byte for byte."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trial_keeper.records import (
    FrameDecoder,
    FramingError,
    encode_frame,
    encode_stdout_line,
    parse_stdout_line,
)

RECORD = (
    '{"parameter_id": 3, "trial_job_id": "Ab1Cd", "type": "FINAL", "sequence": 0, '
    '"value": "{\\"default\\": 0.9, \\"note\\": \\"it\'s\\"}"}'
)


def test_frame_round_trip_in_pieces() -> None:
    data = b"".join(encode_frame(r.encode()) for r in [RECORD, '{"a": NaN}', "{}"])
    assert data.startswith(b"ME%06d" % (len(RECORD.encode()) + 1))
    dec = FrameDecoder()
    out = []
    for i in range(len(data)):  # one byte at a time
        out += dec.feed(data[i : i + 1])
    assert out == [RECORD.encode(), b'{"a": NaN}', b"{}"]
    assert dec.offset == len(data) and dec.pending == 0


def test_frame_errors() -> None:
    with pytest.raises(FramingError, match="offset 0"):
        FrameDecoder().feed(b"XX000003{}\n")
    with pytest.raises(FramingError):
        FrameDecoder().feed(b"ME00a003{}\n")
    with pytest.raises(ValueError, match="1,000,000"):
        encode_frame(b"x" * 1_000_000)


def test_stdout_greedy_to_the_last_quote() -> None:
    line = (encode_stdout_line(RECORD) + "\n").encode()
    assert parse_stdout_line(line) == RECORD.encode()
    assert parse_stdout_line(b"prefix: " + line) == RECORD.encode()
    assert parse_stdout_line(b"no record here\n") is None
    assert parse_stdout_line(b"NNISDK_MEb'not json'\n") is None


def test_stdout_old_sdk_bytes_repr() -> None:
    # NNI <= 1.x printed repr(bytes): escapes doubled, non-ASCII as \\x, double quotes when ' inside.
    record = json.dumps({"type": "FINAL", "value": json.dumps({"default": 1, "s": "it's é"})})
    line = f"NNISDK_ME{record.encode('utf8')!r}\n".encode()
    assert parse_stdout_line(line) == record.encode("utf8")


@given(st.dictionaries(st.text(max_size=5), st.one_of(st.text(), st.floats(), st.integers()), max_size=4))
@pytest.mark.slow
def test_any_record_survives_both_framings(value: dict[str, object]) -> None:
    record = json.dumps({"type": "PERIODICAL", "sequence": 1, "value": json.dumps(value)}, ensure_ascii=False)
    assert FrameDecoder().feed(encode_frame(record.encode())) == [record.encode()]
    if "\n" not in record:
        assert parse_stdout_line((encode_stdout_line(record) + "\r\n").encode()) == record.encode()
