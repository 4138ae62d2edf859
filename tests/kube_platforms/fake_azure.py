"""A minimal fake of the Azure Files REST API (on 127.0.0.1, aiohttp, in a thread), enough for
``azure-storage-file-share``'s ShareClient: create directory, create file, put range, get properties,
download (with ranges). Files are kept under a local directory (``root/<share>/<path>``). Signatures are
not checked; the ``Authorization`` header must be a SharedKey one for the expected account."""

from __future__ import annotations

import asyncio
import threading
from email.utils import formatdate
from pathlib import Path

from aiohttp import web

_XML = '<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{msg}</Message></Error>'


def _error(status: int, code: str, msg: str) -> web.Response:
    return web.Response(
        status=status,
        body=_XML.format(code=code, msg=msg).encode(),
        headers={"x-ms-error-code": code, "Content-Type": "application/xml", "x-ms-request-id": "fake"},
    )


class FakeAzureFiles:
    def __init__(self, root: Path, account: str) -> None:
        self.root = root
        self.account = account
        self.requests = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {
            "ETag": '"0x8D000000000000"',
            "Last-Modified": formatdate(usegmt=True),
            "x-ms-request-id": "fake",
            "x-ms-version": "2025-01-05",
            "Date": formatdate(usegmt=True),
        }
        headers.update(extra or {})
        return headers

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if not request.headers.get("Authorization", "").startswith(f"SharedKey {self.account}:"):
            return _error(403, "AuthenticationFailed", "no SharedKey authorization for the account")
        path = self.root / request.path.lstrip("/")
        query = request.query
        if request.method == "PUT" and query.get("restype") == "directory":
            if path.is_dir():
                return _error(409, "ResourceAlreadyExists", "The specified resource already exists.")
            if not path.parent.is_dir():
                return _error(404, "ParentNotFound", "The specified parent path does not exist.")
            path.mkdir()
            return web.Response(status=201, headers=self._headers())
        if request.method == "PUT" and query.get("comp") == "range":
            rng = request.headers.get("x-ms-range") or request.headers.get("Range") or ""
            start = int(rng.split("=", 1)[1].split("-", 1)[0]) if "=" in rng else 0
            data = await request.read()
            with open(path, "r+b") as fh:
                fh.seek(start)
                fh.write(data)
            return web.Response(status=201, headers=self._headers())
        if request.method == "PUT":
            if not path.parent.is_dir():
                return _error(404, "ParentNotFound", "The specified parent path does not exist.")
            size = int(request.headers.get("x-ms-content-length", "0"))
            with open(path, "wb") as fh:
                fh.truncate(size)
            return web.Response(status=201, headers=self._headers())
        if request.method in ("HEAD", "GET"):
            if not path.is_file():
                if request.method == "HEAD":
                    return web.Response(status=404, headers={"x-ms-error-code": "ResourceNotFound"})
                return _error(404, "ResourceNotFound", "The specified resource does not exist.")
            data = path.read_bytes()
            headers = self._headers({"x-ms-type": "File", "Content-Type": "application/octet-stream"})
            if request.method == "HEAD":
                headers["Content-Length"] = str(len(data))
                return web.Response(status=200, headers=headers)
            rng = request.headers.get("x-ms-range") or request.headers.get("Range")
            if rng and data:
                start_s, _, end_s = rng.split("=", 1)[1].partition("-")
                start, end = int(start_s), min(int(end_s or len(data) - 1), len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return web.Response(status=206, body=data[start : end + 1], headers=headers)
            return web.Response(status=200, body=data, headers=headers)
        return _error(400, "UnsupportedHttpVerb", f"{request.method} {request.path_qs} is not faked")

    def start(self) -> None:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=64 * 2**20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
            self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-azure-files", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
