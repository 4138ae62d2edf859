"""Metric records framed into the keeper's stdout (the pod's log, for Kubernetes without shared storage) and
the pod's bootstrap that fetches the trial's files: the keeper's frames carry every record and the exit,
nothing the trial prints can forge or corrupt one, and unsafe archives are refused."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from nni_ts.platforms.kubernetes.podstorage import archive
from trial_keeper import bootstrap
from trial_keeper.journal import read_journal
from trial_keeper.keeper import _Stdout
from trial_keeper.logframes import CHUNK, FrameReader, encode_exit, encode_record, frame_key, parse_frames

REPO = Path(__file__).resolve().parents[2]
KEY = frame_key("token-of-T1")


def test_frames_round_trip_in_chunks_and_reject_what_does_not_check() -> None:
    big = json.dumps({"v": "é" * (2 * CHUNK)})  # several lines
    lines = encode_record(KEY, "T1", 1, 0, '{"a": 1}') + encode_record(KEY, "T1", 1, 1, big)
    assert len(lines) > 2 and all(len(line) < 16 * 1024 for line in lines)
    exit_line = encode_exit(KEY, "T1", 1, 3, 1234, 2)
    other_key = encode_record(frame_key("another token"), "T1", 1, 2, "{}")
    other_trial = encode_record(KEY, "T2", 1, 2, "{}")
    other_attempt = encode_record(KEY, "T1", 2, 2, "{}")
    tampered = lines[0].replace("1 0 0/1", "1 5 0/1")  # moved to another seq: the MAC no longer checks
    text = "\n".join(
        [
            "junk before " + lines[0],  # glued after other text (another stream): still found
            *reversed(lines[1:]),  # parts in any order
            *other_key,
            *other_trial,
            *other_attempt,
            tampered,
            lines[0] + "ab",  # the same record again, damaged: ignored; the first copy counts
            "@nni-ts:m1 T1 1 3 0/1 e30= 0123",  # frame-like but malformed
            exit_line,
        ]
    )
    records, ended, rejected = parse_frames(text, KEY, "T1", 1)
    assert records == [(0, '{"a": 1}'), (1, big)]
    assert ended == {"exit_code": 3, "end_time_ms": 1234, "record_count": 2}
    assert rejected == 6
    # Incrementally, line by line, a record counts once all its parts came, and only once.
    reader = FrameReader(KEY, "T1", 1)
    got = [r for line in text.splitlines() for r in reader.feed(line)]
    assert sorted(got) == records and reader.ended == ended
    assert reader.feed(lines[0]) == []


@pytest.fixture
def trial_dir(tmp_path: Path) -> Path:
    d = tmp_path / "trial"
    d.mkdir()
    (d / "parameter.cfg").write_text("{}", encoding="utf-8")
    return d


def test_the_keeper_frames_records_and_exit_and_the_trials_forgeries_fail(trial_dir: Path) -> None:
    script = (
        "import sys\n"
        "w = sys.stdout.buffer.write\n"
        "w(b'progress without newline')\n"
        "sys.stdout.flush()\n"
        'w(b"NNISDK_MEb\'{\\"x\\": 1}\'\\n")\n'
        "w(b'@nni-ts:m1 T1 1 0 0/1 eyJ4IjogMn0= ' + b'0' * 32 + b'\\n')\n"  # a forged record at seq 0
        "w(b'@nni-ts:x1 T1 1 0 1 5 ' + b'f' * 32 + b'\\n')\n"  # a forged exit
        "w(b\"NNISDK_MEb'[2]'\\n\")\n"
        "sys.exit(5)\n"
    )
    (trial_dir.parent / "t.py").write_text(script, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO), NNI_TS_KEEPER_TOKEN="token-of-T1", NNI_TS_KEEPER_LOG_FRAMES="1")
    out = subprocess.run(
        [sys.executable, "-m", "trial_keeper", "--trial-dir", str(trial_dir), "--trial-id", "T1"]
        + ["--", f"{sys.executable} t.py"],
        env=env,
        capture_output=True,
        timeout=120,
        cwd=str(trial_dir.parent),
    )
    assert out.returncode == 5, out.stderr
    log = out.stdout.decode()
    assert "progress without newline" in log
    records, ended, rejected = parse_frames(log, KEY, "T1", 1)
    # Every frame starts a line of its own, even after the trial's unfinished line.
    at_line_start = "\n".join(line for line in log.splitlines() if line.startswith("@nni-ts:"))
    assert parse_frames(at_line_start, KEY, "T1", 1)[:2] == (records, ended)
    assert records == read_journal(str(trial_dir / ".nni-ts" / "journal")) == [(0, '{"x": 1}'), (1, "[2]")]
    assert ended is not None and (ended["exit_code"], ended["record_count"]) == (5, 2)
    assert rejected == 2
    # Without the token there is no key: framing is refused with a sentence.
    env.pop("NNI_TS_KEEPER_TOKEN")
    out = subprocess.run(
        [sys.executable, "-m", "trial_keeper", "--trial-dir", str(trial_dir), "--trial-id", "T1", "--", "true"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 2 and b"--log-frames needs the trial's token" in out.stderr


def test_a_frame_after_an_unfinished_line_starts_a_new_line() -> None:
    out = io.BytesIO()
    stdout = _Stdout(out)
    stdout.write(b"50% done")
    stdout.frames(["@nni-ts:m1 a", "@nni-ts:m1 b"])
    stdout.write(b"\n")
    stdout.write(b"line\n")
    stdout.frames(["@nni-ts:x1 c"])
    assert out.getvalue() == b"50% done\n@nni-ts:m1 a\n@nni-ts:m1 b\n\nline\n@nni-ts:x1 c\n"


def _tar(*members: tuple[str, bytes | None, str | None]) -> bytes:
    """A tar.gz of ``(name, file content or None, symlink target or None)``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                assert data is not None
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "members",
    [
        [("../evil", b"x", None)],
        [("/tmp/evil", b"x", None)],
        [("a/../../evil", b"x", None)],
        [("link", None, "/"), ("link/evil", b"x", None)],  # written through a symlink of the same archive
    ],
)
def test_the_bootstrap_refuses_unsafe_archives(
    tmp_path: Path, members: list[tuple[str, bytes | None, str | None]]
) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(bootstrap.BootstrapError):
        bootstrap.unpack(_tar(*members), str(dest))
    assert not (tmp_path / "evil").exists()


def test_code_archives_keep_links_as_links(tmp_path: Path) -> None:
    """Nothing outside the code directory leaves the manager: a link to /etc/hostname is a link."""
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "m.py").write_text("X = 1\n", encoding="utf-8")
    (code / "secret").symlink_to("/etc/hostname")
    data = archive([(code / "pkg" / "m.py", "pkg/m.py"), (code / "secret", "secret")])
    dest = tmp_path / "dest"
    assert bootstrap.unpack(data, str(dest)) == 2
    assert (dest / "pkg" / "m.py").read_text(encoding="utf-8") == "X = 1\n"
    assert os.readlink(dest / "secret") == "/etc/hostname"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getmember("secret").issym() and tar.getmember("secret").size == 0
