"""The Starlette app: routes built from the operation table, request checks in a fixed order
(host, token, CSRF, size, media type, JSON, types), errors as JSON, and the dashboard."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..errors import (
    ConfigError,
    JobNotFound,
    PayloadTooLarge,
    RedisUnavailable,
    ServerNotSupported,
    TaskForgeError,
    ValidationError,
)
from . import api
from . import models as m
from .api import ApiError, Call
from .openapi import Operation, build_spec, query_fields

if TYPE_CHECKING:
    from ..client import TaskForge

__all__ = ["WebSettings", "create_app", "is_loopback", "operations"]

log = logging.getLogger("taskforge.web")

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "x-taskforge-csrf"


@dataclass(frozen=True, slots=True)
class WebSettings:
    token: str | None = None
    """Bearer token every API call must carry (TASKFORGE_API_TOKEN); None: no authentication."""
    max_body_bytes: int = 1024 * 1024
    """Larger request bodies get 413 (TASKFORGE_API_MAX_BODY_BYTES)."""
    allowed_hosts: tuple[str, ...] = ()
    """Host header values accepted (any port); empty: any. Guards against DNS rebinding."""
    heartbeat_seconds: float = 15.0
    """Keep-alive interval of the event stream."""

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("the API token must be at least 16 characters long")
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes must be at least 1024")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> WebSettings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get("TASKFORGE_API_TOKEN"):
            values["token"] = env["TASKFORGE_API_TOKEN"]
        raw = env.get("TASKFORGE_API_MAX_BODY_BYTES")
        if raw:
            try:
                values["max_body_bytes"] = int(raw)
            except ValueError:
                raise ConfigError(
                    f"TASKFORGE_API_MAX_BODY_BYTES={raw!r} is not a whole number of bytes"
                ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def operations() -> list[Operation]:
    """Every operation of the API, in the order of the spec."""
    job_path = {"job_id": m.JobId}
    queue_path = {"queue": m.QueueName}
    return [
        Operation("POST", "/v1/jobs", "enqueueJob", "Enqueue a job", "jobs", api.enqueue,
                  {201: m.Job, 200: m.Job}, body=m.EnqueueRequest,
                  description="201 with the new job; 200 with the existing job when the"
                  " idempotency key already names one."),
        Operation("POST", "/v1/jobs/batch", "enqueueJobs", "Enqueue many jobs", "jobs",
                  api.enqueue_batch, {201: m.BatchEnqueueResponse}, body=m.BatchEnqueueRequest,
                  description="Every job is checked before any is written."),
        Operation("GET", "/v1/jobs/{job_id}", "getJob", "A job's status, attempts, timestamps,"
                  " progress, result or error", "jobs", api.get_job, {200: m.Job},
                  query=m.JobLookupQuery, path_params=job_path),
        Operation("DELETE", "/v1/jobs/{job_id}", "cancelJob", "Cancel a job", "jobs",
                  api.cancel_job, {200: m.CancelResponse}, query=m.JobLookupQuery,
                  path_params=job_path,
                  description="A waiting job is canceled at once; a running one is asked to"
                  " stop (status stays active until its worker stops it). 409 if final."),
        Operation("GET", "/v1/queues", "listQueues", "Every queue: counts per state, oldest"
                  " waiting age, paused flag, throughput of the last minute", "queues",
                  api.list_queues, {200: m.QueueList}),
        Operation("GET", "/v1/queues/{queue}", "getQueue", "One queue", "queues",
                  api.get_queue, {200: m.QueueInfo}, path_params=queue_path),
        Operation("GET", "/v1/queues/{queue}/jobs", "listQueueJobs", "Jobs of a queue in one"
                  " state, a page at a time", "queues", api.queue_jobs, {200: m.JobPage},
                  query=m.JobsQuery, path_params=queue_path),
        Operation("POST", "/v1/queues/{queue}/pause", "pauseQueue", "Stop handing out the"
                  " queue's jobs (enqueueing goes on)", "queues", api.pause_queue,
                  {200: m.QueueState}, path_params=queue_path),
        Operation("POST", "/v1/queues/{queue}/resume", "resumeQueue", "Resume a paused queue",
                  "queues", api.resume_queue, {200: m.QueueState}, path_params=queue_path),
        Operation("POST", "/v1/queues/{queue}/purge", "purgeQueue", "Delete the queue's jobs"
                  " in one state", "queues", api.purge_queue, {200: m.PurgeResponse},
                  body=m.PurgeRequest, path_params=queue_path),
        Operation("GET", "/v1/dead", "listDead", "Dead-lettered jobs, newest first per queue",
                  "dead letters", api.list_dead, {200: m.JobPage}, query=m.DeadListQuery),
        Operation("POST", "/v1/dead/requeue", "requeueDead", "Requeue dead jobs: the given"
                  " ids, or all (of a queue, of a task)", "dead letters", api.requeue_dead,
                  {200: m.RequeueResponse}, body=m.DeadFilter),
        Operation("POST", "/v1/dead/purge", "purgeDead", "Delete dead jobs: the given ids, or"
                  " all (of a queue, of a task)", "dead letters", api.purge_dead,
                  {200: m.DeleteResponse}, body=m.DeadFilter),
        Operation("POST", "/v1/dead/{job_id}/requeue", "requeueDeadJob", "Requeue one dead"
                  " job", "dead letters", api.requeue_dead_job, {200: m.RequeueResponse},
                  query=m.JobLookupQuery, path_params=job_path),
        Operation("DELETE", "/v1/dead/{job_id}", "deleteDeadJob", "Delete one dead job",
                  "dead letters", api.delete_dead_job, {200: m.DeleteResponse},
                  query=m.JobLookupQuery, path_params=job_path),
        Operation("GET", "/v1/workers", "listWorkers", "Live workers and their current jobs",
                  "workers", api.list_workers, {200: m.WorkerList}),
        Operation("GET", "/v1/throughput", "getThroughput", "Finished jobs per time bucket",
                  "queues", api.throughput, {200: m.ThroughputResponse},
                  query=m.ThroughputQuery),
        Operation("GET", "/v1/events", "streamEvents", "Job events as Server-Sent Events",
                  "events", api.events, {200: str}, query=m.EventsQuery,
                  media="text/event-stream",
                  description="Events `ready` (subscribed), `job` (data: {event, id, queue,"
                  " task, ts}), `end` (timeout reached) and `error`; a comment line every"
                  " 15 s keeps the connection alive."),
        Operation("GET", "/healthz", "healthz", "The server is alive", "health", api.healthz,
                  {200: m.Health}, auth=False),
        Operation("GET", "/readyz", "readyz", "Redis is reachable", "health", api.readyz,
                  {200: m.Ready}, auth=False),
        Operation("GET", "/metrics", "metrics", "Prometheus metrics of the whole fleet",
                  "health", api.metrics, {200: str},
                  media="text/plain; version=0.0.4"),
    ]  # fmt: skip


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = msgspec.json.encode(m.ErrorBody(error=code, message=message))
    return Response(body, status, headers=headers, media_type="application/json")


class _Guard:
    """Checks that come before routing: the Host header (DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed and scope["type"] in ("http", "websocket"):
            host = ""
            for name, value in scope.get("headers", ()):
                if name == b"host":
                    host = value.decode("latin-1")
                    break
            hostname = urlsplit(f"//{host}").hostname or ""
            if hostname.lower() not in self.allowed:
                response = _error(
                    403, "forbidden", f"host {host!r} is not allowed; use one of the server's names"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Endpoint:
    """Runs one operation: the checks, then the handler; every failure becomes a JSON error."""

    def __init__(
        self,
        op: Operation,
        forge: TaskForge,
        web: WebSettings,
        csrf: str,
        closing: threading.Event,
    ) -> None:
        self.op = op
        self.forge = forge
        self.web = web
        self.csrf = csrf
        self.closing = closing
        self.query_fields = query_fields(op.query) if op.query is not None else []

    async def handle(self, request: Request) -> Response:
        try:
            return await self._run(request)
        except ApiError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return _error(exc.status, exc.code, exc.message, headers)
        except JobNotFound as exc:
            return _error(404, "not_found", str(exc))
        except PayloadTooLarge as exc:
            return _error(413, "too_large", str(exc))
        except ValidationError as exc:
            return _error(422, "invalid", str(exc))
        except (RedisUnavailable, ServerNotSupported) as exc:
            return _error(503, "unavailable", str(exc))
        except TaskForgeError as exc:  # Redis refused (ACL, out of memory): not the caller's fault
            log.warning("%s %s failed: %s", request.method, request.url.path, exc)
            return _error(503, "unavailable", str(exc))
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return _error(500, "internal", "internal error; the server log has the details")

    async def _run(self, request: Request) -> Response:
        op = self.op
        if op.auth and self.web.token is not None:
            _check_token(request, self.web.token)
        if request.method in _UNSAFE:
            _check_csrf(request, self.csrf)
        path = {}
        for name, tp in op.path_params.items():
            value = request.path_params[name]
            try:
                msgspec.convert(value, tp)
            except msgspec.ValidationError as exc:
                raise ApiError(422, "invalid", f"invalid {name} {value!r}: {exc}") from None
            path[name] = value
        unknown = set(request.query_params) - {f[0] for f in self.query_fields}
        if unknown:
            known = ", ".join(f[0] for f in self.query_fields) or "none"
            raise ApiError(422, "invalid", f"unknown query parameter(s) {', '.join(sorted(unknown))!r}"
                           f" (this operation takes: {known})")  # fmt: skip
        query = self._query(request) if op.query is not None else None
        body = await self._body(request) if op.body is not None else None
        call = Call(
            request, self.forge, body, query, path, self.web.heartbeat_seconds, self.closing
        )
        response: Response = await op.handler(call)
        return response

    def _query(self, request: Request) -> Any:
        assert self.op.query is not None
        params = request.query_params
        data: dict[str, Any] = {}
        for name, _tp, _required, is_list in self.query_fields:
            values = params.getlist(name)
            if values:
                data[name] = values if is_list else values[-1]
        try:
            return msgspec.convert(data, self.op.query, strict=False)
        except msgspec.ValidationError as exc:
            raise ApiError(422, "invalid", f"invalid query parameter: {exc}") from None

    async def _body(self, request: Request) -> Any:
        assert self.op.body is not None
        limit = self.web.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(413, "too_large", f"request body of {length} bytes is over the"
                           f" {limit}-byte limit")  # fmt: skip
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("application/json", ""):
            raise ApiError(415, "unsupported_media_type", f"send JSON (Content-Type:"
                           f" application/json), not {media!r}")  # fmt: skip
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"request body is over the {limit}-byte limit")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise ApiError(400, "bad_request", "a JSON request body is required")
        try:
            return m.decode_json(raw, self.op.body)
        except msgspec.ValidationError as exc:
            raise ApiError(422, "invalid", f"invalid request body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ApiError(400, "bad_request", f"request body is not valid JSON: {exc}") from None


def _check_token(request: Request, token: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if not header:
        raise ApiError(401, "unauthorized", "this server needs a token: send the header"
                       " `Authorization: Bearer <TASKFORGE_API_TOKEN>`")  # fmt: skip
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), token.encode()
    ):
        raise ApiError(401, "unauthorized", "wrong token")


def _check_csrf(request: Request, csrf: str) -> None:
    """Browsers (which send Origin or Sec-Fetch-Site) must come from the dashboard's own origin
    and carry the CSRF token it was served with; other clients are not at risk."""
    origin = request.headers.get("origin")
    site = request.headers.get("sec-fetch-site")
    if origin is None and site is None:
        return
    if site is not None and site not in ("same-origin", "none"):
        raise ApiError(403, "forbidden", f"cross-site request refused (Sec-Fetch-Site: {site})")
    host = request.headers.get("host", "").lower()
    if origin is not None and origin != "null" and urlsplit(origin).netloc.lower() != host:
        raise ApiError(403, "forbidden", f"cross-origin request refused (Origin: {origin})")
    given = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), csrf.encode()):
        raise ApiError(403, "forbidden", "missing or wrong CSRF token: reload the dashboard")


def _read_static(name: str) -> str:
    return resources.files("taskforge.web").joinpath("static", name).read_text("utf-8")


def _dashboard(csrf: str, auth: bool) -> Any:
    page = (
        _read_static("index.html")
        .replace("{{csrf}}", csrf)
        .replace("{{auth}}", "1" if auth else "0")
        .replace("{{version}}", __version__)
    )
    headers = {
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
            " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    return index


def create_app(
    forge: TaskForge, settings: WebSettings | None = None, **overrides: Any
) -> Starlette:
    """The HTTP API, dashboard and metrics of ``forge``'s queues, as an ASGI app.

    ``settings`` default to ``WebSettings.from_env()`` (TASKFORGE_API_TOKEN, ...);
    ``overrides`` change single fields."""
    web = settings if settings is not None else WebSettings.from_env()
    if overrides:
        web = replace(web, **overrides)
    csrf = secrets.token_urlsafe(32)
    closing = threading.Event()
    ops = operations()
    spec_body = msgspec.json.encode(
        build_spec(ops, title="TaskForge", version=__version__, auth=web.token is not None)
    )

    async def openapi(request: Request) -> Response:
        return Response(spec_body, media_type="application/json")

    routes: list[BaseRoute] = [
        Route(
            op.path,
            _Endpoint(op, forge, web, csrf, closing).handle,
            methods=[op.method],
            name=op.name,
        )
        for op in ops
    ]
    routes += [
        Route("/openapi.json", openapi, methods=["GET"], name="openapi"),
        Route("/", _dashboard(csrf, web.token is not None), methods=["GET"], name="dashboard"),
        Mount(
            "/static",
            StaticFiles(packages=[("taskforge.web", "static")]),
            name="static",
        ),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        message = {
            404: f"no such route: {request.method} {request.url.path} (see /openapi.json)",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, code, message, dict(exc.headers or {}))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await forge.close_async_connections()

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.forge = forge
    app.state.web = web
    app.state.csrf = csrf
    app.state.closing = closing
    """Set it (thread-safe) when shutting down: open event streams end within a second."""
    app.add_middleware(_Guard, allowed_hosts=web.allowed_hosts)
    return app
