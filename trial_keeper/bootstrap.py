"""The pod's bootstrap when there is no shared storage: fetch what the trial needs from the manager.

Standard library only, Python 3.8+, one file: the launcher runs its text with ``python3 -c
"$NNI_TS_KEEPER_BOOTSTRAP"`` (the text comes from the pod's environment, never pasted into the shell
script). It reads everything else from the environment too:

* ``NNI_TS_KEEPER_SERVER_URL``, ``NNI_TS_KEEPER_TRIAL_ID``, ``NNI_TS_KEEPER_TOKEN`` (from a Secret; never
  printed);
* ``NNI_TS_KEEPER_FETCH``: what to fetch, words among ``keeper`` (the trial_keeper package, into
  ``NNI_TS_KEEPER_HOME``), ``code`` (the trial code, into ``NNI_TS_KEEPER_CODE_DIR``) and ``parameter.cfg``
  (into ``NNI_TS_KEEPER_TRIAL_DIR``);
* ``NNI_TS_KEEPER_CA_PEM`` (https:// only): the CA the cluster server's certificate is checked against,
  written to ``NNI_TS_KEEPER_CA_FILE`` for the keeper too;
* ``NNI_TS_KEEPER_FETCH_LIMIT``: the largest download accepted, in bytes; ``NNI_TS_KEEPER_FETCH_TRIES``:
  how many times a download is tried (default 8, about half a minute).

Downloads are ``GET <server>/api/v1/trials/<trial>/files/<name>`` with ``Authorization: Bearer <token>``,
retried for about a minute while the manager cannot be reached. Archives are unpacked member by member:
absolute names, ``..``, devices and anything that would be written through a symbolic link are refused.
Exit status 0 when everything is in place, else 1 with one line on stderr saying what failed.
"""

import io
import os
import ssl
import sys
import tarfile
import time
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

ENV = "NNI_TS_KEEPER_"
TRIES = 8


class BootstrapError(Exception):
    """Something the pod cannot fetch or unpack; the message says what."""


def _env(name, default=""):
    # type: (str, str) -> str
    return os.environ.get(ENV + name, default)


def _context():
    # type: () -> ssl.SSLContext | None
    pem = _env("CA_PEM")
    if not pem:
        return None
    path = _env("CA_FILE")
    if path:
        directory = os.path.dirname(path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory)
        with open(path, "w") as fh:
            fh.write(pem)
    return ssl.create_default_context(cadata=pem)


def fetch(name, limit, context, tries=TRIES):
    # type: (str, int, ssl.SSLContext | None, int) -> bytes
    """One file of the trial from the manager's cluster server (retried while it cannot be reached)."""
    url = "%s/api/v1/trials/%s/files/%s" % (
        _env("SERVER_URL").rstrip("/"),
        quote(_env("TRIAL_ID"), safe=""),
        quote(name, safe=""),
    )
    request = Request(url, headers={"Authorization": "Bearer " + _env("TOKEN")})
    delay = 0.5
    last = ""
    for attempt in range(max(1, tries)):
        if attempt:
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        try:
            with urlopen(request, timeout=60, context=context) as answer:
                data = answer.read(limit + 1)  # type: bytes
        except HTTPError as exc:
            body = exc.read(2000).decode("utf-8", "replace")
            last = "HTTP %d: %s" % (exc.code, body)
            if exc.code not in (404, 429, 500, 502, 503, 504):  # 404: not registered yet (a restart)
                break
            continue
        except (URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
            continue
        if len(data) > limit:
            raise BootstrapError("%s is larger than the limit of %d bytes." % (name, limit))
        return data
    raise BootstrapError("cannot fetch %s from the manager at %s: %s" % (name, _env("SERVER_URL"), last))


def _inside(root, path):
    # type: (str, str) -> bool
    return path == root or path.startswith(root + os.sep)


def unpack(data, dest):
    # type: (bytes, str) -> int
    """Unpack a tar.gz archive into ``dest`` safely; returns how many members were written."""
    if not os.path.isdir(dest):
        os.makedirs(dest)
    root = os.path.realpath(dest)
    links = []  # type: list[tuple[str, str]]
    link_names = set()  # type: set[str]
    count = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive:
            parts = member.name.replace("\\", "/").split("/")
            if member.name.startswith("/") or ".." in parts or not member.name.strip("/"):
                raise BootstrapError("the archive holds an unsafe name %r." % member.name)
            clean = [p for p in parts if p not in ("", ".")]
            target = os.path.join(root, *clean)
            parent = os.path.realpath(os.path.dirname(target))
            through_link = any(os.path.join(root, *clean[:i]) in link_names for i in range(1, len(clean)))
            if not _inside(root, parent) or os.path.islink(target) or through_link:
                raise BootstrapError("the archive would write %r outside %s." % (member.name, dest))
            if member.isdir():
                if not os.path.isdir(target):
                    os.makedirs(target)
            elif member.isfile():
                if not os.path.isdir(parent):
                    os.makedirs(parent)
                source = archive.extractfile(member)
                assert source is not None
                with open(target, "wb") as fh:
                    fh.write(source.read())
                os.chmod(target, member.mode & 0o755 | 0o600)
            elif member.issym():
                links.append((target, member.linkname))  # made last: nothing is written through one
                link_names.add(target)
            else:
                raise BootstrapError("the archive holds %r, which is not a file, directory or link." % member.name)
            count += 1
    for target, linkname in links:
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            os.makedirs(parent)
        if os.path.lexists(target):
            raise BootstrapError("the archive holds %r twice." % target[len(root) + 1 :])
        os.symlink(linkname, target)
    return count


def main():
    # type: () -> int
    try:
        limit = int(_env("FETCH_LIMIT", str(256 * 1024 * 1024)))
        tries = int(_env("FETCH_TRIES", str(TRIES)))
        context = _context()
        for what in _env("FETCH").split():
            if what == "keeper":
                unpack(fetch("keeper.tar.gz", limit, context, tries), _env("HOME"))
            elif what == "code":
                unpack(fetch("code.tar.gz", limit, context, tries), _env("CODE_DIR"))
            elif what == "parameter.cfg":
                directory = _env("TRIAL_DIR")
                if not os.path.isdir(directory):
                    os.makedirs(directory)
                with open(os.path.join(directory, "parameter.cfg"), "wb") as fh:
                    fh.write(fetch("parameter.cfg", limit, context, tries))
            else:
                raise BootstrapError("unknown item %r in NNI_TS_KEEPER_FETCH." % what)
    except (BootstrapError, OSError, tarfile.TarError, ValueError, ssl.SSLError) as exc:
        sys.stderr.write("nni-ts bootstrap: %s\n" % exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
