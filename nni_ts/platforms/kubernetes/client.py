"""A small asynchronous Kubernetes REST client on top of kubernetes_asyncio's configuration and transport.

kubernetes_asyncio loads the cluster's address and credentials (a kubeconfig file, ``$KUBECONFIG``,
``~/.kube/config``, or the in-cluster service account) and owns the aiohttp session with its TLS set-up;
this module sends plain JSON requests through it, so that custom resources, patches and watches are
one code path. Errors::

    PlatformError
    ├── KubeApiError          the API server answered with an error Status (``status``, ``reason``)
    └── TemporaryError        it could not be reached, or kept answering 429 / 5xx
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp

from ...errors import ConfigError, PlatformError, TemporaryError

__all__ = ["KubeApiError", "KubeClient", "LineSplitter", "load_client"]

log = logging.getLogger(__name__)

JSON = dict[str, Any]
_RETRY_STATUS = {429, 500, 502, 503, 504}
#: The largest chunk :meth:`KubeClient.stream_bytes` yields.
STREAM_CHUNK = 64 * 1024


class KubeApiError(PlatformError):
    """The API server refused a request. ``status`` is the HTTP status, ``reason`` the Status reason."""

    def __init__(self, status: int, reason: str, message: str, *, method: str = "", path: str = "") -> None:
        self.status = status
        self.reason = reason
        self.api_message = message
        where = f" ({method} {path})" if method else ""
        super().__init__(f"The Kubernetes API server answered {status} {reason}{where}: {message}")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


class KubeClient:
    """JSON requests and watch streams against one API server. Use :func:`load_client` to make one."""

    def __init__(self, api_client: Any, *, retries: int = 6) -> None:
        self._api = api_client
        self._config = api_client.configuration
        self.host = str(self._config.host).rstrip("/")
        self.retries = retries
        #: Requests sent, by ``(method, path without query)``; the benchmark reads it.
        self.sent = 0

    @property
    def server_host(self) -> str:
        """The API server's host name or address (for finding which local address the pods can reach)."""
        return urlparse(self.host).hostname or "127.0.0.1"

    async def close(self) -> None:
        await self._api.close()

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        settings = await self._config.auth_settings()
        for auth in settings.values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        return headers

    async def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str | None,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        headers = await self._headers(content_type if body is not None else None)
        data = json.dumps(body).encode() if body is not None else None
        session = self._api.rest_client.pool_manager
        params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (query or {}).items()}
        self.sent += 1
        resp: aiohttp.ClientResponse = await session.request(
            method, self.host + path, params=params, data=data, headers=headers, timeout=timeout
        )
        return resp

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> JSON:
        """Send one request and return the decoded JSON answer. Retries (bounded, with back-off) when the
        server cannot be reached or answers 429 / 5xx; raises :class:`KubeApiError` for other errors."""
        delay = 0.1
        told: float | None = None
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(told if told is not None else delay * (0.5 + random.random()))
                told = None
                delay = min(delay * 2, 3.0)
            try:
                resp = await self._send(method, path, query, body, content_type, aiohttp.ClientTimeout(total=timeout))
                async with resp:
                    text = await resp.text()
                    if resp.status < 300:
                        return json.loads(text) if text else {}
                    error = _api_error(resp.status, text, method, path)
                    if resp.status in _RETRY_STATUS:
                        last = error
                        retry_after = resp.headers.get("Retry-After", "")
                        if retry_after.isdigit():  # the server says when: wait that long (at most 10 s)
                            told = min(float(retry_after), 10.0)
                        continue
                    raise error
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                last = exc
                continue
        raise TemporaryError(
            f"The Kubernetes API server at {self.host} could not serve {method} {path} after "
            f"{self.retries + 1} tries: {last}"
        ) from last

    async def request_text(
        self, method: str, path: str, *, query: Mapping[str, Any] | None = None, timeout: float = 30.0
    ) -> str:
        """Like :meth:`request` for an answer that is plain text (a pod's log). No retries."""
        try:
            resp = await self._send(method, path, query, None, None, aiohttp.ClientTimeout(total=timeout))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TemporaryError(
                f"The Kubernetes API server at {self.host} could not serve {method} {path}: {exc}"
            ) from exc
        async with resp:
            text = await resp.text(errors="replace")
            if resp.status >= 300:
                raise _api_error(resp.status, text, method, path)
            return text

    async def stream(self, path: str, query: Mapping[str, Any], *, read_timeout: float) -> AsyncIterator[JSON]:
        """Open a watch and yield its events (``{"type": ..., "object": ...}``) until the server ends it.

        Connection problems raise ``aiohttp`` errors or ``TimeoutError``; an error answer raises
        :class:`KubeApiError`. The caller reconnects.
        """
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout)
        resp = await self._send("GET", path, query, None, None, timeout)
        async with resp:
            if resp.status >= 300:
                raise _api_error(resp.status, await resp.text(), "GET", path)
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
            if buffer.strip():
                yield json.loads(buffer)

    async def stream_bytes(
        self, path: str, query: Mapping[str, Any], *, read_timeout: float | None = None
    ) -> AsyncIterator[bytes]:
        """A streaming GET (a pod's log): yield the answer's bytes as they come, in chunks of at most
        :data:`STREAM_CHUNK` bytes, never all of it at once. An error answer raises :class:`KubeApiError`;
        connection problems raise ``aiohttp`` errors or ``TimeoutError`` (``read_timeout``: seconds without
        data). No retries."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout)
        resp = await self._send("GET", path, query, None, None, timeout)
        async with resp:
            if resp.status >= 300:
                raise _api_error(resp.status, await resp.text(errors="replace"), "GET", path)
            async for chunk in resp.content.iter_chunked(STREAM_CHUNK):
                yield chunk


class LineSplitter:
    """Cuts a stream of chunks into blocks of complete lines, holding at most ``max_line`` bytes of an
    unfinished line: of a longer line only its last ``max_line`` bytes are kept, so that memory stays
    bounded whatever the stream holds."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._rest = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete lines (each ending with its newline) that ``chunk`` finishes; may be empty."""
        end = chunk.rfind(b"\n") + 1
        block = b""
        if end:
            block, self._rest = self._rest + chunk[:end], chunk[end:]
        else:
            self._rest += chunk
        if len(self._rest) > self.max_line:
            self._rest = self._rest[-self.max_line :]
        return block

    def rest(self) -> bytes:
        """The unfinished last line (at the end of the stream)."""
        rest, self._rest = self._rest, b""
        return rest


def _api_error(status: int, text: str, method: str, path: str) -> KubeApiError:
    reason, message = "", text.strip()[:500]
    try:
        body = json.loads(text)
        if isinstance(body, dict):
            reason = str(body.get("reason") or "")
            message = str(body.get("message") or message)
    except ValueError:
        pass
    return KubeApiError(status, reason or "Error", message or "no message", method=method, path=path)


async def load_client(kubeconfig: str | None = None, context: str | None = None) -> KubeClient:
    """A client for the cluster named by ``kubeconfig`` (else ``$KUBECONFIG``, else ``~/.kube/config``,
    else the in-cluster service account). Raises :class:`ConfigError` when none is usable."""
    from kubernetes_asyncio import client as k8s_client
    from kubernetes_asyncio import config as k8s_config
    from kubernetes_asyncio.config.config_exception import ConfigException

    candidates: list[str] = []
    if kubeconfig:
        candidates.append(str(Path(kubeconfig).expanduser()))
    elif os.environ.get("KUBECONFIG"):
        candidates.append(os.environ["KUBECONFIG"])
    else:
        default = Path("~/.kube/config").expanduser()
        if default.exists():
            candidates.append(str(default))
    configuration = k8s_client.Configuration()
    try:
        if candidates:
            for part in candidates[0].split(os.pathsep):
                if part and not Path(part).exists():
                    raise ConfigError(
                        f"the kubeconfig file {part} does not exist (from "
                        f"{'kubeconfig' if kubeconfig else '$KUBECONFIG'})."
                    )
            await k8s_config.load_kube_config(
                config_file=candidates[0], context=context, client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            raise ConfigError(
                "no Kubernetes cluster is configured: set KUBECONFIG, create ~/.kube/config, give "
                "trainingService.kubeconfig, or run the manager inside the cluster."
            )
    except ConfigException as exc:
        raise ConfigError(f"cannot load the Kubernetes configuration: {exc}.") from exc
    return KubeClient(k8s_client.ApiClient(configuration=configuration))
