"""The HTTP face of the fake cluster: the Kubernetes REST API over aiohttp.

Discovery (``/version``, ``/api``, ``/apis``, group versions; aggregated discovery is answered with plain
JSON so that clients fall back), ``/openapi/v2`` and ``/openapi/v3``, every verb on every served resource,
watches as chunked JSON lines, Tables for kubectl, pod logs, Status objects for errors, an optional bearer
token with per-namespace access, and the server-side fault switches (error bursts, slowness, 410 on watches).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web

from . import openapi, rbac
from .api import Api, mark_disruption
from .resources import ResourceType
from .store import Event
from .tables import table
from .util import JSON, ApiError, FieldSelector, LabelSelector, status_object

__all__ = ["ApiServer", "ServerFaults"]

log = logging.getLogger(__name__)

VERSION_INFO = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-nni-ts-fake",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

LogSource = Callable[[JSON, str, bool, int | None, bool], AsyncIterator[bytes]]


@dataclass
class ServerFaults:
    """Switches the HTTP layer obeys (set them through ``FakeCluster.faults``)."""

    #: Pending error bursts: [status, remaining count, verbs or None, resource or None, retry_after]
    bursts: list[list[Any]] = field(default_factory=list)
    delay: float = 0.0
    gone_watches: int = 0


class ApiServer:
    """Serve ``api`` over HTTP on ``host:port`` (port 0 picks a free one; a restart keeps the port)."""

    def __init__(
        self,
        api: Api,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: dict[str, list[str] | None] | None = None,
        log_source: LogSource | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.api = api
        self.ssl_context = ssl_context
        self.host, self.port = host, port
        self.tokens = tokens
        #: Tokens bound to ServiceAccounts: token -> (namespace, name); RBAC applies to their requests.
        self.sa_tokens: dict[str, tuple[str, str]] = {}
        #: The messages of the requests RBAC refused (403), oldest first.
        self.forbidden: list[str] = []
        #: Requests made with each ServiceAccount's tokens.
        self.account_requests: Counter[tuple[str, str]] = Counter()
        self.log_source = log_source
        self.faults = ServerFaults()
        #: Seconds of silence after which a watch that allows bookmarks gets one.
        self.bookmark_interval = 5.0
        self.request_counts: Counter[tuple[str, str]] = Counter()
        #: The query of every ``pods/log`` request, in order: ``(namespace, pod, {parameter: value})``.
        self.log_queries: list[tuple[str, str, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Queue[Event | None]] = set()
        self._stream_tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context)
        await site.start()
        if self.port == 0:
            server: Any = site._server  # noqa: SLF001 - the only way to learn the bound port
            self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop serving: open watches and log streams end at once, as when a real API server goes away."""
        for queue in list(self._streams):
            queue.put_nowait(None)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return self._error(exc)
        except web.HTTPException:
            raise
        except ConnectionResetError:  # the client went away mid-stream (a closed watch or log follow)
            log.debug("The client of %s %s disconnected.", request.method, request.path)
            raise
        except Exception as exc:  # noqa: BLE001 - a server answers 500, it does not crash
            log.exception("The fake API server failed on %s %s.", request.method, request.path)
            return self._error(ApiError(500, "InternalError", f"Internal error occurred: {exc}"))

    @staticmethod
    def _error(exc: ApiError) -> web.Response:
        return web.json_response(exc.status(), status=exc.code, headers=exc.headers)

    def _check_auth(self, request: web.Request) -> list[str] | None:
        """The namespaces the caller may use (None: all)."""
        if self._service_account(request) is not None:
            return None
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if self.tokens is None:
            return None
        if token not in self.tokens:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return self.tokens[token]

    def _service_account(self, request: web.Request) -> tuple[str, str] | None:
        """The ServiceAccount a request's token is bound to (RBAC applies), or None."""
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if token not in self.sa_tokens:
            return None
        ns, name = self.sa_tokens[token]
        if self.api.store.get(("", "serviceaccounts"), ns, name) is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")  # the ServiceAccount was deleted
        return ns, name

    # ------------------------------------------------------------------ dispatch

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        allowed = self._check_auth(request)
        path = request.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        if request.method == "GET":
            if path in ("/version", "/version/"):
                return web.json_response(VERSION_INFO)
            if path in ("/healthz", "/livez", "/readyz"):
                return web.Response(text="ok")
            if path == "/fake/request-counts":
                return web.json_response(
                    [{"verb": v, "resource": r, "count": n} for (v, r), n in sorted(self.request_counts.items())]
                )
            if parts and parts[0] == "openapi":
                self.request_counts[("get", "openapi")] += 1
                return web.json_response(openapi.document(self.api, parts[1:], request.query.get("hash")))
        if parts[:1] == ["api"] and len(parts) <= 2 and request.method == "GET":
            self.request_counts[("get", "discovery")] += 1
            if len(parts) == 1:
                return web.json_response(
                    {
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [
                            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                        ],
                    }
                )
            return self._resource_list("", parts[1])
        if parts[:1] == ["apis"] and len(parts) <= 3 and request.method == "GET":
            self.request_counts[("get", "discovery")] += 1
            if len(parts) == 1:
                return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": self._groups()})
            if len(parts) == 2:
                for entry in self._groups():
                    if entry["name"] == parts[1]:
                        return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **entry})
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return self._resource_list(parts[1], parts[2])
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return await self._resource_request(request, group, version, rest, allowed)

    def issue_token(self, namespace: str, name: str) -> JSON:
        """TokenRequest (``kubectl create token``): a new token bound to the ServiceAccount."""
        if self.api.store.get(("", "serviceaccounts"), namespace, name) is None:
            raise ApiError.not_found("serviceaccounts", name)
        token = rbac.new_token()
        self.sa_tokens[token] = (namespace, name)
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600},
            "status": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"},
        }

    def _groups(self) -> list[JSON]:
        groups: dict[str, list[str]] = {}
        for rtype in self.api.types.values():
            if rtype.group:
                versions = groups.setdefault(rtype.group, [])
                if rtype.version not in versions:
                    versions.append(rtype.version)
        out = []
        for name, versions in sorted(groups.items()):
            entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
            out.append({"name": name, "versions": entries, "preferredVersion": entries[0]})
        return out

    def _resource_list(self, group: str, version: str) -> web.Response:
        resources: list[JSON] = []
        for rtype in self.api.types.values():
            if rtype.group == group and rtype.version == version:
                resources.extend(rtype.discovery())
        if not resources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        gv = f"{group}/{version}" if group else version
        return web.json_response(
            {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}
        )

    async def _resource_request(
        self, request: web.Request, group: str, version: str, rest: list[str], allowed: list[str] | None
    ) -> web.StreamResponse:
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else ""
        sub = "/".join(rest[2:])
        rtype = self.api.rtype(group, version, plural)
        if namespace and not rtype.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        q = request.query
        method = request.method
        if method == "GET":
            if name:
                verb = "get"
            else:
                verb = "watch" if q.get("watch", "").lower() in ("true", "1") else "list"
        else:
            verb = {
                "POST": "create",
                "PUT": "update",
                "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection",
            }.get(method, "")
            if not verb:
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    f"the server does not allow this method ({method}) on the requested resource",
                )
        resource_key = f"{plural}/{sub}" if sub else plural
        self.request_counts[(verb, resource_key)] += 1
        if allowed is not None:
            scope_ns = namespace or (name if plural == "namespaces" else "")
            if (
                not scope_ns
                and rtype.namespaced
                or scope_ns
                and scope_ns not in allowed
                or (not rtype.namespaced and plural != "namespaces")
            ):
                where = f' in the namespace "{scope_ns}"' if scope_ns else " at the cluster scope"
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{rtype.group_resource} is forbidden: User "fake-user" cannot '
                    f'{verb} resource "{plural}" in API group "{group}"{where}',
                )
        account = self._service_account(request)
        if account is not None:
            self.account_requests[account] += 1
        if account is not None and not rbac.authorize(
            self.api.store, *account, verb, group, resource_key, namespace, name
        ):
            where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
            refused = ApiError(
                403,
                "Forbidden",
                f"{rtype.group_resource} {f'{chr(34)}{name}{chr(34)} ' if name else ''}is forbidden: User "
                f'"system:serviceaccount:{account[0]}:{account[1]}" cannot {verb} resource "{resource_key}" '
                f'in API group "{group}"{where}',
            )
            self.forbidden.append(refused.message)
            raise refused
        await self._apply_faults(verb, plural)
        dry_run = "All" in q.getall("dryRun", [])
        if sub == "token" and rtype.kind == "ServiceAccount" and method == "POST":
            return web.json_response(self.issue_token(namespace, name), status=201)
        field_validation = q.get("fieldValidation", "")
        if sub == "eviction" and rtype.kind == "Pod" and request.method == "POST":
            # The Eviction API (kubectl drain): the pod is deleted gracefully.
            body = await self._body(request)
            options = (body or {}).get("deleteOptions") or {}
            if not dry_run:
                mark_disruption(self.api, namespace, name, "EvictionByEvictionAPI", "Eviction API: evicting")
            self.api.delete(
                rtype,
                namespace,
                name,
                dry_run=dry_run,
                grace_period=options.get("gracePeriodSeconds"),
                propagation=options.get("propagationPolicy"),
                preconditions=options.get("preconditions"),
            )
            return web.json_response(
                {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, status=201
            )
        if (
            sub
            and sub not in ("status", "log")
            or sub == "status"
            and not rtype.has_status
            or (sub == "log" and rtype.kind != "Pod")
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if verb == "get":
            if sub == "log":
                return await self._log(request, rtype, namespace, name)
            obj = self.api.get(rtype, namespace, name)
            if self._wants_table(request):
                return web.json_response(
                    table(rtype, [obj], obj["metadata"]["resourceVersion"], q.get("includeObject", "Metadata"))
                )
            return web.json_response(obj)
        if verb == "list":
            return self._list(request, rtype, namespace)
        if verb == "watch":
            return await self._watch(request, rtype, namespace)
        if verb == "create":
            body = await self._body(request)
            obj = self.api.create(rtype, namespace, body, dry_run=dry_run, field_validation=field_validation)
            return web.json_response(obj, status=201)
        if verb == "update":
            body = await self._body(request)
            obj = self.api.update(
                rtype, namespace, name, body, subresource=sub, dry_run=dry_run, field_validation=field_validation
            )
            return web.json_response(obj)
        if verb == "patch":
            body = await self._body(request)
            obj = self.api.patch(
                rtype,
                namespace,
                name,
                body,
                request.content_type,
                subresource=sub,
                dry_run=dry_run,
                field_validation=field_validation,
                force=q.get("force", "") == "true",
            )
            return web.json_response(obj)
        options = await self._delete_options(request)
        if verb == "delete":
            obj = self.api.delete(rtype, namespace, name, dry_run=dry_run, **options)
            return web.json_response(obj)
        objs = self.api.list(rtype, namespace or None, q.get("labelSelector"), q.get("fieldSelector"))
        deleted = []
        for obj in objs:
            with contextlib.suppress(ApiError):
                deleted.append(
                    self.api.delete(
                        rtype, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], dry_run=dry_run, **options
                    )
                )
        return web.json_response(
            {
                "kind": f"{rtype.kind}List",
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(self.api.store.rv)},
                "items": deleted,
            }
        )

    async def _apply_faults(self, verb: str, plural: str) -> None:
        faults = self.faults
        if faults.delay > 0:
            await asyncio.sleep(faults.delay)
        for burst in list(faults.bursts):
            status, remaining, verbs, resource, retry_after = burst
            if verbs is not None and verb not in verbs or resource is not None and resource != plural:
                continue
            burst[1] = remaining - 1
            if burst[1] <= 0:
                faults.bursts.remove(burst)
            if status == 429:
                raise ApiError(
                    429,
                    "TooManyRequests",
                    "Too many requests, please try again later.",
                    {"retryAfterSeconds": retry_after},
                    {"Retry-After": str(retry_after)},
                )
            reasons = {500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout", 409: "Conflict"}
            raise ApiError(
                status,
                reasons.get(status, "InternalError"),
                f"an error on the server (injected {status}) has prevented the request from succeeding",
            )

    @staticmethod
    async def _body(request: web.Request) -> Any:
        if "protobuf" in request.content_type or "cbor" in request.content_type:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the fake Kubernetes API server does not decode "
                f"{request.content_type} request bodies; send JSON or YAML (kubectl apply -f and "
                "create -f do; kubectl's imperative create commands send protobuf)",
            )
        raw = await request.read()
        if not raw:
            raise ApiError.bad_request("the request body is empty; expected a JSON object")
        try:
            if "yaml" in request.content_type:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError.bad_request(f"the request body is not valid JSON or YAML: {exc}") from exc

    @staticmethod
    async def _delete_options(request: web.Request) -> dict[str, Any]:
        q = request.query
        body: JSON = {}
        raw = await request.read()
        if raw:
            with contextlib.suppress(ValueError):
                loaded = json.loads(raw)
                if isinstance(loaded, dict):
                    body = loaded
        propagation = body.get("propagationPolicy") or q.get("propagationPolicy")
        orphan = body.get("orphanDependents", q.get("orphanDependents"))
        if propagation is None and orphan in (True, "true"):
            propagation = "Orphan"
        grace = body.get("gracePeriodSeconds", q.get("gracePeriodSeconds"))
        return {
            "propagation": propagation,
            "grace_period": int(grace) if grace is not None else None,
            "preconditions": body.get("preconditions"),
        }

    @staticmethod
    def _wants_table(request: web.Request) -> bool:
        accept = request.headers.get("Accept", "")
        first = accept.split(",")[0]
        return "as=Table" in first

    # ------------------------------------------------------------------ list and watch

    def _list(self, request: web.Request, rtype: ResourceType, namespace: str) -> web.Response:
        q = request.query
        objs = self.api.list(rtype, namespace or None, q.get("labelSelector"), q.get("fieldSelector"))
        rv = str(self.api.store.rv)
        start = 0
        if q.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(q["continue"].encode()))
                after = tuple(token["after"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiError.bad_request(f"the continue token {q['continue']!r} is not valid") from exc
            keys = [(o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objs]
            start = next((i for i, k in enumerate(keys) if k > after), len(keys))
            rv = str(token.get("rv", rv))
        limit = int(q.get("limit") or 0)
        page = objs[start : start + limit] if limit > 0 else objs[start:]
        token_out = ""
        remaining = len(objs) - start - len(page)
        if limit > 0 and remaining > 0:
            last = page[-1]["metadata"]
            token_out = base64.urlsafe_b64encode(
                json.dumps({"after": [last.get("namespace", ""), last["name"]], "rv": rv}).encode()
            ).decode()
        if self._wants_table(request):
            return web.json_response(table(rtype, page, rv, q.get("includeObject", "Metadata"), token_out))
        meta: JSON = {"resourceVersion": rv}
        if token_out:
            meta["continue"] = token_out
            meta["remainingItemCount"] = remaining
        return web.json_response(
            {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version, "metadata": meta, "items": page}
        )

    async def _watch(self, request: web.Request, rtype: ResourceType, namespace: str) -> web.StreamResponse:
        q = request.query
        labels = LabelSelector.parse(q.get("labelSelector"))
        fields = FieldSelector.parse(q.get("fieldSelector"), rtype.field_selectors)
        as_table = self._wants_table(request)
        include_object = q.get("includeObject", "Metadata")
        gr = (rtype.group, rtype.plural)
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        queue: asyncio.Queue[Event | None] = asyncio.Queue()

        def on_event(event: Event) -> None:
            if event.gr == gr and (not namespace or event.namespace == namespace):
                queue.put_nowait(event)

        def matches(obj: JSON | None) -> bool:
            return obj is not None and labels.matches(obj["metadata"].get("labels")) and fields.matches(obj)

        store = self.api.store
        unsubscribe = store.subscribe(on_event)
        self._streams.add(queue)
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"}
        )
        try:
            rv = q.get("resourceVersion", "")
            initial: list[JSON] = []
            replay: list[Event] = []
            gone: ApiError | None = None
            if self.faults.gone_watches > 0:
                self.faults.gone_watches -= 1
                gone = ApiError(410, "Expired", f"too old resource version: {rv or 0} ({store.rv})")
            elif not rv or rv == "0":
                initial = self.api.list(rtype, namespace or None)
            else:
                try:
                    replay = store.events_since(int(rv), gr)
                except ValueError as exc:
                    raise ApiError.bad_request(f"the resourceVersion {rv!r} is not valid") from exc
                except ApiError as exc:
                    gone = exc
            response.enable_chunked_encoding()
            await response.prepare(request)

            async def send(kind: str, obj: JSON) -> None:
                if as_table:
                    obj = table(rtype, [obj], obj["metadata"].get("resourceVersion", ""), include_object)
                await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

            if gone is not None:
                await response.write(json.dumps({"type": "ERROR", "object": gone.status()}).encode() + b"\n")
                await response.write_eof()
                return response
            bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
            last_rv = str(store.rv)

            async def bookmark(initial_end: bool = False) -> None:
                meta: JSON = {"resourceVersion": last_rv}
                if initial_end:
                    meta["annotations"] = {"k8s.io/initial-events-end": "true"}
                await response.write(
                    json.dumps(
                        {
                            "type": "BOOKMARK",
                            "object": {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": meta},
                        }
                    ).encode()
                    + b"\n"
                )

            for obj in initial:
                if matches(obj):
                    await send("ADDED", obj)
            if bookmarks and q.get("sendInitialEvents", "").lower() == "true":
                await bookmark(initial_end=True)
            for event in replay:
                if not namespace or event.namespace == namespace:
                    await self._send_event(event, matches, send, rtype)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout is not None else None
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                wait = remaining
                if bookmarks:
                    wait = self.bookmark_interval if wait is None else min(wait, self.bookmark_interval)
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if bookmarks and (deadline is None or loop.time() < deadline):
                        last_rv = str(store.rv)
                        await bookmark()
                        continue
                    break
                if item is not None:
                    last_rv = str(item.rv)
                if item is None:
                    # The server is going away: drop the connection as a dying server does.
                    if request.transport is not None:
                        request.transport.close()
                    return response
                await self._send_event(item, matches, send, rtype)
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        except ConnectionError:
            # The client went away: nothing to answer.
            if request.transport is not None:
                request.transport.close()
        except asyncio.CancelledError:
            if request.transport is not None:
                request.transport.close()
            raise
        finally:
            unsubscribe()
            self._streams.discard(queue)
        return response

    @staticmethod
    async def _send_event(
        event: Event,
        matches: Callable[[JSON | None], bool],
        send: Callable[[str, JSON], Awaitable[None]],
        rtype: ResourceType,
    ) -> None:
        obj = (
            event.obj
            if event.obj.get("apiVersion") == rtype.api_version
            else dict(event.obj, apiVersion=rtype.api_version)
        )
        now, before = matches(event.obj), matches(event.old)
        if event.type == "ADDED" and now:
            await send("ADDED", obj)
        elif event.type == "MODIFIED":
            if now and before:
                await send("MODIFIED", obj)
            elif now:
                await send("ADDED", obj)
            elif before:
                await send("DELETED", obj)
        elif event.type == "DELETED" and (now or before):
            await send("DELETED", obj)

    # ------------------------------------------------------------------ logs

    async def _log(self, request: web.Request, rtype: ResourceType, namespace: str, name: str) -> web.StreamResponse:
        q = request.query
        self.log_queries.append((namespace, name, dict(q)))
        pod = self.api.get(rtype, namespace, name)
        containers = [c["name"] for c in pod.get("spec", {}).get("containers") or []]
        container = q.get("container") or ""
        if not container:
            if len(containers) != 1:
                raise ApiError.bad_request(
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
                )
            container = containers[0]
        if container not in containers:
            raise ApiError.bad_request(f"container {container} is not valid for pod {name}")
        if self.log_source is None:
            raise ApiError.bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'
            )
        follow = q.get("follow", "").lower() in ("true", "1")
        previous = q.get("previous", "").lower() in ("true", "1")
        tail = _log_int(q, "tailLines", name, 0, "must be greater than or equal to 0")
        limit = _log_int(q, "limitBytes", name, 1, "must be greater than 0")
        chunks = self.log_source(pod, container, follow, tail, previous)
        first = await anext(chunks, None)  # raises ApiError before the response starts, if any
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        # limitBytes: the answer ends after that many bytes, wherever a line is (as a real kubelet's).
        left = limit if limit is not None else -1
        if first:
            if left >= 0:
                first, left = first[:left], left - min(left, len(first))
            await response.write(first)
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._streams.add(queue)
        try:
            async for chunk in chunks:
                if not queue.empty() or left == 0:
                    break
                if left > 0:
                    chunk, left = chunk[:left], left - min(left, len(chunk))
                await response.write(chunk)
        except ConnectionError:
            return response
        finally:
            self._streams.discard(queue)
            await chunks.aclose()  # type: ignore[attr-defined]
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


def _log_int(query: Any, key: str, pod: str, least: int, must: str) -> int | None:
    """An integer parameter of a ``pods/log`` request, validated as a real API server does."""
    text = query.get(key)
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ApiError.bad_request(f"couldn't parse {key} {text!r}: not an integer") from None
    if value < least:
        raise ApiError.invalid(
            "PodLogOptions", pod, "", [(key, "FieldValueInvalid", f"Invalid value: {value}: {must}")]
        )
    return value


def status_response(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(status_object(code, reason, message), status=code)
