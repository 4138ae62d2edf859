"""The trial code directory as a tarball: ``.nniignore`` (gitignore-like), dotfiles kept, content hash.

``.nniignore`` in the code directory's root holds one pattern per line, as in ``.gitignore``:
blank lines and ``#`` comments are skipped; ``!`` re-includes; a trailing ``/`` matches directories
only; a pattern with a ``/`` other than at its end is anchored at the root (a leading ``/`` too),
otherwise it matches at any depth; ``*`` and ``?`` do not cross ``/``; ``**`` crosses directories.
The last matching pattern wins, and nothing inside an ignored directory can be re-included.
Dotfiles are regular files here: nothing is left out unless a pattern says so.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CodeArchive", "IgnoreRules", "build_archive"]

IGNORE_FILE = ".nniignore"


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _translate(body: str) -> str:
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if body.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif body.startswith("/**", i) and i + 3 == len(body):
            out.append("/.*")
            i += 3
        elif body.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = body.find("]", i + 2)
            if j < 0:
                out.append(re.escape(c))
                i += 1
            else:
                cls = body[i + 1 : j]
                if cls.startswith("!"):
                    cls = "^" + cls[1:]
                out.append("[" + cls.replace("\\", "\\\\") + "]")
                i = j + 1
        elif c == "\\" and i + 1 < len(body):
            out.append(re.escape(body[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


class IgnoreRules:
    """Patterns of an ``.nniignore`` file; :meth:`ignored` tells whether a relative path is left out."""

    def __init__(self, lines: list[str]) -> None:
        self.rules: list[_Rule] = []
        for raw in lines:
            line = raw.rstrip("\n").rstrip("\r")
            if not line.endswith("\\ "):
                line = line.rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:]
            elif line.startswith(("\\!", "\\#")):
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            if not line:
                continue
            anchored = "/" in line
            line = line.lstrip("/")
            pattern = _translate(line)
            if not anchored:
                pattern = "(?:.*/)?" + pattern
            self.rules.append(_Rule(re.compile(pattern + r"\Z", re.DOTALL), negate, dir_only))

    @classmethod
    def from_directory(cls, directory: Path) -> IgnoreRules:
        path = directory / IGNORE_FILE
        try:
            return cls(path.read_text(encoding="utf-8").splitlines())
        except FileNotFoundError:
            return cls([])

    def ignored(self, relpath: str, is_dir: bool) -> bool:
        result = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(relpath):
                result = not rule.negate
        return result


@dataclass(frozen=True)
class CodeArchive:
    """A gzipped tarball of a directory and the SHA-256 of its content (names, modes, bytes)."""

    data: bytes
    digest: str
    files: int


def build_archive(
    directory: Path,
    *,
    use_ignore_file: bool = True,
    exclude_names: tuple[str, ...] = (),
    prefix: str = "",
    extra: dict[str, bytes] | None = None,
) -> CodeArchive:
    """Pack ``directory`` (honouring its ``.nniignore``), entries sorted, for upload and caching.

    ``prefix`` is put before every name (``"pkg/"``); ``extra`` adds files ``{name: content}`` at the top.
    """
    directory = Path(directory)
    rules = IgnoreRules.from_directory(directory) if use_ignore_file else IgnoreRules([])
    entries: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        rel_root = os.path.relpath(root, directory)
        rel_root = "" if rel_root == "." else rel_root.replace(os.sep, "/") + "/"
        keep_dirs = []
        for d in sorted(dirs):
            rel = rel_root + d
            full = Path(root) / d
            if d in exclude_names or rules.ignored(rel, True):
                continue
            if full.is_symlink():
                entries.append((rel, full))
                continue
            keep_dirs.append(d)
            entries.append((rel, full))
        dirs[:] = keep_dirs
        for f in sorted(files):
            rel = rel_root + f
            if f in exclude_names or rules.ignored(rel, False):
                continue
            entries.append((rel, Path(root) / f))
    entries.sort()
    digest = hashlib.sha256()
    buf = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for rel, full in entries:
            info = tar.gettarinfo(str(full), arcname=prefix + rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = int(info.mtime)
            if info.isreg():
                content = full.read_bytes()
                info.size = len(content)
                digest.update(b"F\0" + rel.encode() + b"\0" + oct(info.mode & 0o111).encode() + b"\0")
                digest.update(hashlib.sha256(content).digest())
                tar.addfile(info, io.BytesIO(content))
                count += 1
            elif info.issym():
                digest.update(b"L\0" + rel.encode() + b"\0" + info.linkname.encode() + b"\0")
                tar.addfile(info)
            elif info.isdir():
                digest.update(b"D\0" + rel.encode() + b"\0")
                tar.addfile(info)
        for name, content in sorted((extra or {}).items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            digest.update(b"X\0" + name.encode() + b"\0" + hashlib.sha256(content).digest())
            tar.addfile(info, io.BytesIO(content))
            count += 1
    return CodeArchive(buf.getvalue(), digest.hexdigest()[:32], count)
